"""The three services as real processes on loopback, for end-to-end tests and benchmarks."""

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.bench.common import ServiceProcess


@dataclass
class Stack:
    ingestion: ServiceProcess
    features: ServiceProcess
    inference: ServiceProcess
    env: dict[str, str]


@contextlib.contextmanager
def running_stack(database_url: str, model_dir: Path, **extra_env: str) -> Iterator[Stack]:
    """Ingestion, features and inference (which waits for a model; health NOT_SERVING until one
    is published), stopped with SIGTERM at the end."""
    env = {"SHIFTREC_DATABASE_URL": database_url, "SHIFTREC_MODEL_DIR": str(model_dir),
           "SHIFTREC_MODEL_POLL_SECONDS": "0.5", **extra_env}
    with ServiceProcess("ingestion", env) as ingestion, ServiceProcess("features", env) as features:
        env["SHIFTREC_FEATURES_TARGET"] = features.target
        with ServiceProcess("inference", env, wait=False) as inference:
            yield Stack(ingestion, features, inference, env)


def shiftrec(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run the `shiftrec` command line; returns stdout, raises on a non-zero exit."""
    command = [str(Path(sys.executable).with_name("shiftrec")), *args]
    done = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def write_config(path: Path, overrides: dict[str, object]) -> Path:
    path.write_text(json.dumps(overrides))
    return path
