"""The runner pool: a failed or missing runner is reported, the others load; torch threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from botmodels.config import Settings
from botmodels.pool import RunnerPool


def _pool_settings(tmp_path: Path, manifest: str, **kwargs: Any) -> Settings:
    path = tmp_path / "models.toml"
    path.write_text(manifest)
    return Settings.model_construct(
        **{
            **Settings().model_dump(),
            "manifest": path,
            "runners": ["good", "bad"],
            "preload": ["all"],
            **kwargs,
        }
    )


class GoodRunner:
    dtype = "float32"

    def __init__(self, path: Path, quantization: Any, device: Any) -> None:
        self.path = path

    def load(self) -> None:
        pass


class BrokenRunner(GoodRunner):
    def load(self) -> None:
        raise OSError("weights are corrupt")


def test_pool_reports_a_failed_runner_and_keeps_the_others(
    tmp_path: Path, offline_store: None
) -> None:
    manifest = (
        '[good.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
        '[bad.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
    )
    pool = RunnerPool(_pool_settings(tmp_path, manifest), {"good": GoodRunner, "bad": BrokenRunner})
    assert not pool.settled
    pool.load_all()
    assert pool.settled
    assert pool.slots["good"].state == "ready"
    assert isinstance(pool.local("good"), GoodRunner)
    assert pool.slots["bad"].state == "failed"
    assert pool.slots["bad"].error == "OSError: weights are corrupt"
    from botmodels.errors import RunnerUnavailable

    with pytest.raises(RunnerUnavailable, match="failed to load: OSError"):
        pool.local("bad")
    with pytest.raises(RunnerUnavailable, match="not enabled"):
        pool.local("other")
    described = {d["runner"]: d for d in (s.describe() for s in pool.slots.values())}
    assert described["bad"]["error"] == "OSError: weights are corrupt"
    assert described["good"]["synthetic"] is True


def test_pool_missing_model_says_how_to_import(tmp_path: Path, offline_store: None) -> None:
    manifest = (
        '[good.offline]\nname = "not-imported"\nsource = "tiny"\nquantization = "none"\n'
        '[bad.offline]\nname = "not-imported"\nsource = "tiny"\nquantization = "none"\n'
    )
    pool = RunnerPool(_pool_settings(tmp_path, manifest), {"good": GoodRunner, "bad": GoodRunner})
    pool.load_all()
    error = pool.slots["good"].error or ""
    assert "not in the BentoML store" in error
    assert "scripts/import_models.py offline" in error


def test_settings_reject_unknown_runner() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown runner"):
        Settings(runners="embeddings,telepathy")
    assert Settings(runners="embeddings, embeddings").runners == ["embeddings"]


class OneThreadRunner(GoodRunner):
    def load(self) -> None:
        import torch

        torch.set_num_threads(1)  # what `import silero_vad` does, process-wide


def test_pool_restores_torch_threads_a_runner_import_changed(
    tmp_path: Path, offline_store: None
) -> None:
    import torch

    manifest = (
        '[good.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
        '[bad.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
    )
    before = torch.get_num_threads()
    settings = _pool_settings(tmp_path, manifest, threads=2)
    pool = RunnerPool(settings, {"good": OneThreadRunner, "bad": GoodRunner})
    try:
        pool.load_all()
        assert pool.slots["good"].state == "ready"
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_importing_silero_vad_really_sets_one_thread() -> None:
    # The reason for keep_threads: if silero-vad stops doing this, the guard can go.
    import silero_vad

    source = (Path(silero_vad.__file__).parent / "model.py").read_text()
    assert "torch.set_num_threads(1)" in source


# --- residency: lazy loading, the memory budget, idle unload ---------------------------------
import asyncio  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import ClassVar  # noqa: E402

from botmodels import pool as pool_module  # noqa: E402
from botmodels.errors import MemoryBudgetExceeded, RunnerUnavailable  # noqa: E402
from botmodels.pool import BudgetConfigError  # noqa: E402

KINDS = ["a", "b", "c"]
MANIFEST = "".join(
    f'[{k}.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
    for k in KINDS
)


class CountingRunner:
    """A fake model: counts its loads, knows when it is closed, and checks it is never closed
    while it works."""

    dtype = "float32"
    built: ClassVar[list[CountingRunner]] = []
    load_s = 0.0

    def __init__(self, path: Path, quantization: Any, device: Any) -> None:
        self.closed = False
        self.built.append(self)

    def load(self) -> None:
        time.sleep(self.load_s)

    def work(self) -> str:
        assert not self.closed, "a runner was unloaded while serving"
        time.sleep(0.005)
        assert not self.closed, "a runner was unloaded while serving"
        return "ok"

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fakes() -> type[CountingRunner]:
    class Fake(CountingRunner):
        built: ClassVar[list[CountingRunner]] = []

    return Fake


def _residency_pool(
    tmp_path: Path,
    fake: type[CountingRunner],
    monkeypatch: pytest.MonkeyPatch,
    *,
    estimates: dict[str, int] | None = None,
    **kwargs: Any,
) -> RunnerPool:
    sizes = estimates or {}
    settings = _pool_settings(tmp_path, MANIFEST, runners=KINDS, preload=[], **kwargs)
    pool = RunnerPool(settings, dict.fromkeys(KINDS, fake))
    # One known footprint per kind (they share one stored folder): estimate by the loading slot.
    real = pool_module.RunnerPool._make_room

    def make_room(self: RunnerPool, slot: Any, wait_s: float) -> None:
        slot.estimated_bytes = sizes.get(slot.kind, 100)
        real(self, slot, wait_s)

    monkeypatch.setattr(pool_module.RunnerPool, "_make_room", make_room)
    return pool


def test_an_unloaded_runner_is_healthy_and_loads_on_first_use(
    tmp_path: Path,
    offline_store: None,
    fakes: type[CountingRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = _residency_pool(tmp_path, fakes, monkeypatch)
    assert pool.settled  # nothing to preload
    assert pool.slots["a"].state == "unloaded"
    assert pool.usable("a")
    assert not fakes.built
    with pool.acquire("a") as runner:
        assert runner.work() == "ok"
        assert pool.slots["a"].users == 1
    slot = pool.slots["a"]
    assert (slot.state, slot.loads, slot.users) == ("ready", 1, 0)
    described = slot.describe()
    assert described["state"] == "ready"
    assert described["loads"] == 1
    assert described["estimated_bytes"] == 100
    assert described["resident_bytes"] >= 0
    assert isinstance(described["last_used"], float)
    assert pool.slots["b"].describe()["state"] == "unloaded"


def test_concurrent_first_requests_wait_for_one_load(
    tmp_path: Path,
    offline_store: None,
    fakes: type[CountingRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fakes.load_s = 0.3
    pool = _residency_pool(tmp_path, fakes, monkeypatch)
    got: list[Any] = []

    def use() -> None:
        with pool.acquire("a") as runner:
            got.append(runner)

    threads = [threading.Thread(target=use) for _ in range(6)]
    for thread in threads:
        thread.start()

    async def use_async() -> Any:
        async with pool.acquire("a") as runner:
            return runner

    async def burst() -> list[Any]:
        return list(await asyncio.gather(*(use_async() for _ in range(6))))

    got.extend(asyncio.run(burst()))
    for thread in threads:
        thread.join(30)
    assert len(got) == 12
    assert len(fakes.built) == 1
    assert all(r is fakes.built[0] for r in got)
    assert pool.slots["a"].loads == 1


def test_a_load_longer_than_the_wait_answers_503_and_goes_on(
    tmp_path: Path,
    offline_store: None,
    fakes: type[CountingRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fakes.load_s = 0.5
    pool = _residency_pool(tmp_path, fakes, monkeypatch)
    with pytest.raises(RunnerUnavailable) as caught, pool.acquire("a", wait_s=0.05):
        pass
    assert caught.value.code == "runner_loading"
    assert "Retry-After" in caught.value.headers
    assert pool.slots["a"].users == 0
    with pool.acquire("a") as runner:  # the same load, finished
        assert runner is fakes.built[0]
    assert len(fakes.built) == 1


def test_the_budget_unloads_the_least_recently_used_idle_runner(
    tmp_path: Path,
    offline_store: None,
    fakes: type[CountingRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = _residency_pool(tmp_path, fakes, monkeypatch, memory_budget=250)
    with pool.acquire("a"):
        pass
    with pool.acquire("b") as b:
        pass
    with pool.acquire("a"):  # a is now more recently used than b
        pass
    with pool.acquire("c"):
        pass
    slots = pool.slots
    assert (slots["a"].state, slots["b"].state, slots["c"].state) == ("ready", "unloaded", "ready")
    assert slots["b"].evictions == 1
    assert slots["a"].evictions == 0
    assert b.closed
    assert slots["b"].instance is None
    with pool.acquire("b"):  # loads again (unloading a, now the least recently used)
        pass
    assert slots["b"].loads == 2
    assert slots["a"].state == "unloaded"


def test_a_measured_footprint_larger_than_the_estimate_is_what_the_budget_counts(
    tmp_path: Path,
    offline_store: None,
    fakes: type[CountingRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = _residency_pool(tmp_path, fakes, monkeypatch, memory_budget=250)
    with pool.acquire("a"):
        pass
    # as if its load had measured 200 bytes where the files said 100
    pool.slots["a"].resident_bytes = 200
    assert pool.slots["a"].charge == 200
    with pool.acquire("b"):  # 100 + 100 fits by the estimates; 200 + 100 does not
        pass
    assert pool.slots["a"].state == "unloaded"
    assert pool.slots["a"].evictions == 1
    # a footprint measured smaller than the estimate still counts the estimate
    pool.slots["b"].resident_bytes = 10
    assert pool.slots["b"].charge == 100


def test_a_runner_in_use_is_never_unloaded(
    tmp_path: Path,
    offline_store: None,
    fakes: type[CountingRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = _residency_pool(tmp_path, fakes, monkeypatch, memory_budget=250)
    with pool.acquire("a") as a, pool.acquire("b") as b:
        with pytest.raises(MemoryBudgetExceeded) as caught, pool.acquire("c", wait_s=5):
            pass
        assert caught.value.status == 503
        assert caught.value.code == "memory_budget_exceeded"
        assert "BOTMODELS_MEMORY_BUDGET" in caught.value.message
        assert "a 0.0 MiB (in use)" in caught.value.message  # the footprints, named
        assert not a.closed
        assert not b.closed
        assert pool.slots["c"].state == "unloaded"
    assert pool.slots["c"].describe()["error"] == caught.value.message


def test_a_load_waits_for_a_runner_in_use_to_be_released(
    tmp_path: Path,
    offline_store: None,
    fakes: type[CountingRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = _residency_pool(tmp_path, fakes, monkeypatch, memory_budget=150)
    with pool.acquire("a"):
        pass
    released = threading.Event()

    def hold_a() -> None:
        with pool.acquire("a") as a:
            time.sleep(0.3)
            assert not a.closed
            released.set()

    holder = threading.Thread(target=hold_a)
    holder.start()
    time.sleep(0.05)
    with pool.acquire("b") as b:  # waits for a's release, then unloads it
        assert released.is_set()
        assert b.work() == "ok"
    holder.join(10)
    assert pool.slots["a"].state == "unloaded"
    assert pool.slots["a"].evictions == 1


def test_a_model_larger_than_the_budget_is_refused_and_others_serve(
    tmp_path: Path,
    offline_store: None,
    fakes: type[CountingRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = _residency_pool(tmp_path, fakes, monkeypatch, memory_budget=250, estimates={"c": 300})
    with pytest.raises(MemoryBudgetExceeded, match="even alone"), pool.acquire("c"):
        pass
    with pool.acquire("a") as a:
        assert a.work() == "ok"


def test_a_budget_smaller_than_every_model_refuses_to_start(
    tmp_path: Path, offline_store: None, fakes: type[CountingRunner]
) -> None:
    settings = _pool_settings(tmp_path, MANIFEST, runners=KINDS, preload=[], memory_budget=10)
    pool = RunnerPool(settings, dict.fromkeys(KINDS, fakes))
    with pytest.raises(BudgetConfigError, match=r"BOTMODELS_MEMORY_BUDGET=10 bytes .* smallest"):
        pool.plan()
    roomy = _pool_settings(tmp_path, MANIFEST, runners=KINDS, memory_budget=2**40)
    lines = RunnerPool(roomy, dict.fromkeys(KINDS, fakes)).plan()
    assert lines[0].startswith("memory budget: cpu 1048576.0 MiB, gpu unlimited")
    assert any(line.startswith("runner a: preload, estimated") for line in lines)


def test_a_failed_runner_stays_failed_and_others_load(
    tmp_path: Path,
    offline_store: None,
    fakes: type[CountingRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken(CountingRunner):
        def load(self) -> None:
            raise OSError("weights are corrupt")

    settings = _pool_settings(tmp_path, MANIFEST, runners=KINDS, preload=[])
    pool = RunnerPool(settings, {"a": Broken, "b": fakes, "c": fakes})
    for _ in range(2):
        with (
            pytest.raises(RunnerUnavailable, match="failed to load: OSError") as caught,
            pool.acquire("a"),
        ):
            pass
        assert caught.value.code == "runner_failed"
    assert pool.slots["a"].state == "failed"
    assert not pool.usable("a")
    with pool.acquire("b") as b:
        assert b.work() == "ok"


def test_idle_runners_are_unloaded_and_load_again(
    tmp_path: Path,
    offline_store: None,
    fakes: type[CountingRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = _residency_pool(tmp_path, fakes, monkeypatch, idle_unload_s=0.2)
    try:
        pool.start()
        with pool.acquire("a") as first:
            pass
        deadline = time.monotonic() + 10
        while pool.slots["a"].state == "ready" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.slots["a"].state == "unloaded"
        assert first.closed
        assert pool.slots["a"].evictions == 1
        assert pool.usable("a")
        with pool.acquire("a") as second:
            assert second is not first
            assert second.work() == "ok"
    finally:
        pool.stop()


def test_a_burst_across_runners_with_a_tiny_budget_never_fails(
    tmp_path: Path,
    offline_store: None,
    fakes: type[CountingRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Room for one model at a time: every switch unloads the idle one, never one in use.
    pool = _residency_pool(tmp_path, fakes, monkeypatch, memory_budget=150)
    errors: list[BaseException] = []

    async def request(kind: str) -> None:
        async with pool.acquire(kind, wait_s=30) as runner:
            await asyncio.to_thread(runner.work)

    async def burst() -> None:
        results = await asyncio.gather(
            *(request(KINDS[i % 3]) for i in range(36)), return_exceptions=True
        )
        errors.extend(r for r in results if isinstance(r, BaseException))

    asyncio.run(burst())
    assert errors == []
    assert sum(s.evictions for s in pool.slots.values()) >= 2
    assert sum(s.state == "ready" for s in pool.slots.values()) == 1


def test_memory_budget_settings_take_units(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    assert Settings(memory_budget="12GiB").memory_budget == 12 * 2**30
    assert Settings(memory_budget="500MB").memory_budget == 500 * 10**6
    assert Settings(gpu_memory_budget="1024").gpu_memory_budget == 1024
    assert Settings().memory_budget is None
    for bad in ("12 parsecs", "-1GB", "0", "GiB"):
        with pytest.raises(ValidationError, match="not a positive size"):
            Settings(memory_budget=bad)
    assert Settings(preload="all").preloaded("stt")
    monkeypatch.delenv("BOTMODELS_PRELOAD")  # the test session preloads all (conftest)
    assert Settings().preload == ["embeddings"]
    with pytest.raises(ValidationError, match="BOTMODELS_PRELOAD"):
        Settings(preload="embeddings,telepathy")
    tuned = Settings(idle_unload_s=60, vqa_idle_unload_s=0)
    assert (tuned.idle_unload_for("vqa"), tuned.idle_unload_for("stt")) == (0.0, 60.0)


# --- BOTMODELS_MODEL_VARIANTS: another entry of the profile ---------------------------------
def test_a_model_variant_names_the_entry_a_runner_serves(tmp_path: Path) -> None:
    manifest = (
        '[good.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
        '[good.offline-alt]\nname = "image-tiny-sd"\nsource = "tiny"\nquantization = "int8"\n'
        '[bad.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
    )
    settings = _pool_settings(tmp_path, manifest, model_variants={"good": "alt"})
    assert settings.manifest_entry("good") == "offline-alt"
    assert settings.manifest_entry("bad") == "offline"
    assert settings.manifest_entry("good", "gpu") == "gpu-alt"
    pool = RunnerPool(settings, {"good": GoodRunner, "bad": GoodRunner})
    assert pool.slots["good"].tag.startswith("image-tiny-sd")
    assert pool.slots["good"].quantization == "int8"
    assert pool.slots["bad"].tag.startswith("embeddings-tiny-bert")
    missing = _pool_settings(tmp_path, manifest, model_variants={"good": "nope"})
    slot = RunnerPool(missing, {"good": GoodRunner, "bad": GoodRunner}).slots["good"]
    assert slot.state == "failed"
    assert "'offline-nope'" in (slot.error or "")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("image", "is not `runner=variant`"),
        ("image=", "is not `runner=variant`"),
        ("pictures=sdxl-turbo", "unknown runner"),
    ],
)
def test_malformed_model_variants_refuse_to_start(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOTMODELS_MODEL_VARIANTS", value)
    with pytest.raises(ValueError, match=message):
        Settings()
    monkeypatch.setenv("BOTMODELS_MODEL_VARIANTS", " image = sdxl-turbo ,")
    assert Settings().model_variants == {"image": "sdxl-turbo"}


def test_the_import_step_imports_a_runners_variant(
    tmp_path: Path, offline_store: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botmodels.config import get_settings
    from botmodels.store import find_stored
    from scripts.import_models import main

    manifest = tmp_path / "models.toml"
    manifest.write_text(
        '[segment.tiny]\nname = "segment-tiny-segformer"\nsource = "tiny"\nquantization = "none"\n'
        '[segment.tiny-alt]\nname = "segment-tiny-variant"\nsource = "tiny"\n'
        'quantization = "none"\n'
    )
    monkeypatch.setenv("BOTMODELS_MODEL_VARIANTS", "segment=alt")
    get_settings.cache_clear()
    try:
        assert main(["tiny", "--runners", "segment", "--manifest", str(manifest)]) == 0
    finally:
        monkeypatch.delenv("BOTMODELS_MODEL_VARIANTS")
        get_settings.cache_clear()
    assert find_stored("segment-tiny-variant") is not None
