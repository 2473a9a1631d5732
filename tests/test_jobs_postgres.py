"""Job records and the replay cache on both backends: the SQLite file (the default) and a real
PostgreSQL server (BOTMODELS_DATABASE_URL). The same tests run on each; what only a shared
database does (replicas, leases, migrations at once, an outage) runs on PostgreSQL."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from botmodels.auth import Authenticator, AuthMiddleware, ReplayCache, sign
from botmodels.database import (
    MIGRATIONS,
    Database,
    DatabaseSettingError,
    PostgresDatabase,
    SqliteDatabase,
)
from botmodels.errors import BotModelsError, DatabaseUnavailable, handle_exception
from botmodels.generation.jobs import JobManager, JobRecord, JobStore
from botmodels.generation.routes import generation_routes
from botmodels.outputs import OutputStore
from tests.helpers import assert_error

PASSWORD_PROBE = "pr0be-s3cret"


@pytest.fixture(params=["sqlite", "postgres"])
def database(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: Any
) -> Iterator[Callable[[], Database]]:
    """Opens connections to one fresh database of the backend: each call is another process
    (or replica) on it."""
    opened: list[Database] = []
    if request.param == "sqlite":
        path = tmp_path / "state.sqlite3"

        def make() -> Database:
            opened.append(SqliteDatabase(path))
            return opened[-1]
    else:
        url = postgres.database("jobs_" + request.node.name.split("[")[0][-40:].lower())

        def make() -> Database:
            opened.append(PostgresDatabase(url))
            return opened[-1]

    yield make
    for db in opened:
        db.close()


def _job(job_id: str, created_at: float | None = None) -> JobRecord:
    return JobRecord(job_id, "image", "queued", {"prompt": "x"}, created_at or time.time())


def test_records_round_trip(database: Callable[[], Database]) -> None:
    store = JobStore(database())
    store.insert(_job("job_a"))
    assert store.start("job_a", 10) is None
    assert store.progress("job_a", 3, 10) is None
    running = store.get("job_a")
    assert running is not None
    assert (running.status, running.step, running.total_steps) == ("running", 3, 10)
    assert running.started_at is not None
    assert store.finish("job_a", "completed", result={"file_path": "/x"}, step=10)
    done = store.get("job_a")
    assert done is not None
    assert (done.status, done.result, done.step) == ("completed", {"file_path": "/x"}, 10)
    assert done.finished_at is not None
    assert store.get("job_nope") is None
    with pytest.raises(ValueError, match="not job columns"):
        store.update("job_a", prompt="x")


def test_an_ended_job_stays_as_it_ended(database: Callable[[], Database]) -> None:
    """A cancel (from any replica) ends the record; the running replica's next writes change
    nothing and tell it the job's status, which is how it learns to stop."""
    store = JobStore(database())
    store.insert(_job("job_b"))
    assert store.finish("job_b", "cancelled")
    assert store.start("job_b", 5) == "cancelled"
    assert store.progress("job_b", 1, 5) == "cancelled"
    assert not store.finish("job_b", "completed", result={"file_path": "/x"})
    record = store.get("job_b")
    assert record is not None
    assert (record.status, record.result) == ("cancelled", None)

    # a job this replica's shutdown marked interrupted may still say it completed
    store.insert(_job("job_c"))
    store.interrupt(["job_c"])
    assert not store.finish("job_c", "completed")
    assert store.finish("job_c", "completed", expect=("queued", "running", "interrupted"))


def test_a_cancel_on_another_replica_reaches_the_owner(database: Callable[[], Database]) -> None:
    a = JobStore(database(), lease_s=30)
    b = JobStore(database(), lease_s=30)
    a.insert(_job("job_d"))
    a.start("job_d", 10)
    seen = b.get("job_d")
    assert seen is not None
    assert seen.status == "running"
    assert b.finish("job_d", "cancelled")
    assert a.heartbeat(["job_d"]) == {"job_d": "cancelled"}
    assert a.progress("job_d", 2, 10) == "cancelled"


def test_a_job_whose_lease_runs_out_is_interrupted(database: Callable[[], Database]) -> None:
    a = JobStore(database(), lease_s=0.6)
    b = JobStore(database(), lease_s=0.6)
    for job_id in ("job_e", "job_f"):
        a.insert(_job(job_id))
    a.start("job_e", 10)
    for _ in range(3):  # renewed: alive well past one lease
        time.sleep(0.3)
        assert a.heartbeat(["job_e", "job_f"]) == {}
    seen = b.get("job_e")
    assert seen is not None
    assert seen.status == "running"
    time.sleep(0.8)  # a stopped renewing: it died
    lost = b.get("job_e")  # the poll finds out at once
    assert lost is not None
    assert lost.status == "interrupted"
    assert lost.error is not None
    assert lost.error["code"] == "job_interrupted"
    assert "replica" in lost.error["message"]
    assert lost.http_status == 409
    assert b.expire() == 1  # the sweep: job_f, which nobody polled
    assert b.expire() == 0
    assert a.progress("job_e", 4, 10) == "interrupted"


def test_retention_deletes_each_old_job_once(database: Callable[[], Database]) -> None:
    stores = [JobStore(database()) for _ in range(2)]
    old = time.time() - 1000
    for i in range(20):
        stores[0].insert(_job(f"job_old{i}", old))
        stores[0].update(f"job_old{i}", status="completed", finished_at=old)
    stores[0].insert(_job("job_new"))
    stores[0].update("job_new", status="completed", finished_at=time.time())
    counts: list[int] = []
    threads = [threading.Thread(target=lambda s=s: counts.append(s.prune(500))) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 20
    assert stores[1].get("job_old3") is None
    assert stores[1].get("job_new") is not None


def test_a_signature_is_accepted_once_across_replicas(database: Callable[[], Database]) -> None:
    a, b = ReplayCache(database()), ReplayCache(database())
    assert a.add_if_new("sig", 100, expires_at=200)
    assert not b.add_if_new("sig", 150, expires_at=250)
    assert not a.add_if_new("sig", 200, expires_at=300)  # at its expiry: still remembered
    assert b.add_if_new("sig", 201, expires_at=400)  # expired: new again
    a.close()
    b.close()


# --- PostgreSQL only ----------------------------------------------------------------------------
def test_replicas_starting_together_migrate_once(postgres: Any) -> None:
    url = postgres.database("migrate_together")
    opened: list[PostgresDatabase] = []
    failures: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(PostgresDatabase(url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert len(opened) == 6
    assert opened[0].execute("SELECT version FROM schema_version").rows == [(len(MIGRATIONS),)]
    assert opened[0].migrate() == len(MIGRATIONS)  # again: nothing to do
    for db in opened:
        db.close()


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{PASSWORD_PROBE}@[::1/db",  # unclosed IPv6 bracket
        f"postgresql://u:{PASSWORD_PROBE}@host:port/db",  # port not a number
        f"postgresql://u:{PASSWORD_PROBE}@host/db?nonsense=1",  # libpq refuses the option
        f"mysql://u:{PASSWORD_PROBE}@host/db",
        f"u:{PASSWORD_PROBE}@host/db",
        f"postgresql://u:{PASSWORD_PROBE}@127.0.0.1:1/db",  # nothing listens there
    ],
)
def test_a_bad_database_url_names_the_setting_and_never_the_password(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from botmodels.config import Settings

    caplog.set_level(logging.DEBUG)
    with pytest.raises(DatabaseSettingError) as raised:
        PostgresDatabase(url, connect_timeout_s=2)
    message = str(raised.value)
    assert "BOTMODELS_DATABASE_URL" in message
    assert PASSWORD_PROBE not in message
    # what a start-up failure prints: the traceback, where libpq's own message is not chained
    assert PASSWORD_PROBE not in "".join(traceback.format_exception(raised.value))
    assert PASSWORD_PROBE not in caplog.text
    settings = Settings(database_url=url)
    assert PASSWORD_PROBE not in repr(settings)
    assert PASSWORD_PROBE not in str(settings.model_dump())


def test_a_wrong_password_is_refused_without_showing_it(postgres: Any) -> None:
    wrong = postgres.url.replace(postgres.password, PASSWORD_PROBE)
    with pytest.raises(DatabaseSettingError) as raised:
        PostgresDatabase(wrong)
    assert "BOTMODELS_DATABASE_URL" in str(raised.value)
    assert "password authentication failed" in str(raised.value)
    assert PASSWORD_PROBE not in str(raised.value)
    assert postgres.password not in str(raised.value)


def test_a_lost_database_answers_503_and_recovers(postgres: Any) -> None:
    """The job routes and signed requests answer 503 with Retry-After while PostgreSQL is
    down, and work again once it is back, on the same connections' pool."""
    db = PostgresDatabase(postgres.database("outage"))
    store = JobStore(db, lease_s=30)
    store.insert(_job("job_g"))
    jobs = JobManager(store, cast(Any, None), 3600)  # the routes below never reach a frontend
    app: Any = Starlette(
        routes=generation_routes(lambda: OutputStore(Path("/nonexistent"), 1, 1024), lambda: jobs),
        exception_handlers={BotModelsError: handle_exception},
    )
    key = b"k" * 20
    signed = TestClient(AuthMiddleware(app, Authenticator([key], replay_path=db), 1000))
    client = TestClient(app)

    calls = iter(range(100))

    def signed_get(path: str) -> Any:
        path += f"?call={next(calls)}"  # each one a new signature, even within one second
        ts = int(time.time())
        headers = {
            "X-BotModels-Timestamp": str(ts),
            "X-BotModels-Signature": sign(key, ts, "GET", path, b""),
        }
        return signed.get(path, headers=headers)

    try:
        assert client.get("/api/jobs/job_g").json()["status"] == "queued"
        assert signed_get("/api/jobs/job_g").status_code == 200
        postgres.stop()
        for response in (
            client.get("/api/jobs/job_g"),
            client.post("/api/jobs/job_g/cancel"),
            client.get("/api/jobs/job_g/result"),
        ):
            error = assert_error(response, 503)
            assert error["code"] == "database_unavailable"
            assert response.headers["retry-after"]
            assert postgres.password not in response.text
        error = assert_error(signed_get("/api/jobs/job_g"), 503)
        assert error["code"] == "replay_cache_unavailable"
        with pytest.raises(DatabaseUnavailable):
            store.prune(1)
    finally:
        postgres.start()
    assert client.get("/api/jobs/job_g").json()["status"] == "queued"
    assert client.post("/api/jobs/job_g/cancel").json()["status"] == "cancelled"
    assert signed_get("/api/jobs/job_g").status_code == 200
    jobs.close()
    db.close()
