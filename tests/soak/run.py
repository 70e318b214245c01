"""`make soak`: the three services as real processes under the serving target for a bounded time
— Recommend at 200 requests/s and IngestEvents at 10,000 events/s together — then the verdict:
zero errors, p99 within target, every acknowledged event stored, and resident memory of each
service growing at most 10% between the first and the last minute.

    python -m tests.soak.run --minutes 10             # the full run (make soak)
    python -m tests.soak.run --minutes 0.5 --recommend-rps 20 --events-per-second 500   # a smoke run

Prints a table, writes JSON (default var/bench/soak.json), exits 1 when a criterion fails."""

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, text

from app.simulator import DAY_US, StorefrontSimulator
from shared.store import open_store
from tests.bench.common import print_table, write_json
from tests.reliability.helpers import Proc, publish_copy
from tests.soak.load import LoadConfig, event_serial, mixed_load

TINY_MODEL = {"dim": 16, "n_layers": 1, "max_len": 20}


@dataclass
class SoakConfig:
    minutes: float = 10.0
    recommend_rps: float = 200.0
    events_per_second: float = 10_000.0
    batch_size: int = 500
    deadline_s: float = 1.0  # Recommend deadline
    p99_recommend_ms: float = 100.0
    p99_ingest_ms: float = 1_000.0  # per batch of `batch_size` events
    max_memory_growth_pct: float = 10.0
    max_fallback_pct: float = 1.0  # Recommend answered without features (their deadline missed)
    memory_window_s: float = 60.0  # first vs last window (shorter runs use a quarter of the run)
    sample_seconds: float = 5.0
    database_url: str = ""  # default: a fresh SQLite file in a temporary directory
    model_dir: str = ""  # default: train a tiny model from simulated shoppers first
    workdir: str = ""  # default: a temporary directory, removed afterwards
    out: str = "var/bench/soak.json"
    shoppers: int = 300
    history_events: tuple[int, int] = (10, 40)  # seeded events per shopper, min and max
    check_latency: bool = True


def seed_store(database_url: str, shoppers: int, seed: int = 5,
               history_events: tuple[int, int] = (10, 40)) -> tuple[list[str], list[str], int]:
    """Simulated catalogue and shoppers; returns (users, items, events stored)."""
    simulator = StorefrontSimulator(seed=seed, items_per_category=25)
    now = time.time_ns() // 1_000
    population = simulator.population(shoppers, history_events, now - 20 * DAY_US, now - DAY_US)
    store = open_store(database_url)
    store.upsert_items(simulator.catalogue(), updated_at_us=now)
    events = [e for s in population for e in s.events]
    store.insert_events(events, received_at_us=now)
    count = store.count_events()
    store.engine.dispose()
    return [s.user_id for s in population], [i.item_id for i in simulator.catalogue()], count


def train_tiny(database_url: str, model_dir: Path) -> None:
    from training.data import load_store
    from training.train import RunOptions
    from training.train import main as train

    train(data=load_store(database_url), out=str(model_dir),
        run=RunOptions(overrides=TINY_MODEL, epochs=1, device="cpu", progress=False, version="soak-v1"))


def count_events(database_url: str) -> int:
    store = open_store(database_url, migrate=False)
    try:
        return store.count_events()
    finally:
        store.engine.dispose()


def stored_serials(database_url: str, run_id: str, sent: int) -> tuple[np.ndarray, int]:
    """(one flag per event sent: stored or not, stored events whose serial was never sent)."""
    stored = np.zeros(sent, dtype=bool)
    strays = 0
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execution_options(yield_per=100_000).execute(
                text("SELECT event_id FROM events WHERE event_id LIKE :prefix"), {"prefix": f"{run_id}-%"})
            for (event_id,) in rows:
                serial = event_serial(event_id)
                if 1 <= serial <= sent:
                    stored[serial - 1] = True
                else:
                    strays += 1
    finally:
        engine.dispose()
    return stored, strays


def soak(config: SoakConfig) -> dict[str, Any]:
    """Run the soak; returns the report (also written to `config.out`)."""
    workdir = Path(config.workdir) if config.workdir else Path(tempfile.mkdtemp(prefix="shiftrec-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    database_url = config.database_url or f"sqlite:///{workdir / 'soak.db'}"
    try:
        print(f"seeding the store ({config.shoppers} simulated shoppers)…", flush=True)
        users, items, seeded = seed_store(database_url, config.shoppers, history_events=config.history_events)
        model_dir = workdir / "models"
        if config.model_dir:
            source = Path(config.model_dir)
            from shared import model_package as pkg
            publish_copy(pkg.resolve_package(source), model_dir, "soak-v1")
        else:
            print("training a tiny model…", flush=True)
            train_tiny(database_url, model_dir)
        env = {"SHIFTREC_DATABASE_URL": database_url, "SHIFTREC_MODEL_DIR": str(model_dir)}
        seconds = config.minutes * 60
        with Proc("ingestion", env, log_dir=workdir) as ingestion, Proc("features", env, log_dir=workdir) as features:
            with Proc("inference", {**env, "SHIFTREC_FEATURES_TARGET": features.target}, log_dir=workdir) as inference:
                pids = {"ingestion": ingestion.pid, "features": features.pid, "inference": inference.pid}
                print(f"load: Recommend {config.recommend_rps:g}/s + IngestEvents {config.events_per_second:g} "
                      f"events/s (batches of {config.batch_size}) for {seconds:g} s…", flush=True)
                run_id = f"soak{int(time.time())}"
                load = LoadConfig(recommend_rps=config.recommend_rps, events_per_second=config.events_per_second,
                                  batch_size=config.batch_size, seconds=seconds, deadline_s=config.deadline_s,
                                  sample_seconds=config.sample_seconds, run_id=run_id)
                result = asyncio.run(mixed_load(ingestion.target, inference.target, users, items, load, pids))
                alive = {name: p.alive() for name, p in
                         (("ingestion", ingestion), ("features", features), ("inference", inference))}
            exit_codes = {"inference": inference.stop()}
        exit_codes |= {"ingestion": ingestion.proc.returncode if ingestion.proc else None,
                       "features": features.proc.returncode if features.proc else None}
        stored = count_events(database_url)
        stored_flags, strays = stored_serials(database_url, run_id, result.events_sent)
    finally:
        if not config.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    window = min(config.memory_window_s, seconds / 4)
    memory = result.memory_growth(window)
    latency = {rpc: result.percentiles(rpc) for rpc in ("Recommend", "IngestEvents")}
    errors = result.errors()
    acknowledged = np.frombuffer(result.acknowledged, dtype=np.uint8).astype(bool)
    lost = int((acknowledged & ~stored_flags).sum())
    checks = {
        "zero errors": not errors,
        # event by event: a call that timed out may still have committed (stored, never
        # acknowledged; the errors check counts the call), but an acknowledged event must be there
        "every acknowledged event stored, nothing unsent": not lost and not strays
        and result.events_duplicate == 0 and result.events_rejected == 0
        and stored == seeded + int(stored_flags.sum()),
        "services alive and stopped cleanly": all(alive.values()) and all(c == 0 for c in exit_codes.values()),
        f"memory growth <= {config.max_memory_growth_pct:g}% (first vs last {window:g} s)":
            all(m["growth_pct"] <= config.max_memory_growth_pct for m in memory.values()),
    }
    answered = sum(result.strategies.values())
    fallback_pct = 100.0 * result.strategies["STRATEGY_FALLBACK_FEATURES_UNAVAILABLE"] / answered if answered else 0.0
    if config.check_latency:
        # a fallback is not an error, but at the target rate it means features missed its deadline
        checks[f"Recommend fallbacks <= {config.max_fallback_pct:g}%"] = fallback_pct <= config.max_fallback_pct
        checks[f"Recommend p99 <= {config.p99_recommend_ms:g} ms"] = latency["Recommend"]["p99_ms"] <= config.p99_recommend_ms
        checks[f"IngestEvents p99 <= {config.p99_ingest_ms:g} ms"] = latency["IngestEvents"]["p99_ms"] <= config.p99_ingest_ms
        checks["offered rate achieved (>= 95%)"] = (
            latency["Recommend"]["rate_per_s"] >= 0.95 * config.recommend_rps
            and latency["IngestEvents"]["rate_per_s"] * config.batch_size >= 0.95 * config.events_per_second)
    report = {
        "benchmark": "soak",
        "config": {k: v for k, v in asdict(config).items() if k not in ("database_url",)}
        | {"database": database_url.split(":", 1)[0]},
        "load_seconds": result.load_s,
        "latency": latency,
        "errors": errors,
        "recommend_strategies": dict(result.strategies),
        "recommend_fallback_pct": fallback_pct,
        "events": {"sent": result.events_sent, "accepted": result.events_accepted,
                   "duplicates": result.events_duplicate, "rejected": result.events_rejected,
                   "stored_new": stored - seeded, "rate_per_s": result.events_accepted / max(result.load_s, 1e-9),
                   "acknowledged_by_id": int(acknowledged.sum()), "acknowledged_not_stored": lost, "stored_not_sent": strays,
                   "stored_not_acknowledged": int((stored_flags & ~acknowledged).sum())},
        "memory": memory,
        "memory_window_s": window,
        "rss_samples": {name: [(round(t, 1), kib) for t, kib in samples] for name, samples in result.rss.items()},
        "services_alive_at_end": alive,
        "exit_codes": exit_codes,
        "checks": checks,
        "passed": all(checks.values()),
    }
    print_report(report)
    write_json(config.out, report)
    return report


def print_report(report: dict[str, Any]) -> None:
    latency = report["latency"]
    print_table(["rpc", "calls", "rate/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"],
                [[rpc, row["count"], row["rate_per_s"], row["p50_ms"], row["p95_ms"], row["p99_ms"], row["max_ms"],
                  sum(n for k, n in report["errors"].items() if k.startswith(rpc + ":"))]
                 for rpc, row in latency.items()])
    events = report["events"]
    print(f"Recommend strategies: {report['recommend_strategies']} "
          f"(fallback {report['recommend_fallback_pct']:.1f}%)")
    print(f"events: sent {events['sent']:,}  accepted {events['accepted']:,}  stored {events['stored_new']:,}  "
          f"({events['rate_per_s']:,.0f}/s); acknowledged but not stored {events['acknowledged_not_stored']:,}, "
          f"stored but never acknowledged (the call failed, e.g. past its deadline, after the commit) "
          f"{events['stored_not_acknowledged']:,}")
    print_table(["service", "RSS first MiB", "RSS last MiB", "growth %", "samples"],
                [[name, m["first_mib"], m["last_mib"], m["growth_pct"], m["samples"]]
                 for name, m in report["memory"].items()])
    print_table(["check", "result"], [[name, "PASS" if ok else "FAIL"] for name, ok in report["checks"].items()])


def _pair(text: str) -> tuple[int, int]:
    low, high = (int(v) for v in text.split(","))
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"--history-events wants MIN,MAX with 1 <= MIN <= MAX (got {text})")
    return low, high


def main(argv: list[str] | None = None) -> int:
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--recommend-rps", type=float, default=defaults.recommend_rps)
    parser.add_argument("--events-per-second", type=float, default=defaults.events_per_second)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--deadline", type=float, default=defaults.deadline_s, help="Recommend deadline, seconds")
    parser.add_argument("--p99-recommend-ms", type=float, default=defaults.p99_recommend_ms)
    parser.add_argument("--p99-ingest-ms", type=float, default=defaults.p99_ingest_ms)
    parser.add_argument("--max-memory-growth", type=float, default=defaults.max_memory_growth_pct, help="percent")
    parser.add_argument("--sample-seconds", type=float, default=defaults.sample_seconds)
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file in a temporary directory")
    parser.add_argument("--model-dir", default="", help="a published package or model dir; default: train a tiny one")
    parser.add_argument("--workdir", default="", help="keep the store, model and service logs here")
    parser.add_argument("--history-events", type=_pair, default=defaults.history_events, metavar="MIN,MAX",
                        help="seeded events per shopper, MIN,MAX (200,220: histories as long as inference reads)")
    parser.add_argument("--out", default=defaults.out)
    args = parser.parse_args(argv)
    config = SoakConfig(minutes=args.minutes, recommend_rps=args.recommend_rps,
                        events_per_second=args.events_per_second, batch_size=args.batch_size,
                        deadline_s=args.deadline, p99_recommend_ms=args.p99_recommend_ms,
                        p99_ingest_ms=args.p99_ingest_ms, max_memory_growth_pct=args.max_memory_growth,
                        sample_seconds=args.sample_seconds, database_url=args.database_url,
                        model_dir=args.model_dir, workdir=args.workdir, out=args.out,
                        history_events=args.history_events)
    report = soak(config)
    print("SOAK PASSED" if report["passed"] else "SOAK FAILED")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
