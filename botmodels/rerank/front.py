"""`POST /v1/rerank`: check the request, score every (query, document) pair, sort, answer.

Two ways to score, and the answer says which (`method`):

* **cross-encoder**: a rerank runner is configured (here or by `BOTMODELS_RERANK_URL`). Each
  pair is one item of the batchable `rerank_batch` API, through the dispatcher
  (botmodels/dispatch.py), so the pairs of concurrent requests share batches.
* **embeddings**: no rerank runner is configured (the `offline` profile has no cross-encoder, or
  `rerank` is left out of `BOTMODELS_RUNNERS`). The query and the documents go through the
  embeddings runner, by the same path `/v1/embeddings` takes, and each score is the cosine
  similarity of the query's vector and the document's, in [-1, 1]. A bi-encoder compares two
  texts it read apart, so it ranks worse than a cross-encoder that reads them together: a
  substitute, labelled so callers know.

A configured cross-encoder that failed to load, or is still loading, is a 503 (as for every
runner), not a silent fall back: `/api/health` names it.

The rules: `query` a non-empty string; `documents` a non-empty list, at most
`BOTMODELS_RERANK_MAX_DOCUMENTS`, each a string or an object with a string `text` (other keys
ignored); query and documents at most `BOTMODELS_RERANK_MAX_CHARS` characters (the model reads
its first tokens only: runners/rerank.py says how a long pair is cut); `top_n` an integer ≥ 1,
larger than the list: the whole list; `return_documents` a boolean, default true (Jina's
default; Cohere's v1 API defaults to false); `model` any string, not read: the answer names the
model that scored. Results are sorted by score, highest first; equal scores keep the request's
order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import numpy.typing as npt
from starlette.requests import Request
from starlette.responses import JSONResponse

from botmodels.config import Settings
from botmodels.device import keep_threads
from botmodels.dispatch import BatchInfer, run_on_runner
from botmodels.embeddings.front import EmbeddingsFrontend
from botmodels.errors import BotModelsError, InvalidInput, runner_errors
from botmodels.media import read_json_model
from botmodels.peers import batch_items
from botmodels.pool import RunnerPool
from botmodels.remote import RemoteRunner
from botmodels.rerank.schemas import (
    Method,
    RerankDocument,
    RerankPair,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankScore,
    RerankUsage,
)

BATCH_API = "rerank_batch"
BATCH_ROUTE = "/runners/rerank/score"


class ScoringFailed(BotModelsError):
    """The model gave a score that is not a number (an fp16 overflow): a server fault."""

    status = 500
    code = "scoring_failed"


def check_request(body: RerankRequest, settings: Settings) -> tuple[str, list[str]]:
    """The query and the documents' texts, or a 400 naming what is wrong."""
    most_chars = settings.rerank_max_chars
    if not body.query.strip():
        raise InvalidInput("`query` is empty", param="query")
    if len(body.query) > most_chars:
        raise InvalidInput(
            f"`query` has {len(body.query)} characters; the limit is {most_chars} "
            "(BOTMODELS_RERANK_MAX_CHARS)",
            param="query",
        )
    if not body.documents:
        raise InvalidInput("`documents` must not be an empty list", param="documents")
    if len(body.documents) > settings.rerank_max_documents:
        raise InvalidInput(
            f"`documents` has {len(body.documents)} items; at most "
            f"{settings.rerank_max_documents} per request (BOTMODELS_RERANK_MAX_DOCUMENTS)",
            param="documents",
        )
    texts: list[str] = []
    for i, document in enumerate(body.documents):
        text = document.get("text") if isinstance(document, dict) else document
        if not isinstance(text, str):
            raise InvalidInput(
                f"`documents[{i}]` must be a string or an object with a string `text`",
                param="documents",
            )
        if len(text) > most_chars:
            raise InvalidInput(
                f"`documents[{i}]` has {len(text)} characters; the limit is {most_chars} "
                "(BOTMODELS_RERANK_MAX_CHARS)",
                param="documents",
            )
        texts.append(text)
    return body.query, texts


def score_items(runner: Any, pairs: list[RerankPair]) -> list[RerankScore]:
    """The runner's batch (the batchable API's body, on the model's thread)."""
    with runner_errors():
        batch = runner.predict([(pair.query, pair.document) for pair in pairs])
    return [
        RerankScore(score=float(score), tokens=tokens)
        for score, tokens in zip(batch.scores, batch.tokens, strict=True)
    ]


def cosine_scores(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Cosine similarity of row 0 (the query) with each other row (the documents)."""
    rows = vectors.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    norms[norms == 0] = 1.0  # a zero vector is similar to nothing: its cosine is 0
    unit = rows / norms[:, None]
    scores: npt.NDArray[np.float64] = unit[1:] @ unit[0]
    return scores


class RerankFrontend:
    def __init__(
        self,
        settings: Settings,
        pool: RunnerPool,
        embeddings: EmbeddingsFrontend,
        remote: RemoteRunner | None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.embeddings = embeddings
        self.remote = remote
        self.batch_infer: BatchInfer | None = None
        # One long-lived OS thread for the model (torch keeps an OpenMP team per thread).
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="botmodels-rerank",
            initializer=keep_threads,
            initargs=(settings.threads,),
        )

    @property
    def method(self) -> Method:
        """How requests are scored: a configured rerank runner, else the embeddings."""
        configured = self.remote is not None or self.pool.slot("rerank") is not None
        return "cross-encoder" if configured else "embeddings"

    async def run_local(self, pairs: list[RerankPair]) -> list[RerankScore]:
        async with self.pool.acquire("rerank") as runner:  # a peer's call may be the first
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, score_items, runner, pairs
            )

    def check_runner_call(self, payload: dict[str, Any]) -> AbstractContextManager[Any]:
        """`/runners/rerank/score` from a peer: the public route's limits, and a 503 now if
        the runner cannot score here (raised inside the batch it would be BentoML's 500)."""
        s = self.settings
        pairs = batch_items(
            payload, "pairs", s.rerank_max_documents, "BOTMODELS_RERANK_MAX_DOCUMENTS"
        )
        for i, pair in enumerate(pairs):
            for field in ("query", "document"):
                text = pair.get(field) if isinstance(pair, dict) else None
                if not isinstance(text, str):
                    raise InvalidInput(f"`pairs[{i}].{field}` must be a string", param=field)
                if len(text) > s.rerank_max_chars:
                    raise InvalidInput(
                        f"`pairs[{i}].{field}` has {len(text)} characters; the limit is "
                        f"{s.rerank_max_chars} (BOTMODELS_RERANK_MAX_CHARS)",
                        param=field,
                    )
        self.pool.check("rerank")
        return contextlib.nullcontext()

    async def _remote(self, pairs: list[RerankPair]) -> list[RerankScore]:
        assert self.remote is not None
        results = await self.remote.post(
            BATCH_ROUTE, {"pairs": [pair.model_dump() for pair in pairs]}
        )
        return [RerankScore.model_validate(item) for item in results]

    async def _cross_encoder(self, query: str, texts: list[str]) -> tuple[list[float], int]:
        pairs = [RerankPair(query=query, document=text) for text in texts]
        scored: list[RerankScore] = await run_on_runner(
            BATCH_API,
            pairs,
            kind="rerank",
            pool=self.pool,
            batch_infer=self.batch_infer,
            local=self.run_local,
            remote=self._remote if self.remote is not None else None,
            remote_batch=self.settings.rerank_max_batch_size,
        )
        return [item.score for item in scored], sum(item.tokens for item in scored)

    async def _embeddings(self, query: str, texts: list[str]) -> tuple[list[float], int]:
        embedded = await self.embeddings.embed_texts([query, *texts])
        vectors = np.stack(
            [np.frombuffer(base64.b64decode(item.vector_b64), dtype="<f4") for item in embedded]
        )
        return cosine_scores(vectors).tolist(), sum(item.tokens for item in embedded)

    def model_name(self, method: Method) -> str:
        if method == "embeddings":
            return self.embeddings.model_name()
        slot = self.pool.slot("rerank")
        return slot.tag.split(":")[0] if slot is not None else "rerank"

    async def rerank(self, body: RerankRequest) -> RerankResponse:
        query, texts = check_request(body, self.settings)
        method = self.method
        if method == "cross-encoder":
            scores, tokens = await self._cross_encoder(query, texts)
        else:
            scores, tokens = await self._embeddings(query, texts)
        if not all(math.isfinite(score) for score in scores):
            raise ScoringFailed(f"the {method} model gave a score that is not a number")
        order = sorted(range(len(texts)), key=lambda i: -scores[i])  # stable: ties keep order
        if body.top_n is not None:
            order = order[: body.top_n]
        results = [
            RerankResult(
                index=i,
                relevance_score=scores[i],
                document=RerankDocument(text=texts[i]) if body.return_documents else None,
            )
            for i in order
        ]
        return RerankResponse(
            model=self.model_name(method),
            method=method,
            results=results,
            usage=RerankUsage(total_tokens=tokens),
        )

    async def api_rerank(self, request: Request) -> JSONResponse:
        body = await read_json_model(request, RerankRequest)
        answer = await self.rerank(body)
        # `document` is left out, not null, when it was not asked for.
        return JSONResponse(answer.model_dump(mode="json", exclude_none=True))
