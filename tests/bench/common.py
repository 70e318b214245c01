"""Helpers shared by the benchmarks: tables and JSON results (processes: app.processes)."""

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path


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


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc), None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU milliseconds per answered request of each named process over a stretch of load."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = self._read()

    def _read(self) -> dict[str, float | None]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def per_request_ms(self, answered: int) -> dict[str, float]:
        end = self._read()
        return {name: 1000 * (stop - start) / max(answered, 1) for name in self.pids
                if (start := self.start[name]) is not None and (stop := end[name]) is not None}


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of `fn()` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)
