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
- a wrong input item raises a subclass of `InvalidItem` (below), never a platform error.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

Quantization = Literal["none", "int8", "4bit"]
Device = Literal["cpu", "cuda", "mps"]


@runtime_checkable
class Runner(Protocol):
    kind: str
    device: Device
    quantization: Quantization
    dtype: str

    def load(self) -> None: ...


class InvalidItem(ValueError):
    """A client error in one input item (an unknown language, text that cannot be spoken…).

    Each runner raises its own subclass; the platform answers every one of them as a 400 in its
    one error shape, with this `code` and `param` (botmodels/errors.py, `from_runner_error`).
    A ValueError, so pydantic reports one raised in a validator as a validation error.
    """

    code: str = "invalid_input"
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if param is not None:
            self.param = param
        if code is not None:
            self.code = code
