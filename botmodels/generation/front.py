"""The image and video generation front: check a request, admit it, run it through the runner's
batchable API, write the file under /outputs, and answer in botserver's or OpenAI's shape.

Flow of one request:
  1. check inputs against the settings' bounds and what the loaded pipeline can do, then fit
     `steps` and `guidance_scale` into the served model's ranges (models.toml, `fit`): a value
     the settings allow but the model is not made for is moved to the nearest end, not refused;
  2. admission: at most `<kind>_max_queue` generations waiting or running per runner, beyond
     that a 429 with a Retry-After estimated from recent generation times;
  3. dispatch through botmodels' dispatcher for the runner's batchable API (`batch_infer`), which
     gathers concurrent requests into one batch; the runner groups that batch by shape and
     gives each request its own seeded generator;
  4. the batch function, in a worker thread, writes each PNG / MP4 under /outputs.
A `Control` per request carries cancellation and progress between the route (or job) and the
runner's step callback, by task id: in-process `batch_infer` passes the task objects as they are.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from botmodels.config import Settings
from botmodels.dispatch import BatchInfer, run_on_runner
from botmodels.errors import (
    InvalidInput,
    NotFoundError,
    Overloaded,
    RunnerUnavailable,
    ShuttingDown,
    runner_errors,
)
from botmodels.generation.schemas import (
    GeneratedFile,
    GenerationResponse,
    ImageData,
    ImagesResponse,
    ImageTask,
    VideoTask,
)
from botmodels.outputs import OutputStore
from botmodels.peers import batch_items
from botmodels.pool import RunnerPool

Kind = Literal["image", "video"]
# Where each kind's files go under /outputs, and their extension.
OUTPUT_FILES: dict[Kind, tuple[str, str]] = {"image": ("images", "png"), "video": ("videos", "mp4")}

IMAGE_BATCH_API = "generate_images"
IMAGE_BATCH_ROUTE = "/runners/image/generate"
VIDEO_BATCH_API = "generate_videos"
VIDEO_BATCH_ROUTE = "/runners/video/generate"
MAX_SEED = 2**63 - 1


# --- per-request control -------------------------------------------------------------------------
class Control:
    """Cancellation and progress for one task; the runner calls it from its worker thread."""

    def __init__(self, on_progress: Callable[[int, int], None] | None = None) -> None:
        self._cancel = threading.Event()
        self.on_progress = on_progress
        self.on_start: Callable[[int], None] | None = None
        self.step = 0
        self.total = 0

    def cancel(self) -> None:
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def start(self, total: int) -> None:
        self.total = total
        if self.on_start is not None:
            self.on_start(total)

    def progress(self, step: int, total: int) -> None:
        self.step, self.total = step, total
        if self.on_progress is not None:
            self.on_progress(step, total)


class Admission:
    """Generations waiting or running for one runner; past the limit, a 429 with Retry-After."""

    def __init__(self, kind: Kind, limit: int, batch_size: int) -> None:
        self.kind = kind
        self.limit = limit
        self.batch_size = batch_size
        self.in_flight = 0
        self.seconds_per_item = 5.0  # until measured
        self._lock = threading.Lock()

    def retry_after(self) -> int:
        batches_ahead = math.ceil(self.in_flight / self.batch_size)
        return max(1, min(600, math.ceil(batches_ahead * self.seconds_per_item)))

    def enter(self, count: int = 1) -> None:
        with self._lock:
            if self.in_flight + count > self.limit:
                raise Overloaded(
                    f"{self.kind} runner busy: {self.in_flight} generations waiting or running "
                    f"(the limit is {self.limit}); retry after the Retry-After seconds",
                    headers={"Retry-After": str(self.retry_after())},
                )
            self.in_flight += count

    def leave(self, count: int = 1) -> None:
        with self._lock:
            self.in_flight -= count

    def observe(self, seconds: float) -> None:
        """Exponential average of one generation's time, for the next Retry-After."""
        self.seconds_per_item = 0.7 * self.seconds_per_item + 0.3 * seconds


@contextlib.contextmanager
def _admitted(admission: Admission, count: int) -> Iterator[None]:
    admission.enter(count)
    try:
        yield
    finally:
        admission.leave(count)


def _write_png(image: Any, path: Path) -> None:
    image.save(path, format="PNG")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- checks --------------------------------------------------------------------------------------
def _int(name: str, value: object, low: int, high: int, rule: str = "") -> int:
    # JSON may carry Infinity and NaN, which float.is_integer() refuses (int() would raise).
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not value.is_integer())
    ):
        raise InvalidInput(f"`{name}` must be an integer; got {value!r}", param=name)
    number = int(value)
    if not low <= number <= high:
        raise InvalidInput(
            f"`{name}` must be between {low} and {high}{rule}; got {number}", param=name
        )
    return number


def _float(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"`{name}` must be a number; got {value!r}", param=name)
    if not low <= value <= high:
        raise InvalidInput(f"`{name}` must be between {low} and {high}; got {value}", param=name)
    return float(value)


def _text(name: str, value: object, limit: int, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"`{name}` must be a string; got {type(value).__name__}", param=name)
    if required and not value.strip():
        raise InvalidInput(f"`{name}` is empty; describe what to generate", param=name)
    if len(value) > limit:
        raise InvalidInput(
            f"`{name}` has {len(value)} characters; the limit is {limit}", param=name
        )
    return value


def _size(name: str, value: object, low: int, high: int, multiple: int) -> int:
    number = _int(name, value, low, high)
    if number % multiple:
        raise InvalidInput(
            f"`{name}` must be divisible by {multiple} (the pipeline's latent grid); got {number}",
            param=name,
        )
    return number


def _seed(value: object) -> int:
    if value is None:
        return secrets.randbelow(2**31)  # reported back, so the picture can be made again
    return _int("seed", value, 0, MAX_SEED)


N = TypeVar("N", int, float)


def fit(value: N, model_range: tuple[N, N] | None, low: N, high: N) -> N:
    """The steps or guidance a generation runs with: a request's value (already within the
    settings' bounds `low`..`high`) moved into the served model's range, so that a caller's
    generic value (botserver's IMAGE always sends guidance 7.5, VIDEO 50 steps) runs as the
    model is made to run, never refused. The settings still win: an operator's bound is a limit
    on the work, the model's range only a recommendation."""
    if model_range is not None:
        value = min(max(value, model_range[0]), model_range[1])
    return min(max(value, low), high)


def parse_size(value: object, default: int) -> tuple[int, int]:
    """OpenAI's `size`: "WIDTHxHEIGHT" (e.g. "512x512")."""
    if value is None:
        return default, default
    if not isinstance(value, str):
        raise InvalidInput(f"`size` must be a string like '512x512'; got {value!r}", param="size")
    parts = value.lower().split("x")
    # ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses or reads.
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise InvalidInput(f"`size` must look like '512x512'; got {value!r}", param="size")
    return int(parts[0]), int(parts[1])


# --- the front -----------------------------------------------------------------------------------
class GenerationFrontend:
    def __init__(self, settings: Settings, pool: RunnerPool, outputs: OutputStore) -> None:
        self.settings = settings
        self.pool = pool
        self.outputs = outputs
        self.batch_infer: BatchInfer | None = None
        self.admission: dict[Kind, Admission] = {
            "image": Admission("image", settings.image_max_queue, settings.image_max_batch_size),
            "video": Admission("video", settings.video_max_queue, settings.video_max_batch_size),
        }
        self._controls: dict[str, Control] = {}
        self._controls_lock = threading.Lock()
        self._closing = False

    def model_name(self, kind: Kind) -> str:
        slot = self.pool.slot(kind)
        return slot.tag.split(":")[0] if slot is not None else kind

    def check_model(self, kind: Kind, model: object) -> None:
        """`model` may be omitted, or name the stored model (with or without its version)."""
        if model is None or model == "":
            return
        if not isinstance(model, str):  # a list or object is not a name (and not hashable)
            raise InvalidInput(
                f"`model` must be a string; got {type(model).__name__}", param="model"
            )
        slot = self.pool.slot(kind)
        names = {kind} | ({slot.tag, slot.tag.split(":")[0]} if slot is not None else set())
        if model not in names:
            raise NotFoundError(
                f"model {model!r} is not served here; the {kind} model is "
                f"{self.model_name(kind)!r} (or omit `model`)",
                param="model",
                code="model_not_found",
            )

    def ranges(self, kind: Kind) -> tuple[tuple[float, float] | None, tuple[int, int] | None]:
        """The served model's (guidance, steps) ranges, from its manifest entry."""
        slot = self.pool.slot(kind)
        if slot is None:
            return None, None
        return slot.guidance_range, slot.steps_range

    # 0. The public routes: service.py's APIs hand over their request model's fields --------
    def check_request(self, kind: Kind, fields: dict[str, Any]) -> ImageTask | VideoTask:
        """An ImageRequest's or VideoRequest's fields: the model, then each field, by hand."""
        fields = dict(fields)
        self.check_model(kind, fields.pop("model", None))
        if kind == "image":
            return self.check_image(**fields)
        return self.check_video(**fields)

    async def api_generate(self, kind: Kind, fields: dict[str, Any]) -> GenerationResponse:
        """botserver's blocking IMAGE / VIDEO routes."""
        async with self.pool.acquire(kind):  # the checks read the loaded model's limits
            task = self.check_request(kind, fields)
        return await self.generate(kind, task)

    async def api_openai_images(self, fields: dict[str, Any], request_base: str) -> ImagesResponse:
        """OpenAI's route: its URLs start with BOTMODELS_PUBLIC_URL, or the request's own base.
        `quality`, `style` and `user` are accepted and ignored."""
        base = str(self.settings.public_url) if self.settings.public_url else request_base
        kept = {k: v for k, v in fields.items() if k not in ("quality", "style", "user")}
        return await self.openai_images(**kept, base_url=base)

    # 1. Check inputs ------------------------------------------------------------------------
    def check_image(
        self,
        *,
        prompt: object,
        negative_prompt: object = None,
        steps: object = None,
        width: object = None,
        height: object = None,
        guidance_scale: object = None,
        seed: object = None,
    ) -> ImageTask:
        s = self.settings
        runner = self.pool.local("image")  # 503 now if not loaded; its limits are needed below
        multiple = int(runner.size_multiple)
        native = int(runner.native_size)
        guidance_range, steps_range = self.ranges("image")
        text = _text("prompt", prompt, s.image_max_prompt_chars, required=True) or ""
        negative = _text(
            "negative_prompt", negative_prompt, s.image_max_prompt_chars, required=False
        )
        check_negative = getattr(runner, "check_negative_prompt", None)  # runners that have one
        if check_negative is not None:
            with runner_errors():  # a model without guidance (FLUX) refuses one: 400, not queued
                check_negative(negative)
        return ImageTask(
            task_id=secrets.token_hex(8),
            prompt=text,
            negative_prompt=negative,
            steps=fit(
                _int(
                    "steps",
                    s.image_default_steps if steps is None else steps,
                    1,
                    s.image_max_steps,
                ),
                steps_range,
                1,
                s.image_max_steps,
            ),
            width=_size(
                "width",
                native if width is None else width,
                s.image_min_size,
                s.image_max_size,
                multiple,
            ),
            height=_size(
                "height",
                native if height is None else height,
                s.image_min_size,
                s.image_max_size,
                multiple,
            ),
            guidance_scale=fit(
                _float(
                    "guidance_scale",
                    s.image_default_guidance if guidance_scale is None else guidance_scale,
                    0.0,
                    s.image_max_guidance,
                ),
                guidance_range,
                0.0,
                s.image_max_guidance,
            ),
            seed=_seed(seed),
        )

    def check_video(
        self,
        *,
        prompt: object,
        negative_prompt: object = None,
        num_frames: object = None,
        fps: object = None,
        steps: object = None,
        width: object = None,
        height: object = None,
        guidance_scale: object = None,
        seed: object = None,
    ) -> VideoTask:
        s = self.settings
        runner = self.pool.local("video")
        multiple = int(runner.size_multiple)
        native = int(runner.native_size)
        # A model may have its own aspect (Wan: 832x480) and frame counts (Wan: 4k+1): the
        # answer reports the count that runs.
        native_width = int(getattr(runner, "native_width", native))
        native_height = int(getattr(runner, "native_height", native))
        fit_frames = getattr(runner, "fit_frames", lambda count, most: count)
        guidance_range, steps_range = self.ranges("video")
        return VideoTask(
            task_id=secrets.token_hex(8),
            prompt=_text("prompt", prompt, s.video_max_prompt_chars, required=True) or "",
            negative_prompt=_text(
                "negative_prompt", negative_prompt, s.video_max_prompt_chars, required=False
            ),
            num_frames=int(
                fit_frames(
                    _int(
                        "num_frames",
                        s.video_default_frames if num_frames is None else num_frames,
                        1,
                        s.video_max_frames,
                    ),
                    s.video_max_frames,
                )
            ),
            fps=_int("fps", s.video_default_fps if fps is None else fps, 1, s.video_max_fps),
            steps=fit(
                _int(
                    "steps",
                    s.video_default_steps if steps is None else steps,
                    1,
                    s.video_max_steps,
                ),
                steps_range,
                1,
                s.video_max_steps,
            ),
            width=_size(
                "width",
                native_width if width is None else width,
                s.video_min_size,
                s.video_max_size,
                multiple,
            ),
            height=_size(
                "height",
                native_height if height is None else height,
                s.video_min_size,
                s.video_max_size,
                multiple,
            ),
            guidance_scale=fit(
                _float(
                    "guidance_scale",
                    s.video_default_guidance if guidance_scale is None else guidance_scale,
                    0.0,
                    s.video_max_guidance,
                ),
                guidance_range,
                0.0,
                s.video_max_guidance,
            ),
            seed=_seed(seed),
        )

    def check_runner_call(self, kind: Kind, payload: dict[str, Any]) -> AbstractContextManager[Any]:
        """`/runners/<kind>/generate` from a peer: the public routes' limits for every task,
        and the same admission (held while the call runs; past the queue limit, a 429)."""
        admission = self.admission[kind]
        setting = f"BOTMODELS_{kind.upper()}_MAX_BATCH_SIZE"
        tasks = batch_items(payload, "tasks", admission.batch_size, setting)
        check = self.check_image if kind == "image" else self.check_video
        fields = ImageTask.model_fields if kind == "image" else VideoTask.model_fields
        for task in tasks:
            check(**{k: task.get(k) for k in fields if k != "task_id"})
        return _admitted(admission, len(tasks))

    # 2. The batch functions (worker thread, called by the batchable APIs) ---------------------
    def _control(self, task_id: str) -> Control | None:
        with self._controls_lock:
            return self._controls.get(task_id)

    def run_image_batch(self, tasks: Sequence[ImageTask]) -> list[GeneratedFile]:
        from runners.image import ImageSpec

        specs = [
            ImageSpec(
                prompt=t.prompt,
                negative_prompt=t.negative_prompt,
                width=t.width,
                height=t.height,
                steps=t.steps,
                guidance_scale=t.guidance_scale,
                seed=t.seed,
            )
            for t in tasks
        ]
        return self._run_batch(
            "image", tasks, specs, lambda _, image: functools.partial(_write_png, image)
        )

    def run_video_batch(self, tasks: Sequence[VideoTask]) -> list[GeneratedFile]:
        from runners.video import VideoSpec, write_mp4

        specs = [
            VideoSpec(
                prompt=t.prompt,
                negative_prompt=t.negative_prompt,
                width=t.width,
                height=t.height,
                num_frames=t.num_frames,
                steps=t.steps,
                guidance_scale=t.guidance_scale,
                seed=t.seed,
            )
            for t in tasks
        ]
        return self._run_batch(
            "video",
            tasks,
            specs,
            lambda task, frames: functools.partial(write_mp4, frames, cast(VideoTask, task).fps),
        )

    def _run_batch(
        self,
        kind: Kind,
        tasks: Sequence[ImageTask | VideoTask],
        specs: Sequence[Any],
        writer: Callable[[ImageTask | VideoTask, Any], Callable[[Path], Any]],
    ) -> list[GeneratedFile]:
        """Run one batch on the local runner (each task under its control, so it can be
        cancelled at a step) and write each result through the output store; `seconds` runs
        until the task's file is written, and feeds the admission estimate."""
        with self.pool.acquire(kind) as runner:  # a peer's call may be the first
            return self._run_held(runner, kind, tasks, specs, writer)

    def _run_held(
        self,
        runner: Any,
        kind: Kind,
        tasks: Sequence[ImageTask | VideoTask],
        specs: Sequence[Any],
        writer: Callable[[ImageTask | VideoTask, Any], Callable[[Path], Any]],
    ) -> list[GeneratedFile]:
        controls = [self._control(t.task_id) for t in tasks]
        for task, control in zip(tasks, controls, strict=True):
            if control is not None:
                control.start(task.steps)
        started = time.perf_counter()
        outputs = runner.generate(specs, controls)
        folder, ext = OUTPUT_FILES[kind]
        results: list[GeneratedFile] = []
        for task, output in zip(tasks, outputs, strict=True):
            if output is None:
                results.append(GeneratedFile(task_id=task.task_id, status="cancelled"))
                continue
            saved = self.outputs.save(folder, writer(task, output), ext)
            results.append(
                GeneratedFile(
                    task_id=task.task_id,
                    status="completed",
                    file_path=saved.url_path,
                    seconds=time.perf_counter() - started,
                )
            )
        self.admission[kind].observe((time.perf_counter() - started) / max(1, len(tasks)))
        return results

    # 3. Dispatch ------------------------------------------------------------------------------
    @property
    def closing(self) -> bool:
        return self._closing

    def cancel_all(self) -> None:
        """Shutdown: refuse new generations and stop every queued or running one at its next
        step (a blocking request is then answered 503, a job ends `interrupted`)."""
        with self._controls_lock:
            self._closing = True
            controls = list(self._controls.values())
        for control in controls:
            control.cancel()

    @staticmethod
    def shutting_down() -> ShuttingDown:
        return ShuttingDown(
            "this instance is shutting down and stopped the generation; retry it (another "
            "instance will answer)",
            headers={"Retry-After": "2"},
        )

    async def execute(
        self, kind: Kind, tasks: Sequence[ImageTask | VideoTask], controls: Sequence[Control]
    ) -> list[GeneratedFile]:
        """Run already-admitted tasks through the runner's batchable API."""
        self.pool.check(kind)  # 503 now, before queueing, if it will not serve here
        with self._controls_lock:
            if self._closing:
                raise self.shutting_down()
            for task, control in zip(tasks, controls, strict=True):
                self._controls[task.task_id] = control
        try:
            run = self.run_image_batch if kind == "image" else self.run_video_batch

            async def in_process(batch: list[ImageTask | VideoTask]) -> list[GeneratedFile]:
                return await asyncio.to_thread(run, batch)  # type: ignore[arg-type]

            try:
                return await run_on_runner(
                    IMAGE_BATCH_API if kind == "image" else VIDEO_BATCH_API,
                    list(tasks),
                    kind=kind,
                    pool=self.pool,
                    batch_infer=self.batch_infer,
                    local=in_process,
                    # no input may exceed a whole batch
                    submit_batch=self.admission[kind].batch_size,
                )
            except (asyncio.CancelledError, RunnerUnavailable) as exc:
                # While the worker shuts down the dispatcher drops its queue: nobody waits for
                # the pictures any more, and the caller is told why.
                if not self._closing or self.batch_infer is None:
                    raise
                for control in controls:
                    control.cancel()
                raise self.shutting_down() from exc
        except asyncio.CancelledError:
            # The caller went away (request timeout): stop the pipeline at its next step, or
            # skip the task if it is still queued.
            for control in controls:
                control.cancel()
            raise
        finally:
            with self._controls_lock:
                for task in tasks:
                    self._controls.pop(task.task_id, None)

    async def generate(
        self, kind: Kind, task: ImageTask | VideoTask, job_id: str | None = None
    ) -> GenerationResponse:
        """botserver's blocking routes: admit, run, answer."""
        admission = self.admission[kind]
        admission.enter()
        try:
            started = time.perf_counter()
            (result,) = await self.execute(kind, [task], [Control()])
        finally:
            admission.leave()
        if result.status == "cancelled" and self._closing:
            raise self.shutting_down()
        return self.response(task, result, time.perf_counter() - started, job_id)

    def response(
        self,
        task: ImageTask | VideoTask,
        result: GeneratedFile,
        seconds: float,
        job_id: str | None = None,
    ) -> GenerationResponse:
        return GenerationResponse(
            status=result.status,
            file_path=result.file_path,
            generation_time=round(seconds, 3),
            timestamp=_now_iso(),
            seed=task.seed,
            width=task.width,
            height=task.height,
            steps=task.steps,
            guidance_scale=task.guidance_scale,
            num_frames=task.num_frames if isinstance(task, VideoTask) else None,
            fps=task.fps if isinstance(task, VideoTask) else None,
            job_id=job_id,
        )

    async def openai_images(
        self,
        *,
        prompt: object,
        model: object,
        n: object,
        size: object,
        response_format: object,
        seed: object,
        steps: object,
        guidance_scale: object,
        negative_prompt: object,
        base_url: str,
    ) -> ImagesResponse:
        """OpenAI `POST /v1/images/generations`; `seed`, `steps`, `guidance_scale` and
        `negative_prompt` are extensions. n images share one pipeline call (seeds seed..seed+n-1
        when a seed is given)."""
        self.check_model("image", model)
        count = _int("n", 1 if n is None else n, 1, self.settings.image_max_n)
        if response_format not in (None, "url", "b64_json"):
            raise InvalidInput(
                f"`response_format` must be 'url' or 'b64_json'; got {response_format!r}",
                param="response_format",
            )
        async with self.pool.acquire("image") as runner:  # the checks read its limits
            width, height = parse_size(size, int(runner.native_size))
            first = self.check_image(
                prompt=prompt,
                negative_prompt=negative_prompt,
                steps=steps,
                width=width,
                height=height,
                guidance_scale=guidance_scale,
                seed=seed,
            )
        if first.seed + count - 1 > MAX_SEED:
            raise InvalidInput(f"`seed` + n - 1 must be at most {MAX_SEED}", param="seed")
        tasks = [
            first.model_copy(update={"task_id": secrets.token_hex(8), "seed": first.seed + i})
            for i in range(count)
        ]
        admission = self.admission["image"]
        admission.enter(count)
        try:
            results = await self.execute("image", tasks, [Control() for _ in tasks])
        finally:
            admission.leave(count)
        if any(result.file_path is None for result in results):  # stopped by a shutdown
            for result in results:
                if result.file_path is not None:
                    self.outputs.delete(result.file_path)
            raise self.shutting_down()
        data: list[ImageData] = []
        for result in results:
            assert result.file_path is not None
            if response_format == "b64_json":
                path = self.outputs.resolve(result.file_path)
                if path is None:
                    raise RunnerUnavailable("a generated file vanished before it was read")
                payload = await asyncio.to_thread(path.read_bytes)
                self.outputs.delete(result.file_path)  # the caller has the bytes; keep nothing
                data.append(ImageData(b64_json=base64.b64encode(payload).decode()))
            else:
                data.append(ImageData(url=base_url.rstrip("/") + result.file_path))
        return ImagesResponse(created=int(time.time()), data=data)
