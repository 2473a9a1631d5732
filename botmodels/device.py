"""Device choice and CPU threading, decided once per process and reported per runner."""

from __future__ import annotations

import contextlib
import logging
import os

from runners.base import Device as Device  # the runners' vocabulary

log = logging.getLogger("botmodels.device")

_threads_set = False


def pick_device(requested: str = "auto") -> Device:
    """CUDA if present, else Apple MPS, else CPU; an explicit request that cannot be met falls
    back to CPU with a warning rather than failing the whole service."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if requested == "cuda" and not cuda:
        log.warning("BOTMODELS_DEVICE=cuda but no CUDA device is visible; using the CPU")
    if requested == "mps" and not mps:
        log.warning("BOTMODELS_DEVICE=mps but MPS is not available; using the CPU")
    if requested in ("auto", "cuda") and cuda:
        return "cuda"
    if requested in ("auto", "mps") and mps:
        return "mps"
    return "cpu"


def set_threads(threads: int) -> None:
    """torch intra-op threads = the CPUs this worker may use. BentoML's new SDK sets none."""
    global _threads_set
    if _threads_set:
        keep_threads(threads)
        return
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    # Raises once inter-op work has started (a second runner's load); harmless then.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(max(1, min(2, threads)))
    _threads_set = True


def keep_threads(threads: int) -> None:
    """Put torch's intra-op thread count back after a library changed it.

    Why: importing `silero_vad` (the STT runner's VAD) runs `torch.set_num_threads(1)`, which is
    process-wide: with STT enabled every torch runner in the worker ran on one core (measured:
    embeddings at 64 clients 115-131/s instead of 169-175/s). Called after each runner loads
    (threads that start later begin with this value) and when the embeddings thread starts.
    """
    import torch

    # Unconditionally: torch.get_num_threads() answers for the calling thread only, while the
    # value a new thread starts with is process-wide and may have been changed from another.
    torch.set_num_threads(threads)
