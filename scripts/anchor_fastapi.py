"""The anchor the embeddings benchmark measures botmodels against: a minimal FastAPI server.

The same model (sentence-transformers' `encode`, fp32, the store's all-MiniLM-L6-v2) behind
OpenAI's `/v1/embeddings`, in one of two modes:

* `unbatched`: each request encoded alone, on one model thread;
* `microbatch`: an asyncio queue and one model thread; a batch waits at most 2 ms for more
  requests and takes at most 32.

    python scripts/anchor_fastapi.py --mode microbatch --port 8100 --model <folder>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel

WAIT_S = 0.002
MAX_BATCH = 32


class Body(BaseModel):  # module level: FastAPI resolves the annotation by name
    input: str | list[str]
    model: str = ""


def build_app(model_dir: str, mode: str) -> Any:
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    model.encode(["warm up"])
    pool = ThreadPoolExecutor(max_workers=1)
    queue: asyncio.Queue[tuple[str, asyncio.Future[list[float]]]] = asyncio.Queue()
    tasks: list[asyncio.Task[None]] = []

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        if mode == "microbatch":
            tasks.append(asyncio.create_task(batcher()))
        yield

    app = FastAPI(lifespan=lifespan)

    def encode(texts: list[str]) -> list[list[float]]:
        vectors: Any = model.encode(texts, batch_size=len(texts))
        return [[float(x) for x in v] for v in vectors]

    async def batcher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + WAIT_S
            while len(batch) < MAX_BATCH:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), timeout))
                except TimeoutError:
                    break
            vectors = await loop.run_in_executor(pool, encode, [text for text, _ in batch])
            for (_, future), vector in zip(batch, vectors, strict=True):
                if not future.done():
                    future.set_result(vector)

    @app.post("/v1/embeddings")
    async def embeddings(body: Body) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        loop = asyncio.get_running_loop()
        if mode == "microbatch":
            futures = [loop.create_future() for _ in texts]
            for text, future in zip(texts, futures, strict=True):
                queue.put_nowait((text, future))
            vectors = list(await asyncio.gather(*futures))
        else:
            vectors = await loop.run_in_executor(pool, encode, texts)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": "anchor"}

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["unbatched", "microbatch"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.model, args.mode), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
