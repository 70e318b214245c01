"""The services as local processes on loopback: start `shiftrec serve …`, wait for health,
stop with SIGTERM. Used by `shiftrec demo`, the end-to-end tests and the benchmarks."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE_NAMES = {
    "ingestion": "shiftrec.v1.IngestionService",
    "features": "shiftrec.v1.FeatureService",
    "inference": "shiftrec.v1.InferenceService",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shiftrec_command() -> str:
    """The `shiftrec` entry point installed beside this interpreter."""
    return str(Path(sys.executable).with_name("shiftrec"))


def wait_serving(target: str, service: str, timeout: float = 60) -> None:
    """Block until the health service reports `service` SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} at {target} not SERVING after {timeout}s")
            time.sleep(0.2)


class ServiceProcess:
    """`shiftrec serve <service>` on a free loopback port, stopped with SIGTERM on exit."""

    def __init__(
        self, service: str, env: dict[str, str], port: int | None = None, wait: bool = True,
        log_path: Path | None = None,
    ) -> None:
        self.service = service
        self.wait = wait
        self.port = port or free_port()
        self.env = {**os.environ, "SHIFTREC_LOG_LEVEL": "WARNING", **env}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def service_name(self) -> str:
        return SERVICE_NAMES[self.service]

    def __enter__(self) -> Self:
        stderr = self.log_path.open("ab") if self.log_path else None
        self.proc = subprocess.Popen(
            [shiftrec_command(), "serve", self.service, "--port", str(self.port)], env=self.env, stderr=stderr
        )
        if self.wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 60) -> None:
        wait_serving(self.target, self.service_name, timeout)

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Stack:
    ingestion: ServiceProcess
    features: ServiceProcess
    inference: ServiceProcess
    env: dict[str, str]


@contextlib.contextmanager
def running_stack(
    database_url: str, model_dir: Path, log_dir: Path | None = None, **extra_env: str
) -> Iterator[Stack]:
    """Ingestion, features and inference (which reports NOT_SERVING until a model is published
    in `model_dir`), all stopped with SIGTERM at the end."""
    env = {"SHIFTREC_DATABASE_URL": database_url, "SHIFTREC_MODEL_DIR": str(model_dir),
           "SHIFTREC_MODEL_POLL_SECONDS": "0.5", **extra_env}
    logs = {name: (log_dir / f"{name}.log" if log_dir else None) for name in SERVICE_NAMES}
    with ServiceProcess("ingestion", env, log_path=logs["ingestion"]) as ingestion, \
            ServiceProcess("features", env, log_path=logs["features"]) as features:
        env["SHIFTREC_FEATURES_TARGET"] = features.target
        with ServiceProcess("inference", env, wait=False, log_path=logs["inference"]) as inference:
            yield Stack(ingestion, features, inference, env)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 1800, echo: bool = False) -> str:
    """Run the `shiftrec` command line; returns stdout, raises on a non-zero exit."""
    done = subprocess.run(
        [shiftrec_command(), *args], env={**os.environ, **(env or {})}, capture_output=not echo,
        text=True, timeout=timeout, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"shiftrec {' '.join(args)} failed ({done.returncode}):\n{(done.stderr or '')[-3000:]}")
    return done.stdout or ""
