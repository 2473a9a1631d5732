"""Reading and writing the editor's videos, shared by enhance and remove-background: the input
opened from its bytes (a clear 4xx for what is not a video), and its audio copied into the
H.264 MP4 output as it is (AAC and MP3, which MP4 holds everywhere; other audio is dropped).
Everything here blocks: callers run it in a worker thread."""

from __future__ import annotations

from typing import Any, Protocol

from botmodels.media import open_video

COPIED_AUDIO = frozenset({"aac", "mp3"})


class Watch(Protocol):
    """A job's view of the work (botmodels/generation/front.py: Control): asked between
    frames whether to stop, told how many frames are done."""

    def cancelled(self) -> bool: ...

    def progress(self, step: int, total: int) -> None: ...


class Cancelled(Exception):
    """The job was cancelled between two frames: the work stops, its partial file goes."""


def copied_audio(container: Any) -> Any | None:
    """The input's first audio stream when MP4 holds its codec as it is, else None."""
    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    return stream if stream.codec_context.name in COPIED_AUDIO else None


def add_audio(box: Any, audio_in: Any | None) -> Any | None:
    """The output's audio stream, a copy of `audio_in`'s codec and parameters. Every stream
    must be added before the first packet is muxed (the header is written then)."""
    return box.add_stream_from_template(audio_in) if audio_in is not None else None


def mux_audio(box: Any, packet: Any, audio_out: Any) -> None:
    """One demuxed audio packet into the output, unchanged (a packet without a decoding time,
    the demuxer's end-of-stream flush, carries nothing)."""
    if packet.dts is not None:
        packet.stream = audio_out
        box.mux(packet)


def copy_audio(data: bytes, box: Any, audio_out: Any | None, param: str = "video_url") -> None:
    """Every audio packet of `data` into `box` (after its video: the muxer interleaves)."""
    import av

    if audio_out is None:
        return
    source = open_video(data, param)
    try:
        audio_in = copied_audio(source)
        if audio_in is None:
            return
        try:
            for packet in source.demux(audio_in):
                mux_audio(box, packet, audio_out)
        except av.FFmpegError:
            pass  # a truncated tail: the sound ends where it breaks, as the video does
    finally:
        source.close()
