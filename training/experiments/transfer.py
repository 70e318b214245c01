"""`make bench-transfer`: what pretraining on one domain and fine-tuning buys, measured on the
literature's protocol (leave-one-out, full ranking, history masked).

Four measurements, each a set of independent training runs spread over worker processes:

1. cross-domain: pretrain on the source domain (`--pretrain`: item text inputs on), then on
   the target domain train from scratch vs fine-tune from the pretrained package, using 5 %,
   20 % and 100 % of the target's users for training; NDCG@10 on the same test users (all of
   the target's users: the model is inductive, a user needs no embedding of its own);
2. cold-start items: 10 % of the target's items removed from every sequence except as a test
   target; HR@10 / NDCG@10 on the test targets that are those items, for the text model and
   for the default (attributes only) model;
3. temporal: a model trained on the events before a time cut, fine-tuned on the targets after
   it (older events as context), vs the scratch run on all events: time to reach the scratch
   model's best validation NDCG@10;
4. shoppers in both domains: the fine-tuned target model reading each such shopper's source
   history (earlier than the target event) merged with their target-domain history vs the
   target history alone, scored over the target's items.

Each run's result is kept as JSON under `--work`, so an interrupted benchmark resumes where it
stopped (`--fresh` starts over). Prints one table, writes everything to `--out`.
"""

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training.experiments import cold_start, cross_domain, shared_shoppers, temporal
from training.experiments.cross_domain import FINETUNE, SCRATCH
from training.experiments.runs import kept_results, run_tasks
from training.experiments.temporal import time_to_reach

# A task's "kind" (kept in the run files under --work) -> the experiment that runs it.
EXPERIMENTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pretrain": cross_domain.pretrain,
    "fraction": cross_domain.fraction,
    "cold": cold_start.run,
    "temporal_base": temporal.base,
    "temporal_finetune": temporal.finetune,
    "shared": shared_shoppers.run,
}


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One run (executed in a worker process), with its task and wall time attached."""
    started = time.perf_counter()
    if task["kind"] not in EXPERIMENTS:
        raise ValueError(task["kind"])
    out = EXPERIMENTS[task["kind"]](task)
    out["task"] = {k: v for k, v in task.items() if k not in ("work",)}
    out["wall_seconds"] = time.perf_counter() - started
    return out


# --- the plan ------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(pretrain task, tasks that need nothing, tasks that need the pretrain or another run)."""
    base = {"work": str(args.work), "threads": args.threads, "overrides": {"max_minutes": args.max_minutes},
            "source": f"s3rec:{args.datasets}/amazon/{args.source}",
            "target": f"s3rec:{args.datasets}/amazon/{args.target}"}
    pretrain = {**base, "name": "pretrain", "kind": "pretrain", "seed": 0, "pretrain_minutes": args.pretrain_minutes}
    free, after = [], []
    for fraction in args.fractions:
        seeds = range(args.seeds if fraction < 1 else args.full_seeds)
        for seed in seeds:
            for arm in (SCRATCH, FINETUNE):
                task = {**base, "name": f"fraction-{fraction:g}-{arm}-{seed}", "kind": "fraction",
                        "fraction": fraction, "arm": arm, "seed": seed}
                if fraction == 1:  # all users: an epoch takes ~4x longer, convergence needs the time
                    task["overrides"] = {"max_minutes": args.full_max_minutes}
                if fraction == 1 and seed == 0 and arm == FINETUNE:
                    task["save_as"] = "target-finetuned.pt"
                if arm == FINETUNE:
                    task["needs"] = ["pretrain"]
                (after if arm == FINETUNE else free).append(task)
    for arm in cold_start.ARMS:
        free.append({**base, "name": f"cold-{arm}", "kind": "cold", "arm": arm, "seed": 0, "item_fraction": 0.1})
    free.append({**base, "name": "temporal-base", "kind": "temporal_base", "seed": 0, "cut": args.cut})
    for name, new_only in (("temporal-finetune", True), ("temporal-finetune-all", False)):
        after.append({**base, "name": name, "kind": "temporal_finetune", "seed": 0, "cut": args.cut,
                      "new_events_only": new_only, "needs": ["temporal-base"]})
    if 1.0 in args.fractions and args.full_seeds > 0:
        after.append({**base, "name": "shared-shoppers", "kind": "shared", "model": "target-finetuned.pt",
                      "needs": ["fraction-1-finetune-0"]})
    return pretrain, free, after


def run_all(args: argparse.Namespace, table_only: bool = False) -> dict[str, dict[str, Any]]:
    """Every run of the plan (`table_only`: those kept under today's defaults, training nothing)."""
    pretrain, free, after = plan(args)
    tasks = [pretrain, *free, *after]
    if table_only:
        return kept_results(tasks, args.work / "runs", "transfer")
    return run_tasks(tasks, run_task, args.work / "runs", jobs=args.jobs, label="transfer")


# --- the table -----------------------------------------------------------------------------


def summarize(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"cross_domain": [], "config": {k: str(v) for k, v in vars(args).items()}}
    for fraction in args.fractions:
        row: dict[str, Any] = {"fraction": fraction}
        for arm in (SCRATCH, FINETUNE):
            runs = [r for name, r in results.items() if name.startswith(f"fraction-{fraction:g}-{arm}-")]
            ndcg = [r["metrics"]["NDCG@10"] for r in runs]
            row[arm] = {"NDCG@10_mean": float(np.mean(ndcg)) if ndcg else None,
                        "NDCG@10_std": float(np.std(ndcg)) if ndcg else None, "seeds": len(ndcg),
                        "HR@10_mean": float(np.mean([r["metrics"]["HR@10"] for r in runs])) if runs else None,
                        "NDCG@10_shifted_mean": float(np.mean([r["metrics"]["NDCG@10_shifted"] for r in runs]))
                        if runs else None,
                        "train_users": runs[0]["train_users"] if runs else None,
                        "train_seconds_mean": float(np.mean([r["train_seconds"] for r in runs])) if runs else None}
        if row[SCRATCH]["NDCG@10_mean"] and row[FINETUNE]["NDCG@10_mean"]:
            row["gain"] = row[FINETUNE]["NDCG@10_mean"] / row[SCRATCH]["NDCG@10_mean"] - 1
        out["cross_domain"].append(row)
    if "pretrain" in results:
        p = results["pretrain"]
        out["pretrain"] = {"NDCG@10": p["metrics"]["NDCG@10"], "train_seconds": p["train_seconds"],
                           "best_epoch": p["best_epoch"], "epochs_run": p["epochs_run"]}
    cold = {arm: results.get(f"cold-{arm}") for arm in cold_start.ARMS}
    out["cold_start"] = {arm: None if r is None else {**r["cold"], "NDCG@10_all": r["metrics"]["NDCG@10"],
                                                         "held_items": r["held_items"],
                                                         "random_HR@10": r["random_HR@10"]}
                         for arm, r in cold.items()}
    scratch = results.get("fraction-1-scratch-0")
    if scratch:
        level = scratch["best_valid_NDCG@10"]
        temporal: dict[str, Any] = {"scratch_best_valid_NDCG@10": level, "scratch_test_NDCG@10": scratch["metrics"]["NDCG@10"],
                                    "scratch_train_seconds": scratch["train_seconds"], "cut": args.cut}
        for arm in ("temporal-finetune", "temporal-finetune-all"):
            ft = results.get(arm)
            if ft is None:
                continue
            row: dict[str, Any] = {"best_valid_NDCG@10": ft["best_valid_NDCG@10"], "test_NDCG@10": ft["metrics"]["NDCG@10"],
                                   "train_users": ft["train_users"], "train_seconds": ft["train_seconds"]}
            for share in (1.0, 0.95):
                t_ft = time_to_reach(ft["history"], share * level)
                t_sc = time_to_reach(scratch["history"], share * level)
                row[f"to_{share:g}"] = {"finetune_seconds": t_ft, "scratch_seconds": t_sc,
                                        "ratio": t_ft / t_sc if t_ft is not None and t_sc else None}
            temporal["new_events_only" if arm == "temporal-finetune" else "all_events"] = row
        out["temporal"] = temporal
    if "shared-shoppers" in results:
        out["shared_shoppers"] = {k: v for k, v in results["shared-shoppers"].items() if k != "task"}
    return out


def _f(x: Any, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def print_table(summary: dict[str, Any]) -> None:
    print("\ncross-domain (source -> target), NDCG@10 on all target test users")
    print(f"  {'train users':>12} {'seeds':>5} {'scratch':>16} {'pretrained+ft':>16} {'gain':>8}")
    for row in summary["cross_domain"]:
        s, f = row[SCRATCH], row[FINETUNE]
        print(f"  {row['fraction']:>11.0%} {s['seeds']:>5} {_f(s['NDCG@10_mean'])} ± {_f(s['NDCG@10_std'])}"
              f" {_f(f['NDCG@10_mean'])} ± {_f(f['NDCG@10_std'])} {_f(row.get('gain'), '+.1%'):>8}")
    print("\ncold-start items (10 % of the target's items never in training)")
    for arm, r in summary["cold_start"].items():
        if r:
            print(f"  {arm:<16} HR@10 {_f(r['HR@10'])}  NDCG@10 {_f(r['NDCG@10'])}  on {r['users']} test users "
                  f"(random HR@10 {_f(r['random_HR@10'], '.5f')}; all users NDCG@10 {_f(r['NDCG@10_all'])})")
    if "temporal" in summary:
        t = summary["temporal"]
        print(f"\ntemporal: scratch on all events, best valid NDCG@10 {_f(t['scratch_best_valid_NDCG@10'])}"
              f" (test {_f(t['scratch_test_NDCG@10'])}, {_f(t['scratch_train_seconds'], '.0f')} s)")
        for arm in ("new_events_only", "all_events"):
            if arm not in t:
                continue
            r = t[arm]
            print(f"  fine-tune, {arm.replace('_', ' ')}: best valid {_f(r['best_valid_NDCG@10'])} "
                  f"(test {_f(r['test_NDCG@10'])}, {_f(r['train_seconds'], '.0f')} s with early stopping)")
            for share in ("1", "0.95"):
                x = r[f"to_{share}"]
                print(f"    to {share} x scratch's best: {_f(x['finetune_seconds'], '.0f')} s vs scratch "
                      f"{_f(x['scratch_seconds'], '.0f')} s (ratio {_f(x['ratio'], '.2f')})")
    if "shared_shoppers" in summary:
        s = summary["shared_shoppers"]
        a, b = s["target_history_only"], s["with_source_history"]
        print(f"\nshoppers in both domains: {s['shoppers']} ({s['with_earlier_source_events']} with earlier "
              f"source events)\n  target history only   NDCG@10 {_f(a['NDCG@10'])} HR@10 {_f(a['HR@10'])}"
              f"\n  + source history      NDCG@10 {_f(b['NDCG@10'])} HR@10 {_f(b['HR@10'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.transfer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="../shared/datasets")
    parser.add_argument("--source", default="Sports_and_Outdoors")
    parser.add_argument("--target", default="Beauty")
    parser.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")], default=[0.05, 0.2, 1.0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per fraction below 100 %%")
    parser.add_argument("--full-seeds", type=int, default=3, help="seeds at 100 %% of the users")
    parser.add_argument("--cut", type=int, default=1_394_150_400,
                        help="temporal cut, unix seconds (default 2014-03-07: 80 %% of Beauty's events before)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--max-minutes", type=float, default=12.0, help="wall-clock cap per target-domain run")
    parser.add_argument("--full-max-minutes", type=float, default=25.0, help="the cap for runs on 100 %% of users")
    parser.add_argument("--pretrain-minutes", type=float, default=15.0)
    parser.add_argument("--work", type=Path, default=Path("var/bench/transfer"))
    parser.add_argument("--out", type=Path, default=Path("var/bench/transfer.json"))
    parser.add_argument("--fresh", action="store_true", help="ignore the runs kept in --work")
    parser.add_argument("--table-only", action="store_true", help="summarize the runs kept in --work, train nothing")
    args = parser.parse_args(argv)
    if args.fresh and args.work.exists():
        import shutil

        shutil.rmtree(args.work)
    results = run_all(args, table_only=args.table_only)
    summary = summarize(results, args)
    print_table(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
