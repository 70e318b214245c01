"""Helpers shared by the benchmarks: service processes on loopback, tables, JSON results."""

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """`shiftrec serve <service>` on a free loopback port, stopped with SIGTERM on exit."""

    def __init__(self, service: str, env: dict[str, str], port: int | None = None, wait: bool = True) -> None:
        self.service = service
        self.wait = wait
        self.port = port or free_port()
        self.env = {**os.environ, "SHIFTREC_LOG_LEVEL": "WARNING", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        shiftrec = Path(sys.executable).with_name("shiftrec")
        self.proc = subprocess.Popen(
            [str(shiftrec), "serve", self.service, "--port", str(self.port)], env=self.env
        )
        if self.wait:
            self.wait_serving()
        return self

    @property
    def service_name(self) -> str:
        return {"ingestion": "shiftrec.v1.IngestionService", "features": "shiftrec.v1.FeatureService",
                "inference": "shiftrec.v1.InferenceService"}[self.service]

    def wait_serving(self, timeout: float = 60) -> None:
        wait_serving(self.target, self.service_name, timeout)

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_serving(target: str, service: str, timeout: float = 60) -> None:
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


def machine() -> dict[str, object]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:,.0f}" if isinstance(c, float) and abs(c) >= 100
                                             else (f"{c:.2f}" if isinstance(c, float) else str(c))
                                             for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def write_json(path: str | Path, payload: dict[str, object]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    print(f"results written to {out}")
