"""Beat and tempo tracking for the video editor's beat sync: pure numpy, no I/O.

The algorithm is Ellis's dynamic-programming beat tracker (D. P. W. Ellis, "Beat Tracking by
Dynamic Programming", J. New Music Research 36(1), 2007), the one librosa's `beat_track`
implements, written here in numpy because librosa's numba kernels compile on first use (tens of
seconds on a cold cache, per process) and it would add numba and llvmlite to the image:

1. **Onset strength**: log-power mel spectrogram, its rise from one frame to the next summed over
   bands (spectral flux), shifted by half a window so a peak sits on the onset, not before it.
   The log has an absolute floor, so silence and near-silence have no onsets at all.
2. **Tempo**: the onset envelope's autocorrelation weighted by a log-normal prior around
   120 bpm (one octave wide, which settles the octave ambiguity towards moderate tempi), the
   peak refined between lags by a parabola.
3. **Beats**: each frame scores its own onset strength plus the best earlier beat one period
   back (half to two periods), penalised by the squared log of the interval's ratio to the
   period; the best path is traced back, and weak beats at the start and end are trimmed.

On top of Ellis: each beat's `strength` (its onset strength over the track's typical beat, in
[0, 1]), `sensitivity` (beats under `1 - sensitivity` strength are dropped: 1 keeps every beat
the tracker placed) and bars: one beat in four is a `downbeat`, in the phase whose beats are the
most accented (a 4/4 assumption; the tracker has no model of metre).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

SAMPLE_RATE = 22_050  # what callers should decode to; any rate works
_WINDOW_S = 1024 / 22_050  # STFT window (~46 ms)
_HOP_S = 256 / 22_050  # frame step (~11.6 ms): the beat times' resolution before refinement
_MELS = 64
_FLOOR_DB = -80.0  # below this (relative to a full-scale sine) a band counts as silent
_START_BPM = 120.0  # the tempo prior's centre (Ellis; librosa's default)
_PRIOR_OCTAVES = 1.0  # its width
_MIN_BPM, _MAX_BPM = 30.0, 300.0
_TIGHTNESS = 100.0  # how strongly beat intervals are held to the period (librosa's default)
_BEATS_PER_BAR = 4
_CHUNK_FRAMES = 2048  # STFT frames per chunk: bounds memory on long tracks

BeatType = Literal["downbeat", "beat"]


@dataclass(frozen=True)
class Beat:
    time_ms: int
    strength: float  # in [0, 1]
    type: BeatType


@dataclass(frozen=True)
class BeatResult:
    beats: list[Beat] = field(default_factory=list)
    tempo_bpm: float = 0.0  # 0 when no beat was found (silence, no onsets)


def detect_beats(
    samples: npt.NDArray[np.float32], sample_rate: int, sensitivity: float
) -> BeatResult:
    """Beats and tempo of mono audio in [-1, 1]. `sensitivity` in [0, 1]: the share of weaker
    beats kept (1: every beat the tracker placed; 0: only the most accented ones)."""
    if not 0.0 <= sensitivity <= 1.0:
        raise ValueError(f"sensitivity must be in [0, 1], got {sensitivity}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    hop = max(1, round(_HOP_S * sample_rate))
    fps = sample_rate / hop
    envelope, amplitude = onset_strength(np.asarray(samples, dtype=np.float32), sample_rate)
    if envelope.size == 0 or float(envelope.max()) <= 1e-6:
        return BeatResult()
    period, bpm = estimate_tempo(envelope, fps)
    if period <= 0.0:
        return BeatResult()
    frames = track_beats(envelope, period)
    if frames.size == 0:
        return BeatResult()
    # each beat's onset: the strongest frame within a few frames of the tracked beat
    reach = max(1, round(0.035 * fps))
    peaks = np.array(
        [float(amplitude[max(0, f - reach) : f + reach + 1].max()) for f in frames],
        dtype=np.float64,
    )
    typical = float(np.percentile(peaks, 95))
    strengths = np.clip(peaks / typical, 0.0, 1.0) if typical > 0 else np.zeros_like(peaks)
    downbeat_phase = int(
        np.argmax(
            [strengths[p::_BEATS_PER_BAR].mean() for p in range(min(_BEATS_PER_BAR, frames.size))]
        )
    )
    floor = 1.0 - sensitivity
    beats = [
        Beat(
            time_ms=round(1000.0 * float(f) / fps),
            strength=round(float(s), 4),
            type="downbeat" if i % _BEATS_PER_BAR == downbeat_phase else "beat",
        )
        for i, (f, s) in enumerate(zip(frames, strengths, strict=True))
        if s >= floor - 1e-9
    ]
    return BeatResult(beats=beats, tempo_bpm=round(bpm, 2) if beats else 0.0)


# --- 1. onset strength ---------------------------------------------------------------------------
def _mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> Floats:
    """Triangular filters evenly spaced on the mel scale (HTK formula), 0 Hz to Nyquist."""

    def mel(hz: Floats) -> Floats:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def hz(m: Floats) -> Floats:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = hz(np.linspace(0.0, float(mel(np.array(sample_rate / 2.0))), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - bins[None, :]) / np.maximum(upper - centre, 1e-9)
    filters: Floats = np.maximum(0.0, np.minimum(rising, falling))
    return filters


def onset_strength(samples: npt.NDArray[np.float32], sample_rate: int) -> tuple[Floats, Floats]:
    """Two envelopes, one value per frame (hop `_HOP_S`), aligned so frame k is time k * hop:
    the rise of the log-mel spectrum (what the tracker follows: loudness-independent) and the
    rise of the mel magnitudes (what `strength` reports: a click at a third of the amplitude is
    a third as strong, where the log would call it nearly as strong)."""
    n_fft = 1 << max(6, round(np.log2(_WINDOW_S * sample_rate)))
    hop = max(1, round(_HOP_S * sample_rate))
    if samples.size == 0:
        return np.zeros(0), np.zeros(0)
    padded = np.pad(samples.astype(np.float64), n_fft // 2)  # frames centred on k * hop
    count = 1 + (padded.size - n_fft) // hop if padded.size >= n_fft else 0
    if count < 2:
        return np.zeros(max(count, 0)), np.zeros(max(count, 0))
    window = np.hanning(n_fft + 1)[:-1]
    # a full-scale sine's peak bin has power 1 (0 dB) at this scale
    scale = 4.0 / float(window.sum()) ** 2
    filters = _mel_filters(sample_rate, n_fft, _MELS)
    filters /= np.maximum(filters.sum(axis=1, keepdims=True), 1e-12)
    floor = 10.0 ** (_FLOOR_DB / 10.0)
    log_mel = np.empty((count, _MELS))
    magnitude = np.empty((count, _MELS))
    for start in range(0, count, _CHUNK_FRAMES):
        stop = min(count, start + _CHUNK_FRAMES)
        idx = (np.arange(start, stop) * hop)[:, None] + np.arange(n_fft)[None, :]
        power = np.abs(np.fft.rfft(padded[idx] * window, axis=1)) ** 2 * scale
        mel_power = np.maximum(power @ filters.T, floor)
        log_mel[start:stop] = 10.0 * np.log10(mel_power)
        magnitude[start:stop] = np.sqrt(mel_power)
    # flux[k] compares frames k and k+1 -> time of frame k+1; a centred window sees an onset
    # about half a window early, so the peak moves that much later
    lead = np.zeros(1 + n_fft // (2 * hop))

    def rise(values: Floats) -> Floats:
        flux = np.maximum(0.0, np.diff(values, axis=0)).mean(axis=1)
        aligned: Floats = np.concatenate([lead, flux])[:count]
        return aligned

    return rise(log_mel), rise(magnitude)


# --- 2. tempo ------------------------------------------------------------------------------------
def estimate_tempo(envelope: Floats, fps: float) -> tuple[float, float]:
    """(period in frames, tempo in bpm); (0, 0) when the envelope has no periodicity."""
    centred = envelope - envelope.mean()
    n = centred.size
    max_lag = min(n - 2, int(np.ceil(60.0 * fps / _MIN_BPM)) + 1)
    min_lag = max(1, int(np.floor(60.0 * fps / _MAX_BPM)))
    if max_lag <= min_lag + 1:
        return 0.0, 0.0
    spectrum = np.fft.rfft(centred, 2 * n)
    acf = np.fft.irfft(np.abs(spectrum) ** 2)[: max_lag + 1]
    acf /= np.maximum(np.arange(n, n - max_lag - 1, -1), 1)  # unbiased: long lags see fewer pairs
    lags = np.arange(max_lag + 1, dtype=np.float64)
    bpms = 60.0 * fps / np.maximum(lags, 1e-9)
    prior = np.exp(-0.5 * (np.log2(bpms / _START_BPM) / _PRIOR_OCTAVES) ** 2)
    weighted = np.where((lags >= min_lag) & (lags <= max_lag), acf * prior, -np.inf)
    best = int(np.argmax(weighted))
    if not np.isfinite(weighted[best]) or acf[best] <= 0.0:
        return 0.0, 0.0
    lag = float(best)
    if 0 < best < max_lag:  # parabolic refinement on the unweighted autocorrelation
        a, b, c = acf[best - 1], acf[best], acf[best + 1]
        denominator = a - 2.0 * b + c
        if denominator < 0.0:
            lag += float(np.clip(0.5 * (a - c) / denominator, -0.5, 0.5))
    return lag, 60.0 * fps / lag


# --- 3. beats ------------------------------------------------------------------------------------
def track_beats(envelope: Floats, period: float) -> npt.NDArray[np.int64]:
    """Frames of the best beat sequence for `period` (frames per beat), Ellis's DP."""
    spread = np.std(envelope)
    norm = envelope / spread if spread > 0 else envelope
    half = max(1, round(period))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * 32.0 / period) ** 2)
    local = np.convolve(norm, kernel, mode="same")
    n = local.size
    lo, hi = max(1, round(period / 2.0)), max(2, round(2.0 * period))
    gaps = np.arange(lo, hi + 1)
    penalty = -_TIGHTNESS * np.log(gaps / period) ** 2
    cumulative = np.zeros(n)
    backlink = np.full(n, -1, dtype=np.int64)
    # blocks of `lo` frames: every predecessor of a frame in the block lies before the block
    for start in range(0, n, lo):
        frames = np.arange(start, min(n, start + lo))
        previous = frames[:, None] - gaps[None, :]
        candidates = np.where(previous >= 0, cumulative[np.maximum(previous, 0)] + penalty, -np.inf)
        best = np.argmax(candidates, axis=1)
        best_score = candidates[np.arange(frames.size), best]
        # a chain may also start here: the first beat is not charged for a missing predecessor
        chained = best_score > 0.0
        cumulative[frames] = local[frames] + np.where(chained, best_score, 0.0)
        backlink[frames] = np.where(chained, previous[np.arange(frames.size), best], -1)
    last = _last_beat(cumulative)
    if last < 0:
        return np.zeros(0, dtype=np.int64)
    path = [last]
    while backlink[path[-1]] >= 0:
        path.append(int(backlink[path[-1]]))
    beats = np.array(path[::-1], dtype=np.int64)
    return _trim(beats, local)


def _last_beat(cumulative: Floats) -> int:
    """The last local maximum of the cumulative score that is at least half the median one."""
    inner = cumulative[1:-1]
    peaks = np.flatnonzero((inner > cumulative[:-2]) & (inner >= cumulative[2:])) + 1
    if peaks.size == 0:
        return int(np.argmax(cumulative)) if cumulative.size else -1
    median = float(np.median(cumulative[peaks]))
    good = peaks[cumulative[peaks] >= 0.5 * median]
    return int(good[-1]) if good.size else int(peaks[-1])


def _trim(beats: npt.NDArray[np.int64], local: Floats) -> npt.NDArray[np.int64]:
    """Drop beats at either end that land where there is no onset (the chain's run-in/out)."""
    if beats.size == 0:
        return beats
    scores = local[beats]
    smooth = np.convolve(scores, np.hanning(5)[1:-1], mode="same")
    threshold = 0.5 * float(np.sqrt(np.mean(smooth**2)))
    strong = np.flatnonzero(smooth >= threshold)
    if strong.size == 0:
        return beats[:0]
    return beats[strong[0] : strong[-1] + 1]
