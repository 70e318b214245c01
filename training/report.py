"""The quality report: per Amazon domain, the model and its ablation (no type/time/attribute
inputs) over several seeds, and the baselines, all in the same harness and split. Writes
`report.json` and `report.md` (mean ± std over seeds) into an output folder, after every run
so that an interrupted report keeps what it finished.

    python -m training.report --datasets ../shared/datasets --domains Beauty --seeds 3
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from training import baselines, evaluation
from training.data import load_files

ABLATION = {"use_tags": False, "use_types": False, "use_time": False}
COLUMNS = ("NDCG@5", "NDCG@10", "NDCG@20", "HR@5", "HR@10", "HR@20", "MRR", "AUC", "GAUC",
           "precision", "recall", "F1", "NDCG@10_shifted", "NDCG@10_stable")


def run_report(
    datasets: str,
    domains: list[str],
    seeds: int,
    out_dir: str,
    *,
    config_path: str | None = None,
    epochs: int | None = None,
    device: str = "auto",
    variants: tuple[str, ...] = ("model", "ablation"),
) -> dict[str, Any]:
    from training.train import load_overrides, main

    overrides = load_overrides(config_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config_overrides": overrides, "domains": {}}
    for domain in domains:
        data = load_files(f"s3rec:{Path(datasets) / 'amazon' / domain}")
        rows: dict[str, list[dict[str, Any]]] = {}
        results["domains"][domain] = rows
        for name, scorer in baselines.all_baselines(data).items():
            started = time.perf_counter()
            metrics = evaluation.evaluate(data, scorer, 50, split="test")
            rows[name] = [{"seed": 0, "metrics": metrics, "train_seconds": time.perf_counter() - started}]
            _write(results, out)
        for seed in range(seeds):
            for variant in variants:
                over = overrides | (ABLATION if variant == "ablation" else {})
                report = main(data=data, out=None, overrides=over, epochs=epochs, device=device, seed=seed)
                rows.setdefault(variant, []).append(
                    {"seed": seed, "metrics": report["metrics"], "train_seconds": report["train_seconds"],
                     "seconds_per_epoch": report["seconds_per_epoch"], "best_epoch": report["best_epoch"],
                     "epochs_run": report["epochs_run"]})
                _write(results, out)
    return results


def _mean_std(runs: list[dict[str, Any]], key: str) -> str:
    values = np.array([r["metrics"].get(key, np.nan) for r in runs], dtype=np.float64)
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
    (out / "report.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="../shared/datasets")
    parser.add_argument("--domains", default="Beauty,Sports_and_Outdoors")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default="model,ablation")
    parser.add_argument("--config", help="JSON file of config overrides")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="var/reports")
    args = parser.parse_args()
    results = run_report(args.datasets, args.domains.split(","), args.seeds, args.out,
                         config_path=args.config, epochs=args.epochs, device=args.device,
                         variants=tuple(args.variants.split(",")))
    print(markdown(results))


if __name__ == "__main__":
    main()
