"""make bench-scale: cost curves as the store and the catalogue grow.

Store growth, per database (SQLite, PostgreSQL): the store is filled in bulk with the generated
storefront (`app/scale.py`) up to each size E, and at each size the benchmark measures
(a) events/s through a real `shiftrec serve ingestion` process (new shoppers' events, batches of
500, 4 concurrent clients; the median of --probe-repeats probes), (b) `GetUserHistory` p50/p99
through a real `shiftrec serve features` process for random stored shoppers, and (c) the seconds
training takes to load the store (`training.data.load_store`) with its peak memory.

Catalogue growth, per N items: the default architecture with untrained weights exported to the
package's graph (what serving loads; weights do not change its cost): export seconds, package
size, the resident memory of a process holding the ONNX Runtime session, and the model call
alone at batch 1 (p50/p99, one intra-op thread, as the service runs it) and batch 32.

Serving, per N items: a generated storefront of N items imported through the public API, a model
trained from the store (sampled softmax, no title vectors: SERVE_CONFIG) and published, then
Recommend through the three services, open loop at 200 and 400 req/s (latency from the scheduled
send) and 8 closed-loop clients, with the inference process's peak memory. From 100,000 items
the package carries the retrieval path (faiss IVF index + small graphs) and its recall@10.

Bounded: fixed sizes and call counts; loopback only; prints tables, writes JSON and a PNG.
`--quick` runs small sizes (the smoke test in `make test`).
"""

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from app.processes import ServiceProcess
from app.scale import ScaleStorefront
from shared import model_package as pkg
from shared.clients import ClientConfig, open_channel
from shared.settings import Settings
from shared.store import EventRecord, create_store_engine, open_store
from shiftrec.v1 import features_pb2, features_pb2_grpc
from tests.bench.common import print_table, write_json
from tests.bench.ingest import bulk_insert, fresh_postgres

FULL_EVENTS = (1_000_000, 5_000_000, 10_000_000)
FULL_ITEMS = (12_101, 100_000, 1_000_000)
QUICK_EVENTS = (20_000, 60_000)
QUICK_ITEMS = (2_000, 20_000)
QUICK_SERVE_ITEMS = (2_000,)
SERVE_CONFIG = {"loss": "sampled", "use_text": False}
HISTORY_P99_GOAL_MS = 5.0  # the scale issue's goals, drawn on the curves
RECOMMEND_P99_GOAL_MS = 15.0


def chunks(events: Iterator[EventRecord], size: int) -> Iterator[list[EventRecord]]:
    batch: list[EventRecord] = []
    for event in events:
        batch.append(event)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def bulk_fill(url: str, events: Iterator[EventRecord], n: int) -> tuple[float, str]:
    """Write the next `n` events with the database's bulk path; returns (events/s, the user of
    the last event written)."""
    engine = create_store_engine(url)
    start, written, last_user = time.perf_counter(), 0, ""
    while written < n and (batch := list(itertools.islice(events, min(100_000, n - written)))):
        bulk_insert(engine, url, [(e.event_id, e.user_id, e.item_id, e.event_type, e.occurred_at_us,
                                   e.occurred_at_us, e.platform, e.value) for e in batch])
        written += len(batch)
        last_user = batch[-1].user_id
    engine.dispose()
    return written / (time.perf_counter() - start), last_user


def ingest_probe(target: str, events: list[EventRecord], clients: int = 4) -> float:
    """Events/s through IngestionService; every event must be accepted."""
    from app.importer import import_records

    start = time.perf_counter()
    report = import_records(target, events, batch_size=500, in_flight=clients, progress=False,
                            client=ClientConfig.from_settings(Settings()))
    elapsed = time.perf_counter() - start
    if report.accepted != len(events):
        raise RuntimeError(f"ingest probe: {report.accepted} of {len(events)} accepted")
    return len(events) / elapsed


def ingest_rate(target: str, probes: list[list[EventRecord]]) -> dict[str, Any]:
    """The median of several ingest probes, and each one: a probe lasts under a second, and one
    alone swung ±40 % between store sizes with no trend."""
    runs = [ingest_probe(target, events) for events in probes]
    return {"ingest_events_per_s": float(np.median(runs)), "ingest_runs": runs}


def history_probe(target: str, users: list[str], calls: int, limit: int = 200) -> dict[str, float]:
    """GetUserHistory latency from a client: the steps view inference asks for (the serving
    figure) and the full view (every field, tags decoded), alternating on the same shoppers."""
    rng = random.Random(0)
    views = {"history": features_pb2.HISTORY_VIEW_STEPS, "full_history": features_pb2.HISTORY_VIEW_FULL}
    samples: dict[str, list[float]] = {name: [] for name in views}
    with open_channel(target, ClientConfig.from_settings(Settings())) as channel:
        stub = features_pb2_grpc.FeatureServiceStub(channel)
        stub.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id=users[0], limit=limit), timeout=10)
        for _ in range(calls):
            user = rng.choice(users)
            for name, view in views.items():
                start = time.perf_counter()
                stub.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id=user, limit=limit, view=view),
                                    timeout=10)
                samples[name].append((time.perf_counter() - start) * 1000)
    return {f"{name}_{q}_ms": float(np.percentile(values, p))
            for name, values in samples.items() for q, p in (("p50", 50), ("p99", 99))}


def load_probe(url: str) -> dict[str, float]:
    """Training's load of the whole store, in a fresh process (its peak memory is its own)."""
    code = ("import json, resource, sys, time; from training.data import load_store; t = time.perf_counter(); "
            "d = load_store(sys.argv[1]); print(json.dumps({'load_seconds': time.perf_counter() - t, "
            "'load_peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
            "'load_users': len(d.users)}))")
    out = subprocess.run([sys.executable, "-c", code, url], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def store_growth(backend: str, sizes: tuple[int, ...], args: argparse.Namespace) -> list[dict[str, Any]]:
    storefront = ScaleStorefront(items_n=args.store_items, events_n=max(sizes), seed=args.seed)
    repeats = args.probe_repeats
    newcomers = ScaleStorefront(items_n=args.store_items,
                                events_n=args.probe_events * (repeats * (len(sizes) + 1) + 1),
                                seed=args.seed + 1)  # the probes: other shoppers, so never duplicates
    probes = [[e._replace(event_id=f"p{e.event_id}", user_id=f"p{e.user_id}") for e in batch]
              for batch in chunks(newcomers.events(), args.probe_events)]
    warm, probes = probes[-1][:1_000], [probes[i * repeats:(i + 1) * repeats] for i in range(len(sizes) + 1)]
    with tempfile.TemporaryDirectory(prefix="shiftrec-bench-scale-") as tmp:
        if backend == "sqlite":
            url, cleanup = f"sqlite:///{Path(tmp) / 'store.db'}", (lambda: None)
        else:
            url, cleanup = fresh_postgres(args.postgres_url)
        try:
            store = open_store(url)
            store.upsert_items(storefront.items(), updated_at_us=1)
            store.engine.dispose()
            rows: list[dict[str, Any]] = []
            stream = storefront.events()
            env = {"SHIFTREC_DATABASE_URL": url}
            with ServiceProcess("ingestion", env) as ingestion, ServiceProcess("features", env) as features:
                ingest_probe(ingestion.target, warm)  # warm the service and its connections
                empty = ingest_rate(ingestion.target, probes[0])
                have, last_user = repeats * args.probe_events + len(warm), "u0"
                rows.append({"database": backend, "events": have, **empty})
                for i, size in enumerate(sizes, start=1):
                    fill_rate, last_user = bulk_fill(url, stream, size - have) if size > have else (0.0, last_user)
                    have = max(size, have)
                    row = {"database": backend, "bulk_fill_events_per_s": fill_rate,
                           **ingest_rate(ingestion.target, probes[i])}
                    have += repeats * args.probe_events
                    written = int(last_user[1:]) + 1  # shoppers u0 .. last_user are in the store
                    users = [f"u{j}" for j in random.Random(i).sample(range(written), min(written, 5_000))]
                    row |= {"events": have, **history_probe(features.target, users, args.history_calls),
                            **load_probe(url),
                            "ingest_vs_empty": row["ingest_events_per_s"] / empty["ingest_events_per_s"]}
                    rows.append(row)
                    print(f"  {backend} {have:,} events: ingest {row['ingest_events_per_s']:,.0f} ev/s, median of "
                          f"{repeats} ({row['ingest_vs_empty']:.2f} of empty), history p99 "
                          f"{row['history_p99_ms']:.1f} ms, load {row['load_seconds']:.0f} s", flush=True)
            return rows
        finally:
            cleanup()


def catalogue_point(n_items: int, categories: int, calls: int) -> dict[str, float]:
    """Export an untrained default model over `n_items` items and time the model call in a fresh
    process (its resident memory is the session's)."""
    from tests.bench.cuda import export_synthetic

    with tempfile.TemporaryDirectory(prefix="shiftrec-bench-scale-") as tmp:
        path = Path(tmp) / pkg.MODEL_FILE
        _, export_seconds = export_synthetic(n_items, categories, 50, path)
        size_mib = path.stat().st_size / 2**20
        code = f"""
import json, resource, statistics, time
import numpy as np, onnxruntime as ort
from shared import model_package as pkg
from tests.bench.cuda import feeds_for
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
s = ort.InferenceSession({str(path)!r}, o, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0); out = {{}}
for batch, calls in ((1, {calls}), (32, max(3, {calls} // 20))):
    f = feeds_for({n_items}, batch, 50, rng); s.run(list(pkg.OUTPUT_NAMES), f); t = []
    for _ in range(calls):
        a = time.perf_counter(); s.run(list(pkg.OUTPUT_NAMES), f); t.append((time.perf_counter() - a) * 1000)
    out[f"batch{{batch}}_p50_ms"] = float(np.percentile(t, 50)); out[f"batch{{batch}}_p99_ms"] = float(np.percentile(t, 99))
out["inference_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""
        result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {"items": n_items, "export_seconds": export_seconds, "package_mib": size_mib, **measured}


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serving_point(n_items: int, args: argparse.Namespace) -> dict[str, float]:
    """A generated storefront of `n_items` items through the whole product: imported through
    IngestEvents/UpsertItems, trained from the store, published, and served by the three
    services; Recommend open loop at each rate, closed loop, and the inference process's peak
    memory. Catalogues from 100,000 items get the retrieval package (faiss index + small graphs)."""
    from app.importer import import_records
    from app.processes import running_stack, shiftrec_command
    from tests.bench.serve import closed_loop, offered_load

    storefront = ScaleStorefront(items_n=n_items, events_n=args.serve_events, categories_n=args.categories,
                                 shoppers_n=args.serve_events // 10, seed=args.seed)
    users = [f"u{u}" for u in range(storefront.shoppers)]
    with tempfile.TemporaryDirectory(prefix="shiftrec-bench-scale-serve-") as tmp:
        url, models = f"sqlite:///{tmp}/store.db", Path(tmp) / "models"
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(args.serve_config))
        row: dict[str, float] = {"items": n_items, "events": args.serve_events}
        with running_stack(url, models) as stack:
            started = time.perf_counter()
            import_records(stack.ingestion.target, storefront.events(), storefront.items(), progress=False)
            row["import_seconds"] = time.perf_counter() - started
            started = time.perf_counter()
            # through a small parent that reports its child's peak memory
            peak = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
                    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")
            done = subprocess.run(
                [sys.executable, "-c", peak, shiftrec_command(), "train", "--database-url", url, "--out", str(models),
                 "--config", str(config), "--epochs", str(args.train_epochs), "--device", "cpu",
                 "--retrieval", args.serve_retrieval], capture_output=True, text=True, timeout=4 * 3600, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"shiftrec train failed:\n{done.stderr[-3000:]}")
            row["train_export_seconds"] = time.perf_counter() - started
            row["train_peak_rss_mib"] = int(done.stdout.strip().splitlines()[-1]) / 1024
            stack.inference.wait_serving(timeout=900)
            package = pkg.resolve_package(models)
            manifest = pkg.load_manifest(package)
            row["package_mib"] = sum(f.stat().st_size for f in package.iterdir()) / 2**20
            retrieval = manifest.retrieval
            row["retrieval"] = bool(retrieval)
            if retrieval:
                row.update(recall_at_10=retrieval["recall_at_10"], nprobe=retrieval["nprobe"],
                           step_candidates=retrieval.get("step_candidates", 0),
                           step_prior_weight=manifest.metrics.get("step_prior_weight"),
                           beta=manifest.shift.get("beta"), recall_by_nprobe=retrieval["recall_by_nprobe"],
                           index_build_seconds=retrieval["build_seconds"])
            for rate in args.serve_rates:
                load = asyncio.run(offered_load(stack.inference.target, users, rate, args.serve_seconds, 10, 2.0))
                row[f"p50_ms_at_{rate:g}"], row[f"p99_ms_at_{rate:g}"] = load["p50_ms"], load["p99_ms"]
                row[f"errors_at_{rate:g}"] = load["errors"]
                row[f"error_codes_at_{rate:g}"] = load["error_codes"]
                row[f"achieved_rps_at_{rate:g}"] = load["achieved_rps"]
            closed = asyncio.run(closed_loop(stack.inference.target, users, 8, args.serve_seconds, 10, 2.0))
            row["closed_loop_rps"], row["closed_loop_p99_ms"] = closed["achieved_rps"], closed["p99_ms"]
            row["inference_rss_mib"] = peak_rss_mib(stack.inference.proc.pid)
        if args.keep_packages:
            shutil.copytree(models, Path(args.keep_packages) / str(n_items), dirs_exist_ok=True)
    print(f"  serving {n_items:,} items: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in row.items()), flush=True)
    return row


def plot(store_rows: list[dict], catalogue_rows: list[dict], serve_rows: list[dict], path: Path) -> None:
    """One panel per measured curve (a partial run draws only what it measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (["ingest", "history"] if store_rows else []) + (["catalogue"] if catalogue_rows else []) + (
        ["serving"] if serve_rows else [])
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 4), squeeze=False)
    ax = dict(zip(panels, axes[0]))
    if store_rows:
        for backend in sorted({r["database"] for r in store_rows}):
            rows = [r for r in store_rows if r["database"] == backend]
            ax["ingest"].plot([r["events"] for r in rows], [r["ingest_events_per_s"] for r in rows], "o-", label=backend)
            grown = [r for r in rows if "history_p99_ms" in r]
            ax["history"].plot([r["events"] for r in grown], [r["history_p99_ms"] for r in grown], "o-", label=backend)
        ax["history"].axhline(HISTORY_P99_GOAL_MS, color="grey", linestyle=":", label="goal")
        # from zero: the scale issue's question is whether they stay flat
        ax["ingest"].set(xscale="log", xlabel="events in the store", ylabel="ingest events/s", title="Ingestion",
                         ylim=(0, None))
        ax["history"].set(xscale="log", xlabel="events in the store", ylabel="ms", title="GetUserHistory p99",
                          ylim=(0, None))
        ax["ingest"].legend()
        ax["history"].legend()
    if catalogue_rows:
        n = [r["items"] for r in catalogue_rows]
        ax["catalogue"].plot(n, [r["batch1_p99_ms"] for r in catalogue_rows], "o-", label="model call p99, batch 1")
        ax["catalogue"].plot(n, [r["inference_rss_mib"] / 10 for r in catalogue_rows], "s--",
                             label="session RSS / 10 MiB")
        ax["catalogue"].set(xscale="log", yscale="log", xlabel="catalogue items", title="Catalogue (CPU, 1 thread)")
        ax["catalogue"].legend()
    if serve_rows:
        n = [r["items"] for r in serve_rows]
        for key, style in (("p99_ms_at_200", "o-"), ("p99_ms_at_400", "s-")):
            if all(key in r for r in serve_rows):
                ax["serving"].plot(n, [r[key] for r in serve_rows], style,
                                   label=key.replace("_ms_at_", " ms @ ") + " req/s")
        ax["serving"].plot(n, [r["inference_rss_mib"] for r in serve_rows], "^--", label="inference peak MiB")
        ax["serving"].axhline(RECOMMEND_P99_GOAL_MS, color="grey", linestyle=":", label="p99 goal @ 200 (1M)")
        ax["serving"].set(xscale="log", yscale="log", xlabel="catalogue items", title="Recommend end to end")
        ax["serving"].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"curves drawn in {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: the smoke test")
    parser.add_argument("--events", help="store sizes, comma-separated (default 1M,5M,10M)")
    parser.add_argument("--items", help="catalogue sizes, comma-separated (default 12101,100k,1M)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--store-items", type=int, default=100_000, help="catalogue of the store-growth runs")
    parser.add_argument("--probe-events", type=int, default=20_000, help="events per ingest probe")
    parser.add_argument("--probe-repeats", type=int, default=5, help="ingest probes per store size (their median)")
    parser.add_argument("--history-calls", type=int, default=2_000)
    parser.add_argument("--model-calls", type=int, default=200, help="model calls per catalogue size")
    parser.add_argument("--categories", type=int, default=200)
    parser.add_argument("--serve-items", help="catalogues served end to end, comma-separated (default 12101,100k,1M)")
    parser.add_argument("--serve-events", type=int, default=200_000, help="events of each served storefront")
    parser.add_argument("--serve-rates", default="200,400", help="open-loop Recommend rates per served catalogue")
    parser.add_argument("--serve-seconds", type=float, default=15.0)
    parser.add_argument("--train-epochs", type=int, default=2, help="epochs of each served catalogue's model")
    parser.add_argument("--serve-retrieval", choices=("auto", "on", "off"), default="auto",
                        help="`shiftrec train --retrieval` for the served catalogues (auto: from 100k items)")
    parser.add_argument("--keep-packages", metavar="DIR",
                        help="copy each served catalogue's model folder to DIR/ITEMS (for analysis after the run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postgres-url", default=os.environ.get(
        "SHIFTREC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--out", default="var/bench/scale.json")
    args = parser.parse_args(argv)
    if args.probe_repeats < 1:
        parser.error("--probe-repeats: at least 1")
    if args.quick:
        args.store_items, args.probe_events, args.history_calls, args.model_calls = 2_000, 2_000, 200, 20
        args.serve_events, args.serve_seconds, args.train_epochs = 5_000, 2.0, 1
        args.serve_retrieval = "on"  # the smoke test serves the retrieval path end to end
    events = tuple(int(e) for e in args.events.split(",")) if args.events else (QUICK_EVENTS if args.quick else FULL_EVENTS)
    items = tuple(int(n) for n in args.items.split(",") if n) if args.items is not None else (
        QUICK_ITEMS if args.quick else FULL_ITEMS)

    serve_items = tuple(int(n) for n in args.serve_items.split(",") if n) if args.serve_items is not None else (
        QUICK_SERVE_ITEMS if args.quick else FULL_ITEMS)
    args.serve_rates = tuple(float(r) for r in args.serve_rates.split(",") if r)
    # every served catalogue trains the same way: sampled softmax (a full softmax over a million
    # items does not fit the box) and no title vectors (encoding a million titles takes ~22 min)
    args.serve_config = SERVE_CONFIG

    store_rows: list[dict] = []
    for backend in args.databases.split(","):
        if backend:
            store_rows += store_growth(backend, events, args)
    catalogue_rows = []
    for n in items:
        row = catalogue_point(n, args.categories, args.model_calls)
        catalogue_rows.append(row)
        print(f"  {n:,} items: package {row['package_mib']:,.0f} MiB, batch 1 p99 {row['batch1_p99_ms']:.1f} ms, "
              f"RSS {row['inference_rss_mib']:,.0f} MiB", flush=True)

    serve_rows = [serving_point(n, args) for n in serve_items]

    print(f"\nStore growth ({args.store_items:,}-item storefront; ingest: the median of {args.probe_repeats} probes "
          f"of {args.probe_events:,} new events; "
          f"{args.history_calls:,} history reads; {os.cpu_count()} CPUs)\n")
    print_table(["database", "events", "bulk fill ev/s", "ingest ev/s", "vs empty", "history p50 ms",
                 "history p99 ms", "full view p99 ms", "load s", "load peak MiB"],
                [[r["database"], f"{r['events']:,}", r.get("bulk_fill_events_per_s", "—"), r["ingest_events_per_s"],
                  r.get("ingest_vs_empty", 1.0), r.get("history_p50_ms", "—"), r.get("history_p99_ms", "—"),
                  r.get("full_history_p99_ms", "—"), r.get("load_seconds", "—"), r.get("load_peak_rss_mib", "—")]
                 for r in store_rows])
    print("\nCatalogue growth (untrained default architecture; ONNX Runtime CPU, 1 intra-op thread)\n")
    print_table(["items", "export s", "package MiB", "session RSS MiB", "batch 1 p50 ms", "batch 1 p99 ms",
                 "batch 32 p50 ms"],
                [[f"{r['items']:,}", r["export_seconds"], r["package_mib"], r["inference_rss_mib"],
                  r["batch1_p50_ms"], r["batch1_p99_ms"], r["batch32_p50_ms"]] for r in catalogue_rows])
    rates = args.serve_rates
    print(f"\nRecommend end to end ({args.serve_events:,}-event storefronts, {args.train_epochs} epochs, config "
          f"{json.dumps(SERVE_CONFIG)}; 3 services + load generator on {os.cpu_count()} CPUs, "
          f"{args.serve_seconds:.0f} s per rate)\n")
    print_table(["items", "package MiB", "recall@10", *(f"p50/p99 ms @{r:g}" for r in rates), "8 clients req/s",
                 "inference peak MiB", "train+export s", "train peak MiB"],
                [[f"{r['items']:,}", r["package_mib"], r.get("recall_at_10", "exact"),
                  *(f"{r[f'p50_ms_at_{x:g}']:.1f} / {r[f'p99_ms_at_{x:g}']:.1f}" for x in rates),
                  r["closed_loop_rps"], r["inference_rss_mib"], r["train_export_seconds"], r["train_peak_rss_mib"]]
                 for r in serve_rows])
    out = Path(args.out)
    write_json(out, {"benchmark": "scale", "quick": args.quick, "store": store_rows, "catalogue": catalogue_rows,
                     "serving": serve_rows, "serve_config": SERVE_CONFIG})
    plot(store_rows, catalogue_rows, serve_rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
