"""The vocabulary every runner shares, and the contract a runner keeps.

A runner module imports nothing from `botmodels/` (the platform imports runners, never the
other way round), so what both sides must name lives here.

The contract (written down, as LitServe writes down its own):
- `__init__(model_dir, *, quantization, device, ...)`: remember where the model is; load nothing.
- `load()`: load the model from its BentoML store folder onto `device`, with `quantization`;
  called once, from the pool's loading thread, never at import.
- `kind`, `device`, `quantization`, `dtype`: what `/api/models` reports (`dtype` as loaded).
- one predict method that takes a whole batch (a list) and answers one result per item, in
  order (`embed`, `generate`, `caption`/`answer`, `recognize`, `transcribe`, `synthesize`).
- the module's `build_tiny(folder)`: random weights of the model's architecture, for tests.
"""

from __future__ import annotations

from typing import Literal, Protocol

Quantization = Literal["none", "int8", "4bit"]
Device = Literal["cpu", "cuda", "mps"]


class Runner(Protocol):
    kind: str
    device: Device
    quantization: Quantization
    dtype: str

    def load(self) -> None: ...
