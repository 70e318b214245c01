"""make bench-migration: interest migration measured on real data. Per Amazon domain and category
granularity (fine: one attribute per item below the root; coarse: the importer's top-level
category), a shopper *moved* when their test item's category is absent from the categories of
their last 5 events. For the default model (several seeds), the model before the shift head
(`shift_weight` 0, no re-weighting) and the baselines: AUC and expected calibration error of
the move predictor, top-1/top-3 destination accuracy on moved shoppers, and NDCG@10, HR@10 and
category-hit@10 for moved and stayed shoppers. The Taobao sample runs as a smoke row. Runs go
to worker processes and are kept as JSON under --work, so an interrupted benchmark resumes.

    python -m tests.bench.migration --datasets ../shared/datasets --seeds 3
"""

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.bench.common import write_json
from training.experiments.runs import kept_results, run_tasks

WINDOW = 5
COLUMNS = (("AUC_move", "AUC"), ("ECE_move", "ECE"), ("dest_top1", "dest top-1"), ("dest_top3", "dest top-3"),
           ("NDCG@10_all", "NDCG@10"), ("NDCG@10_moved", "NDCG@10 moved"), ("NDCG@10_stayed", "NDCG@10 stayed"),
           ("HR@10_moved", "HR@10 moved"), ("HR@10_stayed", "HR@10 stayed"),
           ("cat_hit@10_moved", "cat-hit@10 moved"), ("cat_hit@10_stayed", "cat-hit@10 stayed"))
BASELINE_NAMES = {"drift": "JSD drift score (GetInterestProfile)", "novelty": "recent window's novelty share",
                  "switch_rate": "shopper's own past move rate", "markov": "category transitions (Markov)",
                  "cooccurrence": "co-occurrence on the last item"}
BEFORE = "model before this change (next-item scores; P(move) = their mass outside the window)"
SERVED = "**ShiftRec (served: shift head, re-weighting)**"


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    from training.train import load_overrides

    base = {"threads": args.threads, "max_minutes": args.max_minutes, **load_overrides(args.config)}
    domains = args.domains.split(",")
    fine_seeds, coarse_seeds = _per_domain(args.seeds, domains), _per_domain(args.coarse_seeds, domains)
    for domain in domains:
        spec = f"s3rec:{Path(args.datasets) / 'amazon' / domain}"
        for level in args.categories.split(","):
            group = f"{domain}-{level}"
            seeds = fine_seeds[domain] if level == "fine" else coarse_seeds[domain]
            if seeds == 0:
                continue
            common = {"group": group, "spec": spec, "categories": level}
            tasks.append({"name": f"{group}-baselines", "variant": "baselines", "seed": 0, **common})
            tasks += [{"name": f"{group}-model-{s}", "variant": "model", "seed": s, "overrides": base, **common}
                      for s in range(seeds)]
            tasks += [{"name": f"{group}-before-{s}", "variant": "before", "seed": s,
                       "overrides": {**base, "shift_weight": 0.0}, **common} for s in range(args.before_seeds)]
    if args.taobao:
        common = {"group": "Taobao-sample", "spec": f"taobao:{Path(args.datasets) / 'taobao' / 'UserBehavior_head.csv'}",
                  "categories": "coarse"}
        tasks.append({"name": "Taobao-sample-baselines", "variant": "baselines", "seed": 0, **common})
        tasks.append({"name": "Taobao-sample-model-0", "variant": "model", "seed": 0,
                      "overrides": {**base, "max_len": 50}, **common})
    return tasks


def _per_domain(value: str, domains: list[str]) -> dict[str, int]:
    """"3" for every domain, or "3,1": one count per domain, in order."""
    counts = [int(v) for v in str(value).split(",")]
    if len(counts) == 1:
        counts *= len(domains)
    if len(counts) != len(domains):
        raise SystemExit(f"give one seed count, or one per domain ({len(domains)}): got {value!r}")
    return dict(zip(domains, counts, strict=True))


def baseline_rows(data: Any) -> dict[str, dict[str, float]]:
    """Every baseline's figures on the test split."""
    from services.inference.profile import interest_profile
    from training import baselines, migration

    es, moved = migration.move_labels(data, "test", WINDOW)
    item_cat = data.item_category_index()
    names = [""] + list(data.item_categories or [""] * data.n_items)
    drift, novelty, switch = [], [], []
    for u, history in zip(es.users, es.histories):
        cats = [names[i] for i in history]
        types = data.types[u][: len(history)]
        drift.append(interest_profile(cats, list(types), WINDOW).drift_score)
        older = set(cats[:-WINDOW])
        novelty.append(sum(c not in older for c in cats[-WINDOW:]) / max(min(WINDOW, len(cats)), 1))
        codes = item_cat[history]
        moves = [codes[t] not in set(codes[max(0, t - WINDOW):t]) for t in range(1, len(codes))]
        switch.append(float(np.mean(moves)) if moves else 0.5)
    rows: dict[str, dict[str, float]] = {}
    for key, values in (("drift", drift), ("novelty", novelty), ("switch_rate", switch)):
        score = np.asarray(values)
        outcome = migration.SplitOutcome(moved, score, {})
        rows[key] = migration.summarize(outcome, calibrated=False, ranking=None)
    for key, scorer in (("markov", baselines.CategoryMarkov(data)), ("cooccurrence", baselines.CoOccurrence(data))):
        outcome = migration.collect_scorer(data, scorer, "test", 50, WINDOW)
        rows[key] = migration.summarize(outcome, dest="scores")
    return rows


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One task in a worker: the baselines of a domain, or one training run."""
    from training.data import load_files
    from training.train import RunOptions, main

    started = time.perf_counter()
    data = load_files(task["spec"], categories=task["categories"])
    out: dict[str, Any] = {"task": task, "categories": len(data.category_vocab())}
    if task["variant"] == "baselines":
        out["rows"] = baseline_rows(data)
    else:
        report = main(data=data, out=None,
                      run=RunOptions(overrides=task["overrides"], seed=task["seed"], progress=False))
        out |= {"migration": report["migration"], "fit": report["migration_fit"],
                "metrics": report["metrics"], "best_epoch": report["best_epoch"],
                "train_seconds": report["train_seconds"]}
    out["wall_seconds"] = time.perf_counter() - started
    return out


def collate(tasks: list[dict[str, Any]], runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per domain and granularity: each method's rows (one per seed)."""
    groups: dict[str, Any] = {}
    for task in tasks:
        run = runs.get(task["name"])
        if run is None:
            continue
        group = groups.setdefault(task["group"], {"categories": run["categories"], "methods": {}})
        methods = group["methods"]
        if task["variant"] == "baselines":
            for key, row in run["rows"].items():
                methods.setdefault(BASELINE_NAMES[key], []).append(row)
        else:  # the model's next-item part is the model before the shift head (bit for bit: tested)
            methods.setdefault(BEFORE, []).append(run["migration"]["next_item_only"])
            if task["variant"] == "model":
                methods.setdefault(SERVED, []).append(
                    run["migration"]["served"] | {"beta": run["fit"].get("beta", 0.0)})
    return groups


def _cell(rows: list[dict[str, float]], key: str) -> str:
    values = np.array([r.get(key, np.nan) for r in rows], dtype=np.float64)
    if np.all(np.isnan(values)):
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.nanmean(values):.4f} ± {np.nanstd(values):.4f}"


def markdown(groups: dict[str, Any]) -> str:
    lines = []
    for name, group in groups.items():
        methods = group["methods"]
        first = next(iter(methods.values()))[0]
        title = (f"### {name} ({group['categories']} categories; {first['users']:.0f} test shoppers, "
                 f"{100 * first['moved_share']:.1f} % moved)")
        lines += [title, "",
                  "| method | runs | " + " | ".join(label for _, label in COLUMNS) + " |",
                  "|---" * (len(COLUMNS) + 2) + "|"]
        for method, rows in methods.items():
            lines.append(f"| {method} | {len(rows)} | " + " | ".join(_cell(rows, key) for key, _ in COLUMNS) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.migration", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="../shared/datasets")
    parser.add_argument("--domains", default="Beauty,Sports_and_Outdoors")
    parser.add_argument("--categories", default="fine,coarse", help="granularities: fine,coarse")
    parser.add_argument("--seeds", default="3", help="seeds of the model at fine granularity (or one per domain: 3,1)")
    parser.add_argument("--coarse-seeds", default="1",
                        help="seeds of the model at coarse granularity (or one per domain; 0 skips the domain)")
    parser.add_argument("--before-seeds", type=int, default=0,
                        help="extra runs without the shift head (its next-item model is the same: tested)")
    parser.add_argument("--no-taobao", dest="taobao", action="store_false", help="skip the Taobao smoke rows")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-minutes", type=float, default=45.0)
    parser.add_argument("--config", help="JSON file of config overrides (tests: a tiny model)")
    parser.add_argument("--work", type=Path, default=Path("var/bench/migration/runs"))
    parser.add_argument("--out", default="var/bench/migration.json")
    parser.add_argument("--table-only", action="store_true", help="collate the kept runs, train nothing")
    args = parser.parse_args(argv)
    tasks = plan(args)
    runs = (kept_results(tasks, args.work, "migration") if args.table_only
            else run_tasks(tasks, run_task, args.work, jobs=args.jobs, label="migration"))
    groups = collate(tasks, runs)
    print(markdown(groups))
    write_json(args.out, {"benchmark": "migration", "window": WINDOW, "groups": groups})
    Path(args.out).with_suffix(".md").write_text(markdown(groups))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
