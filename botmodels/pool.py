"""Runner lifecycle: which runners are enabled, where each one's model is, loading, and state.

Each enabled runner is either local (its model is loaded from the store in a background thread
at start-up, under a lock) or remote (`BOTMODELS_<RUNNER>_URL`: a botmodels serving it elsewhere).
A runner that fails to load is reported, named, with its error; the others keep serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from botmodels.config import Quantization, Settings
from botmodels.device import Device, keep_threads, pick_device, set_threads
from botmodels.errors import RunnerUnavailable
from botmodels.registry import KINDS
from botmodels.store import ManifestError, find_stored, load_manifest, spec_for

log = logging.getLogger("botmodels.pool")

State = Literal["pending", "loading", "ready", "failed", "remote"]
Factory = Callable[[Path, Quantization, Device], Any]


@dataclass
class RunnerSlot:
    kind: str
    tag: str
    quantization: Quantization
    remote_url: str | None = None
    state: State = "pending"
    error: str | None = None
    device: Device | None = None
    instance: Any = None
    labels: dict[str, str] = field(default_factory=dict)
    load_seconds: float | None = None
    # The manifest's ranges for a generation model (None where it declares none).
    guidance_range: tuple[float, float] | None = None
    steps_range: tuple[int, int] | None = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "runner": self.kind,
            "state": self.state,
            "loaded": self.state == "ready",
            "store_tag": self.tag,
            "quantization": self.quantization,
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
            }
        )
        compute = getattr(self.instance, "compute", None)  # how a batch runs, where it varies
        if isinstance(compute, str):
            info["compute"] = compute
        if self.error is not None:
            info["error"] = self.error
        return info


class RunnerPool:
    def __init__(self, settings: Settings, factories: Mapping[str, Factory]) -> None:
        self.settings = settings
        self.factories = factories
        self.slots: dict[str, RunnerSlot] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        manifest = load_manifest(settings.manifest)
        for kind in settings.runners:
            remote = settings.remote_url(kind)
            try:
                spec = spec_for(manifest, kind, settings.profile)
            except ManifestError as exc:
                if remote is None and kind in KINDS and KINDS[kind].optional:
                    log.info("runner %s: no model in profile %s; off", kind, settings.profile)
                    continue  # not a failure: the kind's routes do without it
                self.slots[kind] = RunnerSlot(kind, "?", "none", state="failed", error=str(exc))
                continue
            quant: Quantization = (
                getattr(settings, f"{kind}_quantization", None) or spec.quantization
            )
            self.slots[kind] = RunnerSlot(
                kind,
                spec.tag,
                quant,
                remote_url=remote,
                state="remote" if remote else "pending",
                guidance_range=spec.guidance,
                steps_range=spec.steps,
            )

    # -- loading ---------------------------------------------------------------------------
    def load_all(self) -> None:
        """Blocking: load every local runner once. Runs in a background thread."""
        with self._lock:
            pending = [s for s in self.slots.values() if s.state == "pending"]
            if pending:
                set_threads(self.settings.threads)
            for slot in pending:
                self._load(slot)
                keep_threads(self.settings.threads)  # a runner's imports may have changed it
        self._done.set()

    def _load(self, slot: RunnerSlot) -> None:
        slot.state = "loading"
        started = time.perf_counter()
        try:
            stored = find_stored(slot.tag)
            if stored is None:
                raise ManifestError(
                    f"model {slot.tag} is not in the BentoML store; import it with "
                    f"`python scripts/import_models.py {self.settings.profile}`"
                )
            slot.tag = str(stored.tag)
            slot.labels = dict(stored.info.labels)
            slot.device = pick_device(self.settings.device)
            runner = self.factories[slot.kind](Path(stored.path), slot.quantization, slot.device)
            runner.load()
            slot.instance = runner
            slot.state = "ready"
        except Exception as exc:
            log.exception("runner %s failed to load", slot.kind)
            slot.state = "failed"
            slot.error = f"{type(exc).__name__}: {exc}"
        slot.load_seconds = round(time.perf_counter() - started, 3)

    @property
    def settled(self) -> bool:
        """No runner is still pending or loading."""
        return all(s.state not in ("pending", "loading") for s in self.slots.values())

    # -- use ---------------------------------------------------------------------------------
    def local(self, kind: str) -> Any:
        """The loaded runner, or a 503 that says why there is none."""
        slot = self.slots.get(kind)
        if slot is None:
            raise RunnerUnavailable(
                f"runner {kind!r} is not enabled here; add it to BOTMODELS_RUNNERS",
                code="runner_disabled",
            )
        if slot.state == "ready":
            return slot.instance
        if slot.state == "failed":
            raise RunnerUnavailable(
                f"runner {kind!r} failed to load: {slot.error}", code="runner_failed"
            )
        raise RunnerUnavailable(
            f"runner {kind!r} is still loading; retry shortly",
            code="runner_loading",
            headers={"Retry-After": "2"},
        )

    def slot(self, kind: str) -> RunnerSlot | None:
        return self.slots.get(kind)
