"""Runner lifecycle: which runners are enabled, where each one's model is, and which models are in
memory (residency).

Each enabled runner is either local (its model is in the BentoML store) or remote
(`BOTMODELS_<RUNNER>_URL`: a botmodels serving it elsewhere). A local runner is `unloaded` until
it loads: the `BOTMODELS_PRELOAD` kinds in a background thread at start-up, every other one on
its first request. Every use of a runner goes through `acquire(kind)` (sync and async), which
loads it if needed and holds a reference while the work runs: a runner in use is never unloaded.

**One load at a time.** Loads run on their own threads, one after another (a pool-wide lock):
concurrent first requests for a runner wait for its one load, and each load's memory delta is
its own. A request waits for the load at most `BOTMODELS_REQUEST_TIMEOUT_S` minus a margin,
then answers 503 with Retry-After while the load goes on.

**The budget.** `BOTMODELS_MEMORY_BUDGET` (CPU) and `BOTMODELS_GPU_MEMORY_BUDGET` (the CUDA
device) bound the models' estimated footprints (`estimate_bytes`: known before loading, so a
decision never depends on allocator noise). A load that would pass its budget first unloads idle
runners, least recently used first; if the runners in use leave no room it waits for one to be
released (within the request's wait), then answers 503 naming the budget and the footprints.
Each load's measured footprint (RSS delta; `torch.cuda.memory_allocated` delta on CUDA) is
recorded beside the estimate.

**Unloading** (LRU eviction, or `BOTMODELS_IDLE_UNLOAD_S`) drops the pool's reference, calls the
runner's `close()` where it has one (threads, pools), collects garbage, empties torch's CUDA
cache and returns freed heap to the OS (`malloc_trim`, glibc).

A runner that fails to load is `failed`, named with its error; the others keep serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prometheus_client import Counter, Gauge

from botmodels.config import Quantization, Settings
from botmodels.device import Device, keep_threads, pick_device, set_threads
from botmodels.errors import MemoryBudgetExceeded, RunnerUnavailable
from botmodels.registry import KINDS
from botmodels.store import ManifestError, find_stored, load_manifest, spec_for

# Under BentoML's `bentoml` logger: a served worker configures that one (INFO, its handler and
# format), not the root, and the plan and each load and unload belong in the start-up log.
log = logging.getLogger("bentoml.botmodels.pool")

State = Literal["unloaded", "loading", "ready", "failed", "remote"]
Factory = Callable[[Path, Quantization, Device], Any]

STATES: tuple[State, ...] = ("unloaded", "loading", "ready", "failed", "remote")
# Gauges sum over a service's live workers (BentoML runs prometheus_client in multiprocess mode).
RESIDENT_BYTES = Gauge(
    "botmodels_runner_resident_bytes",
    "Measured memory of each loaded runner's model (RSS delta at load; CUDA allocated on a GPU)",
    ["runner"],
    multiprocess_mode="livesum",
)
RUNNER_STATE = Gauge(
    "botmodels_runner_state",
    "1 for each runner's current residency state (unloaded, loading, ready, failed, remote)",
    ["runner", "state"],
    multiprocess_mode="livesum",
)
LOADS = Counter("botmodels_runner_loads", "Model loads of each runner", ["runner"])
EVICTIONS = Counter(
    "botmodels_runner_evictions",
    "Unloads of each runner (to make room in the memory budget, or after idling)",
    ["runner"],
)

# The estimate: the stored files' bytes (the weights as stored) times this factor for the
# quantization the runner applies at load. int8 keeps one byte per weight of a float16/float32
# checkpoint's two to four; 4bit (nf4) half a byte plus the layers it leaves unquantized.
QUANT_FACTOR: dict[str, float] = {"none": 1.0, "int8": 0.5, "4bit": 0.35}
# A request waits for a load this much less than its timeout, so it is answered (503 with
# Retry-After) before BentoML's own timeout cuts it.
TIMEOUT_MARGIN_S = 2.0


def estimate_bytes(folder: Path, quantization: str) -> int:
    """A stored model's footprint once loaded, before loading it: the folder's file sizes times
    `QUANT_FACTOR[quantization]`."""
    stored = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return int(stored * QUANT_FACTOR.get(quantization, 1.0))


def rss_bytes() -> int:
    """This process's resident set size."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def cuda_allocated() -> int:
    """Bytes torch holds on the CUDA device (0 without torch or CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0
    return int(torch.cuda.memory_allocated())


def _malloc_trim() -> None:
    """Hand the heap's free pages back to the OS (glibc only; elsewhere nothing to do)."""
    name = ctypes.util.find_library("c")
    if name is None or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)


def release_memory() -> None:
    """After dropping a model's last reference: make its memory the OS's again."""
    frozen = gc.get_freeze_count() > 0  # models loaded before gc.freeze() sit in it
    if frozen:
        gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    _malloc_trim()


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MiB"


@dataclass
class RunnerSlot:
    kind: str
    tag: str
    quantization: Quantization
    remote_url: str | None = None
    state: State = "unloaded"
    error: str | None = None
    device: Device | None = None
    instance: Any = None
    labels: dict[str, str] = field(default_factory=dict)
    load_seconds: float | None = None
    # The manifest's ranges for a generation model (None where it declares none).
    guidance_range: tuple[float, float] | None = None
    steps_range: tuple[int, int] | None = None
    # Residency.
    preload: bool = False
    idle_unload_s: float = 0.0
    users: int = 0  # requests holding or waiting for the runner: while > 0 it is never unloaded
    last_used: float | None = None  # epoch seconds
    loads: int = 0
    evictions: int = 0  # unloads, by the budget or by idleness
    estimated_bytes: int | None = None
    resident_bytes: int | None = None  # measured at the last load
    budget_error: str | None = None  # why the last load did not fit (the slot stays unloaded)
    loading: concurrent.futures.Future[None] | None = None

    def publish(self) -> None:
        """The slot's residency on /metrics."""
        for state in STATES:
            RUNNER_STATE.labels(runner=self.kind, state=state).set(int(state == self.state))
        RESIDENT_BYTES.labels(runner=self.kind).set(
            (self.resident_bytes or 0) if self.state == "ready" else 0
        )

    @property
    def charge(self) -> int:
        """What the slot counts against its budget: the estimate, or the footprint its last load
        measured where that was larger (an estimate from file sizes misses what loading adds)."""
        return max(self.estimated_bytes or 0, self.resident_bytes or 0)

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "runner": self.kind,
            "state": self.state,
            "loaded": self.state == "ready",
            "store_tag": self.tag,
            # the runner's own where it had to run another (ONNX int8 that missed its bar)
            "quantization": getattr(self.instance, "quantization", self.quantization),
        }
        if self.guidance_range is not None:
            info["guidance_range"] = list(self.guidance_range)
        if self.steps_range is not None:
            info["steps_range"] = list(self.steps_range)
        if self.remote_url is not None:
            info["remote_url"] = self.remote_url
            return info
        info.update(
            {
                "source": self.labels.get("source"),
                "revision": self.labels.get("revision"),
                "sha256": self.labels.get("sha256"),
                "synthetic": self.labels.get("synthetic") == "true",
                "device": self.device,
                "dtype": getattr(self.instance, "dtype", None),
                "load_seconds": self.load_seconds,
                "preload": self.preload,
                "resident_bytes": self.resident_bytes if self.state == "ready" else 0,
                "estimated_bytes": self.estimated_bytes,
                "last_used": self.last_used,
                "loads": self.loads,
                "evictions": self.evictions,
                "in_use": self.users,
            }
        )
        engine = getattr(self.instance, "engine", None)  # where a runner chooses (embeddings)
        if isinstance(engine, str):
            info["engine"] = engine
        prefix = getattr(self.instance, "prefix", self.labels.get("prefix"))  # embeddings' input
        if isinstance(prefix, str) and prefix:
            info["prefix"] = prefix
        compute = getattr(self.instance, "compute", None)  # how a batch runs, where it varies
        if isinstance(compute, str):
            info["compute"] = compute
        if self.error is not None:
            info["error"] = self.error
        elif self.budget_error is not None and self.state == "unloaded":
            info["error"] = self.budget_error
        return info


class BudgetConfigError(RuntimeError):
    """A memory budget no enabled model fits in: the service refuses to start."""


def check_budgets(settings: Settings, estimates: Mapping[str, int]) -> None:
    """`BudgetConfigError` where a budget is smaller than every enabled model's estimate."""
    if not estimates:
        return
    smallest = min(estimates.values())
    for name, budget in (
        ("BOTMODELS_MEMORY_BUDGET", settings.memory_budget),
        ("BOTMODELS_GPU_MEMORY_BUDGET", settings.gpu_memory_budget),
    ):
        if budget is not None and budget < smallest:
            raise BudgetConfigError(
                f"{name}={budget} bytes ({_mib(budget)}) is smaller than the smallest "
                f"enabled model ({_mib(smallest)}); estimated footprints: "
                + ", ".join(f"{kind} {_mib(size)}" for kind, size in estimates.items())
            )


def stored_estimates(settings: Settings) -> dict[str, int]:
    """Every enabled local runner's estimated footprint, from the store (kinds with no model in
    the profile or not imported yet are left out: their failure is reported when they load)."""
    manifest = load_manifest(settings.manifest)
    sizes: dict[str, int] = {}
    for kind in settings.runners:
        if settings.remote_url(kind) is not None:
            continue
        try:
            spec = spec_for(manifest, kind, settings.manifest_entry(kind))
        except ManifestError:
            continue
        stored = find_stored(spec.tag)
        if stored is not None:
            quant = settings.quantization_for(kind, spec.quantization)
            sizes[kind] = estimate_bytes(Path(stored.path), quant)
    return sizes


class RunnerPool:
    def __init__(self, settings: Settings, factories: Mapping[str, Factory]) -> None:
        self.settings = settings
        self.factories = factories
        self.slots: dict[str, RunnerSlot] = {}
        self._cond = threading.Condition()  # guards every slot's residency fields
        self._load_lock = threading.Lock()  # one load at a time
        self._threads_set = False
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()
        self.on_loaded: Callable[[], None] | None = None  # after each load (service: gc.freeze)
        manifest = load_manifest(settings.manifest)
        for kind in settings.runners:
            remote = settings.remote_url(kind)
            try:
                spec = spec_for(manifest, kind, settings.manifest_entry(kind))
            except ManifestError as exc:
                if remote is None and kind in KINDS and KINDS[kind].optional:
                    log.info("runner %s: no model in %s; off", kind, settings.manifest_entry(kind))
                    continue  # not a failure: the kind's routes do without it
                self.slots[kind] = RunnerSlot(kind, "?", "none", state="failed", error=str(exc))
                continue
            quant = settings.quantization_for(kind, spec.quantization)
            self.slots[kind] = RunnerSlot(
                kind,
                spec.tag,
                quant,
                remote_url=remote,
                state="remote" if remote else "unloaded",
                guidance_range=spec.guidance,
                steps_range=spec.steps,
                preload=settings.preloaded(kind),
                idle_unload_s=settings.idle_unload_for(kind),
            )
        for slot in self.slots.values():
            slot.publish()

    # -- start-up ----------------------------------------------------------------------------
    def plan(self) -> list[str]:
        """Estimate every local runner's footprint from the store; check that each budget fits
        the smallest model (else `BudgetConfigError`); the start-up log's lines."""
        local = [s for s in self.slots.values() if s.state == "unloaded"]
        for slot in local:
            stored = find_stored(slot.tag)
            if stored is not None:
                slot.estimated_bytes = estimate_bytes(Path(stored.path), slot.quantization)
        check_budgets(
            self.settings, {s.kind: s.estimated_bytes for s in local if s.estimated_bytes}
        )
        cpu, gpu = self.settings.memory_budget, self.settings.gpu_memory_budget
        lines = [
            f"memory budget: cpu {_mib(cpu) if cpu else 'unlimited'}, "
            f"gpu {_mib(gpu) if gpu else 'unlimited'}"
        ]
        for slot in self.slots.values():
            when = (
                slot.state
                if slot.state in ("remote", "failed")
                else ("preload" if slot.preload else "on first request")
            )
            idle = f", idle unload after {slot.idle_unload_s:g} s" if slot.idle_unload_s else ""
            size = _mib(slot.estimated_bytes)
            lines.append(f"runner {slot.kind}: {when}, estimated {size}{idle}")
        return lines

    def start(self) -> None:
        """Log the plan, load the preload set in the background, start the idle reaper."""
        for line in self.plan():
            log.info("%s", line)
        threading.Thread(target=self.load_preload, name="botmodels-preload", daemon=True).start()
        if any(s.idle_unload_s > 0 for s in self.slots.values()) and self._reaper is None:
            self._reaper = threading.Thread(
                target=self._reap, name="botmodels-idle-unload", daemon=True
            )
            self._reaper.start()

    def stop(self) -> None:
        self._stop.set()

    def load_preload(self) -> None:
        """Blocking: load the preload set (each once). Runs in a background thread."""
        self.load_all([s.kind for s in self.slots.values() if s.preload])

    def load_all(self, kinds: list[str] | None = None) -> None:
        """Blocking: load `kinds` (default: every local runner), one after another."""
        wanted = list(self.slots) if kinds is None else kinds
        futures = []
        with self._cond:
            for kind in wanted:
                slot = self.slots[kind]
                if slot.state in ("unloaded", "loading"):
                    futures.append(self._start_load(slot))
        for future in futures:
            with contextlib.suppress(Exception):
                future.result()
        if futures:
            keep_threads(self.settings.threads)  # this thread's too (device.keep_threads)

    def starting(self, slot: RunnerSlot) -> bool:
        """A preloaded runner whose start-up load has not ended (loaded, failed, or refused)."""
        return (
            slot.preload
            and slot.loads == 0
            and slot.state in ("unloaded", "loading")
            and slot.budget_error is None
        )

    @property
    def settled(self) -> bool:
        """Every preloaded runner's start-up load has ended."""
        return not any(self.starting(s) for s in self.slots.values())

    def usable(self, kind: str) -> bool:
        """A local runner that can take work: loaded, or loadable on its next request (an
        enabled runner that is merely unloaded is healthy)."""
        slot = self.slots.get(kind)
        if slot is None or slot.state in ("failed", "remote"):
            return False
        return not self.starting(slot)

    # -- loading -----------------------------------------------------------------------------
    def _start_load(
        self, slot: RunnerSlot, wait_s: float | None = None
    ) -> concurrent.futures.Future[None]:
        """Under `_cond`: the runner's load, started now unless one is under way. `wait_s`: how
        long its first requester waits (the load waits for room a little less)."""
        if slot.loading is not None and not slot.loading.done():
            return slot.loading
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # a waiter that gives up cannot cancel the load
        slot.loading = future
        slot.state = "loading"
        slot.publish()
        room_wait = 0.9 * (self.wait_s if wait_s is None else wait_s)
        threading.Thread(
            target=self._load_thread,
            args=(slot, future, room_wait),
            name=f"botmodels-load-{slot.kind}",
            daemon=True,
        ).start()
        return future

    def _load_thread(
        self, slot: RunnerSlot, future: concurrent.futures.Future[None], room_wait: float
    ) -> None:
        with self._load_lock:
            if not self._threads_set:
                set_threads(self.settings.threads)
                self._threads_set = True
            try:
                self._load(slot, room_wait)
            except MemoryBudgetExceeded as exc:
                with self._cond:
                    slot.state = "unloaded"
                    slot.budget_error = exc.message
                    slot.publish()
                    self._cond.notify_all()
                future.set_exception(exc)
                return
            except Exception as exc:
                log.exception("runner %s failed to load", slot.kind)
                with self._cond:
                    slot.state = "failed"
                    slot.error = f"{type(exc).__name__}: {exc}"
                    slot.publish()
                    self._cond.notify_all()
                future.set_exception(self._failed(slot))
                return
            finally:
                keep_threads(self.settings.threads)  # a runner's imports may have changed it
        if self.on_loaded is not None:
            with contextlib.suppress(Exception):
                self.on_loaded()
        future.set_result(None)

    def _load(self, slot: RunnerSlot, room_wait: float) -> None:
        started = time.perf_counter()
        stored = find_stored(slot.tag)
        if stored is None:
            raise ManifestError(
                f"model {slot.tag} is not in the BentoML store; import it with "
                f"`python scripts/import_models.py {self.settings.profile}`"
            )
        slot.tag = str(stored.tag)
        slot.labels = dict(stored.info.labels)
        slot.device = pick_device(self.settings.device)
        slot.estimated_bytes = estimate_bytes(Path(stored.path), slot.quantization)
        self._make_room(slot, room_wait)
        before = cuda_allocated() if slot.on_gpu else rss_bytes()
        runner = self.factories[slot.kind](Path(stored.path), slot.quantization, slot.device)
        runner.load()
        after = cuda_allocated() if slot.on_gpu else rss_bytes()
        with self._cond:
            slot.instance = runner
            slot.state = "ready"
            slot.error = slot.budget_error = None
            slot.loads += 1
            slot.last_used = time.time()
            slot.resident_bytes = max(0, after - before)
            slot.load_seconds = round(time.perf_counter() - started, 3)
            slot.publish()
            LOADS.labels(runner=slot.kind).inc()
            self._cond.notify_all()
        log.info(
            "runner %s loaded in %.2f s: estimated %s, measured %s (%s delta)",
            slot.kind,
            slot.load_seconds,
            _mib(slot.estimated_bytes),
            _mib(slot.resident_bytes),
            "CUDA allocated" if slot.on_gpu else "RSS",
        )

    # -- the budget --------------------------------------------------------------------------
    def _budget(self, slot: RunnerSlot) -> int | None:
        return self.settings.gpu_memory_budget if slot.on_gpu else self.settings.memory_budget

    def _charged(self, slot: RunnerSlot) -> list[RunnerSlot]:
        """The loaded runners that share `slot`'s budget (same device class)."""
        return [
            s
            for s in self.slots.values()
            if s is not slot and s.state == "ready" and s.on_gpu == slot.on_gpu
        ]

    def _footprints(self, slot: RunnerSlot) -> str:
        others = ", ".join(
            f"{s.kind} {_mib(s.charge)}{' (in use)' if s.users else ''}"
            for s in self._charged(slot)
        )
        return f"{slot.kind} needs {_mib(slot.charge)}; loaded: {others or 'none'}"

    def _make_room(self, slot: RunnerSlot, wait_s: float) -> None:
        """Unload idle runners, least recently used first, until `slot`'s footprint fits its
        budget; wait for runners in use to be released; `MemoryBudgetExceeded` if it cannot."""
        budget = self._budget(slot)
        if budget is None:
            return
        name = "BOTMODELS_GPU_MEMORY_BUDGET" if slot.on_gpu else "BOTMODELS_MEMORY_BUDGET"
        # "Cannot fit at all" goes by the estimate: a measured footprint may include one-off
        # costs of a first load (a library's import), which a reload does not pay again.
        if (slot.estimated_bytes or 0) > budget:
            raise MemoryBudgetExceeded(
                f"runner {slot.kind!r} does not fit in {name} ({_mib(budget)}) even alone: "
                f"{self._footprints(slot)}",
            )
        need = min(slot.charge, budget)
        deadline = time.monotonic() + wait_s
        while True:
            with self._cond:
                loaded = self._charged(slot)
                if sum(s.charge for s in loaded) + need <= budget:
                    return
                idle = sorted((s for s in loaded if s.users == 0), key=lambda s: s.last_used or 0)
                if not idle:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise MemoryBudgetExceeded(
                            f"runner {slot.kind!r} does not fit in {name} ({_mib(budget)}) "
                            f"beside the runners serving requests: {self._footprints(slot)}; "
                            "retry shortly",
                            headers={"Retry-After": "5"},
                        )
                    self._cond.wait(min(left, 1.0))
                    continue
                victim = idle[0]
                instance = self._take(victim)
            log.info("runner %s unloaded to make room for %s", victim.kind, slot.kind)
            self._release(victim.kind, instance)

    @property
    def wait_s(self) -> float:
        """How long a request waits for a load (or for room): just under its timeout."""
        return max(1.0, self.settings.request_timeout_s - TIMEOUT_MARGIN_S)

    # -- unloading ---------------------------------------------------------------------------
    def _take(self, slot: RunnerSlot) -> Any:
        """Under `_cond`: mark an idle ready runner unloaded; its instance, to release."""
        instance, slot.instance = slot.instance, None
        slot.state = "unloaded"
        slot.evictions += 1
        slot.publish()
        EVICTIONS.labels(runner=slot.kind).inc()
        return instance

    def _release(self, kind: str, instance: Any) -> None:
        before = rss_bytes()
        close = getattr(instance, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # the model is dropped all the same
                log.exception("runner %s: close() failed", kind)
        del instance, close
        release_memory()
        log.info("runner %s unloaded: RSS %s -> %s", kind, _mib(before), _mib(rss_bytes()))

    def unload(self, kind: str) -> bool:
        """Unload `kind` now if it is loaded and idle; whether it was."""
        with self._cond:
            slot = self.slots.get(kind)
            if slot is None or slot.state != "ready" or slot.users:
                return False
            instance = self._take(slot)
        self._release(kind, instance)
        return True

    def _reap(self) -> None:
        """The idle reaper: unloads each runner unused for its BOTMODELS_*IDLE_UNLOAD_S."""
        periods = [s.idle_unload_s for s in self.slots.values() if s.idle_unload_s > 0]
        tick = min(30.0, max(0.2, min(periods) / 4))
        while not self._stop.wait(tick):
            now = time.time()
            for slot in list(self.slots.values()):
                if (
                    slot.idle_unload_s > 0
                    and slot.state == "ready"
                    and slot.users == 0
                    and now - (slot.last_used or now) >= slot.idle_unload_s
                    and self.unload(slot.kind)
                ):
                    log.info("runner %s unloaded after %g s idle", slot.kind, slot.idle_unload_s)

    # -- use ---------------------------------------------------------------------------------
    def _failed(self, slot: RunnerSlot) -> RunnerUnavailable:
        return RunnerUnavailable(
            f"runner {slot.kind!r} failed to load: {slot.error}", code="runner_failed"
        )

    def check(self, kind: str) -> RunnerSlot:
        """The runner's slot, or the 503 that says it will not serve here (not enabled, failed,
        served remotely). An unloaded runner passes: it loads on use."""
        slot = self.slots.get(kind)
        if slot is None:
            raise RunnerUnavailable(
                f"runner {kind!r} is not enabled here; add it to BOTMODELS_RUNNERS",
                code="runner_disabled",
            )
        if slot.state == "failed":
            raise self._failed(slot)
        if slot.state == "remote":
            raise RunnerUnavailable(
                f"runner {kind!r} is served by {slot.remote_url}, not here", code="runner_remote"
            )
        return slot

    def _enter(
        self, kind: str, wait_s: float | None
    ) -> tuple[RunnerSlot, concurrent.futures.Future[None] | None]:
        with self._cond:
            slot = self.check(kind)
            slot.users += 1
            slot.last_used = time.time()
            return slot, None if slot.state == "ready" else self._start_load(slot, wait_s)

    def _instance(self, slot: RunnerSlot) -> Any:
        with self._cond:
            if slot.state == "failed":
                raise self._failed(slot)
            return slot.instance

    def _exit(self, slot: RunnerSlot) -> None:
        with self._cond:
            slot.users -= 1
            slot.last_used = time.time()
            self._cond.notify_all()

    def _still_loading(self, kind: str) -> RunnerUnavailable:
        return RunnerUnavailable(
            f"runner {kind!r} is still loading; retry shortly",
            code="runner_loading",
            headers={"Retry-After": "5"},
        )

    @contextlib.contextmanager
    def hold(self, kind: str, wait_s: float | None = None) -> Iterator[Any]:
        """Blocking `acquire` (for code on a worker thread): the loaded runner, held."""
        slot, loading = self._enter(kind, wait_s)
        try:
            while loading is not None:
                try:
                    loading.result(self.wait_s if wait_s is None else wait_s)
                except concurrent.futures.TimeoutError:
                    raise self._still_loading(kind) from None
                with self._cond:  # evicted between the load and now: impossible while held,
                    loading = None if slot.state == "ready" else self._start_load(slot, wait_s)
            yield self._instance(slot)
        finally:
            self._exit(slot)

    @contextlib.asynccontextmanager
    async def hold_async(self, kind: str, wait_s: float | None = None) -> AsyncIterator[Any]:
        """`acquire` on the event loop: waits for the load without blocking the loop."""
        slot, loading = self._enter(kind, wait_s)
        try:
            while loading is not None:
                waiting = asyncio.wrap_future(loading)
                try:
                    await asyncio.wait_for(
                        asyncio.shield(waiting), self.wait_s if wait_s is None else wait_s
                    )
                except TimeoutError:
                    raise self._still_loading(kind) from None
                with self._cond:
                    loading = None if slot.state == "ready" else self._start_load(slot, wait_s)
            yield self._instance(slot)
        finally:
            self._exit(slot)

    def acquire(self, kind: str, wait_s: float | None = None) -> Lease:
        """`with pool.acquire(kind) as runner:` or `async with ...`: the runner, loaded if
        needed (within the request's wait; else 503 with Retry-After while it loads on), held
        (never unloaded) until the block ends."""
        return Lease(self, kind, wait_s)

    def local(self, kind: str) -> Any:
        """The loaded runner, for code that runs inside an `acquire` of it; else a 503 that says
        why there is none (and an unloaded runner starts loading)."""
        with self._cond:
            slot = self.check(kind)
            if slot.state == "ready":
                slot.last_used = time.time()
                return slot.instance
            self._start_load(slot)
        raise self._still_loading(kind)

    def slot(self, kind: str) -> RunnerSlot | None:
        return self.slots.get(kind)

    def loaded(self, kind: str) -> Any:
        """The runner's model if it is loaded now, else None, without loading it: for a
        best-effort look (a pre-check, a listing). Read once: an unload may clear it at any
        time, so nothing holds it across a model call (that is `acquire`'s job)."""
        slot = self.slots.get(kind)
        return None if slot is None else slot.instance


class Lease:
    """What `RunnerPool.acquire` returns: a sync and an async context manager."""

    def __init__(self, pool: RunnerPool, kind: str, wait_s: float | None) -> None:
        self._pool, self._kind, self._wait_s = pool, kind, wait_s
        self._sync: contextlib.AbstractContextManager[Any] | None = None
        self._async: contextlib.AbstractAsyncContextManager[Any] | None = None

    def __enter__(self) -> Any:
        self._sync = self._pool.hold(self._kind, self._wait_s)
        return self._sync.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        assert self._sync is not None
        return self._sync.__exit__(*exc)

    async def __aenter__(self) -> Any:
        self._async = self._pool.hold_async(self._kind, self._wait_s)
        return await self._async.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        assert self._async is not None
        return await self._async.__aexit__(*exc)
