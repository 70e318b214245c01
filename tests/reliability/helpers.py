"""Fault-injection tools for the reliability suites: restartable service processes on a fixed
port (kill -9 and start again), a loopback TCP proxy that can be cut and restored, event
factories, store fingerprints, tiny model packages and a session ledger of what was measured.

Everything here talks to 127.0.0.1 only, and every wait is bounded."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text

from app.processes import free_port, wait_serving
from shared import model_package as pkg
from shared.store import EventStore, create_store_engine
from shiftrec.v1 import common_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_ROOT / "var" / "bench"

SERVICE_NAMES = {
    "ingestion": "shiftrec.v1.IngestionService",
    "features": "shiftrec.v1.FeatureService",
    "inference": "shiftrec.v1.InferenceService",
}


# -- the ledger: what each suite injected and measured, written to var/bench at session end ------
@dataclass
class Ledger:
    fuzz_requests: Counter[str] = field(default_factory=Counter)  # rpc -> requests sent
    fuzz_codes: Counter[str] = field(default_factory=Counter)  # status code -> count
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, name: str, **values: Any) -> None:
        self.entries.setdefault(name, {}).update(values)

    def count_fuzz(self, rpc: str, code: str) -> None:
        self.fuzz_requests[rpc] += 1
        self.fuzz_codes[code] += 1

    def write(self, directory: Path = BENCH_DIR) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fuzz = {"total_requests": sum(self.fuzz_requests.values()),
                "requests_by_rpc": dict(sorted(self.fuzz_requests.items())),
                "status_codes": dict(sorted(self.fuzz_codes.items()))}
        if self.fuzz_requests:
            (directory / "fuzz.json").write_text(json.dumps(fuzz, indent=2))
        if self.entries or self.fuzz_requests:
            (directory / "reliability.json").write_text(json.dumps({"fuzz": fuzz, **self.entries}, indent=2))


LEDGER = Ledger()


# -- processes --------------------------------------------------------------------------------------
class Proc:
    """`shiftrec serve <service>` on a fixed loopback port that survives restarts, so clients
    reconnect to the same address. `kill9()` is SIGKILL (no graceful stop, no flush)."""

    def __init__(self, service: str, env: dict[str, str], port: int | None = None, log_dir: Path | None = None) -> None:
        self.service = service
        self.port = port or free_port()
        self.env = {**os.environ, "SHIFTREC_LOG_LEVEL": "WARNING", "SHIFTREC_BIND_HOST": "127.0.0.1", **env}
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait: bool = True, timeout: float = 90) -> "Proc":
        shiftrec = Path(sys.executable).with_name("shiftrec")
        log = subprocess.DEVNULL
        if self.log_dir is not None:
            log = open(self.log_dir / f"{self.service}-{self.starts}.log", "wb")  # noqa: SIM115 - owned by Popen
        self.proc = subprocess.Popen([str(shiftrec), "serve", self.service, "--port", str(self.port)],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        self.starts += 1
        if wait:
            self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.service} exited with {self.proc.returncode} before serving")
            try:
                wait_serving(self.target, SERVICE_NAMES[self.service], timeout=min(5.0, timeout))
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.kills += 1

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not stopped within 30 s; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process from /proc (no psutil needed); None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


# -- a TCP proxy that can be cut ----------------------------------------------------------------------
class TcpProxy:
    """Forwards 127.0.0.1:<port> to an upstream address, one pair of threads per connection.

    `cut()` closes the listener and every open connection (clients get "connection refused" /
    "connection reset", as with a stopped database); `restore()` listens on the same port again.
    `arm(pattern)` cuts one connection right after client bytes containing `pattern` were
    forwarded; with `after_reply=True` it first waits for (and drops) the server's reply, so the
    statement ran on the server but its answer never reaches the client."""

    def __init__(self, upstream: tuple[str, int], port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._armed: tuple[bytes, bool] | None = None
        self.triggered = threading.Event()
        self.connections = 0

    def start(self) -> "TcpProxy":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        listener.listen(64)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed by cut()/close()
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, server))
                self.connections += 1
            pair = _Pair()
            threading.Thread(target=self._pipe, args=(client, server, pair, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, pair, False), daemon=True).start()

    def arm(self, pattern: bytes, after_reply: bool = False) -> None:
        self.triggered.clear()
        self._armed = (pattern, after_reply)

    def _pipe(self, source: socket.socket, sink: socket.socket, pair: "_Pair", from_client: bool) -> None:
        tail = b""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not from_client and pair.drop_replies.is_set():
                    self.triggered.set()  # the statement ran on the server; its answer is lost
                    break
                armed = self._armed if from_client else None
                # a match may span two reads, but must end in this one (older bytes came before arm())
                hit = armed is not None and armed[0] in tail[len(tail) - len(armed[0]) + 1:] + data
                tail = (tail + data)[-256:]
                if hit:
                    assert armed is not None
                    self._armed = None
                    if armed[1]:  # keep forwarding the client (Sync may follow); drop the answer
                        pair.drop_replies.set()
                    else:
                        sink.sendall(data)
                        self.triggered.set()
                        break
                sink.sendall(data)
        except OSError:
            pass
        self._close_pair(source, sink)

    def _close_pair(self, *socks: socket.socket) -> None:
        for s in socks:
            with self._lock:
                self._conns.discard(s)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        if self._acceptor is not None:
            self._acceptor.join(5)
        with self._lock:
            conns = list(self._conns)
        self._close_pair(*conns)

    def restore(self) -> None:
        self.start()

    def close(self) -> None:
        self.cut()


# -- events and the store ------------------------------------------------------------------------------
NOW_S = int(time.time())


def event(event_id: str, user: str, item: str, seconds: int | None = None, event_type: int = 1) -> common_pb2.Event:
    return common_pb2.Event(event_id=event_id, user_id=user, item_id=item, type=event_type,
                            occurred_at=Timestamp(seconds=seconds or NOW_S - 3600), platform="reliability")


def batch_events(prefix: str, n: int, users: Sequence[str] = ("u-0", "u-1", "u-2")) -> list[common_pb2.Event]:
    return [event(f"{prefix}-{i}", users[i % len(users)], f"item-{i % 17}", NOW_S - 3600 + i) for i in range(n)]


def stored_ids(database_url: str) -> list[str]:
    """Every stored event id (with repeats if a uniqueness bug ever allowed any)."""
    engine = create_store_engine(database_url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(text("SELECT event_id FROM events"))]
    finally:
        engine.dispose()


def events_fingerprint(store: EventStore, event_ids: Iterable[str] | None = None) -> tuple[int, str]:
    """(row count, sha256 over the sorted rows) of the events table, or of the given ids' rows;
    received_at_us (the server's clock) is left out."""
    query = "SELECT event_id, user_id, item_id, event_type, occurred_at_us, platform, value FROM events"
    with store.engine.connect() as conn:
        if event_ids is None:
            rows = conn.execute(text(query)).all()
        else:
            ids = list(dict.fromkeys(event_ids))
            rows = []
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                params = {f"p{i}": v for i, v in enumerate(chunk)}
                where = ", ".join(f":p{i}" for i in range(len(chunk)))
                rows += conn.execute(text(f"{query} WHERE event_id IN ({where})"), params).all()
    return len(rows), rows_digest(tuple(r) for r in rows)


def rows_digest(rows: Iterable[tuple[Any, ...]]) -> str:
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r[0]):
        # -0.0 and 0.0 compare equal; SQLite gives the sign of a zero back as +0.0
        digest.update(repr(tuple(None if v is None else (float(v) + 0.0 if isinstance(v, float) else v)
                                 for v in row)).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def count_rows(store: EventStore) -> int:
    return store.count_events()


# -- model packages -------------------------------------------------------------------------------------
def publish_copy(source: Path, model_dir: Path, version: str, corrupt: bool = False) -> Path:
    """Publish a copy of the package `source` as `version` the way training does (staging dir
    beside the target, fsync, rename, LATEST rewritten atomically). `corrupt` replaces the ONNX
    file with garbage after the manifest is rewritten (a truncated upload, say)."""
    staged = pkg.staging_dir(model_dir, version)
    for child in source.iterdir():
        if child.is_file() and child.name != "weights.pt":
            shutil.copy2(child, staged / child.name)
    manifest = json.loads((staged / pkg.MANIFEST_FILE).read_text())
    manifest["version"] = version
    (staged / pkg.MANIFEST_FILE).write_text(json.dumps(manifest))
    if corrupt:
        data = (staged / pkg.MODEL_FILE).read_bytes()
        (staged / pkg.MODEL_FILE).write_bytes(data[: len(data) // 3] + b"\x00garbage" * 64)
    return pkg.publish_package(staged, model_dir, version)


@dataclass
class _Pair:
    drop_replies: threading.Event = field(default_factory=threading.Event)


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> float:
    """Poll `predicate` until true; returns the seconds it took; TimeoutError past `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - start
