"""Jobs for long generations: submit (an id at once), poll (status, step n of N), fetch the result,
cancel (the pipeline stops at its next step).

Job records live in SQLite (`BOTMODELS_JOBS_DB`, WAL mode) so that they outlive the process: a
finished job's result stays fetchable after a restart until `outputs_max_age_s` (the same
retention as its file), and a job that was queued or running when the process stopped answers
`interrupted` instead of vanishing. The work itself is in memory: an asyncio task per job that
goes through the same admission, batching and runner as botserver's blocking routes.

Other domains' long work runs here too (`submit_work`): the video editor's enhance and
remove-background. Their route checks the request first (a bad one is its 4xx, not a failed
job), then hands over a function that does the work and answers what the blocking route would;
its progress is frames done of the total, and cancellation stops it between frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from starlette.responses import JSONResponse

from botmodels.editor.videoio import Cancelled
from botmodels.errors import BotModelsError, ShuttingDown
from botmodels.generation.front import Control, GenerationFrontend, Kind
from botmodels.generation.schemas import ImageTask, VideoTask

log = logging.getLogger("botmodels.jobs")

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled", "interrupted"]
FINISHED: frozenset[str] = frozenset({"completed", "failed", "cancelled", "interrupted"})
GENERATION_KINDS: frozenset[str] = frozenset({"image", "video"})
# Work of another domain: given the job's control, it answers the blocking route's JSON body
# (with the `file_path` of its output) or raises `Cancelled` once the control is cancelled.
Work = Callable[[Control], Awaitable[dict[str, Any]]]


def _interrupted_error(message: str) -> dict[str, Any]:
    return {
        "message": message,
        "type": "server_error",
        "code": "job_interrupted",
        "param": None,
    }


RESTARTED = _interrupted_error("the server restarted before this job finished; submit it again")
SHUT_DOWN = _interrupted_error("the server shut down before this job finished; submit it again")
# Codes of a runner that could not run the job: its result is a 503 (retry once it is up).
_RUNNER_DOWN = frozenset({"runner_unavailable", "runner_loading", "runner_failed"})
INTERRUPTED_STATUS = 409


def result_status(status: str, error: dict[str, Any]) -> int:
    """The status GET /api/jobs/{id}/result answers for a job that ended with `error`, decided
    once when the job ends and kept in its record: 503 while the runner could not run it, 500
    for a failed job's server error, else 409 (nothing to fetch: an interrupted job is submitted
    again)."""
    if error.get("code") in _RUNNER_DOWN:
        return 503
    if status == "failed" and error.get("type") == "server_error":
        return 500
    return INTERRUPTED_STATUS


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    request     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    step        INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    result      TEXT,
    error       TEXT,
    http_status INTEGER
)
"""


@dataclass
class JobRecord:
    id: str
    kind: str
    status: str
    request: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total_steps: int = 0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    http_status: int | None = None  # what the result route answers for a failed job

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "generation.job" if self.kind in GENERATION_KINDS else "editor.job",
            "kind": self.kind,
            "status": self.status,
            "progress": {
                "step": self.step,
                "total_steps": self.total_steps,
                "fraction": round(self.step / self.total_steps, 4) if self.total_steps else 0.0,
            },
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": self.error,
            "result_url": f"/api/jobs/{self.id}/result",
        }


class JobStore:
    """SQLite job records. Thread-safe: one connection behind a lock (writes are tiny)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._migrate()
            # Whatever was in flight when the last process stopped will never finish.
            self._db.execute(
                "UPDATE jobs SET status = 'interrupted', finished_at = ?, error = ?, "
                "http_status = ? WHERE status IN ('queued', 'running')",
                (time.time(), json.dumps(RESTARTED), INTERRUPTED_STATUS),
            )

    def _migrate(self) -> None:
        """A database from before `http_status` gets the column, and each of its ended jobs the
        status the result route derived from the stored error then (`result_status`)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "http_status" in columns:
            return
        self._db.execute("ALTER TABLE jobs ADD COLUMN http_status INTEGER")
        rows = self._db.execute(
            "SELECT id, status, error FROM jobs WHERE error IS NOT NULL"
        ).fetchall()
        self._db.executemany(
            "UPDATE jobs SET http_status = ? WHERE id = ?",
            [(result_status(status, json.loads(error)), job_id) for job_id, status, error in rows],
        )

    def insert(self, job: JobRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kind, status, request, created_at, http_status) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.kind,
                    job.status,
                    json.dumps(job.request),
                    job.created_at,
                    job.http_status,
                ),
            )

    def update(self, job_id: str, **fields: Any) -> None:
        columns = {
            "status",
            "started_at",
            "finished_at",
            "step",
            "total_steps",
            "result",
            "error",
            "http_status",
        }
        unknown = set(fields) - columns
        if unknown:
            raise ValueError(f"not job columns: {sorted(unknown)}")
        if fields.get("error") is not None and "status" in fields:
            # The result route answers an ended job with the status stored here, once.
            fields.setdefault("http_status", result_status(fields["status"], fields["error"]))
        values = [json.dumps(v) if k in ("result", "error") else v for k, v in fields.items()]
        assignments = ", ".join(f"{k} = ?" for k in fields)  # names from the fixed set above
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ?",  # noqa: S608
                (*values, job_id),
            )

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, kind, status, request, created_at, started_at, finished_at, step, "
                "total_steps, result, error, http_status FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
        if row is None:
            return None
        return JobRecord(
            id=row[0],
            kind=row[1],
            status=row[2],
            request=json.loads(row[3]),
            created_at=row[4],
            started_at=row[5],
            finished_at=row[6],
            step=row[7],
            total_steps=row[8],
            result=json.loads(row[9]) if row[9] else None,
            error=json.loads(row[10]) if row[10] else None,
            http_status=row[11],
        )

    def interrupt(self, job_ids: list[str]) -> None:
        """Mark these jobs interrupted by a shutdown, unless they already finished."""
        with self._lock:
            self._db.executemany(
                "UPDATE jobs SET status = 'interrupted', finished_at = ?, error = ?, "
                "http_status = ? WHERE id = ? AND status IN ('queued', 'running')",
                [
                    (time.time(), json.dumps(SHUT_DOWN), INTERRUPTED_STATUS, job_id)
                    for job_id in job_ids
                ],
            )

    def prune(self, max_age_s: float) -> int:
        """Forget finished jobs older than the retention (their files go at the same age)."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM jobs WHERE status IN ('completed', 'failed', 'cancelled', "
                "'interrupted') AND COALESCE(finished_at, created_at) < ?",
                (time.time() - max_age_s,),
            )
        return int(cursor.rowcount)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class JobManager:
    def __init__(self, store: JobStore, frontend: GenerationFrontend, retention_s: float) -> None:
        self.store = store
        self.frontend = frontend
        self.retention_s = retention_s
        self._controls: dict[str, Control] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._interrupted: set[str] = set()

    async def api_submit(self, kind: Kind, fields: dict[str, Any]) -> JSONResponse:
        """The public job routes: check the request's fields, submit, answer 202 with the job."""
        async with self.frontend.pool.acquire(kind):  # the checks read the model's limits
            task = self.frontend.check_request(kind, fields)
        job = await self.submit(kind, task)
        return JSONResponse(job.public(), status_code=202)

    async def submit(self, kind: Kind, task: ImageTask | VideoTask) -> JobRecord:
        if self.frontend.closing:
            raise self.frontend.shutting_down()
        admission = self.frontend.admission[kind]
        admission.enter()  # 429 now rather than a job that waits forever
        job = JobRecord(
            id="job_" + secrets.token_hex(16),
            kind=kind,
            status="queued",
            request=task.model_dump(exclude={"task_id"}),
            created_at=time.time(),
            total_steps=task.steps,
        )
        try:
            await asyncio.to_thread(self._insert_and_prune, job)
        except BaseException:
            admission.leave()
            raise
        control = Control(on_progress=lambda step, total: self._progress(job.id, step, total))
        control.on_start = lambda total: self._started(job.id, total)
        self._controls[job.id] = control
        runner = asyncio.create_task(self._run(job, task, control))
        self._tasks.add(runner)  # a reference, or the loop may collect the task mid-run
        runner.add_done_callback(self._tasks.discard)
        return job

    async def submit_work(
        self,
        kind: str,
        request: dict[str, Any],
        total: int,
        work: Work,
        release: Callable[[], None] | None = None,
    ) -> JSONResponse:
        """Another domain's job: `request` is what the record keeps of the (checked) body,
        `total` the progress's total, `release` what ends the route's own admission."""
        try:
            if self.frontend.closing:
                raise self.frontend.shutting_down()
            job = JobRecord(
                id="job_" + secrets.token_hex(16),
                kind=kind,
                status="queued",
                request=request,
                created_at=time.time(),
                total_steps=total,
            )
            await asyncio.to_thread(self._insert_and_prune, job)
        except BaseException:
            if release is not None:
                release()
            raise
        control = Control(on_progress=lambda step, total: self._progress(job.id, step, total))
        self._controls[job.id] = control
        runner = asyncio.create_task(self._run_work(job, work, control, release))
        self._tasks.add(runner)
        runner.add_done_callback(self._tasks.discard)
        return JSONResponse(job.public(), status_code=202)

    async def _run_work(
        self,
        job: JobRecord,
        work: Work,
        control: Control,
        release: Callable[[], None] | None,
    ) -> None:
        try:
            await asyncio.to_thread(self._started, job.id, job.total_steps)
            result = await work(control)
            if control.cancelled() and job.id not in self._interrupted:  # as it finished
                self.frontend.outputs.delete(str(result.get("file_path")))
                await self._finish(job.id, "cancelled")
                return
            await self._finish(job.id, "completed", result=result, step=job.total_steps)
        except Cancelled:
            if job.id not in self._interrupted:  # else interrupt_all() wrote the record
                await self._finish(job.id, "cancelled")
        except ShuttingDown:
            await self._finish(job.id, "interrupted", error=SHUT_DOWN)
        except BotModelsError as exc:
            await self._finish(job.id, "failed", error=exc.body()["error"])
        except Exception as exc:
            log.exception("job %s failed", job.id)
            await self._finish(
                job.id,
                "failed",
                error={
                    "message": f"{job.kind} failed: {type(exc).__name__}",
                    "type": "server_error",
                    "code": "job_failed",
                    "param": None,
                },
            )
        finally:
            if release is not None:
                release()
            self._controls.pop(job.id, None)

    def _insert_and_prune(self, job: JobRecord) -> None:
        self.store.insert(job)
        self.store.prune(self.retention_s)

    def _started(self, job_id: str, total: int) -> None:
        control = self._controls.get(job_id)
        if control is not None and control.cancelled():
            return  # cancelled while queued: the record already says so
        self.store.update(job_id, status="running", started_at=time.time(), total_steps=total)

    def _progress(self, job_id: str, step: int, total: int) -> None:
        control = self._controls.get(job_id)
        if control is not None and control.cancelled():
            return  # the record already says cancelled
        self.store.update(job_id, step=step, total_steps=total)

    async def _run(self, job: JobRecord, task: ImageTask | VideoTask, control: Control) -> None:
        kind: Kind = "image" if isinstance(task, ImageTask) else "video"
        started = time.perf_counter()
        try:
            (result,) = await self.frontend.execute(kind, [task], [control])
            interrupted = job.id in self._interrupted
            if interrupted and result.status != "completed":
                return  # interrupt_all() already wrote the record
            if result.status == "cancelled" or (control.cancelled() and not interrupted):
                if result.file_path is not None:
                    self.frontend.outputs.delete(result.file_path)
                await self._finish(job.id, "cancelled")
                return
            # Finished, possibly just as a shutdown began: the picture is there, say so.
            response = self.frontend.response(task, result, time.perf_counter() - started, job.id)
            await self._finish(job.id, "completed", result=response.model_dump(), step=task.steps)
        except ShuttingDown:
            await self._finish(job.id, "interrupted", error=SHUT_DOWN)
        except BotModelsError as exc:
            await self._finish(job.id, "failed", error=exc.body()["error"])
        except Exception as exc:
            log.exception("job %s failed", job.id)
            await self._finish(
                job.id,
                "failed",
                error={
                    "message": f"generation failed: {type(exc).__name__}",
                    "type": "server_error",
                    "code": "generation_failed",
                    "param": None,
                },
            )
        finally:
            self.frontend.admission[kind].leave()
            self._controls.pop(job.id, None)

    async def _finish(self, job_id: str, status: JobStatus, **fields: Any) -> None:
        await asyncio.to_thread(
            self.store.update, job_id, status=status, finished_at=time.time(), **fields
        )

    async def get(self, job_id: str) -> JobRecord | None:
        return await asyncio.to_thread(self.store.get, job_id)

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued or running job; a finished one is answered as it is."""
        job = await self.get(job_id)
        if job is None or job.status in FINISHED:
            return job
        control = self._controls.get(job_id)
        if control is not None:
            control.cancel()
        await self._finish(job_id, "cancelled")
        return await self.get(job_id)

    async def interrupt_all(self) -> list[str]:
        """Shutdown: stop every queued or running job at its next step and mark it
        `interrupted` now, so that a poll before the process exits (or the record after a
        restart) says so. The caller waits for the jobs with `wait_idle`."""
        self.frontend.cancel_all()
        job_ids = [job_id for job_id in self._controls if job_id not in self._interrupted]
        self._interrupted.update(job_ids)
        for job_id in job_ids:
            self._controls[job_id].cancel()
        if job_ids:
            await asyncio.to_thread(self.store.interrupt, job_ids)
            log.warning("shutdown: %d job(s) interrupted", len(job_ids))
        return job_ids

    async def wait_idle(self) -> None:
        """Wait for every job task to end (the drain, after `interrupt_all`)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
