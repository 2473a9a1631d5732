"""Embeddings request and response models (OpenAI's field names)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class EmbeddedText(BaseModel):
    """One result of the batchable embeddings runner API."""

    vector_b64: str = Field(description="little-endian float32 vector, base64")
    tokens: int = Field(description="tokens the model read (after truncation)")


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
