"""The quality report: per Amazon domain, the model and its ablation (no type/time/attribute
inputs) over several seeds, and the baselines, all in the same harness and split. Runs go to
worker processes (`--jobs` at a time, `--threads` torch threads each) and each is kept as JSON
under `--work`, so an interrupted report resumes where it stopped (`--fresh` starts over;
`--table-only` reprints). Writes `report.json` and `report.md` (mean ± std over seeds) to `--out`.

    python -m training.experiments.report --datasets ../shared/datasets --domains Beauty --seeds 3
"""

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.experiments.runs import config_diff, kept_results, run_tasks

ABLATION = {"use_tags": False, "use_types": False, "use_time": False}
COLUMNS = ("valid_NDCG@10", "NDCG@5", "NDCG@10", "NDCG@20", "HR@5", "HR@10", "HR@20", "MRR", "AUC", "GAUC",
           "precision", "recall", "F1", "NDCG@10_shifted", "NDCG@10_stable",
           "AUC_move", "NDCG@10_moved", "NDCG@10_stayed", "cat_hit@10_moved")
# the last four: interest migration (training.migration; moved = the test item's category absent from
# the last 5 events' categories): P(move) AUC, moved/stayed NDCG@10, moved shoppers' category-hit@10
MIGRATION = ("AUC_move", "NDCG@10_moved", "NDCG@10_stayed", "cat_hit@10_moved")
BASELINES = "baselines"
# what a kept run's config may differ in and still answer its task: data-sized fields, and the
# budget and hardware knobs that do not change what is trained
NOT_IDENTITY = {"model": {"n_items", "n_tags", "n_categories"}, "train": {"device", "threads", "max_minutes"}}


def seed_list(text: str) -> list[int]:
    """`--seeds`: a count N (seeds 0 … N-1), a range "a-b" (inclusive) or a list "1,2"."""
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        elif "-" in text.strip()[1:]:
            a, b = text.split("-")
            seeds = list(range(int(a), int(b) + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds: a count, a range a-b or a list a,b; not {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds: distinct seeds >= 0, at least one; not {text!r}")
    return seeds


def plan(datasets: str, domains: list[str], seeds: int | list[int], variants: tuple[str, ...],
         overrides: dict[str, Any], threads: int, epochs: int | None = None,
         device: str = "auto", ablation_seeds: int | None = None, categories: str = "fine",
         grid: dict[str, dict[str, Any]] | None = None, baselines: bool = True) -> list[dict[str, Any]]:
    """Per domain: one baselines task (unless `baselines` is False) and a run of each variant per
    seed (`seeds`: a count from 0, or the seeds themselves; the ablation's first `ablation_seeds`
    of them, when given). A variant is "model" (the default
    config), "ablation", or a name in `grid`, whose config overrides it adds."""
    grid = grid or {}
    unknown = set(variants) - {"model", "ablation"} - set(grid)
    if unknown:
        raise ValueError(f"variants neither built in nor in the grid: {sorted(unknown)}")
    tasks = []
    for domain in domains:
        spec = f"s3rec:{Path(datasets) / 'amazon' / domain}"
        if baselines:
            tasks.append({"name": f"{domain}-{BASELINES}", "domain": domain, "spec": spec, "variant": BASELINES,
                          "seed": 0, "categories": categories})
        for n, seed in enumerate(range(seeds) if isinstance(seeds, int) else seeds):
            for variant in variants:
                if variant == "ablation" and ablation_seeds is not None and n >= ablation_seeds:
                    continue
                over = overrides | (ABLATION if variant == "ablation" else {}) | grid.get(variant, {})
                tasks.append({"name": f"{domain}-{variant}-{seed}", "domain": domain, "spec": spec,
                              "variant": variant, "seed": seed, "overrides": {**over, "threads": threads},
                              "epochs": epochs, "device": device, "categories": categories})
    return tasks


def planned_config(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model and training config a training task would run with today's defaults, as a
    kept run records it (`config` in its JSON)."""
    from dataclasses import asdict

    from training.train import RunOptions, run_configs

    run = RunOptions(epochs=task["epochs"], device=task["device"], seed=task["seed"])
    model_cfg, train_cfg = run_configs(run, task["overrides"])
    return json.loads(json.dumps({"model": asdict(model_cfg), "train": asdict(train_cfg)}))


def stale(task: dict[str, Any], run: dict[str, Any]) -> str | None:
    """Why a kept run does not answer `task` (None when it does): a field of the config it was
    trained with differs from what the task asks for now — a default changed since it ran, or
    it was planned with other overrides. Equal configs reached by other overrides count as equal."""
    if task["variant"] == BASELINES:
        return None
    kept = run.get("config")
    if kept is None:
        return "no config recorded"
    return config_diff(kept, planned_config(task), NOT_IDENTITY)


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One row group of the report: every baseline, or one training run (executed in a worker)."""
    from training import baselines, evaluation, migration
    from training.data import load_files
    from training.train import RunOptions, main

    started = time.perf_counter()
    data = load_files(task["spec"], categories=task.get("categories", "fine"))
    if task["variant"] == BASELINES:
        out: dict[str, Any] = {"baselines": {}}
        for name, scorer in baselines.all_baselines(data).items():
            t0 = time.perf_counter()
            metrics = evaluation.evaluate(data, scorer, 50, split="test")
            moves = migration.summarize(migration.collect_scorer(data, scorer, "test", 50, 5))
            metrics |= {k: moves[k] for k in MIGRATION}
            out["baselines"][name] = {"seed": 0, "metrics": metrics, "train_seconds": time.perf_counter() - t0}
    else:
        report = main(data=data, out=None,
            run=RunOptions(overrides=task["overrides"], epochs=task["epochs"], device=task["device"],
                seed=task["seed"], progress=False))
        moves = report["migration"]["served"]
        metrics = report["metrics"] | {k: moves[k] for k in MIGRATION}
        metrics["valid_NDCG@10"] = max(r["valid_NDCG@10"] for r in report["history"])
        out = {"seed": task["seed"], "metrics": metrics, "train_seconds": report["train_seconds"],
               "seconds_per_epoch": report["seconds_per_epoch"], "best_epoch": report["best_epoch"],
               "epochs_run": report["epochs_run"], "history": report["history"],
               "config": report["config"], "step_prior": report["step_prior_fit"]}
    out["task"] = task
    out["wall_seconds"] = time.perf_counter() - started
    return out


def collate(tasks: list[dict[str, Any]], runs: dict[str, dict[str, Any]], overrides: dict[str, Any]) -> dict[str, Any]:
    """Per domain, per method: the list of runs (seeds) finished so far, baselines first."""
    results: dict[str, Any] = {"config_overrides": overrides, "domains": {}}
    for task in tasks:
        run = runs.get(task["name"])
        if run is None:
            continue
        rows = results["domains"].setdefault(task["domain"], {})
        if task["variant"] == BASELINES:
            for name, row in run["baselines"].items():
                rows[name] = [row]
        else:
            rows.setdefault(task["variant"], []).append({k: v for k, v in run.items() if k != "task"})
    return results


def _mean_std(runs: list[dict[str, Any]], key: str) -> str:
    values = np.array([r["metrics"].get(key, np.nan) for r in runs], dtype=np.float64)
    if np.isnan(values).all():
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.nanmean(values):.4f} ± {np.nanstd(values):.4f}"


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for domain, rows in results["domains"].items():
        lines += [f"### {domain} (test split, full ranking, mean ± std over seeds)", "",
                  "| method | runs | " + " | ".join(COLUMNS) + " | train s/run |",
                  "|---" * (len(COLUMNS) + 3) + "|"]
        for name, runs in rows.items():
            seconds = np.mean([r["train_seconds"] for r in runs])
            lines.append(f"| {name} | {len(runs)} | " + " | ".join(_mean_std(runs, c) for c in COLUMNS)
                         + f" | {seconds:.0f} |")
        first = next(iter(rows.values()))[0]["metrics"]
        users = (f"users: {first['users']:.0f}, shifted {first['users_shifted']:.0f}, "
                 f"stable {first['users_stable']:.0f}")
        lines += ["", users, ""]
    return "\n".join(lines)


def _write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(markdown(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.report", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="../shared/datasets")
    parser.add_argument("--domains", default="Beauty,Sports_and_Outdoors")
    parser.add_argument("--categories", default="fine", choices=("fine", "coarse"),
                        help="category granularity of the migration columns (Amazon files)")
    parser.add_argument("--seeds", type=seed_list, default=seed_list("3"),
                        help="a count N (seeds 0 … N-1), a range a-b or a list a,b: the runs to add to a kept report")
    parser.add_argument("--ablation-seeds", type=int, help="seeds of the ablation (default: --seeds)")
    parser.add_argument("--variants", default="model,ablation",
                        help="comma-separated: model, ablation and/or names from --grid")
    parser.add_argument("--grid", type=Path,
                        help="JSON file {variant name: config overrides} (experiments; selection by valid_NDCG@10)")
    parser.add_argument("--no-baselines", action="store_true", help="train the variants only")
    parser.add_argument("--max-minutes", type=float, default=60.0,
                        help="wall-clock cap per training loop: runs side by side are slower than one alone "
                        "(with the text edges a Sports run beside another takes 33-47 min)")
    parser.add_argument("--config", help="JSON file of config overrides")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=Path("var/reports/training"))
    parser.add_argument("--work", type=Path, help="where each run is kept (default: OUT/runs)")
    parser.add_argument("--fresh", action="store_true", help="ignore the runs kept in --work")
    parser.add_argument("--table-only", action="store_true", help="collate the kept runs, train nothing")
    args = parser.parse_args(argv)
    from training.train import load_overrides

    overrides = {"max_minutes": args.max_minutes, **load_overrides(args.config)}
    work = args.work or args.out / "runs"
    if args.fresh and work.exists():
        shutil.rmtree(work)
    tasks = plan(args.datasets, args.domains.split(","), args.seeds, tuple(args.variants.split(",")),
                 overrides, args.threads, args.epochs, args.device, args.ablation_seeds, args.categories,
                 grid=json.loads(args.grid.read_text()) if args.grid else None, baselines=not args.no_baselines)
    def write(runs: dict[str, dict[str, Any]]) -> None:  # after every run: an interrupted report keeps its table
        _write(collate(tasks, runs, overrides), args.out)

    runs = (kept_results(tasks, work, "report", stale) if args.table_only
            else run_tasks(tasks, run_task, work, jobs=args.jobs, label="report", on_result=write, stale=stale))
    results = collate(tasks, runs, overrides)
    _write(results, args.out)
    print(markdown(results))
    print(f"\nwrote {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
