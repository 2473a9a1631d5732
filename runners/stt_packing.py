"""Packing short speech clips into shared Whisper windows (CPU): the decisions, as pure functions.

On CPU the encoder's full 30 s window, not decoding, is most of the cost of a short clip, so
the STT runner lets several clips share one window, `PACK_GAP_FRAMES` of silence apart. This
module holds every decision of that path and no model: the runner (runners/stt.py) computes
mel features, asks the model for languages and tokens, and calls these functions in order:

1. `pack_language`: the clip's language, or None when it must be decoded on its own;
2. `plan_windows`: which clips share which window, where, and the throw-away tail that ends it;
3. `window_features`: the windows' mel features, one batch row each;
4. `split_clips`: from one window's tokens, each clip's own segments, or None for a clip whose
   text cannot be placed safely (that clip is decoded again on its own; the others keep theirs).

Clips up to `PACK_MAX_FRAMES` pack; a copy of the shortest ends each window. A clip keeps its
packed result only if each of its segments sits inside it (within `PACK_TOLERANCE_S`) and it got
text. Auto-detected languages come from the clip's own frames (padded on a second try) and must
be confident, or the clip is decoded on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

NO_SPEECH_PROB = 0.6  # Whisper's own rule for a window with no speech...
LOGPROB_FLOOR = -1.0  # ...when its tokens are also this unlikely
TIME_PRECISION = 0.02  # seconds per Whisper timestamp token
FRAMES_PER_SECOND = 100  # Whisper's mel frames
PACK_MAX_FRAMES = 1500  # longer clips have a window's worth on their own
PACK_GAP_FRAMES = 50
# The tolerance: Whisper puts the boundary between two clips' segments at the next clip's
# speech onset, which the VAD's 0.2 s padding puts 0.2 s into that clip; measured over 170
# such boundaries, 0.06-0.21 s in, and up to 0.3 s with wider gaps. 0.2 s refused a clip in
# two of four served rounds of 8. 0.3 s leaves 0.1 s of the next clip's speech: less than a
# word.
PACK_TOLERANCE_S = 0.3
PACK_DETECT_CONFIDENCE = 0.9
PACK_DETECT_RETRY_FRAMES = 1000


@dataclass
class Chunk:
    """A piece of one job's speech, at most one Whisper window long."""

    job: int  # the job's index in its batch
    audio: npt.NDArray[np.float32]
    offset: float  # seconds, in speech-only time
    duration: float


@dataclass(frozen=True)
class Candidate:
    """A short clip that may share a window: its features and its (detected) language."""

    chunk: Chunk
    mel: npt.NDArray[np.float32]  # (mel bins, frames)
    language: str
    probability: float  # of the language: 1.0 when the job named it


@dataclass(frozen=True)
class Clip:
    """A clip placed in a window."""

    chunk: Chunk
    mel: npt.NDArray[np.float32]
    probability: float
    position: int  # its first frame in the window

    @property
    def frames(self) -> int:
        return int(self.mel.shape[-1])


@dataclass(frozen=True)
class Window:
    """Clips of one language sharing one window, then the throw-away copy of the shortest."""

    language: str
    clips: list[Clip]
    tail: Clip


@dataclass(frozen=True)
class Segment:
    """A piece of a clip's text, timed in its job's speech-only time."""

    start: float
    end: float
    tokens: list[int]
    text: str


def is_silent(no_speech_prob: float, avg_logprob: float) -> bool:
    """Whisper's rule: a window with no speech (its text, if any, is dropped)."""
    return no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOGPROB_FLOOR


# 1. Language -----------------------------------------------------------------------------------
def pack_language(
    wanted: str | None,
    multilingual: bool,
    frames: int,
    detect: Callable[[int], tuple[str, float]],
) -> tuple[str, float] | None:
    """The clip's (language, probability) for packing, or None when it must be decoded alone.

    `detect(n)` runs language detection on the clip's mel frames padded (or cut) to `n`. First
    on the clip's own frames (rounded up to even: CTranslate2 takes any even length), about 1/20
    of a 30 s window for a 3 s clip, and the same language as the full window whenever it is
    confident (measured on the benchmark clips). Unsure on its own frames, it is asked again
    padded to PACK_DETECT_RETRY_FRAMES: one synthetic English clip gave Latvian at 0.25 on its
    own frames and English at 0.999 padded to 10 s, and that costs a third of the window a clip
    decoded alone needs.
    """
    if wanted:
        return wanted, 1.0
    if not multilingual:
        return "en", 1.0
    own = frames + frames % 2
    for size in [own] if own >= PACK_DETECT_RETRY_FRAMES else [own, PACK_DETECT_RETRY_FRAMES]:
        language, probability = detect(size)
        if probability >= PACK_DETECT_CONFIDENCE:
            return language, probability
    return None


# 2. Windows ------------------------------------------------------------------------------------
def _tail(clips: list[Clip], position: int) -> Clip:
    """A copy of the shortest clip, placed at `position`: the window's throw-away last clip."""
    shortest = min(clips, key=lambda clip: clip.frames)
    return Clip(shortest.chunk, shortest.mel, shortest.probability, position)


def plan_windows(
    candidates: Sequence[Candidate], window_frames: int
) -> tuple[list[Window], list[Chunk]]:
    """(windows of two or more clips, the chunks left to decode alone), in candidate order.

    Clips of one language fill a window in turn, PACK_GAP_FRAMES apart, leaving room for the
    tail. Each window ends with a copy of its shortest clip, whose text is thrown away: Whisper
    often stops before a window's last utterance (it learnt to leave one that may be cut at the
    window's edge to the next window), and the copy takes that place. Without it, the last clip
    of nearly every window was decoded again on its own. A window of one clip is no gain: that
    clip takes the usual path.
    """
    by_language: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_language.setdefault(candidate.language, []).append(candidate)
    windows: list[Window] = []
    for language, group in by_language.items():
        current: list[Clip] = []
        position = 0
        for candidate in group:
            frames = int(candidate.mel.shape[-1])
            shortest = min([frames, *(clip.frames for clip in current)])
            if current and position + frames + PACK_GAP_FRAMES + shortest > window_frames:
                windows.append(Window(language, current, _tail(current, position)))
                current, position = [], 0
            current.append(Clip(candidate.chunk, candidate.mel, candidate.probability, position))
            position += frames + PACK_GAP_FRAMES
        windows.append(Window(language, current, _tail(current, position)))
    alone = [w.clips[0].chunk for w in windows if len(w.clips) == 1]
    return [w for w in windows if len(w.clips) > 1], alone


def window_features(windows: Sequence[Window], window_frames: int) -> npt.NDArray[np.float32]:
    """(windows, mel bins, window_frames): each clip's and tail's mel at its position, silence
    (zeros) between them."""
    bins = windows[0].clips[0].mel.shape[0]
    features = np.zeros((len(windows), bins, window_frames), dtype=np.float32)
    for row, window in enumerate(windows):
        for clip in [*window.clips, window.tail]:
            features[row, :, clip.position : clip.position + clip.frames] = clip.mel
    return features


# 3. Segments -----------------------------------------------------------------------------------
def timed_segments(
    tokens: Sequence[int], timestamp_begin: int
) -> list[tuple[float, float, list[int]]] | None:
    """Whisper's `<|t0|> text <|t1|><|t1|> text <|t2|>` -> [(t0, t1, text tokens), …];
    None when a segment has no start or no end time (its place in the window is unknown)."""
    segments: list[tuple[float, float, list[int]]] = []
    start: float | None = None
    text: list[int] = []
    for token in tokens:
        if token < timestamp_begin:
            if start is None:
                return None
            text.append(token)
        elif start is None or not text:
            start = (token - timestamp_begin) * TIME_PRECISION
        else:
            segments.append((start, (token - timestamp_begin) * TIME_PRECISION, text))
            start, text = None, []
    return None if text else segments


def split_clips(
    clips: Sequence[Clip],
    tokens: Sequence[int],
    *,
    timestamp_begin: int,
    decode: Callable[[list[int]], str],
    avg_logprob: float,
    no_speech_prob: float,
    tail: Clip | None = None,
) -> list[list[Segment] | None]:
    """Give each clip its own segments from its window's tokens; None for a clip whose text
    cannot be placed safely.

    A refused clip is decoded again on its own; the others keep their packed result. Refusing
    only the clips that a doubtful segment touches keeps the batching gain: refusing the whole
    window cost the window plus every clip alone, slower than not packing at all.
    `tail` is the window's throw-away last clip: its text is dropped, and a segment that
    reaches into it from the last clip puts that clip in doubt like any other neighbour.
    `decode` turns text tokens into text; `avg_logprob` and `no_speech_prob` are the window's.
    """
    refused: list[list[Segment] | None] = [None for _ in clips]
    if is_silent(no_speech_prob, avg_logprob):
        return refused  # the usual path applies Whisper's silence rule per clip
    timed = timed_segments(tokens, timestamp_begin)
    if timed is None:
        return refused  # text with no place in the window: it could be anyone's
    placed = [*clips, tail] if tail is not None else list(clips)
    spans = [
        (clip.position / FRAMES_PER_SECOND, (clip.position + clip.frames) / FRAMES_PER_SECOND)
        for clip in placed
    ]
    found: list[list[Segment]] = [[] for _ in placed]
    doubtful: set[int] = set()
    for start, end, text_tokens in timed:
        # Whisper ends a segment where the next begins: each segment goes to the clip it
        # overlaps most, and must not reach more than the tolerance into another.
        overlaps = [min(end, finish) - max(start, begin) for begin, finish in spans]
        # (Whisper's times are multiples of 0.02 s: 1e-6 keeps 0.3 from failing as 0.3000001.)
        touched = [i for i, overlap in enumerate(overlaps) if overlap > PACK_TOLERANCE_S + 1e-6]
        if len(touched) > 1:
            doubtful.update(touched)  # across clips: never split one segment between jobs
            continue
        index = max(range(len(spans)), key=lambda i: overlaps[i])
        if overlaps[index] <= 0:
            # In a gap only: the clips on either side of it are in doubt.
            doubtful.update(i for i in (index - 1, index, index + 1) if 0 <= i < len(spans))
            continue
        if index == len(clips):
            continue  # the throw-away tail's own text
        chunk, begin = clips[index].chunk, spans[index][0]
        found[index].append(
            Segment(
                start=round(chunk.offset + max(0.0, start - begin), 3),
                end=round(chunk.offset + min(chunk.duration, end - begin), 3),
                tokens=text_tokens,
                text=decode(text_tokens),
            )
        )
    found = found[: len(clips)]
    empty = [
        i
        for i, segments in enumerate(found)
        if i not in doubtful and not any(s.text.strip() for s in segments)
    ]
    last_placed = max((i for i, segments in enumerate(found) if segments), default=-1)
    for index in empty:
        if index > last_placed:
            # Whisper often stops before a window's last utterance (it learnt to leave one
            # that may be cut at the window's edge to the next window): the clips after the
            # last placed segment are decoded alone, their neighbours' text stands.
            doubtful.add(index)
            continue
        # A clip with no text between others: Whisper skipped it, or gave its words a
        # neighbour's times.
        doubtful.update(i for i in (index - 1, index, index + 1) if 0 <= i < len(found))
    return [None if i in doubtful else segments for i, segments in enumerate(found)]
