"""The short version of `make soak` (tests/soak/run.py) inside `make test`: the three services as
processes, Recommend and IngestEvents together for a few seconds at a low rate. Correctness only
— zero errors, every acknowledged event stored once, clean stops; no latency assertions here
(timing claims belong to `make soak`, on a machine that is not shared)."""

from pathlib import Path

import pytest

from tests.reliability.helpers import LEDGER
from tests.soak.run import SoakConfig, soak

SECONDS = 8


@pytest.mark.timeout(240)
def test_short_mixed_load_has_no_errors_and_loses_nothing(tiny_world, tmp_path: Path) -> None:
    config = SoakConfig(minutes=SECONDS / 60, recommend_rps=30, events_per_second=1_000, batch_size=100,
                        deadline_s=5.0, sample_seconds=1.0, model_dir=str(tiny_world.package),
                        workdir=str(tmp_path), out=str(tmp_path / "soak.json"), shoppers=60, check_latency=False)
    report = soak(config)
    LEDGER.record("short_mixed_load", seconds=SECONDS, recommend_calls=report["latency"]["Recommend"]["count"],
                  ingest_calls=report["latency"]["IngestEvents"]["count"], events_accepted=report["events"]["accepted"],
                  events_stored=report["events"]["stored_new"], errors=report["errors"],
                  strategies=report["recommend_strategies"])
    assert report["errors"] == {}
    assert report["events"]["accepted"] == report["events"]["sent"] == report["events"]["stored_new"]
    assert report["checks"]["every acknowledged event stored, nothing unsent"]
    events = report["events"]
    assert events["acknowledged_by_id"] == events["accepted"]  # the per-event record saw every reply
    assert events["acknowledged_not_stored"] == events["stored_not_sent"] == events["stored_not_acknowledged"] == 0
    assert report["checks"]["services alive and stopped cleanly"]
    assert report["latency"]["Recommend"]["count"] >= SECONDS * 30 * 0.5  # the load did run
    assert (tmp_path / "soak.json").exists()
