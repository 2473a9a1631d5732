"""Rerank request and answer models (Cohere's and Jina's field names), and the runner's items."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

Method = Literal["cross-encoder", "embeddings"]


class RerankPair(BaseModel):
    """One item of the batchable rerank runner API: a (query, document) pair."""

    query: str
    document: str


class RerankScore(BaseModel):
    """One result of the batchable rerank runner API."""

    score: float = Field(description="the cross-encoder's relevance score for the pair")
    tokens: int = Field(description="tokens the model read for the pair (after truncation)")


class RerankRequest(BaseModel):
    """`documents` is checked by hand (botmodels/rerank/front.py) so an error names the item."""

    model_config = ConfigDict(extra="ignore")  # Cohere's `max_tokens_per_doc`, `rank_fields`…

    query: StrictStr
    documents: list[Any]
    top_n: StrictInt | None = Field(None, ge=1)
    return_documents: StrictBool = True
    model: StrictStr | None = None


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="the document's position in the request's `documents`")
    relevance_score: float
    document: RerankDocument | None = Field(
        None, description="present when `return_documents` is true (the default)"
    )


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    model: str = Field(description="the model that scored (the request's `model` is not read)")
    method: Method = Field(
        description="`cross-encoder`: scored by the rerank runner; `embeddings`: no "
        "cross-encoder is configured, so the score is the cosine similarity of the embeddings "
        "runner's vectors of the query and the document (a weaker ranking)"
    )
    results: list[RerankResult] = Field(description="by `relevance_score`, highest first")
    usage: RerankUsage
