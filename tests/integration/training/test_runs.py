"""The runs shared by the report and the benchmarks (`training.experiments.runs`): a kept result
trained under other defaults is done again rather than mixed into today's table, and a worker
does not outlive a killed benchmark."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from training.experiments import runs

ROOT = Path(__file__).resolve().parents[3]


def count(task):
    """A cheap worker: what it was asked, and its process."""
    return {"name": task["name"], "pid": os.getpid()}


def sleep_long(task):
    """A worker that says where it runs, then trains on (sleeps) far longer than the test waits."""
    Path(task["pid_file"]).write_text(str(os.getpid()))
    time.sleep(600)
    return {}


def _alive(pid: int) -> bool:
    """Running (an exited process nobody has reaped yet, a zombie, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_result_kept_under_other_defaults_is_run_again(tmp_path, capsys):
    tasks = [{"name": "a"}, {"name": "b"}]
    first = runs.run_tasks(tasks, count, tmp_path, jobs=2, label="t")
    assert set(first) == {"a", "b"}
    kept = json.loads((tmp_path / "a.json").read_text())
    assert kept["defaults"] == runs.today_defaults()

    # today's defaults: nothing repeats
    capsys.readouterr()
    again = runs.run_tasks(tasks, count, tmp_path, jobs=2, label="t")
    assert again["a"]["pid"] == first["a"]["pid"] and again["b"]["pid"] == first["b"]["pid"]
    assert "[t] start" not in capsys.readouterr().err

    # "a" ran when the default width was 64: it is done again, and the reason is said
    dim = runs.today_defaults()["model"]["dim"]
    kept["defaults"]["model"]["dim"] = 64
    (tmp_path / "a.json").write_text(json.dumps(kept))
    third = runs.run_tasks(tasks, count, tmp_path, jobs=2, label="t")
    err = capsys.readouterr().err
    assert f"kept a is out of date (model.dim 64 -> {dim})" in err
    assert "[t] start a" in err and "[t] start b" not in err
    assert third["a"]["pid"] != first["a"]["pid"] and third["b"] == first["b"]
    assert json.loads((tmp_path / "a.json").read_text())["defaults"]["model"]["dim"] == dim

    # a result that recorded no defaults (kept before they were recorded) is not trusted either
    (tmp_path / "b.json").write_text(json.dumps({"name": "b", "pid": -1}))
    assert runs.run_tasks(tasks, count, tmp_path, jobs=1, label="t")["b"]["pid"] != -1
    assert "kept b is out of date (no defaults recorded)" in capsys.readouterr().err
    # a caller that identifies runs itself decides alone
    (tmp_path / "b.json").write_text(json.dumps({"name": "b", "pid": -1}))
    assert runs.run_tasks(tasks, count, tmp_path, jobs=1, label="t", stale=None)["b"]["pid"] == -1


def test_a_worker_dies_with_its_killed_parent(tmp_path):
    pid_file = tmp_path / "worker.pid"
    script = ("import sys; from pathlib import Path; from training.experiments.runs import run_tasks;"
              "from tests.integration.training.test_runs import sleep_long;"
              f"run_tasks([{{'name': 'long', 'pid_file': {str(pid_file)!r}}}], sleep_long, Path(sys.argv[1]),"
              " jobs=1, label='t')")
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "runs")], cwd=ROOT)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert parent.poll() is None, "the benchmark process ended before its worker started"
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30  # the watch looks every second
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), "the worker outlived its killed parent"
        assert not (tmp_path / "runs" / "long.json").exists()
    finally:
        if parent.poll() is None:
            parent.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)
