"""Graceful shutdown of the worker: drain, stop generations, exit within a bounded grace.

On SIGTERM (or a first SIGINT) the worker
  1. stops being ready at once: `/readyz` answers 503 (and `/api/health`, `/health` say
     `shutting_down`), while `/livez` stays 200 until the process exits;
  2. refuses new work: every request but GET and HEAD (probes, metrics, job status, generated
     files) is answered 503 with Retry-After in the one error shape, so a client retries on
     another instance;
  3. stops running generations at their next denoising step (jobs end `interrupted`, blocking
     generation requests are answered 503), through the hooks registered with `on_drain`;
  4. waits for the requests in flight, until `grace_s - EXIT_RESERVE_S` at most; any still
     running then is cut, and answered 503 if its response has not started;
  5. hands over to uvicorn's own exit (the signal handler it had installed), and a watchdog
     ends the process at `grace_s` whatever still runs (a model call that never returns).

Why not uvicorn's own shutdown alone (measured with BentoML 1.4.40, uvicorn 0.54): it stops
accepting at once, but the arbiter keeps the listening socket open until the worker exits, so
connections made after SIGTERM sit in the kernel's queue unanswered; and it waits for requests
in flight with no bound (BentoML passes no graceful timeout), so one blocking 100-step image
generation held the worker until the 300 s request timeout answered it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from botmodels.errors import send_error
from botmodels.routes import LIVENESS_PATHS, READINESS_PATHS

log = logging.getLogger("botmodels.shutdown")

# Time kept after the drain for uvicorn's own shutdown and the lifespan hooks.
EXIT_RESERVE_S = 2.0
RETRY_AFTER_S = 2  # long enough for a load balancer to drop this instance
READ_ONLY_METHODS = frozenset({"GET", "HEAD"})

SignalHandler = Callable[[int, FrameType | None], Any]


class Shutdown:
    """The worker's shutdown state, shared by the middleware, readiness and the signal handler."""

    def __init__(self, grace_s: float, exit_process: Callable[[], None] | None = None) -> None:
        self.grace_s = grace_s
        self._exit_process = exit_process or _exit_process
        self.draining = False
        self.started_at: float | None = None  # time.monotonic() of the signal
        self._in_flight: set[asyncio.Timeout] = set()
        self._idle: asyncio.Event | None = None
        self._hooks: list[Callable[[], Awaitable[None]]] = []
        self._drain_task: asyncio.Task[None] | None = None  # a reference keeps it running

    # --- what the service registers ---------------------------------------------------------
    def on_drain(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` when draining starts; the drain waits for it (until its deadline)."""
        self._hooks.append(hook)

    # --- requests ---------------------------------------------------------------------------
    def _enter(self, scope_timeout: asyncio.Timeout) -> None:
        self._in_flight.add(scope_timeout)
        if self._idle is not None:
            self._idle.clear()

    def _leave(self, scope_timeout: asyncio.Timeout) -> None:
        self._in_flight.discard(scope_timeout)
        if not self._in_flight and self._idle is not None:
            self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # --- the sequence -----------------------------------------------------------------------
    def begin(self, exit_server: Callable[[], None]) -> asyncio.Task[None] | None:
        """Start draining (idempotent; on the event loop). `exit_server` starts the server's own
        exit once the drain is over."""
        if self.draining:
            return None
        self.draining = True
        self.started_at = time.monotonic()
        watchdog = threading.Timer(self.grace_s, self._exit_process)
        watchdog.daemon = True
        watchdog.start()
        log.warning(
            "shutdown: draining for at most %.0f s (%d request(s) in flight); new work is "
            "answered 503",
            self.grace_s,
            self.in_flight,
        )
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(exit_server))
        return self._drain_task

    def remaining(self) -> float:
        """Seconds left for requests in flight before they are cut."""
        if self.started_at is None:
            return self.grace_s
        budget = self.grace_s - min(EXIT_RESERVE_S, self.grace_s / 2)
        return max(0.0, self.started_at + budget - time.monotonic())

    async def _drain(self, exit_server: Callable[[], None]) -> None:
        try:
            hooks = [asyncio.ensure_future(hook()) for hook in self._hooks]
            self._idle = asyncio.Event()
            if not self._in_flight:
                self._idle.set()
            waits: list[asyncio.Future[Any]] = [*hooks, asyncio.ensure_future(self._idle.wait())]
            _, pending = await asyncio.wait(waits, timeout=self.remaining())
            for future in pending:
                future.cancel()
            if self._in_flight:
                log.warning(
                    "shutdown: %d request(s) still running at the drain deadline; cutting them",
                    len(self._in_flight),
                )
                now = asyncio.get_running_loop().time()
                for scope_timeout in list(self._in_flight):
                    scope_timeout.reschedule(now)
                answered = asyncio.ensure_future(self._idle.wait())
                await asyncio.wait([answered], timeout=1.0)
                answered.cancel()
            for hook in hooks:
                if hook.done() and not hook.cancelled() and hook.exception() is not None:
                    log.error("shutdown hook failed: %r", hook.exception())
            assert self.started_at is not None
            log.warning(
                "shutdown: drained in %.1f s; stopping the server",
                time.monotonic() - self.started_at,
            )
        finally:
            exit_server()

    # --- signals ----------------------------------------------------------------------------
    def install(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> bool:
        """Take over `signals` in front of the handlers installed now (uvicorn's, in a server
        worker): the first one starts the drain, which ends by calling the previous handler.
        Only from the main thread with a running loop (a server); returns whether it did."""
        if threading.current_thread() is not threading.main_thread():
            return False
        loop = asyncio.get_running_loop()
        for signum in signals:
            previous = signal.getsignal(signum)
            if previous is None:  # installed outside Python: treat as the default action
                previous = signal.SIG_DFL
            signal.signal(signum, self._handler(loop, signum, previous))
        return True

    def _handler(
        self, loop: asyncio.AbstractEventLoop, signum: int, previous: Any
    ) -> SignalHandler:
        def pass_on(frame: FrameType | None = None) -> None:
            if callable(previous):
                previous(signum, frame)
            else:  # no server handler: the default action of the signal, now
                signal.signal(signum, previous)
                signal.raise_signal(signum)

        def handle(sig: int, frame: FrameType | None) -> None:
            if not self.draining:
                log.warning("shutdown: %s received", signal.Signals(sig).name)
                loop.call_soon_threadsafe(self.begin, pass_on)
            elif sig == signal.SIGINT:
                pass_on(frame)  # Ctrl+C again: the server's own (ultimately forced) exit
            # SIGTERM again (the arbiter repeats it to the process group): already draining

        return handle


def _exit_process() -> None:
    """The watchdog: the grace is over and the process is still here."""
    log.error("shutdown: grace exceeded (a model call that does not return?); exiting now")
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(1)


class ShutdownMiddleware:
    """Outermost: while draining, refuse new work and answer readiness 503; at any time, keep
    track of the requests in flight so that the drain can wait for them, and cut them at its
    deadline."""

    def __init__(self, app: ASGIApp, *, state: Shutdown, probe_paths: frozenset[str]) -> None:
        self.app = app
        self.state = state
        self.probe_paths = probe_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.state.draining:
            if path in READINESS_PATHS:
                await self._refuse(send, "this instance is shutting down; it takes no new work")
                return
            if scope["method"] not in READ_ONLY_METHODS:
                await self._refuse(
                    send, "this instance is shutting down; retry (another instance will answer)"
                )
                return
        if path in self.probe_paths or path in LIVENESS_PATHS:
            await self.app(scope, receive, send)  # instant, and never worth waiting for
            return

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        # No deadline until the drain sets one (asyncio.Timeout.reschedule).
        cut = asyncio.timeout(None)
        self.state._enter(cut)
        try:
            async with cut:
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if not cut.expired():
                raise  # the app's own TimeoutError
            if not started:
                await self._refuse(
                    send, "this instance shut down before the request finished; retry it"
                )
        finally:
            self.state._leave(cut)

    @staticmethod
    async def _refuse(send: Send, message: str) -> None:
        await send_error(
            send,
            503,
            message,
            code="shutting_down",
            headers=[(b"retry-after", str(RETRY_AFTER_S).encode())],
        )
