"""The model being served, and hot reload: a new version published in the model directory is
loaded, warmed up and parity-checked off to the side, then swapped in with one assignment;
a broken package is refused (logged, counted) and the current model keeps serving. No gRPC."""

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from services.inference.runtime import ModelRuntime, PackageError
from shared import metrics
from shared import model_package as pkg
from shared.errors import FailedPrecondition

log = logging.getLogger(__name__)


@dataclass
class RegistryStats:
    loads: int = 0
    load_failures: int = 0
    refused_versions: list[str] = field(default_factory=list)


class ModelRegistry:
    """Holds the current ModelRuntime. Requests take `current()` once and use that object to the
    end, so a swap never changes the model under a request in flight."""

    def __init__(self, model_dir: str | Path, *, device: str = "auto", threads: int = 1,
                 batch_max: int = 1, batch_wait_s: float = 0.0, batch_threads: int = 1) -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.threads = threads
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.batch_threads = batch_threads
        self.stats = RegistryStats()
        self._current: ModelRuntime | None = None
        self._refused: set[str] = set()
        self._lock = threading.Lock()  # one load at a time

    def current(self) -> ModelRuntime:
        runtime = self._current
        if runtime is None:
            raise FailedPrecondition(f"no model published in {self.model_dir} yet")
        return runtime

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def refresh(self) -> bool:
        """Load the version LATEST names if it is new and not refused before; True if swapped.

        Any defect of a package (manifest, ONNX file, vocabulary, parity) refuses that version
        once, with one log line, and it is not tried again. With no model loaded yet and LATEST
        refused, the newest older version on disk that loads is served instead."""
        with self._lock:
            version = pkg.latest_version(self.model_dir)
            current = self._current.version if self._current else None
            if version is None or version == current:
                return False
            if version not in self._refused and self._load(version, current):
                return True
            if self._current is not None:
                return False
            return any(self._load(older, None) for older in pkg.older_versions(self.model_dir, version)
                       if older not in self._refused)

    def _load(self, version: str, current: str | None) -> bool:
        """Load, check and swap in `version`; False (and refused) if anything is wrong with it."""
        try:
            if pkg.VERSION_PATTERN.fullmatch(version) is None:
                raise PackageError(f"LATEST names {version!r}, not a version directory")
            runtime = ModelRuntime(self.model_dir / version, device=self.device, threads=self.threads,
                                   batch_max=self.batch_max, batch_wait_s=self.batch_wait_s,
                                   batch_threads=self.batch_threads)
            try:
                if runtime.version != version:
                    raise PackageError(f"manifest version {runtime.version!r} != directory {version!r}")
                runtime.warm_up()
                diff = runtime.check_parity()
            except Exception:
                runtime.close()
                raise
        except Exception as exc:  # noqa: BLE001 - whatever a package does, it is only refused
            self._refused.add(version)
            self.stats.load_failures += 1
            self.stats.refused_versions.append(version)
            metrics.MODEL_LOAD_FAILURES.inc()
            log.error("model refused; not tried again",
                      extra={"version": version, "serving": current, "error": f"{type(exc).__name__}: {exc}"})
            return False
        previous, self._current = self._current, runtime  # the swap: one reference assignment
        if previous is not None:
            previous.close()  # requests still on it finish; its batching thread ends
        self.stats.loads += 1
        metrics.MODEL_LOADS.inc()
        metrics.MODEL_INFO.clear()
        metrics.MODEL_INFO.labels(version, runtime.provider).set(1)
        log.info("model loaded", extra={"version": version, "previous": current,
                                        "provider": runtime.provider, "parity_max_diff": diff,
                                        "items": len(runtime.item_vocab)})
        return True
