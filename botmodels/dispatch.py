"""How work reaches a runner: the one path from a front to a model, and the batching policy.

**The path.** A front hands its items to `run_on_runner`, which sends them to the runner where it
is: a remote botmodels (`BOTMODELS_<RUNNER>_URL`, through `RemoteRunner`), else this process's
batchable API through the dispatcher (`batch_infer`), else (no server: a front built directly,
in tests) the runner's batch function in-process.

**The hook.** BentoML feeds a batchable API's dispatcher only from HTTP requests to that API's own
route; an OpenAI-shaped route (one JSON object in, one out) cannot be that route. `wire_service`
runs once BentoML's app factory has the service instance and its dispatchers: it keeps a handle
on the factory's `batch_infer` for the service, so an entry route submits work to the same
dispatcher (same batching, same `bentoml_service_adaptive_batch_size` metric) without a second
HTTP hop, and it puts `Batcher` in place of BentoML's dispatcher, with as many batches at once as
the service asks (`batch_concurrency`). Drop the hook when BentoML lets an entry route submit to a
batchable API and lets a service choose its batching policy.

**The policy.** `Batcher` replaces BentoML's `CorkDispatcher` for each batchable API of the
service, so the same policy serves the in-process path (a front calls `batch_infer`) and the
`/runners/*` routes that other botmodels instances call:

* **Never hold a request while the model is idle.** A request that finds a free slot starts a
  batch on the next turn of the event loop (so requests parsed in the same turn share it).
* **Batch what queues behind a running batch.** While every slot is busy, arrivals wait; when a
  slot frees, the next batch takes what is queued, up to `max_batch_size` items. The batch size
  follows the load: 1 for a lone caller, full under a burst.
* **Share batches fairly between requests.** A request of many items is sliced across several
  batches, and each batch gives every waiting request a share, so a lone one-item request never
  waits behind all of a large request's slices.
* **Never cancel legal work.** There is no latency target that drops queued requests (BentoML's
  dispatcher cancels queued chunks whose estimated latency passes `max_latency_ms`, a 503 for a
  request inside every documented limit). Overload is refused at the door instead (the
  concurrency limit's 429, generation admission). A caller that goes away takes its queued
  items with it.
* **One bad input fails only its own request.** A batch that raises is re-run request by request
  (each of its requests alone), so batch mates of a poison input still get their answers.

Why not BentoML's dispatcher: its optimizer waits, for a lone request, about the mean queue wait
of its last 50 batches, and logs that wait again as a new sample; after a burst the mean never
decays and a lone request is held for the learned wait long after the load is gone (docs/design
and the reliability benchmark, scripts/bench_embeddings.py). The speech runners avoided it for
the same reason; now every runner does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import Histogram

from botmodels.errors import RunnerUnavailable

if TYPE_CHECKING:
    from botmodels.pool import RunnerPool

log = logging.getLogger("botmodels.dispatch")

Callback = Callable[[Sequence[Any]], Awaitable[Sequence[Any]]]
# BentoML's `ServiceAppFactory.batch_infer(api_name, args, kwargs)`: one caller's items to the
# batchable API's dispatcher.
BatchInfer = Callable[[str, tuple[Any, ...], dict[str, Any]], Awaitable[Any]]
T = TypeVar("T")

QUEUE_SECONDS = Histogram(
    "botmodels_batch_queue_seconds",
    "Wait of the oldest request in each runner batch, from its arrival to the batch's start",
    ["api"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ITEMS_PER_BATCH = Histogram(
    "botmodels_batch_items",
    "Items per runner batch (botmodels' dispatcher; a lone request runs as a batch of its size)",
    ["api"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)


@dataclass(eq=False)
class _Request:
    """One caller's items; sliced into batches, answered when every slice is back."""

    items: Sequence[Any]
    callback: Callback
    future: asyncio.Future[list[Any]]
    arrived: float
    results: list[Any] = field(default_factory=list)
    taken: int = 0  # items handed to batches so far
    done: int = 0  # items answered so far

    @property
    def waiting(self) -> int:
        return len(self.items) - self.taken


@dataclass(frozen=True)
class _Slice:
    request: _Request
    start: int
    stop: int

    @property
    def items(self) -> Sequence[Any]:
        return self.request.items[self.start : self.stop]


class Batcher:
    """A drop-in for BentoML's `CorkDispatcher` with the policy in the module docstring.

    BentoML calls a dispatcher as `dispatcher(callback)(value)`: `value` is one caller's batch
    (a list along dimension 0) and `callback(parts)` runs a sequence of such lists as one model
    batch, answering one list per part. That is all this class relies on.
    """

    def __init__(self, name: str, max_batch_size: int, concurrency: int = 1) -> None:
        if max_batch_size < 1 or concurrency < 1:
            raise ValueError("max_batch_size and concurrency must be at least 1")
        self.name = name
        self.max_batch_size = max_batch_size
        self.concurrency = concurrency
        self.running = 0  # batches in flight
        self._queue: deque[_Request] = deque()
        self._pump_scheduled = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._items_metric = ITEMS_PER_BATCH.labels(api=name)
        self._queue_metric = QUEUE_SECONDS.labels(api=name)

    # The dispatcher interface -----------------------------------------------------------------
    def __call__(self, callback: Callback) -> Callable[[Sequence[Any]], Awaitable[list[Any]]]:
        @functools.wraps(callback)
        async def submit(value: Sequence[Any]) -> list[Any]:
            return await self.submit(value, callback)

        return submit

    def shutdown(self) -> None:
        """Called by BentoML when the worker stops: queued callers are cancelled."""
        self._closed = True
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.cancel()

    # The policy ----------------------------------------------------------------------------
    @property
    def queued_items(self) -> int:
        return sum(r.waiting for r in self._queue)

    async def submit(self, items: Sequence[Any], callback: Callback) -> list[Any]:
        if not isinstance(items, Sequence) or isinstance(items, str | bytes):
            raise TypeError(f"{self.name}: a batchable API takes a list, got {type(items)}")
        if self._closed:
            raise RunnerUnavailable(
                f"{self.name}: the server is shutting down", headers={"Retry-After": "5"}
            )
        if not items:
            return []
        loop = asyncio.get_running_loop()
        request = _Request(
            items=items, callback=callback, future=loop.create_future(), arrived=loop.time()
        )
        self._queue.append(request)
        self._schedule_pump(loop)
        try:
            return await asyncio.shield(request.future)
        except asyncio.CancelledError:
            # The caller went away: what is still queued of it is never run.
            if request in self._queue:
                self._queue.remove(request)
            if not request.future.done():
                request.future.cancel()
            raise

    def _schedule_pump(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        loop = asyncio.get_running_loop()
        while self.running < self.concurrency and self._queue:
            self._queue_metric.observe(loop.time() - self._queue[0].arrived)
            parts = self._take()
            self.running += 1
            task = loop.create_task(self._run(parts))
            self._tasks.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Slice]:
        """The next batch: each waiting request's fair share, then what room is left, in
        arrival order. A request's items stay in order, so each part is one contiguous slice."""
        room = self.max_batch_size
        waiting = list(self._queue)
        share = max(1, room // len(waiting))
        counts = {id(r): 0 for r in waiting}
        for request in waiting:
            n = min(share, request.waiting, room)
            counts[id(request)] += n
            room -= n
            if room == 0:
                break
        for request in waiting:
            if room == 0:
                break
            n = min(request.waiting - counts[id(request)], room)
            counts[id(request)] += n
            room -= n
        parts: list[_Slice] = []
        for request in waiting:
            n = counts[id(request)]
            if n == 0:
                continue
            parts.append(_Slice(request, request.taken, request.taken + n))
            request.taken += n
            if request.waiting == 0:
                self._queue.remove(request)
        return parts

    async def _run(self, parts: list[_Slice]) -> None:
        self._items_metric.observe(sum(p.stop - p.start for p in parts))
        outcomes: list[tuple[list[_Slice], Sequence[Sequence[Any]] | BaseException]]
        try:
            outcome = await self._call(parts)
            if isinstance(outcome, BaseException) and len(parts) > 1:
                # Find who the error belongs to: each request's part alone (in this slot).
                outcomes = [([part], await self._call([part])) for part in parts]
            else:
                outcomes = [(parts, outcome)]
        except asyncio.CancelledError:  # the worker is stopping
            for part in parts:
                if not part.request.future.done():
                    part.request.future.cancel()
            raise
        finally:
            self.running -= 1
            # The next batch starts before this one's callers are answered: the model does
            # not wait while the event loop serialises this batch's responses.
            self._pump()
        for batch, result in outcomes:
            self._deliver(batch, result)

    async def _call(self, parts: list[_Slice]) -> Sequence[Sequence[Any]] | BaseException:
        live = [p for p in parts if not p.request.future.done()]
        if not live:
            return []
        try:
            outputs = await parts[0].request.callback(tuple(p.items for p in parts))
            if len(outputs) != len(parts):
                raise RuntimeError(f"{self.name}: {len(parts)} parts gave {len(outputs)} results")
            return outputs
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the callers it belongs to
            return exc

    def _deliver(self, parts: list[_Slice], outcome: Sequence[Sequence[Any]] | Any) -> None:
        if isinstance(outcome, BaseException):
            for part in parts:
                self._fail(part.request, outcome)
            return
        if not outcome:  # every caller had gone
            return
        for part, output in zip(parts, outcome, strict=True):
            request = part.request
            if request.future.done():
                continue
            output = list(output)
            if len(output) != part.stop - part.start:
                self._fail(request, RuntimeError(f"{self.name}: a part lost items"))
                continue
            if len(request.results) < len(request.items):
                request.results.extend([None] * (len(request.items) - len(request.results)))
            request.results[part.start : part.stop] = output
            request.done += len(output)
            if request.done == len(request.items):
                request.future.set_result(request.results)

    def _fail(self, request: _Request, exc: BaseException) -> None:
        if request in self._queue:
            self._queue.remove(request)
        if not request.future.done():
            request.future.set_exception(exc)


def install(factory: Any, concurrency: dict[str, int]) -> None:
    """Put a `Batcher` in place of each of the BentoML app factory's dispatchers, with the
    API's own `max_batch_size` and `concurrency[name]` batches at once (default one)."""
    for name in list(factory.dispatchers):
        size = int(factory.service.apis[name].max_batch_size)
        factory.dispatchers[name] = Batcher(name, size, concurrency.get(name, 1))


def wire_service(factory: Any) -> None:
    """Once BentoML's app factory has the service instance and its dispatchers: put `Batcher`
    in place of BentoML's dispatcher and hand the service `batch_infer` (the module docstring
    says why)."""
    limits = getattr(factory._service_instance, "batch_concurrency", None)
    install(factory, limits() if callable(limits) else {})
    bind = getattr(factory._service_instance, "bind_batch_infer", None)
    if callable(bind):
        bind(factory.batch_infer)


async def _in_calls(
    call: Callable[[list[T]], Awaitable[Sequence[Any]]], items: list[T], size: int | None
) -> list[Any]:
    """`call` on `items` in slices of at most `size` (all at once when None), concurrently;
    the answers in the items' order."""
    if size is None:
        return list(await call(items))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    parts = await asyncio.gather(*(call(chunk) for chunk in chunks))
    return [answer for part in parts for answer in part]


async def run_on_runner(
    api: str,
    items: list[T],
    *,
    kind: str,
    pool: RunnerPool,
    batch_infer: BatchInfer | None,
    local: Callable[[list[T]], Awaitable[Sequence[Any]]],
    remote: Callable[[list[T]], Awaitable[Sequence[Any]]] | None = None,
    remote_batch: int | None = None,
    submit_batch: int | None = None,
) -> list[Any]:
    """Run `items` on the `kind` runner; one answer per item, in order.

    * `remote` (the front's call to its `RemoteRunner`) given: the items go there, in calls of
      at most `remote_batch` (a peer's runner route takes one batch per call).
    * else the local runner is acquired (loaded if needed, within the request's wait, else 503
      before queueing; held, so never unloaded, until the answers are back: `pool.acquire`), and
      the items go to the batchable API `api` through `batch_infer`: one submission (the dispatcher
      slices it into batches and shares each with the other waiting requests), or one per
      `submit_batch` items.
    * no dispatcher (a front built directly, without a server): `local(items)`, the batch
      function in this process.
    """
    if remote is not None:
        return await _in_calls(remote, items, remote_batch)
    async with pool.acquire(kind):  # loaded (or a 503), and held until every item is answered
        if batch_infer is None:
            return list(await local(items))
        infer = batch_infer

        async def submit(chunk: list[T]) -> Sequence[Any]:
            answers: Sequence[Any] = await infer(api, (chunk,), {})
            return answers

        return await _in_calls(submit, items, submit_batch)
