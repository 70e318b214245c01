"""The README's start-up, raced: ingestion, features and inference launched at the same moment
on one fresh SQLite file (each migrates it at start) all come up, round after round."""

import time
from contextlib import ExitStack
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.processes import SERVICE_NAMES, ServiceProcess
from shared.clients import open_channel


def health(target: str, service: str) -> int | None:
    """The health status, or None while nothing answers."""
    try:
        with open_channel(target) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=1).status
    except grpc.RpcError:
        return None


def test_three_services_started_at_once_on_one_fresh_sqlite_file_all_come_up(tmp_path: Path) -> None:
    for attempt in range(3):
        root = tmp_path / f"round-{attempt}"
        root.mkdir()
        env = {"SHIFTREC_DATABASE_URL": f"sqlite:///{root / 'store.db'}", "SHIFTREC_MODEL_DIR": str(root / "models")}
        with ExitStack() as stack:
            services = [stack.enter_context(ServiceProcess(name, env, wait=False, log_path=root / f"{name}.log"))
                        for name in ("ingestion", "features", "inference")]
            deadline = time.monotonic() + 60
            status: dict[str, int | None] = {}
            while time.monotonic() < deadline:
                status = {s.service: health(s.target, SERVICE_NAMES[s.service]) for s in services}
                exited = {s.service: s.proc.poll() for s in services if s.proc is not None and s.proc.poll() is not None}
                assert exited == {}, f"round {attempt}: {exited} exited: " + "".join(
                    (root / f"{name}.log").read_text()[-2000:] for name in exited)
                if None not in status.values():
                    break
                time.sleep(0.2)
            serving = health_pb2.HealthCheckResponse.SERVING
            # inference has no model yet: NOT_SERVING, but up and answering
            assert status == {"ingestion": serving, "features": serving,
                              "inference": health_pb2.HealthCheckResponse.NOT_SERVING}, status
