"""botmodels' dispatcher (botmodels/dispatch.py): the batching policy of every batchable API.

Each test drives a `Batcher` with a fake model that records the batches it is given, so the
policy is checked by what the model saw, never by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from botmodels.dispatch import Batcher, run_on_runner
from botmodels.errors import RunnerUnavailable


class Model:
    """A batch callback as BentoML's `inner_infer` is: parts in, one list per part out."""

    def __init__(self, seconds: float = 0.01, poison: str | None = None) -> None:
        self.seconds = seconds
        self.poison = poison
        self.batches: list[list[list[str]]] = []
        self.running = 0
        self.most_at_once = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self, parts: Sequence[Sequence[str]]) -> list[list[str]]:
        self.batches.append([list(p) for p in parts])
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.seconds)
            if self.poison is not None and any(self.poison in p for p in parts):
                raise ValueError(f"cannot embed {self.poison!r}")
            return [[item.upper() for item in part] for part in parts]
        finally:
            self.running -= 1

    def sizes(self) -> list[int]:
        return [sum(len(p) for p in batch) for batch in self.batches]


def test_a_lone_request_runs_at_once_as_a_batch_of_its_own() -> None:
    async def scenario() -> tuple[list[str], Model]:
        model = Model()
        batcher = Batcher("embed", max_batch_size=32)
        result = await batcher(model)(["a"])
        return result, model

    result, model = asyncio.run(scenario())
    assert result == ["A"]
    assert model.batches == [[["a"]]]


def test_requests_that_queue_behind_a_running_batch_share_the_next_one() -> None:
    async def scenario() -> Model:
        model = Model(seconds=0.05)
        batcher = Batcher("embed", max_batch_size=8)
        submit = batcher(model)
        first = asyncio.ensure_future(submit(["first"]))
        await asyncio.sleep(0.01)  # the first batch is running
        rest = [asyncio.ensure_future(submit([f"r{i}"])) for i in range(5)]
        assert await first == ["FIRST"]
        assert [await r for r in rest] == [[f"R{i}"] for i in range(5)]
        return model

    model = asyncio.run(scenario())
    assert model.sizes() == [1, 5]


def test_requests_of_the_same_event_loop_turn_share_one_batch() -> None:
    async def scenario() -> Model:
        model = Model()
        submit = Batcher("embed", max_batch_size=8)(model)
        await asyncio.gather(*(submit([f"x{i}"]) for i in range(6)))
        return model

    assert asyncio.run(scenario()).sizes() == [6]


def test_no_request_is_held_after_a_burst() -> None:
    """The failure this dispatcher replaces: after a burst, BentoML's held lone requests for
    the mean wait it had learned. Here a lone request after a burst starts at once."""

    async def scenario() -> tuple[Model, int]:
        model = Model(seconds=0.002)
        batcher = Batcher("embed", max_batch_size=32)
        submit = batcher(model)
        await asyncio.gather(*(submit([f"b{i}"]) for i in range(200)))
        before = len(model.batches)
        lone = asyncio.ensure_future(submit(["lone"]))
        for _ in range(5):  # a few turns of the event loop, no timer of any length
            await asyncio.sleep(0)
        started = len(model.batches) - before
        await lone
        return model, started

    model, started = asyncio.run(scenario())
    assert started == 1  # the model already had the lone request, no wait of any length
    assert model.batches[-1] == [["lone"]]
    assert max(model.sizes()) <= 32


def test_a_large_request_is_sliced_and_shares_batches_with_a_lone_one() -> None:
    async def scenario() -> tuple[Model, list[str], list[str]]:
        model = Model(seconds=0.001)
        model.gate = asyncio.Event()
        submit = Batcher("embed", max_batch_size=32)(model)
        big = [f"t{i}" for i in range(256)]
        big_task = asyncio.ensure_future(submit(big))
        for _ in range(5):  # the big request's first batch reaches the model, and waits
            await asyncio.sleep(0)
        assert len(model.batches) == 1
        lone_task = asyncio.ensure_future(submit(["lone"]))
        await asyncio.sleep(0.005)
        model.gate.set()
        lone = await lone_task
        index = len(model.batches)
        done = await big_task
        return model, done, [*lone, str(index)]

    model, done, lone = asyncio.run(scenario())
    assert done == [f"T{i}" for i in range(256)]  # every item, in order
    assert lone[0] == "LONE"
    assert max(model.sizes()) == 32
    # The lone request rode in the second batch, not after the other seven of the big one.
    assert ["lone"] in model.batches[1]
    assert model.sizes()[1] == 32


def test_batches_never_exceed_the_size_and_every_item_is_answered_once() -> None:
    async def scenario() -> tuple[Model, list[list[str]]]:
        model = Model(seconds=0.001)
        submit = Batcher("embed", max_batch_size=7)(model)
        requests = [[f"{r}-{i}" for i in range(1 + r % 11)] for r in range(40)]
        results = await asyncio.gather(*(submit(items) for items in requests))
        assert results == [[x.upper() for x in items] for items in requests]
        return model, requests

    model, requests = asyncio.run(scenario())
    assert max(model.sizes()) <= 7
    assert sum(model.sizes()) == sum(len(r) for r in requests)


def test_a_poison_input_fails_only_its_own_request() -> None:
    async def scenario() -> list[Any]:
        model = Model(poison="bad")
        submit = Batcher("embed", max_batch_size=8)(model)
        results: list[Any] = await asyncio.gather(
            submit(["good1"]), submit(["x", "bad"]), submit(["good2"]), return_exceptions=True
        )
        return results

    good1, bad, good2 = asyncio.run(scenario())
    assert good1 == ["GOOD1"]
    assert good2 == ["GOOD2"]
    assert isinstance(bad, ValueError)


def test_a_caller_that_goes_away_takes_its_queued_items_with_it() -> None:
    async def scenario() -> Model:
        model = Model()
        model.gate = asyncio.Event()
        batcher = Batcher("embed", max_batch_size=4)
        submit = batcher(model)
        first = asyncio.ensure_future(submit(["first"]))
        await asyncio.sleep(0.005)  # the first batch holds the model
        leaving = asyncio.ensure_future(submit([f"l{i}" for i in range(10)]))
        await asyncio.sleep(0.005)
        leaving.cancel()
        staying = asyncio.ensure_future(submit(["stay"]))
        await asyncio.sleep(0.005)
        assert batcher.queued_items == 1
        model.gate.set()
        assert await first == ["FIRST"]
        assert await staying == ["STAY"]
        with pytest.raises(asyncio.CancelledError):
            await leaving
        return model

    model = asyncio.run(scenario())
    assert model.batches == [[["first"]], [["stay"]]]


def test_concurrency_bounds_the_batches_in_flight() -> None:
    async def scenario(concurrency: int) -> int:
        model = Model(seconds=0.02)
        batcher = Batcher("embed", max_batch_size=2, concurrency=concurrency)
        submit = batcher(model)
        await asyncio.gather(*(submit([f"{i}"]) for i in range(12)))
        return model.most_at_once

    assert asyncio.run(scenario(1)) == 1
    assert asyncio.run(scenario(2)) == 2


def test_shutdown_cancels_queued_callers_and_refuses_new_ones() -> None:
    async def scenario() -> None:
        model = Model()
        model.gate = asyncio.Event()
        batcher = Batcher("embed", max_batch_size=1)
        submit = batcher(model)
        running = asyncio.ensure_future(submit(["a"]))
        await asyncio.sleep(0.005)
        queued = asyncio.ensure_future(submit(["b"]))
        await asyncio.sleep(0.005)
        batcher.shutdown()
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(RunnerUnavailable):
            await submit(["c"])
        model.gate.set()
        assert await running == ["A"]

    asyncio.run(scenario())


def test_an_empty_request_never_reaches_the_model() -> None:
    async def scenario() -> tuple[list[Any], Model]:
        model = Model()
        return await Batcher("embed", max_batch_size=4)(model)([]), model

    result, model = asyncio.run(scenario())
    assert result == []
    assert model.batches == []


def test_a_model_that_answers_the_wrong_number_of_parts_fails_its_callers() -> None:
    async def broken(parts: Sequence[Sequence[str]]) -> list[list[str]]:
        return []

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="parts"):
            await Batcher("embed", max_batch_size=4)(broken)(["a"])

    asyncio.run(scenario())


# --- run_on_runner: the one path from a front to its runner ------------------------------------
class Pool:
    """`RunnerPool.acquire` as the path sees it: the runner, held, or a 503 when not usable."""

    def __init__(self, usable: bool = True) -> None:
        self.usable = usable
        self.asked: list[str] = []
        self.held = 0

    @contextlib.asynccontextmanager
    async def acquire(self, kind: str) -> AsyncIterator[object]:
        self.asked.append(kind)
        if not self.usable:
            raise RunnerUnavailable(f"{kind} is loading")
        self.held += 1
        try:
            yield object()
        finally:
            self.held -= 1


class Calls:
    """Records each call's items; answers them upper-cased."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, items: list[str]) -> list[str]:
        self.calls.append(list(items))
        return [item.upper() for item in items]


def _run(**kwargs: Any) -> list[Any]:
    return asyncio.run(run_on_runner("embed_batch", list("abcde"), kind="embeddings", **kwargs))


def test_a_remote_runner_gets_the_items_in_calls_of_one_batch_and_the_pool_is_not_asked() -> None:
    pool, remote, local = Pool(usable=False), Calls(), Calls()
    answers = _run(pool=pool, batch_infer=None, local=local, remote=remote, remote_batch=2)
    assert answers == list("ABCDE")
    assert remote.calls == [["a", "b"], ["c", "d"], ["e"]]
    assert local.calls == []
    assert pool.asked == []


def test_the_dispatcher_gets_one_submission_unless_told_to_split() -> None:
    submitted: list[tuple[str, list[str]]] = []

    async def batch_infer(api: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
        submitted.append((api, list(args[0])))
        return [item.upper() for item in args[0]]

    pool, local = Pool(), Calls()
    assert _run(pool=pool, batch_infer=batch_infer, local=local) == list("ABCDE")
    assert submitted == [("embed_batch", list("abcde"))]
    submitted.clear()
    assert _run(pool=pool, batch_infer=batch_infer, local=local, submit_batch=3) == list("ABCDE")
    assert submitted == [("embed_batch", ["a", "b", "c"]), ("embed_batch", ["d", "e"])]
    assert local.calls == []
    assert pool.asked == ["embeddings", "embeddings"]


def test_without_a_dispatcher_the_items_run_in_process() -> None:
    local = Calls()
    assert _run(pool=Pool(), batch_infer=None, local=local) == list("ABCDE")
    assert local.calls == [list("abcde")]


def test_a_local_runner_that_is_not_usable_is_a_503_before_anything_runs() -> None:
    local = Calls()
    with pytest.raises(RunnerUnavailable):
        _run(pool=Pool(usable=False), batch_infer=None, local=local)
    assert local.calls == []


def test_the_app_factory_gets_botmodels_dispatcher_and_hands_the_service_batch_infer() -> None:
    from types import SimpleNamespace

    from botmodels.dispatch import Batcher, wire_service

    bound: list[Any] = []
    service = SimpleNamespace(
        bind_batch_infer=bound.append, batch_concurrency=lambda: {"embed_batch": 2}
    )
    apis = {
        "embed_batch": SimpleNamespace(max_batch_size=32),
        "other": SimpleNamespace(max_batch_size=4),
    }
    factory = SimpleNamespace(
        _service_instance=service,
        batch_infer="the factory's batch_infer",
        dispatchers={"embed_batch": object(), "other": object()},
        service=SimpleNamespace(apis=apis),
    )
    wire_service(factory)
    assert bound == ["the factory's batch_infer"]
    embed, other = factory.dispatchers["embed_batch"], factory.dispatchers["other"]
    assert isinstance(embed, Batcher)
    assert isinstance(other, Batcher)
    assert (embed.max_batch_size, embed.concurrency) == (32, 2)
    assert (other.max_batch_size, other.concurrency) == (4, 1)
