"""`shiftrec demo` (what `make demo` runs) end to end: the before/after story, the planted
shifts detected, the chart written, every process stopped."""

import re
import socket
import subprocess

from app.processes import shiftrec_command


def test_demo_detects_the_planted_shifts_and_draws_the_chart(tmp_path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run([shiftrec_command(), "demo", "--out", str(out)], capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    for step in ("1. Services up", "2. Streamed", "3. Training", "5. Before", "7. After", "8. Were the planted"):
        assert step in text
    assert text.count(": detected") == 3
    assert "correctly not flagged" in text
    chart = out / "interest_shift.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
    # every service process is gone: their ports can be bound again
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text.split("2. Streamed")[0])]
    assert len(ports) == 3
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
