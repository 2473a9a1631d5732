"""The shutdown sequence without a server: what the middleware answers while draining, how the
drain waits for requests and hooks and cuts what outlives its deadline, and the signal hand-over.
`bentoml serve` with a generation in flight is tests/test_shutdown_serve.py."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from botmodels.routes import HEALTH_PATHS
from botmodels.shutdown import Shutdown, ShutdownMiddleware


def _app(
    gate: asyncio.Event | None = None, entered: asyncio.Event | None = None
) -> Callable[[Scope, Receive, Send], Any]:
    """An ASGI app answering 200 with the path; sets `entered`, then waits on `gate` first when
    given."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if entered is not None:
            entered.set()
        if gate is not None:
            await gate.wait()
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _assert_shutting_down(response: httpx.Response) -> None:
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "shutting_down")


def test_while_draining_new_work_is_refused_and_reads_are_answered() -> None:
    async def run() -> None:
        state = Shutdown(grace_s=30, exit_process=lambda: None)
        app = ShutdownMiddleware(_app(), state=state, probe_paths=HEALTH_PATHS)
        async with _client(app) as client:
            assert (await client.post("/api/ping")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            exited = asyncio.Event()
            drain = state.begin(exited.set)
            assert drain is not None
            _assert_shutting_down(await client.get("/readyz"))
            _assert_shutting_down(await client.post("/api/ping", json={}))
            _assert_shutting_down(await client.post("/v1/embeddings", json={"input": "x"}))
            _assert_shutting_down(await client.delete("/api/jobs/job_x"))
            for path in ("/livez", "/api/health", "/api/jobs/job_x", "/outputs/images/x.png"):
                response = await client.get(path)
                assert (response.status_code, response.text) == (200, path)
            await asyncio.wait_for(exited.wait(), 5)  # nothing in flight: the drain ends
            assert state.begin(exited.set) is None  # a second signal starts nothing

    asyncio.run(run())


def test_the_drain_waits_for_requests_and_hooks_then_exits() -> None:
    async def run() -> None:
        state = Shutdown(grace_s=30, exit_process=lambda: None)
        gate, entered = asyncio.Event(), asyncio.Event()
        app = ShutdownMiddleware(_app(gate, entered), state=state, probe_paths=HEALTH_PATHS)
        hook_done = asyncio.Event()

        async def hook() -> None:
            await asyncio.sleep(0.2)
            hook_done.set()

        state.on_drain(hook)
        exited = asyncio.Event()
        async with _client(app) as client:
            in_flight = asyncio.create_task(client.post("/api/image/generate"))
            await asyncio.wait_for(entered.wait(), 5)
            assert state.in_flight == 1
            state.begin(exited.set)
            await asyncio.sleep(0.5)
            assert hook_done.is_set()
            assert not exited.is_set()  # the request is still running
            gate.set()
            response = await in_flight
            assert response.status_code == 200  # accepted before the signal: served
            await asyncio.wait_for(exited.wait(), 5)
            assert state.in_flight == 0

    asyncio.run(run())


def test_a_request_outliving_the_drain_is_cut_with_a_503() -> None:
    async def run() -> None:
        # grace 1 s: requests get half of it, the rest is the exit's reserve
        state = Shutdown(grace_s=1, exit_process=lambda: None)
        never, entered = asyncio.Event(), asyncio.Event()
        app = ShutdownMiddleware(_app(never, entered), state=state, probe_paths=HEALTH_PATHS)
        exited = asyncio.Event()
        async with _client(app) as client:
            stuck = asyncio.create_task(client.post("/api/speech/totext"))
            await asyncio.wait_for(entered.wait(), 5)
            loop = asyncio.get_running_loop()
            started = loop.time()
            state.begin(exited.set)
            response = await asyncio.wait_for(stuck, 5)
            _assert_shutting_down(response)
            assert "before the request finished" in response.json()["error"]["message"]
            await asyncio.wait_for(exited.wait(), 5)
            assert loop.time() - started < 1.0 + 0.5  # within the grace, with slack for CI

    asyncio.run(run())


def test_the_watchdog_ends_the_process_at_the_grace() -> None:
    async def run() -> None:
        fired = asyncio.Event()
        loop = asyncio.get_running_loop()

        def exit_process() -> None:  # runs on the watchdog's thread
            loop.call_soon_threadsafe(fired.set)

        state = Shutdown(grace_s=1, exit_process=exit_process)
        state.begin(lambda: None)
        started = loop.time()
        await asyncio.wait_for(fired.wait(), 5)
        assert 0.9 <= loop.time() - started < 3.0

    asyncio.run(run())


def test_the_signal_starts_the_drain_then_reaches_the_previous_handler() -> None:
    """SIGUSR1 stands in for SIGTERM (the test process must not be told to stop); the previous
    handler stands in for uvicorn's, which the drain passes the signal to when it is over."""
    received: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    async def run() -> None:
        state = Shutdown(grace_s=30, exit_process=lambda: None)
        state.install((signal.SIGUSR1,))
        signal.raise_signal(signal.SIGUSR1)
        for _ in range(500):
            if received:
                break
            await asyncio.sleep(0.01)
        assert state.draining
        assert received == [signal.SIGUSR1]
        signal.raise_signal(signal.SIGUSR1)  # again: already draining, not passed on twice
        await asyncio.sleep(0.1)
        assert received == [signal.SIGUSR1]

    original = signal.signal(signal.SIGUSR1, previous)
    try:
        asyncio.run(run())
    finally:
        signal.signal(signal.SIGUSR1, original)


def test_install_outside_the_main_thread_does_nothing() -> None:
    import threading

    results: list[bool] = []

    def in_thread() -> None:
        async def run() -> None:
            results.append(Shutdown(grace_s=30).install((signal.SIGUSR1,)))

        asyncio.run(run())

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert results == [False]


@pytest.mark.parametrize("path", ["/health", "/api/health"])
def test_health_routes_report_shutting_down(client: Any, path: str) -> None:
    """Through the real app: the health routes say so while the service drains."""
    import service

    assert client.get(path).status_code in (200, 503)
    service.shutdown.draining = True
    try:
        response = client.get(path)
    finally:
        service.shutdown.draining = False
    assert response.status_code == 503
    assert response.json()["status"] == "shutting_down"
