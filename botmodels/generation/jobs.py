"""Jobs for long generations: submit (an id at once), poll (status, step n of N), fetch the result,
cancel (the pipeline stops at its next step).

Job records live in SQLite (`BOTMODELS_JOBS_DB`, WAL mode) so that they outlive the process: a
finished job's result stays fetchable after a restart until `outputs_max_age_s` (the same
retention as its file), and a job that was queued or running when the process stopped answers
`interrupted` instead of vanishing. The work itself is in memory: an asyncio task per job that
goes through the same admission, batching and runner as botserver's blocking routes.

With `BOTMODELS_DATABASE_URL`, the records are in the PostgreSQL database that replicas share:
any replica answers a poll, a cancel or a result; the replica running a job renews a lease on it
and learns of a cancel from the record; a job whose replica died is marked `interrupted` once its
lease runs out (`JobStore`).

Other domains' long work runs here too (`submit_work`): the video editor's enhance and
remove-background. Their route checks the request first (a bad one is its 4xx, not a failed
job), then hands over a function that does the work and answers what the blocking route would;
its progress is frames done of the total, and cancellation stops it between frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from starlette.responses import JSONResponse

from botmodels.config import Settings
from botmodels.database import Database, SqliteDatabase, shared_database
from botmodels.editor.videoio import Cancelled
from botmodels.errors import BotModelsError, DatabaseUnavailable, ShuttingDown
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
REPLICA_LOST = _interrupted_error(
    "the replica running this job stopped before it finished; submit it again"
)
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
    http_status INTEGER,
    owner       TEXT,
    lease_until REAL
)
"""
_COLUMNS = frozenset(
    {
        "status",
        "started_at",
        "finished_at",
        "step",
        "total_steps",
        "result",
        "error",
        "http_status",
    }
)


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


ACTIVE: tuple[str, ...] = ("queued", "running")
_SELECT = (
    "SELECT id, kind, status, request, created_at, started_at, finished_at, step, total_steps, "
    "result, error, http_status, lease_until FROM jobs"
)


class JobStore:
    """Job records on a `Database` (botmodels/database.py): a SQLite file by default, or the
    PostgreSQL database replicas share. Thread-safe; every call blocks (run it off the loop).

    With `lease_s` (the shared database), each record names the replica that runs it (`owner`)
    and a lease (`lease_until`) that the replica renews (`heartbeat`) while the job is in its
    memory. A queued or running job whose lease has run out belongs to a replica that stopped:
    any replica marks it `interrupted` (`expire`, and `get` before answering). Without leases
    (one process on its file), whatever was in flight when the last process stopped is marked
    `interrupted` when the file is opened.

    A job that ended stays as it ended: `finish` and the progress writes change only a record
    still queued or running (the one exception, a job that completed just as this replica's
    shutdown marked it interrupted, is the caller's `expect`). So the replica running a job
    learns that another one cancelled it from the progress write that changed nothing.
    """

    def __init__(
        self,
        db: Database | Path,
        *,
        lease_s: float | None = None,
        owner: str | None = None,
    ) -> None:
        self.db = SqliteDatabase(db) if isinstance(db, Path) else db
        self.path = db if isinstance(db, Path) else None
        self.lease_s = lease_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        if isinstance(self.db, SqliteDatabase):
            self.db.executescript(_SCHEMA)
            self._migrate_sqlite()
        if not self.db.shared:
            # Whatever was in flight when the last process stopped will never finish.
            self.db.execute(
                "UPDATE jobs SET status = 'interrupted', finished_at = ?, error = ?, "
                "http_status = ? WHERE status IN ('queued', 'running')",
                (time.time(), json.dumps(RESTARTED), INTERRUPTED_STATUS),
            )

    def _migrate_sqlite(self) -> None:
        """A file from before `http_status` gets the column, and each of its ended jobs the
        status the result route derived from the stored error then (`result_status`); one from
        before leases gets their columns (empty: a file's jobs have no lease)."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)").rows}
        for name, kind in (("owner", "TEXT"), ("lease_until", "REAL")):
            if name not in columns:
                self.db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        if "http_status" in columns:
            return
        self.db.execute("ALTER TABLE jobs ADD COLUMN http_status INTEGER")
        rows = self.db.execute("SELECT id, status, error FROM jobs WHERE error IS NOT NULL").rows
        self.db.executemany(
            "UPDATE jobs SET http_status = ? WHERE id = ?",
            [(result_status(status, json.loads(error)), job_id) for job_id, status, error in rows],
        )

    def _lease(self) -> float | None:
        return None if self.lease_s is None else time.time() + self.lease_s

    def insert(self, job: JobRecord) -> None:
        self.db.execute(
            "INSERT INTO jobs (id, kind, status, request, created_at, http_status, owner, "
            "lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.id,
                job.kind,
                job.status,
                json.dumps(job.request),
                job.created_at,
                job.http_status,
                self.owner if self.lease_s is not None else None,
                self._lease(),
            ),
        )

    @staticmethod
    def _assignments(fields: dict[str, Any]) -> tuple[str, list[Any]]:
        unknown = set(fields) - _COLUMNS
        if unknown:
            raise ValueError(f"not job columns: {sorted(unknown)}")
        if fields.get("error") is not None and "status" in fields:
            # The result route answers an ended job with the status stored here, once.
            fields.setdefault("http_status", result_status(fields["status"], fields["error"]))
        values = [json.dumps(v) if k in ("result", "error") else v for k, v in fields.items()]
        return ", ".join(f"{k} = ?" for k in fields), values  # names from the fixed set

    def update(self, job_id: str, **fields: Any) -> None:
        assignments, values = self._assignments(fields)
        self.db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?",  # noqa: S608
            (*values, job_id),
        )

    def finish(
        self, job_id: str, status: str, *, expect: tuple[str, ...] = ACTIVE, **fields: Any
    ) -> bool:
        """End the job as `status` if its record is still in one of `expect` (queued or
        running): False when it had already ended (cancelled or interrupted elsewhere)."""
        assignments, values = self._assignments(
            {"status": status, "finished_at": time.time(), **fields}
        )
        marks = ", ".join("?" for _ in expect)
        changed = self.db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({marks})",  # noqa: S608
            (*values, job_id, *expect),
        ).rowcount
        return changed == 1

    def start(self, job_id: str, total: int) -> str | None:
        """Mark a queued job running; None, or the status it has if it is no longer queued."""
        changed = self.db.execute(
            "UPDATE jobs SET status = 'running', started_at = ?, total_steps = ?, "
            "lease_until = COALESCE(?, lease_until) WHERE id = ? AND status = 'queued'",
            (time.time(), total, self._lease(), job_id),
        ).rowcount
        return None if changed else self._status(job_id)

    def progress(self, job_id: str, step: int, total: int) -> str | None:
        """Record step n of N; None, or the job's status if it has ended (cancelled elsewhere:
        the caller stops it)."""
        changed = self.db.execute(
            "UPDATE jobs SET step = ?, total_steps = ? WHERE id = ? "
            "AND status IN ('queued', 'running')",
            (step, total, job_id),
        ).rowcount
        return None if changed else self._status(job_id)

    def _status(self, job_id: str) -> str | None:
        rows = self.db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).rows
        return str(rows[0][0]) if rows else "missing"

    def heartbeat(self, job_ids: list[str]) -> dict[str, str]:
        """Renew this replica's lease on `job_ids`; the ones that have ended meanwhile (a
        cancel on another replica), with their status."""
        if not job_ids:
            return {}
        marks = ", ".join("?" for _ in job_ids)
        self.db.execute(
            "UPDATE jobs SET lease_until = ? WHERE owner = ? "  # noqa: S608 - placeholders only
            f"AND status IN ('queued', 'running') AND id IN ({marks})",
            (self._lease(), self.owner, *job_ids),
        )
        rows = self.db.execute(
            f"SELECT id, status FROM jobs WHERE id IN ({marks})",  # noqa: S608
            tuple(job_ids),
        ).rows
        statuses = {str(job_id): str(status) for job_id, status in rows}
        return {
            job_id: statuses.get(job_id, "missing")
            for job_id in job_ids
            if statuses.get(job_id) not in ACTIVE
        }

    def expire(self, job_id: str | None = None) -> int:
        """Mark `interrupted` every queued or running job (or this one) whose lease has run
        out: its replica stopped renewing it. Idempotent: replicas may run it together."""
        now = time.time()
        sql = (
            "UPDATE jobs SET status = 'interrupted', finished_at = ?, error = ?, "
            "http_status = ? WHERE status IN ('queued', 'running') AND lease_until < ?"
        )
        params: tuple[Any, ...] = (now, json.dumps(REPLICA_LOST), INTERRUPTED_STATUS, now)
        if job_id is not None:
            sql, params = sql + " AND id = ?", (*params, job_id)
        return self.db.execute(sql, params).rowcount

    def get(self, job_id: str) -> JobRecord | None:
        rows = self.db.execute(f"{_SELECT} WHERE id = ?", (job_id,)).rows
        if not rows:
            return None
        row = rows[0]
        if row[2] in ACTIVE and row[12] is not None and row[12] < time.time():
            self.expire(job_id)  # its replica is gone: say so now, not at the next sweep
            return self.get(job_id)
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
        self.db.executemany(
            "UPDATE jobs SET status = 'interrupted', finished_at = ?, error = ?, "
            "http_status = ? WHERE id = ? AND status IN ('queued', 'running')",
            [
                (time.time(), json.dumps(SHUT_DOWN), INTERRUPTED_STATUS, job_id)
                for job_id in job_ids
            ],
        )

    def prune(self, max_age_s: float) -> int:
        """Forget finished jobs older than the retention (their files go at the same age). One
        idempotent DELETE: replicas running it at once delete each row once between them."""
        return self.db.execute(
            "DELETE FROM jobs WHERE status IN ('completed', 'failed', 'cancelled', "
            "'interrupted') AND COALESCE(finished_at, created_at) < ?",
            (time.time() - max_age_s,),
        ).rowcount

    def close(self) -> None:
        if isinstance(self.db, SqliteDatabase):
            self.db.close()  # a shared database is the process's, closed with it


def job_store(settings: Settings) -> JobStore:
    """The settings' job store: on the replicas' PostgreSQL database, with leases, when
    BOTMODELS_DATABASE_URL is set; else the SQLite file (BOTMODELS_JOBS_DB)."""
    database = shared_database(settings)
    if database is None:
        return JobStore(settings.jobs_path)
    return JobStore(database, lease_s=settings.jobs_lease_s)


class JobManager:
    def __init__(self, store: JobStore, frontend: GenerationFrontend, retention_s: float) -> None:
        self.store = store
        self.frontend = frontend
        self.retention_s = retention_s
        self._controls: dict[str, Control] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._interrupted: set[str] = set()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        if store.lease_s is not None:
            self._keeper = threading.Thread(
                target=self._keep_leases, name="botmodels-job-leases", daemon=True
            )
            self._keeper.start()

    def _keep_leases(self) -> None:
        """Shared database: renew the lease on this replica's jobs every third of the lease,
        stop those another replica cancelled, and mark `interrupted` the jobs of replicas whose
        lease ran out (every replica does; the UPDATE is idempotent)."""
        assert self.store.lease_s is not None
        warned = False
        while not self._stop.wait(self.store.lease_s / 3):
            try:
                for job_id, status in self.store.heartbeat(list(self._controls)).items():
                    self._ended_elsewhere(job_id, status)
                expired = self.store.expire()
                if expired:
                    log.warning("%d job(s) of a stopped replica marked interrupted", expired)
                warned = False
            except DatabaseUnavailable as exc:
                if not warned:  # once per outage
                    log.warning("job leases not renewed: %s", exc.message)
                    warned = True

    def _ended_elsewhere(self, job_id: str, status: str) -> None:
        """The record of a job this replica runs has ended (cancelled through another replica,
        or marked interrupted while its lease could not be renewed): stop it at its next step;
        the record stays as it is."""
        control = self._controls.get(job_id)
        if control is None:
            return
        if status == "interrupted":
            self._interrupted.add(job_id)
        control.cancel()

    def close(self) -> None:
        """Stop renewing leases (the process is exiting)."""
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(5)

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
            if not await self._finish(job.id, "completed", result=result, step=job.total_steps):
                self.frontend.outputs.delete(str(result.get("file_path")))  # ended elsewhere
        except Cancelled:
            if job.id not in self._interrupted:  # else interrupt_all() wrote the record
                await self._finish(job.id, "cancelled")
        except ShuttingDown:
            await self._finish(job.id, "interrupted", error=SHUT_DOWN)
        except BotModelsError as exc:
            await self._finish(job.id, "failed", error=exc.body()["error"])
        except Exception as exc:  # the job's record says failed; the log has the traceback
            log.exception("job %s failed", job.id)
            await self._failed(job.id, exc, f"{job.kind} failed", "job_failed")
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
        try:
            status = self.store.start(job_id, total)
        except DatabaseUnavailable as exc:  # the job runs on; its lease says whether it lives
            log.warning("job %s: start not recorded: %s", job_id, exc.message)
            return
        if status is not None:
            self._ended_elsewhere(job_id, status)

    def _progress(self, job_id: str, step: int, total: int) -> None:
        control = self._controls.get(job_id)
        if control is not None and control.cancelled():
            return  # the record already says cancelled
        try:
            status = self.store.progress(job_id, step, total)
        except DatabaseUnavailable as exc:
            log.warning("job %s: progress not recorded: %s", job_id, exc.message)
            return
        if status is not None:
            self._ended_elsewhere(job_id, status)

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
            recorded = await self._finish(
                job.id, "completed", result=response.model_dump(), step=task.steps
            )
            if not recorded and result.file_path is not None:  # cancelled elsewhere meanwhile
                self.frontend.outputs.delete(result.file_path)
        except ShuttingDown:
            await self._finish(job.id, "interrupted", error=SHUT_DOWN)
        except BotModelsError as exc:
            await self._finish(job.id, "failed", error=exc.body()["error"])
        except Exception as exc:  # the job's record says failed; the log has the traceback
            log.exception("job %s failed", job.id)
            await self._failed(job.id, exc, "generation failed", "generation_failed")
        finally:
            self.frontend.admission[kind].leave()
            self._controls.pop(job.id, None)

    async def _failed(self, job_id: str, exc: Exception, what: str, code: str) -> None:
        """Record a job that an unexpected error ended: by the error's type only."""
        error = {
            "message": f"{what}: {type(exc).__name__}",
            "type": "server_error",
            "code": code,
            "param": None,
        }
        await self._finish(job_id, "failed", error=error)

    async def _finish(self, job_id: str, status: JobStatus, **fields: Any) -> bool:
        """Record how a job of this replica ended, unless its record ended first (False). A
        completed job that this replica's shutdown marked interrupted is recorded completed:
        the file is there. While the shared database is unreachable, tried again for up to a
        lease; past it the lease runs out and the job is marked interrupted."""
        expect = ACTIVE
        if status == "completed" and job_id in self._interrupted:
            expect = (*ACTIVE, "interrupted")
        deadline = time.monotonic() + (self.store.lease_s or 0)
        while True:
            try:
                return await asyncio.to_thread(
                    self.store.finish, job_id, status, expect=expect, **fields
                )
            except DatabaseUnavailable as exc:
                if time.monotonic() >= deadline:
                    log.error("job %s: could not record it %s: %s", job_id, status, exc.message)
                    return False
                await asyncio.sleep(1)

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
        # On another replica's job, the record is the message: its progress write or lease
        # renewal finds it cancelled and stops it.
        await asyncio.to_thread(self.store.finish, job_id, "cancelled")
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
            try:
                await asyncio.to_thread(self.store.interrupt, job_ids)
            except DatabaseUnavailable as exc:  # their leases run out instead
                log.error("shutdown: jobs not marked interrupted: %s", exc.message)
            log.warning("shutdown: %d job(s) interrupted", len(job_ids))
        return job_ids

    async def wait_idle(self) -> None:
        """Wait for every job task to end (the drain, after `interrupt_all`)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
