"""Independent training runs spread over worker processes, each result kept as JSON so that an
interrupted benchmark or report resumes where it stopped. Shared by the quality report and
the transfer benchmark.

A task is a JSON-able dict with a unique "name" and optionally "needs": the names of tasks
whose results (or files they write) it depends on. `run_tasks` starts ready tasks lowest
"seed" first, so an interrupted run still has one of everything.

Each kept result records the training defaults of the day it ran (`defaults`); unless the caller
knows better (`stale`), a result kept under other defaults is done again, so a resumed benchmark
never mixes two defaults in one table. A worker dies with its parent: a killed benchmark leaves
no run training on, unseen, for hours.
"""

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any


def load_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))}


def today_defaults() -> dict[str, dict[str, Any]]:
    """The model and training defaults as a kept result records them (JSON values)."""
    from training.model import ModelConfig
    from training.train import TrainConfig

    return json.loads(json.dumps({"model": asdict(ModelConfig()), "train": asdict(TrainConfig())}))


def defaults_changed(task: dict[str, Any], kept: dict[str, Any]) -> str | None:
    """Why a kept result is out of date when only the defaults identify a run: the defaults it
    ran under differ from today's (each field said), or it recorded none."""
    then = kept.get("defaults")
    if then is None:
        return "no defaults recorded"
    return config_diff(then, today_defaults())


def config_diff(then: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]],
                ignore: dict[str, set[str]] | None = None) -> str | None:
    """The model/train fields where `then` differs from `now` ("model.dim 64 -> 128, …"), less
    those in `ignore` per part; None when they agree."""
    ignore = ignore or {}
    diffs = [f"{part}.{key} {then.get(part, {}).get(key)!r} -> {value!r}"
             for part in ("model", "train") for key, value in now[part].items()
             if key not in ignore.get(part, ()) and then.get(part, {}).get(key) != value]
    return ", ".join(diffs) or None


def _die_with_parent(parent: int, every: float = 1.0) -> None:
    """Worker initializer: exit as soon as the process that started the pool is gone (a
    SIGKILLed parent cannot stop its workers, and a spawned worker otherwise trains on, then
    waits forever on a queue nobody reads)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def kept_results(
    tasks: list[dict[str, Any]],
    results_dir: Path,
    label: str,
    stale: Callable[[dict[str, Any], dict[str, Any]], str | None] | None = defaults_changed,
) -> dict[str, dict[str, Any]]:
    """The kept results of `tasks`, by name, less those `stale` finds out of date (each said;
    None keeps every result)."""
    kept = load_results(results_dir) if results_dir.exists() else {}
    results = {}
    for task in tasks:
        result = kept.get(task["name"])
        why = None if result is None or stale is None else stale(task, result)
        if why is not None:
            print(f"[{label}] kept {task['name']} is out of date ({why}): not used", file=sys.stderr, flush=True)
        elif result is not None:
            results[task["name"]] = result
    return results


def run_tasks(
    tasks: list[dict[str, Any]],
    worker: Callable[[dict[str, Any]], dict[str, Any]],
    results_dir: Path,
    *,
    jobs: int,
    label: str,
    on_result: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    stale: Callable[[dict[str, Any], dict[str, Any]], str | None] | None = defaults_changed,
) -> dict[str, dict[str, Any]]:
    """Run every task not already kept in `results_dir` with `worker` (a module-level function,
    since workers are spawned), `jobs` at a time; returns the results of all `tasks`.
    `on_result` is called with the results so far each time a run lands. `stale(task, kept)`
    says why a kept result no longer answers its task (None: it does); such a run is done again.
    The default check: the training defaults it ran under are today's."""
    results_dir.mkdir(parents=True, exist_ok=True)
    results = kept_results(tasks, results_dir, label, stale)
    pending = [t for t in tasks if t["name"] not in results]
    names = {t["name"] for t in tasks}
    for task in pending:
        missing = set(task.get("needs", ())) - names
        if missing:
            raise ValueError(f"task {task['name']} needs tasks that are not planned: {sorted(missing)}")
    running: dict[Future, dict[str, Any]] = {}
    defaults = today_defaults()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                             initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        while pending or running:
            startable = sorted((t for t in pending if set(t.get("needs", ())) <= set(results)),
                               key=lambda t: t.get("seed", 0))
            while startable and len(running) < jobs:
                task = startable.pop(0)
                pending.remove(task)
                print(f"[{label}] start {task['name']}", file=sys.stderr, flush=True)
                running[pool.submit(worker, task)] = task
            if not running:
                raise RuntimeError(f"tasks wait on runs that cannot finish: {[t['name'] for t in pending]}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                result = future.result() | {"defaults": defaults}
                results[task["name"]] = result
                (results_dir / f"{task['name']}.json").write_text(json.dumps(result, indent=1))
                wall = result.get("wall_seconds")
                took = f" in {wall:.0f} s" if wall is not None else ""
                print(f"[{label}] done {task['name']}{took}", file=sys.stderr, flush=True)
                if on_result is not None:
                    on_result(results)
    return results
