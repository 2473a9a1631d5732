"""The OpenAI `/v1/embeddings` front: check the request, fan it out to the runner, encode.

The runner is reached through its batchable API: in this process via botmodels' dispatcher
(`batch_infer`, botmodels/dispatch.py: batching across every concurrent request), or on a
remote botmodels by URL (whose batchable route batches our calls with its other traffic).
Inputs longer than one batch are split so that one big request cannot monopolise a batch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from botmodels.config import Settings
from botmodels.device import keep_threads, pick_device
from botmodels.dispatch import BatchInfer, run_on_runner
from botmodels.embeddings.schemas import (
    EmbeddedText,
    EmbeddingData,
    EmbeddingResponse,
    EmbeddingUsage,
)
from botmodels.errors import InvalidInput
from botmodels.pool import RunnerPool
from botmodels.remote import RemoteRunner
from runners.embeddings import EmbeddingBatch, cpu_workers

BATCH_API = "embed_batch"
BATCH_ROUTE = "/runners/embeddings/embed"


def check_input(raw: object, settings: Settings, param: str = "input") -> list[str]:
    """OpenAI's rules: a string or a non-empty list of non-empty strings."""
    texts: list[object]
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list):
        texts = raw
    else:
        raise InvalidInput(f"`{param}` must be a string or a list of strings", param=param)
    if not texts:
        raise InvalidInput(f"`{param}` must not be an empty list", param=param)
    if len(texts) > settings.embeddings_max_inputs:
        raise InvalidInput(
            f"`{param}` has {len(texts)} items; at most {settings.embeddings_max_inputs} "
            "per request",
            param=param,
        )
    for i, text in enumerate(texts):
        if isinstance(text, int | list):
            raise InvalidInput(
                f"`{param}` as token ids is not supported: OpenAI token ids mean nothing to this "
                "model's tokenizer; send the text",
                param=param,
            )
        if not isinstance(text, str):
            raise InvalidInput(f"`{param}[{i}]` must be a string", param=param)
        if not text.strip():
            raise InvalidInput(f"`{param}[{i}]` is empty", param=param)
        if len(text) > settings.embeddings_max_chars:
            raise InvalidInput(
                f"`{param}[{i}]` has {len(text)} characters; the limit is "
                f"{settings.embeddings_max_chars} (the model reads its first tokens only)",
                param=param,
            )
    return [t for t in texts if isinstance(t, str)]


def encode_batch(batch: EmbeddingBatch) -> list[EmbeddedText]:
    return [
        EmbeddedText(
            vector_b64=base64.b64encode(vector.astype("<f4").tobytes()).decode(), tokens=tokens
        )
        for vector, tokens in zip(batch.vectors, batch.tokens, strict=True)
    ]


def batches_at_once(settings: Settings) -> int:
    """How many batches the local runner works on at once: its CPU workers (see
    `runners/embeddings.py: EmbeddingsRunner._start_workers`), else one. The dispatcher
    is told the same (`BotModels.batch_concurrency`), so the next batch is formed and queued
    while one runs (docs/design.md, Embeddings)."""
    if settings.embeddings_url is not None or settings.embeddings_workers < 2:
        return 1  # the default: no device probe (and no torch import) at start-up
    return cpu_workers(
        pick_device(settings.device),
        settings.embeddings_workers,
        settings.threads,
        traced=settings.embeddings_engine_choice == "torchscript",
    )


class EmbeddingsFrontend:
    def __init__(self, settings: Settings, pool: RunnerPool, remote: RemoteRunner | None) -> None:
        self.settings = settings
        self.pool = pool
        self.remote = remote
        self.batch_infer: BatchInfer | None = None
        self.concurrency = batches_at_once(settings)
        # Batches on long-lived OS threads (torch keeps an OpenMP team per calling thread), one
        # per batch the runner works on at once; the submission is synchronous, so a batch
        # started by the dispatcher reaches the model without another turn of the event loop.
        self._executor = ThreadPoolExecutor(
            max_workers=self.concurrency,
            thread_name_prefix="botmodels-embed",
            initializer=keep_threads,
            initargs=(settings.threads,),
        )

    async def run_local(self, texts: list[str]) -> list[EmbeddedText]:
        """The runner's batch, on the model's thread (the batchable API's body)."""
        async with self.pool.acquire("embeddings") as runner:  # a peer's call may be first
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: encode_batch(runner.embed(texts))
            )

    def check_runner_call(self, payload: dict[str, Any]) -> AbstractContextManager[Any]:
        """`/runners/embeddings/embed` from a peer: the public route's limits."""
        texts = payload.get("texts")
        if not isinstance(texts, list):
            raise InvalidInput("`texts` must be a list of strings", param="texts")
        check_input(texts, self.settings, param="texts")
        return contextlib.nullcontext()

    def model_name(self) -> str:
        slot = self.pool.slot("embeddings")
        return slot.tag.split(":")[0] if slot is not None else "embeddings"

    async def _remote(self, texts: list[str]) -> list[EmbeddedText]:
        assert self.remote is not None
        results = await self.remote.post(BATCH_ROUTE, {"texts": texts})
        return [EmbeddedText.model_validate(item) for item in results]

    async def _run(self, texts: list[str]) -> list[EmbeddedText]:
        return await run_on_runner(
            BATCH_API,
            texts,
            kind="embeddings",
            pool=self.pool,
            batch_infer=self.batch_infer,
            local=self.run_local,
            remote=self._remote if self.remote is not None else None,
            # The remote's batchable route takes at most one batch per call.
            remote_batch=self.settings.embeddings_max_batch_size,
        )

    async def embed_texts(self, texts: list[str]) -> list[EmbeddedText]:
        """Vectors for `texts` by the path `/v1/embeddings` takes (no request checks): what
        `/v1/rerank` scores with when no cross-encoder is configured."""
        return await self._run(texts)

    async def create(
        self, raw_input: object, encoding_format: str, dimensions: int | None
    ) -> EmbeddingResponse:
        texts = check_input(raw_input, self.settings)
        items = await self._run(texts)

        data: list[EmbeddingData] = []
        for index, item in enumerate(items):
            if dimensions is not None:
                native = len(base64.b64decode(item.vector_b64)) // 4
                if dimensions != native:
                    raise InvalidInput(
                        f"`dimensions` is {dimensions} but this model only makes {native}-"
                        f"dimensional vectors",
                        param="dimensions",
                    )
            embedding: list[float] | str = (
                item.vector_b64
                if encoding_format == "base64"
                else np.frombuffer(base64.b64decode(item.vector_b64), dtype="<f4").tolist()
            )
            # Built from our own float32 vector: validating 384+ floats again costs more
            # than the rest of the response.
            data.append(EmbeddingData.model_construct(index=index, embedding=embedding))
        tokens = sum(item.tokens for item in items)
        return EmbeddingResponse(
            data=data,
            model=self.model_name(),
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
