"""Two replicas (two real `bentoml serve`, the offline profile's tiny random image model)
sharing one PostgreSQL database (BOTMODELS_DATABASE_URL) and one outputs folder, each with its
own home: whatever one replica did, the other answers for, and a replica that dies leaves its
jobs `interrupted`, not `running` forever."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from botmodels.auth import sign
from tests.conftest import KEY, Server, auth
from tests.helpers import assert_error

pytestmark = pytest.mark.serve

LEASE_S = 2  # short, so that a dead replica's job is found out in seconds
SHORT = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 1}
# The most steps the model's range allows, at a size that makes each step count: still running
# when it is cancelled or killed.
LONG = {**SHORT, "steps": 100, "width": 256, "height": 256}


@pytest.fixture(scope="module")
def replicas(offline_store: None, postgres: Any) -> Iterator[tuple[Server, Server]]:
    url = postgres.database("replicas")
    outputs = tempfile.mkdtemp(prefix="botmodels-shared-outputs-")
    servers = [
        Server(
            {
                "BOTMODELS_PROFILE": "offline",
                "BOTMODELS_RUNNERS": "image",
                "BOTMODELS_THREADS": "1",
                "BOTMODELS_HOME": tempfile.mkdtemp(prefix=f"botmodels-replica-{name}-"),
                "BOTMODELS_OUTPUTS_DIR": outputs,
                "BOTMODELS_DATABASE_URL": url,
                "BOTMODELS_JOBS_LEASE_S": str(LEASE_S),
            }
        )
        for name in ("a", "b")
    ]
    try:
        for server in servers:
            server.wait_ready()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def _poll(server: Server, job_id: str, until: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{server.url}/api/jobs/{job_id}", headers=auth(), timeout=30)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in until:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}\n{server.output()}"
        time.sleep(0.1)


def _submit(server: Server, body: dict[str, Any]) -> str:
    response = httpx.post(f"{server.url}/api/image/jobs", json=body, headers=auth(), timeout=60)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_a_job_run_by_a_is_polled_fetched_and_its_file_served_by_b(
    replicas: tuple[Server, Server],
) -> None:
    a, b = replicas
    job_id = _submit(a, SHORT)
    done = _poll(b, job_id, {"completed", "failed", "interrupted"})
    assert done["status"] == "completed", done
    assert done["progress"]["step"] == SHORT["steps"]
    result = httpx.get(f"{b.url}/api/jobs/{job_id}/result", headers=auth(), timeout=30)
    assert result.status_code == 200, result.text
    file_path = result.json()["file_path"]
    for server in (b, a):  # written by a, served by either (no key: the name is the secret)
        served = httpx.get(server.url + file_path, timeout=30)
        assert served.status_code == 200
        assert served.headers["content-type"] == "image/png"
        assert served.content.startswith(b"\x89PNG")


def test_a_job_run_by_a_is_cancelled_through_b(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    job_id = _submit(a, LONG)
    deadline = time.monotonic() + 120
    while (job := _poll(b, job_id, {"running"}))["progress"]["step"] < 1:
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    cancelled = httpx.post(f"{b.url}/api/jobs/{job_id}/cancel", headers=auth(), timeout=30)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    result = httpx.get(f"{a.url}/api/jobs/{job_id}/result", headers=auth(), timeout=30)
    assert result.json() == {
        "status": "cancelled",
        "file_path": None,
        "error": None,
        "job_id": job_id,
    }
    # a stopped the long job at its next step: its one pipeline runs the next job
    after = _submit(a, SHORT)
    assert _poll(b, after, {"completed", "failed", "interrupted"})["status"] == "completed"
    final = _poll(a, job_id, {"cancelled"})
    assert final["progress"]["step"] < LONG["steps"]


def test_a_signature_used_on_a_is_refused_on_b(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    ts = int(time.time())
    headers = {
        "X-BotModels-Timestamp": str(ts),
        "X-BotModels-Signature": sign(KEY.encode(), ts, "POST", "/api/ping", b"{}"),
        "content-type": "application/json",
    }
    assert httpx.post(f"{a.url}/api/ping", content=b"{}", headers=headers).status_code == 200
    replay = httpx.post(f"{b.url}/api/ping", content=b"{}", headers=headers)
    error = assert_error(replay, 401)
    assert "replay" in error["message"]


def test_killing_a_mid_job_marks_its_job_interrupted_on_b(replicas: tuple[Server, Server]) -> None:
    """Runs last: a is dead afterwards."""
    a, b = replicas
    job_id = _submit(a, LONG)
    _poll(b, job_id, {"running"})
    import psutil

    # every process of a at once, no drain, no shutdown hook: as a node dies
    processes = [psutil.Process(a.proc.pid), *psutil.Process(a.proc.pid).children(recursive=True)]
    for process in processes:
        os.kill(process.pid, signal.SIGKILL)
    psutil.wait_procs(processes, timeout=10)
    killed = time.monotonic()
    job = _poll(b, job_id, {"interrupted", "completed", "failed", "cancelled"}, timeout=60)
    noticed = time.monotonic() - killed
    assert job["status"] == "interrupted", job
    assert job["error"]["code"] == "job_interrupted"
    assert "replica" in job["error"]["message"]
    assert noticed < 60  # bounded by the lease (seconds here); the figure is not asserted
    result = httpx.get(f"{b.url}/api/jobs/{job_id}/result", headers=auth(), timeout=30)
    assert assert_error(result, 409)["code"] == "job_interrupted"
