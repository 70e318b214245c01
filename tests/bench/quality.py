"""make bench-quality: served = evaluated. The whole pipeline on a real dataset — the three
services (SQLite, or PostgreSQL with --postgres), `import … --holdout-last 1`, `shiftrec train`
from the store — then HR/NDCG@5/10/20 computed from Recommend responses for every user against
their held-out item, beside the trainer's offline figures for the same package on the same
users. Any train/serve skew shows as a difference.

Shoppers whose held-out item the model does not know (it occurs nowhere else, so it is outside
the vocabulary) can never be recommended; they count as misses in the served figure, and the
offline figure is reported both over the same users and over the known-target users only.
"""

import argparse
import asyncio
import dataclasses
import math
import os
import tempfile
from pathlib import Path

from app.importer import import_records
from app.processes import run_cli, running_stack
from shared import model_package as pkg
from shared.clients import open_aio_channel
from shared.datasets import read_s3rec, s3rec_events, s3rec_items
from shiftrec.v1 import inference_pb2, inference_pb2_grpc
from tests.bench.common import print_table, write_json
from tests.bench.ingest import fresh_postgres

CUTOFFS = (5, 10, 20)


async def served_ranks(target: str, users: list[tuple[str, str]], k: int, in_flight: int) -> list[int | None]:
    """0-based rank of each user's held-out item in Recommend(k), or None when absent."""
    ranks: list[int | None] = [None] * len(users)
    queue = list(enumerate(users))
    async with open_aio_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        async def worker() -> None:
            while queue:
                n, (user, held_out) = queue.pop()
                reply = await stub.Recommend(inference_pb2.RecommendRequest(user_id=user, k=k), timeout=30)
                if reply.strategy != inference_pb2.STRATEGY_MODEL:
                    raise RuntimeError(f"{user}: served by {inference_pb2.Strategy.Name(reply.strategy)}")
                ids = [i.item_id for i in reply.items]
                ranks[n] = ids.index(held_out) if held_out in ids else None

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return ranks


def metrics(ranks: list[int | None]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in CUTOFFS:
        hits = [r for r in ranks if r is not None and r < k]
        out[f"HR@{k}"] = len(hits) / len(ranks)
        out[f"NDCG@{k}"] = sum(1 / math.log2(r + 2) for r in hits) / len(ranks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", default=os.environ.get("SHIFTREC_DATASETS", "../shared/datasets"))
    parser.add_argument("--domain", default="Beauty")
    parser.add_argument("--postgres", action="store_true", help="the store on PostgreSQL instead of SQLite")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "SHIFTREC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--config", help="training config JSON (default: the default config)")
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: the config's)")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--out", default="var/bench/quality.json")
    args = parser.parse_args()

    from training.data import HOLDOUT_TEST, load_files
    from training.evaluation import evaluate_package

    work = Path(tempfile.mkdtemp(prefix="shiftrec-bench-quality-"))
    drop = None
    if args.postgres:
        url, drop = fresh_postgres(args.postgres_url)
    else:
        url = f"sqlite:///{work / 'store.db'}"
    models = work / "models"
    domain = read_s3rec(Path(args.datasets) / "amazon", args.domain)
    users = [(domain.user_names.get(u, str(u)), domain.item_names.get(seq[-1], str(seq[-1])))
             for u, seq in domain.sequences.items() if len(seq) >= 3]
    try:
        with running_stack(url, models, log_dir=work) as stack:
            report = import_records(stack.ingestion.target, s3rec_events(domain, holdout_last=1),
                                    s3rec_items(domain), progress=False)
            print(f"imported {report.accepted:,} events (each user's last one held out)", flush=True)
            train = ["train", "--database-url", url, "--out", str(models), "--device", "cpu"]
            train += ["--config", args.config] if args.config else []
            train += ["--epochs", str(args.epochs)] if args.epochs else []
            run_cli(*train, echo=True, timeout=3600)
            stack.inference.wait_serving(timeout=300)
            ranks = asyncio.run(served_ranks(stack.inference.target, users, max(CUTOFFS), args.in_flight))
    finally:
        if drop is not None:
            drop()
    package = pkg.resolve_package(models)
    vocab = set(pkg.load_manifest(package).item_vocab)
    known = [n for n, (_, held_out) in enumerate(users) if held_out in vocab]
    full = load_files(f"s3rec:{Path(args.datasets) / 'amazon' / args.domain}", holdout=HOLDOUT_TEST)
    keep = [u for u, seq in enumerate(full.items) if len(seq) >= 3 and full.item_vocab[seq[-1] - 1] in vocab]
    known_data = dataclasses.replace(full, users=[full.users[u] for u in keep], items=[full.items[u] for u in keep],
                                     types=[full.types[u] for u in keep], times=[full.times[u] for u in keep])
    offline = evaluate_package(str(package), known_data)
    served_all = metrics(ranks)
    served_known = metrics([ranks[n] for n in known])
    rows = []
    for name in ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20"):
        rows.append([name, served_all[name], served_known[name], offline[name], served_known[name] - offline[name]])
    print(f"\n{args.domain}: {len(users):,} users, {len(known):,} with a held-out item the model knows; "
          f"store: {'PostgreSQL' if args.postgres else 'SQLite'}; package {package.name}\n")
    print_table(["metric", "served (all users)", "served (known target)", "offline (known target)", "served - offline"],
                [[r[0], *(f"{v:.4f}" for v in r[1:4]), f"{r[4]:+.5f}"] for r in rows])
    write_json(args.out, {"benchmark": "quality", "domain": args.domain, "store": "postgresql" if args.postgres else "sqlite",
                          "users": len(users), "users_known_target": len(known), "package": package.name,
                          "served_all": served_all, "served_known_target": served_known, "offline_known_target": offline})


if __name__ == "__main__":
    main()
