"""The BentoML workarounds in botmodels/patches.py, each against the real BentoML class."""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.marshal.dispatcher import CorkDispatcher

from botmodels import patches


def test_local_call_wrapper_is_built_once_per_method_and_instance() -> None:
    built: list[tuple[Any, Any]] = []

    def build(method: Any, instance: Any) -> Any:
        built.append((method, instance))
        return lambda: (method, instance)

    cached = patches._cached_local_call(build)
    method, first, second = object(), object(), object()
    assert cached(method, first) is cached(method, first)
    assert cached(method, second)() == (method, second)
    assert built == [(method, first), (method, second)]


def _dispatcher(events: list[str], fail: bool = False) -> Any:
    dispatcher: Any = CorkDispatcher(
        max_latency_in_ms=10_000, max_batch_size=2, fallback=lambda: None, get_batch_size=len
    )

    async def model(batch: Any) -> list[str]:
        events.append(f"start {'+'.join(item[0] for item in batch)}")
        await asyncio.sleep(0.01)
        if fail:
            raise ValueError("model broke")
        return [item[0].upper() for item in batch]

    dispatcher.callback = model
    return dispatcher


def _job(name: str, events: list[str] | None = None) -> Any:
    future = asyncio.get_running_loop().create_future()
    if events is not None:
        future.add_done_callback(lambda _: events.append(f"resolved {name}"))
    return type("Job", (), {"data": [name], "future": future, "enqueue_time": 0.0})()


def test_next_full_batch_starts_before_the_finished_batch_callers_run() -> None:
    events: list[str] = []

    async def scenario() -> list[Any]:
        dispatcher = _dispatcher(events)
        jobs = [_job(name, events) for name in "abcd"]
        dispatcher._queue.extend(jobs[2:])  # a full batch is waiting
        dispatcher._sema.acquire()
        await patches._outbound_call(dispatcher, tuple(jobs[:2]))
        return [await job.future for job in jobs]

    assert asyncio.run(scenario()) == ["A", "B", "C", "D"]
    # c+d reached the model before a and b were handed back to their callers
    assert events.index("start c+d") < events.index("resolved a")


def test_errors_reach_every_caller_and_free_the_dispatcher() -> None:
    async def scenario() -> tuple[list[Any], bool]:
        dispatcher = _dispatcher([], fail=True)
        jobs = [_job(n) for n in "ab"]
        dispatcher._sema.acquire()
        await patches._outbound_call(dispatcher, tuple(jobs))
        return [job.future.result() for job in jobs], dispatcher._sema.is_locked()

    results, locked = asyncio.run(scenario())
    assert all(isinstance(r, ValueError) for r in results)
    assert not locked


def test_apply_installs_the_workarounds() -> None:
    from _bentoml_impl.server.app import ServiceAppFactory

    patches.apply()
    assert CorkDispatcher.outbound_call is patches._outbound_call
    assert ServiceAppFactory._add_response_headers is patches._add_response_headers
