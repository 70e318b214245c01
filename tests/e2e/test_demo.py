"""`shiftrec demo` (what `make demo` runs) end to end: the before/after story, the planted
shifts flagged (and after how many events), the control not, the chart written, every process
stopped."""

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
    for step in ("1. Services up", "2. Streamed", "3. Training", "5. Before", "6. Interests move", "7. After",
                 "8. When was each planted shift flagged"):
        assert step in text
    # each planted shift flagged by the model's predicted next category within the burst, the control never
    flagged = re.findall(r"ShiftRec after (\d+) events?, drift score after (\d+ events?|never)", text)
    assert len(flagged) == 3 and all(1 <= int(k) <= 8 for k, _ in flagged)
    assert "correctly not flagged" in text
    assert len(re.findall(r"shift probability( \d\.\d\d){9}", text)) == 4  # before + after each of 8 events
    chart = out / "interest_shift.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
    # every service process is gone: their ports can be bound again
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text.split("2. Streamed")[0])]
    assert len(ports) == 3
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
