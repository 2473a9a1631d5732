"""Start and stop a real `bentoml serve` of this project (used by tests and benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A real `bentoml serve` of this project, in its own process group."""

    def __init__(self, env: dict[str, str], target: str = "service:BotModels") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            prefix="botmodels-serve-", suffix=".log", delete=False
        )
        full_env = {**os.environ, **env, "BOTMODELS_PORT": str(self.port)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", target, "--port", str(self.port)],
            cwd=env.get("SERVE_CWD", str(ROOT)),
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 180) -> float:
        import httpx

        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-5000:]

    def worker_pids(self) -> list[int]:
        import psutil

        pids = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if "_bentoml_impl.worker" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.Error:  # a short-lived helper process (tesseract) ended meanwhile
                continue
        return pids

    def stop(self) -> None:
        # SIGTERM the arbiter's whole group: SIGKILL would orphan workers holding the port.
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        Path(self.log.name).unlink(missing_ok=True)


def batch_histogram(metrics: str, method: str) -> tuple[float, float]:
    """(sum, count) of BentoML's adaptive batch sizes for one batchable API, from /metrics."""
    total = count = 0.0
    for line in metrics.splitlines():
        if f'method_name="{method}"' not in line:
            continue
        if line.startswith("bentoml_service_adaptive_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("bentoml_service_adaptive_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def samples(metrics: str, name: str) -> dict[str, float]:
    """Every sample of one metric in /metrics text, keyed by its labels:
    `name{outcome="kept"} 7.0` -> {'outcome="kept"': 7.0}."""
    found: dict[str, float] = {}
    for line in metrics.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, labels = head.partition("{")
        if metric != name:
            continue
        found[labels.rstrip("}")] = float(value)
    return found
