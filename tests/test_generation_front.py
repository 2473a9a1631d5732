"""Generation pieces without HTTP: the output store, job records across a restart, the tiny
runners (grouping by shape, per-item seeds, cancellation at the next step, memory), the MP4."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from botmodels.errors import InvalidInput, RunnerUnavailable
from botmodels.generation.jobs import JobRecord, JobStore
from botmodels.outputs import OutputStore
from tests.helpers import Recorder


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """The tiny pipelines are too small to split across threads: on this shared 2-core machine
    two torch threads made each call ~4x slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- outputs -----------------------------------------------------------------------------------
def test_output_names_are_random_and_resolve(tmp_path: Path) -> None:
    store = OutputStore(tmp_path, max_age_s=60, max_total_bytes=10**6)
    path, url = store.new_path("images", ".png")
    _, other_url = store.new_path("images", ".png")
    assert url != other_url
    assert url == f"/outputs/images/{path.name}"
    assert len(path.stem) == 32  # 128 bits of hex
    path.write_bytes(b"png")
    assert store.resolve(url) == path.resolve()
    assert store.resolve(other_url) is None  # not written yet
    with pytest.raises(ValueError, match="kind"):
        store.new_path("../x", ".png")
    with pytest.raises(ValueError, match="suffix"):
        store.new_path("images", "/../.png")


def test_resolve_refuses_traversal_and_links(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    store = OutputStore(root, max_age_s=60, max_total_bytes=10**6)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    (root / "images").mkdir(parents=True)
    link = root / "images" / ("a" * 32 + ".png")
    link.symlink_to(secret)
    page = root / "images" / ("b" * 32 + ".html")  # a real file, but not a known output type
    page.write_bytes(b"<script></script>")
    for url in (
        f"/outputs/images/{link.name}",  # a link out of the root
        "/outputs/images/../../secret.png",
        "/outputs/../secret.png",
        "/outputs/images/" + "a" * 31 + ".png",
        "/outputs/images/" + "a" * 32 + ".png/..",
        f"/outputs/images/{page.name}",
    ):
        assert store.resolve(url) is None, url


def test_an_encoder_writes_an_output_the_same_way(tmp_path: Path) -> None:
    """PNGs and MP4s are written by their encoders at a path: atomically, like bytes, and an
    encoder that fails leaves no file behind."""
    store = OutputStore(tmp_path, max_age_s=3600, max_total_bytes=2**20)
    saved = store.save("images", lambda path: path.write_bytes(b"\x89PNG"), "png")
    assert store.resolve(saved.url_path) == saved.path.resolve()
    assert saved.path.read_bytes() == b"\x89PNG"

    def broken(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.save("images", broken, "png")
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [saved.path.name]


def test_prune_by_age_then_by_total_size(tmp_path: Path) -> None:
    store = OutputStore(tmp_path, max_age_s=100, max_total_bytes=25)
    made = []
    for age in (500, 50, 40, 30):
        path, url = store.new_path("images", ".png")
        path.write_bytes(b"x" * 10)
        os.utime(path, (time.time() - age, time.time() - age))
        made.append(url)
    store.prune()
    # 500 s old: past the age limit; then 30 bytes > 25: the oldest of the rest (50 s) goes
    assert [store.resolve(u) is not None for u in made] == [False, False, True, True]


# --- job records -------------------------------------------------------------------------------
def test_job_records_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db)
    now = time.time()
    store.insert(JobRecord("job_done", "image", "queued", {"prompt": "a"}, now))
    store.update("job_done", status="completed", finished_at=now, result={"file_path": "/x"})
    store.insert(JobRecord("job_running", "video", "queued", {"prompt": "b"}, now))
    store.update("job_running", status="running", step=3, total_steps=10)
    store.insert(JobRecord("job_queued", "image", "queued", {"prompt": "c"}, now))
    store.close()

    reopened = JobStore(db)  # what a restarted process does
    done = reopened.get("job_done")
    assert done is not None
    assert (done.status, done.result) == ("completed", {"file_path": "/x"})
    for job_id in ("job_running", "job_queued"):
        job = reopened.get(job_id)
        assert job is not None
        assert job.status == "interrupted"
        assert job.error is not None
        assert job.error["code"] == "job_interrupted"
        assert job.http_status == 409  # its result: nothing to fetch, submit it again
    running = reopened.get("job_running")
    assert running is not None
    assert (running.step, running.total_steps) == (3, 10)
    assert reopened.get("job_nope") is None


def test_job_records_from_before_the_status_column_keep_their_answers(tmp_path: Path) -> None:
    """A database written before records stored their result status: opening it adds the
    column and gives each ended job the status its result was answered with then."""
    db = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(db)
    old.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, "
        "request TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL, "
        "step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL DEFAULT 0, "
        "result TEXT, error TEXT)"
    )

    def error(type_: str, code: str) -> str:
        return json.dumps({"message": "m", "type": type_, "code": code, "param": None})

    rows = [
        ("job_loading", "failed", error("service_unavailable", "runner_loading")),
        ("job_broke", "failed", error("server_error", "generation_failed")),
        ("job_refused", "failed", error("invalid_request_error", "invalid_input")),
        ("job_stopped", "interrupted", error("server_error", "job_interrupted")),
        ("job_done", "completed", None),
    ]
    old.executemany(
        "INSERT INTO jobs (id, kind, status, request, created_at, error) "
        "VALUES (?, 'image', ?, '{}', 0, ?)",
        rows,
    )
    old.commit()
    old.close()

    store = JobStore(db)
    statuses = {}
    for job_id, *_ in rows:
        job = store.get(job_id)
        assert job is not None
        statuses[job_id] = job.http_status
    assert statuses == {
        "job_loading": 503,
        "job_broke": 500,
        "job_refused": 409,
        "job_stopped": 409,
        "job_done": None,
    }
    store.close()
    JobStore(db).close()  # migrated once: opening it again changes nothing


def test_job_retention(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    old = time.time() - 1000
    store.insert(JobRecord("job_old", "image", "queued", {}, old))
    store.update("job_old", status="completed", finished_at=old)
    store.insert(JobRecord("job_new", "image", "queued", {}, time.time()))
    store.update("job_new", status="completed", finished_at=time.time())
    assert store.prune(max_age_s=500) == 1
    assert store.get("job_old") is None
    assert store.get("job_new") is not None
    with pytest.raises(ValueError, match="not job columns"):
        store.update("job_new", prompt="x")


# --- runners -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_runner(tiny_runner: Callable[..., Any]) -> Any:
    return tiny_runner("image")


def _spec(**changes: Any) -> Any:
    from runners.image import ImageSpec

    base: dict[str, Any] = {
        "prompt": "a cat",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance_scale": 5.0,
        "seed": 1,
    }
    return ImageSpec(**{**base, **changes})


def test_same_shape_requests_share_one_pipeline_call(image_runner: Any) -> None:
    calls: list[int] = []
    pipe = image_runner._pipe
    original = type(pipe).__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(kwargs["prompt"]))
        return original(self, *args, **kwargs)

    specs = [_spec(seed=1), _spec(seed=2, width=96), _spec(seed=3), _spec(seed=4)]
    type(pipe).__call__ = spy
    try:
        images = image_runner.generate(specs)
    finally:
        type(pipe).__call__ = original
    assert calls == [3, 1]  # 64x64 x3 in one call, then 96x64
    assert [im.size for im in images] == [(64, 64), (96, 64), (64, 64), (64, 64)]
    # each item's noise comes from its own generator: batch mates do not change it
    (alone,) = image_runner.generate([_spec(seed=3)])
    np.testing.assert_allclose(np.asarray(alone, int), np.asarray(images[2], int), atol=1)


def test_progress_and_cancel_at_the_next_step(image_runner: Any) -> None:
    done = Recorder()
    image_runner.generate([_spec(steps=3)], [done])
    assert done.steps == [(1, 3), (2, 3), (3, 3)]

    stop = Recorder(cancel_after=1)
    (result,) = image_runner.generate([_spec(steps=50)], [stop])
    assert result is None
    assert stop.steps == [(1, 50)]  # stopped right after the step during which it was cancelled


def test_a_request_cancelled_while_queued_never_runs(image_runner: Any) -> None:
    queued = Recorder(cancel_after=0)
    assert image_runner.generate([_spec()], [queued]) == [None]
    assert queued.steps == []


def test_one_cancelled_request_does_not_stop_its_batch_mates(image_runner: Any) -> None:
    stop, keep = Recorder(cancel_after=1), Recorder()
    results = image_runner.generate([_spec(seed=1), _spec(seed=2)], [stop, keep])
    assert results[0] is None
    assert results[1] is not None
    assert len(keep.steps) == 2


def test_no_memory_growth_over_50_generations(image_runner: Any) -> None:
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    small = {"width": 32, "height": 32, "steps": 1, "guidance_scale": 0.0}  # fast: 50 calls
    for seed in range(5):  # warm-up: allocator pools, lazy kernels
        image_runner.generate([_spec(seed=seed, **small)])
    gc.collect()
    before = process.memory_info().rss
    for seed in range(50):
        image_runner.generate([_spec(seed=seed, **small)])
    gc.collect()
    growth = process.memory_info().rss - before
    # A leak of one 64x64 image plus activations per call would be >= 50 x ~1 MB.
    assert growth < 20 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB over 50 generations"


def test_video_runner_and_mp4(tmp_path: Path, tiny_runner: Callable[..., Any]) -> None:
    av = pytest.importorskip("av")
    from runners.video import VideoSpec, write_mp4

    runner = tiny_runner("video")
    spec = VideoSpec("a boat", 64, 64, num_frames=5, steps=2, guidance_scale=5.0, seed=9)
    (frames,) = runner.generate([spec])
    assert frames is not None
    assert frames.shape == (5, 64, 64, 3)
    assert frames.dtype == np.uint8
    (again,) = runner.generate([spec])
    assert again is not None
    np.testing.assert_array_equal(frames, again)
    out = tmp_path / "v.mp4"
    write_mp4(frames, 24, out)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == 24
        assert len(list(container.decode(video=0))) == 5


def test_mp4_keeps_the_pictures(tmp_path: Path) -> None:
    """The random pipeline makes noise, H.264's worst case; a smooth moving gradient shows that
    what comes back is the same picture, frame for frame."""
    av = pytest.importorskip("av")
    from runners.video import write_mp4

    ramp = np.linspace(0, 255, 96, dtype=np.float64)
    frames = np.stack(
        [
            np.stack(np.broadcast_arrays(ramp[None, :] + 8 * i, ramp[:, None], 128 + 0 * ramp), -1)
            for i in range(7)
        ]
    )
    frames = np.clip(frames[:, :64, :96], 0, 255).astype(np.uint8)
    out = tmp_path / "ramp.mp4"
    write_mp4(frames, 5, out)
    with av.open(str(out)) as container:
        assert container.streams.video[0].average_rate == 5
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == (7, 64, 96, 3)
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 3


def test_4bit_on_cpu_is_refused_with_a_reason(tiny_runner: Callable[..., Any]) -> None:
    runner = tiny_runner("image", quantization="4bit", load=False)
    with pytest.raises(RuntimeError, match="4bit needs a CUDA GPU"):
        runner.load()


def test_int8_on_cpu_shrinks_the_weights(image_runner: Any) -> None:
    from runners.image import ImageRunner

    quantized = ImageRunner(image_runner.model_dir, quantization="int8", device="cpu")
    quantized.load()
    assert quantized.weight_bytes < image_runner.weight_bytes
    (image,) = quantized.generate([_spec()])
    assert image is not None
    assert image.size == (64, 64)


def test_a_model_that_is_not_a_string_is_a_400() -> None:
    """`model` is a name: a list or object is bad input (it used to be a 500: unhashable)."""
    from typing import cast

    from botmodels.config import Settings
    from botmodels.errors import InvalidInput, NotFoundError
    from botmodels.generation.front import GenerationFrontend

    class Pool:
        def slot(self, kind: str) -> None:
            return None

    frontend = GenerationFrontend(Settings(), cast(Any, Pool()), cast(Any, None))
    frontend.check_model("image", None)
    frontend.check_model("image", "image")
    bad: object
    for bad in ([], {}, 5, ["image"]):
        with pytest.raises(InvalidInput, match="`model` must be a string") as raised:
            frontend.check_model("image", bad)
        assert raised.value.param == "model"
    with pytest.raises(NotFoundError):
        frontend.check_model("image", "dall-e-3")


# --- shutdown ----------------------------------------------------------------------------------
class _OnePool:
    """The one runner GenerationFrontend asks for, without a RunnerPool."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def local(self, kind: str) -> Any:
        return self.runner

    def check(self, kind: str) -> None:
        return None

    def acquire(self, kind: str) -> Any:
        return contextlib.nullcontext(self.runner)  # a lease, sync and async, on a loaded runner

    def slot(self, kind: str) -> None:
        return None


def test_shutdown_interrupts_jobs_and_stops_blocking_generations(
    image_runner: Any, tmp_path: Path
) -> None:
    """A running job stops at its next step and is `interrupted` (in the store, before it even
    stops), a queued blocking generation is answered ShuttingDown, and new work is refused."""
    from botmodels.config import get_settings
    from botmodels.errors import ShuttingDown
    from botmodels.generation.front import GenerationFrontend
    from botmodels.generation.jobs import JobManager

    async def run() -> None:
        pool: Any = _OnePool(image_runner)  # the methods the frontend calls
        outputs = OutputStore(tmp_path / "out", 3600, 2**30)
        frontend = GenerationFrontend(get_settings(), pool, outputs)
        jobs = JobManager(JobStore(tmp_path / "jobs.sqlite3"), frontend, 3600)

        def task() -> Any:
            return frontend.check_image(prompt="x", steps=100, width=64, height=64)

        job = await jobs.submit("image", task())
        deadline = time.monotonic() + 60
        while (record := jobs.store.get(job.id)) is None or record.step < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        blocking = asyncio.create_task(frontend.generate("image", task()))
        await asyncio.sleep(0.1)  # queued behind the job (one pipeline at a time)

        assert await jobs.interrupt_all() == [job.id]
        marked = jobs.store.get(job.id)
        assert marked is not None
        assert marked.status == "interrupted"
        await asyncio.wait_for(jobs.wait_idle(), 60)
        with pytest.raises(ShuttingDown):
            await asyncio.wait_for(blocking, 60)

        final = jobs.store.get(job.id)
        assert final is not None
        assert final.status == "interrupted"
        assert final.error is not None
        assert final.error["code"] == "job_interrupted"
        assert "shut down" in final.error["message"]
        assert final.step < 100
        with pytest.raises(ShuttingDown):
            await jobs.submit("image", task())
        with pytest.raises(ShuttingDown):
            await frontend.generate("image", task())
        assert frontend.admission["image"].in_flight == 0

    asyncio.run(run())


@pytest.mark.parametrize(
    ("raised", "code", "status"),
    [
        (RunnerUnavailable("loading", code="runner_loading"), "runner_loading", 503),
        (RunnerUnavailable("off", code="runner_disabled"), "runner_disabled", 409),
        (InvalidInput("refused by the runner"), "invalid_input", 409),
        (RuntimeError("broke"), "generation_failed", 500),
    ],
)
def test_a_failed_job_keeps_the_status_its_result_answers(
    tmp_path: Path, raised: Exception, code: str, status: int
) -> None:
    """The result route answers a failed job with the status in its record, set when it
    failed: 503 while its runner could not run it, 500 for a server error, else 409."""
    from botmodels.config import get_settings
    from botmodels.generation.front import GenerationFrontend
    from botmodels.generation.jobs import JobManager
    from botmodels.generation.schemas import ImageTask

    async def run() -> None:
        outputs = OutputStore(tmp_path / "out", 3600, 2**30)
        frontend = GenerationFrontend(get_settings(), cast(Any, _OnePool(None)), outputs)

        async def fail(*_: Any) -> list[Any]:
            raise raised

        setattr(frontend, "execute", fail)  # noqa: B010 - the runner's failure, without one
        jobs = JobManager(JobStore(tmp_path / "jobs.sqlite3"), frontend, 3600)
        task = ImageTask(
            task_id="t", prompt="x", width=64, height=64, steps=1, guidance_scale=0, seed=0
        )
        job = await jobs.submit("image", task)
        await asyncio.wait_for(jobs.wait_idle(), 60)
        record = jobs.store.get(job.id)
        assert record is not None
        assert record.error is not None
        assert (record.status, record.error["code"], record.http_status) == (
            "failed",
            code,
            status,
        )

    asyncio.run(run())


@pytest.mark.parametrize("size", ["²x64", "٣٢x64", "64x", "x64", "64x64x64", "-64x64", " 64x64"])
def test_openai_size_takes_ascii_digits_only(size: str) -> None:
    """`size` is WIDTHxHEIGHT in ASCII digits; other Unicode digits were a 500 (int() refuses
    "²") or read as numbers ("٣٢" as 32)."""
    from botmodels.errors import InvalidInput
    from botmodels.generation.front import parse_size

    with pytest.raises(InvalidInput, match="512x512") as raised:
        parse_size(size, 512)
    assert raised.value.param == "size"
    assert parse_size("64X128", 512) == (64, 128)


# --- model ranges: what a request runs with ---------------------------------------------------
@pytest.mark.parametrize(
    ("value", "model_range", "low", "high", "used"),
    [
        (7.5, (0.0, 0.0), 0.0, 30.0, 0.0),  # botserver's IMAGE guidance on a Turbo model
        (50, (1, 4), 1, 100, 4),  # botserver's VIDEO steps on a Turbo-like range
        (50, (10, 25), 1, 100, 25),  # ... and on ModelScope's
        (2, (10, 25), 1, 100, 10),  # too few for the model: raised to its floor
        (3, (1, 4), 1, 100, 3),  # inside the range: as asked
        (7.5, None, 0.0, 30.0, 7.5),  # no declared range: only the settings bound it
        (50, (10, 25), 1, 5, 5),  # the operator's bound wins over the model's floor
        (20.0, (1.0, 15.0), 0.0, 10.0, 10.0),  # and over its ceiling
    ],
)
def test_fit_moves_a_value_into_the_model_range_within_the_settings(
    value: float, model_range: Any, low: float, high: float, used: float
) -> None:
    from botmodels.generation.front import fit

    assert fit(value, model_range, low, high) == used
    assert type(fit(value, model_range, low, high)) is type(value)


class _RangedPool(_OnePool):
    """One runner, and a slot with the served model's ranges (as RunnerPool fills from the
    manifest)."""

    def __init__(self, runner: Any, guidance: Any, steps: Any) -> None:
        super().__init__(runner)
        self.ranged = SimpleNamespace(
            tag="image-tiny-sd:x", guidance_range=guidance, steps_range=steps
        )

    def slot(self, kind: str) -> Any:
        return self.ranged


def _ranged_frontend(runner: Any, tmp_path: Path, guidance: Any, steps: Any) -> Any:
    from botmodels.config import get_settings
    from botmodels.generation.front import GenerationFrontend

    pool: Any = _RangedPool(runner, guidance, steps)
    return GenerationFrontend(get_settings(), pool, OutputStore(tmp_path, 3600, 2**30))


def test_check_fits_botserver_values_and_defaults_into_the_model_range(
    image_runner: Any, tmp_path: Path
) -> None:
    """botserver's IMAGE body (guidance 7.5) and VIDEO body (steps 50) run as a Turbo model is
    made to; an omitted value's default is fitted the same way; a value inside runs as asked."""
    frontend = _ranged_frontend(image_runner, tmp_path, (0.0, 0.0), (1, 4))
    image = frontend.check_image(prompt="x", steps=4, width=64, height=64, guidance_scale=7.5)
    assert (image.steps, image.guidance_scale) == (4, 0.0)
    video = frontend.check_video(prompt="x", num_frames=4, fps=8, steps=50)
    assert (video.steps, video.guidance_scale) == (4, 0.0)  # default guidance 9.0 fitted too
    inside = frontend.check_image(prompt="x", steps=3, guidance_scale=0)
    assert (inside.steps, inside.guidance_scale) == (3, 0.0)

    wide = _ranged_frontend(image_runner, tmp_path, (1.0, 15.0), (10, 25))
    video = wide.check_video(prompt="x", steps=50, guidance_scale=0.5)
    assert (video.steps, video.guidance_scale) == (25, 1.0)
    default = wide.check_image(prompt="x")  # BOTMODELS_IMAGE_DEFAULT_STEPS 4, guidance 0
    assert (default.steps, default.guidance_scale) == (10, 1.0)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("steps", 0, "`steps` must be between 1 and 100; got 0"),
        ("steps", 101, "`steps` must be between 1 and 100; got 101"),
        ("steps", 2.5, "`steps` must be an integer; got 2.5"),
        ("steps", "4", "`steps` must be an integer; got '4'"),
        ("steps", True, "`steps` must be an integer; got True"),
        ("guidance_scale", -1, "`guidance_scale` must be between 0.0 and 30.0; got -1"),
        ("guidance_scale", 31, "`guidance_scale` must be between 0.0 and 30.0; got 31"),
        ("guidance_scale", "7.5", "`guidance_scale` must be a number; got '7.5'"),
        ("guidance_scale", float("nan"), "`guidance_scale` must be a number; got nan"),
    ],
)
def test_malformed_values_are_refused_before_any_fitting(
    image_runner: Any, tmp_path: Path, field: str, value: object, needle: str
) -> None:
    """A value the settings' checks refuse keeps its 400: fitting applies only to values that
    are well formed and within the settings' bounds."""
    frontend = _ranged_frontend(image_runner, tmp_path, (0.0, 0.0), (1, 4))
    for check in (frontend.check_image, frontend.check_video):
        with pytest.raises(InvalidInput) as raised:
            check(prompt="x", **{field: value})
        assert raised.value.message == needle
        assert raised.value.param == field


def test_manifest_ranges_reach_the_pool_slot_and_describe(tmp_path: Path) -> None:
    """The served model's ranges come from its manifest entry, through the slot, to
    /api/models; an entry without them is bounded by the settings only."""
    from botmodels.config import Settings
    from botmodels.pool import RunnerPool
    from botmodels.store import load_manifest

    real = load_manifest(Path(__file__).resolve().parent.parent / "models.toml")
    for profile in ("offline", "cpu", "gpu", "tiny"):
        for kind in ("image", "video"):
            spec = real[kind][profile]
            assert spec.guidance is not None, (kind, profile)
            assert spec.steps is not None, (kind, profile)
    assert (real["image"]["cpu"].guidance, real["image"]["cpu"].steps) == ((0.0, 0.0), (1, 4))
    assert (real["image"]["tiny"].guidance, real["image"]["tiny"].steps) == ((0.0, 0.0), (1, 4))

    manifest = tmp_path / "models.toml"
    manifest.write_text(
        '[image.tiny]\nname = "a"\nsource = "tiny"\nquantization = "none"\n'
        "guidance = [0, 0.5]\nsteps = [2, 4]\n"
        '[video.tiny]\nname = "b"\nsource = "tiny"\nquantization = "none"\n'
    )
    settings = Settings.model_construct(
        **{
            **Settings().model_dump(),
            "manifest": manifest,
            "profile": "tiny",
            "runners": ["image", "video"],
        }
    )
    pool = RunnerPool(settings, {})
    image, video = pool.slots["image"], pool.slots["video"]
    assert (image.guidance_range, image.steps_range) == ((0.0, 0.5), (2, 4))
    assert (video.guidance_range, video.steps_range) == (None, None)
    described = image.describe()
    assert (described["guidance_range"], described["steps_range"]) == ([0.0, 0.5], [2, 4])
    assert "guidance_range" not in video.describe()


@pytest.mark.parametrize(
    "line",
    [
        "steps = [0, 4]",
        "steps = [4, 1]",
        "steps = [1.5, 4]",
        "steps = [1, true]",
        "steps = 4",
        "steps = [1, 2, 3]",
        "guidance = [-1.0, 0.0]",
        "guidance = [2.0, 1.0]",
        "guidance = [0.0, inf]",
        "guidance = [0.0, nan]",
        'guidance = ["0", 1]',
    ],
)
def test_manifest_refuses_a_malformed_range_naming_the_entry(tmp_path: Path, line: str) -> None:
    from botmodels.store import ManifestError, load_manifest

    manifest = tmp_path / "models.toml"
    manifest.write_text(
        f'[image.cpu]\nname = "a"\nsource = "tiny"\nquantization = "none"\n{line}\n'
    )
    key = line.split()[0]
    with pytest.raises(ManifestError, match=rf"image\.cpu: {key} must be \[low, high\]"):
        load_manifest(manifest)
