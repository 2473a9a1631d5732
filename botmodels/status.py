"""Models of the status routes (ping)."""

from __future__ import annotations

from pydantic import BaseModel


class Pong(BaseModel):
    ok: bool = True
    version: str
