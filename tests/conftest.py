"""Fixtures shared by the whole suite: databases (SQLite and PostgreSQL), in-process servers."""

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def datasets_dir() -> Path:
    """The shared real datasets (overridable with SHIFTREC_DATASETS)."""
    return Path(os.environ.get("SHIFTREC_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


def require_datasets() -> Path:
    """Skip (fail in CI) when the shared datasets folder is absent."""
    path = datasets_dir()
    if not (path / "amazon").is_dir():
        if IN_CI:
            pytest.fail(f"datasets folder {path} is missing in CI")
        pytest.skip(f"real datasets not found at {path} (set SHIFTREC_DATASETS)")
    return path


@pytest.fixture(scope="session", autouse=True)
def text_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Item text vectors (the default model reads titles) are cached in a scratch folder for the
    whole session, never in the checkout's var/; subprocesses inherit it."""
    path = tmp_path_factory.mktemp("text-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHIFTREC_TEXT_CACHE_DIR", str(path))
        yield path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """SHIFTREC_TEST_POSTGRES_URL; skipped when unset outside CI, a failure when unusable in CI."""
    url = os.environ.get("SHIFTREC_TEST_POSTGRES_URL")
    if not url:
        if IN_CI:
            pytest.fail("SHIFTREC_TEST_POSTGRES_URL must be set in CI")
        pytest.skip("SHIFTREC_TEST_POSTGRES_URL not set")
    try:
        with create_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server means the same
        if IN_CI:
            pytest.fail(f"PostgreSQL at {url} unreachable in CI: {exc}")
        pytest.skip(f"PostgreSQL at {url} unreachable: {exc}")
    return url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the test server for one test, dropped afterwards."""
    name = f"shiftrec_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes this runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


class BackgroundLoop:
    """An asyncio loop in a thread, so sync tests can host grpc.aio servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro_or_fn, timeout: float = 30):
        async def call():
            result = coro_or_fn() if callable(coro_or_fn) else coro_or_fn
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def background_loop() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture
def serve_in_process(background_loop: BackgroundLoop) -> Iterator[Callable]:
    """Start a GrpcServer built by `build()` on the background loop; returns the server."""
    servers = []

    def start(build: Callable):
        server = background_loop.run(build)
        background_loop.run(server.start)
        servers.append(server)
        return server

    yield start
    for server in servers:
        background_loop.run(server.stop)
