"""What a seed ensemble would buy: packages of one domain trained on the same data with different
seeds, their served scores averaged, judged on the literature protocol beside each member alone,
with moved and stayed shoppers apart. An experiment, not a serving path: nothing here exports.

Averaging the members' scores ranks exactly as averaging their log-softmax does (each member's
normaliser is one constant per row), and as one model whose user vector and item table are the
members' side by side would: the score is a sum of dot products.

    shiftrec train --data s3rec:DIR/Beauty --seed 0 --out m0   (and --seed 1, 2, ...)
    python -m training.experiments.ensemble --data s3rec:DIR/Beauty m0 m1 m2 --out ensemble.json
"""

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from training import evaluation, metrics
from training.data import Inputs, SequenceData, eval_set, load_files
from training.migration import move_labels


def member_scorer(package: str | Path, data: SequenceData, threads: int = 2) -> tuple[evaluation.Scorer, Any]:
    """A package's PyTorch weights as a harness scorer (its served scores), and its model config."""
    import torch

    from training.export import load_weights
    from training.model import ModelConfig, ShiftRec, saved_config
    from training.train import torch_scorer

    torch.set_num_threads(threads)
    weights = load_weights(package)
    if list(weights["item_vocab"]) != list(data.item_vocab):
        raise ValueError(f"{package}: trained on another item vocabulary than --data")
    cfg = ModelConfig(**saved_config(weights["model_config"]))
    return torch_scorer(ShiftRec.from_state(cfg, weights["state_dict"]), torch.device("cpu")), cfg


def mean_scorer(scorers: list[evaluation.Scorer]) -> evaluation.Scorer:
    """The members' scores averaged."""
    def score(inputs: Inputs) -> np.ndarray:
        return np.mean([np.asarray(s(inputs), dtype=np.float64) for s in scorers], axis=0).astype(np.float32)
    return score


def judge(data: SequenceData, scorer: evaluation.Scorer, max_len: int, window: int) -> dict[str, float]:
    """Validation and test NDCG@10, test HR@10, and test NDCG@10 of moved and stayed shoppers."""
    row: dict[str, float] = {}
    for split in ("valid", "test"):
        greater, ties = evaluation.ranks(eval_set(data, split, max_len), scorer)
        row[f"{split}_NDCG@10"] = metrics.ranking_metrics(greater, ties, (10,))["NDCG@10"]
    row["HR@10"] = metrics.ranking_metrics(greater, ties, (10,))["HR@10"]
    moved = move_labels(data, "test", window, max_len)[1]
    for group, sel in (("moved", moved), ("stayed", ~moved)):
        row[f"NDCG@10_{group}"] = metrics.ranking_metrics(greater[sel], ties[sel], (10,))["NDCG@10"]
    return row


def run(data: SequenceData, packages: list[str], threads: int = 2) -> list[dict[str, Any]]:
    """One row per member alone, then one per ensemble of the first k members, k = 2..K."""
    members = [member_scorer(p, data, threads) for p in packages]
    cfg = members[0][1]
    rows = [{"members": [p], **judge(data, s, cfg.max_len, cfg.shift_window)} for p, (s, _) in zip(packages, members)]
    for k in range(2, len(members) + 1):
        rows.append({"members": packages[:k],
                     **judge(data, mean_scorer([s for s, _ in members[:k]]), cfg.max_len, cfg.shift_window)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the members' training data, e.g. s3rec:DIR/Beauty")
    parser.add_argument("--categories", default="fine", choices=("fine", "coarse"),
                        help="category granularity that decides who moved (the report's: fine)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the rows here as JSON")
    parser.add_argument("packages", nargs="+", help="package or model directories, one per member")
    args = parser.parse_args()
    rows = run(load_files(args.data, categories=args.categories), args.packages, args.threads)
    keys = ("valid_NDCG@10", "test_NDCG@10", "HR@10", "NDCG@10_moved", "NDCG@10_stayed")
    print("| members | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for row in rows:
        print(f"| {len(row['members'])}: {', '.join(map(str, row['members']))} | "
              + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
