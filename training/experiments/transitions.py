"""What a score-level transition prior would buy: a trained package's served scores plus
`weight` times a feature of the step from the shopper's last item to each candidate, counted
over the training events alone (held-out events never enter it), with the weight chosen on
validation and judged on the literature protocol, moved and stayed shoppers apart. An
experiment, not a serving path: nothing here exports.

The model already reads the transitions through its item graph (an item's row adds its
neighbours'), which moves whole embeddings; this asks whether the explicit first-order Markov
step (FPMC's, Rendle et al., WWW 2010, in its simplest form) still adds on top, post hoc, the
way `beta` is fitted for the migration re-weighting.

Features of the step last -> j (each row of the (N+1, N+1) matrix is sparse):
- `logcount`: log(1 + count of last -> j) in the training events;
- `prob`: count(last -> j) / count(last -> anything), P(j | last);
- `both`: the same with the reverse steps j -> last counted too (the item graph's edges).

    shiftrec train --data s3rec:DIR/Beauty --out m0
    python -m training.experiments.transitions --data s3rec:DIR/Beauty m0 --out transitions.json
"""

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from training import metrics
from training.data import SequenceData, eval_set, load_files
from training.evaluation import length_batches, mask_history
from training.experiments.ensemble import member_scorer
from training.migration import move_labels

FEATURES = ("logcount", "prob", "both")
WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


class StepMatrix:
    """A sparse (N+1, N+1) matrix of one feature of the training events' steps, rows = from."""

    def __init__(self, data: SequenceData, feature: str) -> None:
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, not {feature!r}")
        width = data.n_items + 1
        starts, cols, values = data.item_steps(width)  # every step (the model keeps the strongest k)
        rows = np.repeat(np.arange(width), np.diff(starts))
        counts = np.expm1(values.astype(np.float64)).round()
        if feature == "both":  # the reverse steps counted too
            pairs, where = np.unique(np.r_[rows * width + cols, cols * width + rows], return_inverse=True)
            counts = np.bincount(where, weights=np.r_[counts, counts], minlength=len(pairs))
            rows, cols = pairs // width, pairs % width
            starts = np.zeros(width + 1, dtype=np.int64)
            starts[1:] = np.cumsum(np.bincount(rows, minlength=width))
        if feature == "prob":
            self.values = counts / np.bincount(rows, weights=counts, minlength=width)[rows]
        else:
            self.values = np.log1p(counts)
        self.starts, self.cols = starts, cols

    def rows(self, last: np.ndarray, n_items: int) -> np.ndarray:
        """(b, N) dense: the feature of the step from each row's last item to item column + 1."""
        out = np.zeros((len(last), n_items), dtype=np.float32)
        for r, item in enumerate(last):
            lo, hi = self.starts[item], self.starts[item + 1]
            out[r, self.cols[lo:hi] - 1] = self.values[lo:hi]
        return out


def ranks_by_weight(data: SequenceData, scorer: Any, steps: StepMatrix, split: str, max_len: int,
                    weights: tuple[float, ...]) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """Per weight, the target ranks (greater, ties) of the split, history masked."""
    es = eval_set(data, split, max_len)
    out = {w: (np.zeros(len(es.users), np.int64), np.zeros(len(es.users), np.int64)) for w in weights}
    for rows in length_batches(es, 512):
        base = np.asarray(scorer(es.inputs.rows(rows)), dtype=np.float32)
        prior = steps.rows(es.inputs.items[rows, -1], data.n_items)
        for w in weights:
            scores = base + np.float32(w) * prior
            mask_history(scores, es, rows)
            out[w][0][rows], out[w][1][rows] = metrics.target_ranks(scores, es.targets[rows] - 1)
    return out


def run(data: SequenceData, package: str, features: tuple[str, ...], threads: int = 2,
        weights: tuple[float, ...] = WEIGHTS) -> list[dict[str, Any]]:
    """One row per feature and weight: validation NDCG@10; test NDCG@10 / HR@10, moved / stayed."""
    scorer, cfg = member_scorer(package, data, threads)
    moved = move_labels(data, "test", cfg.shift_window, cfg.max_len)[1]
    rows = []
    for feature in features:
        steps = StepMatrix(data, feature)
        valid = ranks_by_weight(data, scorer, steps, "valid", cfg.max_len, weights)
        test = ranks_by_weight(data, scorer, steps, "test", cfg.max_len, weights)
        for w in weights:
            g, t = test[w]
            row = {"feature": feature, "weight": w,
                   "valid_NDCG@10": metrics.ranking_metrics(*valid[w], (10,))["NDCG@10"],
                   **{f"test_{k}": v for k, v in metrics.ranking_metrics(g, t, (10,)).items() if k != "MRR"}}
            for group, sel in (("moved", moved), ("stayed", ~moved)):
                row[f"NDCG@10_{group}"] = metrics.ranking_metrics(g[sel], t[sel], (10,))["NDCG@10"]
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the package's training data, e.g. s3rec:DIR/Beauty")
    parser.add_argument("--categories", default="fine", choices=("fine", "coarse"),
                        help="category granularity that decides who moved (the report's: fine)")
    parser.add_argument("--features", default=",".join(FEATURES))
    parser.add_argument("--weights", default=",".join(map(str, WEIGHTS)))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the rows here as JSON")
    parser.add_argument("package", help="package or model directory")
    args = parser.parse_args()
    rows = run(load_files(args.data, categories=args.categories), args.package,
               tuple(args.features.split(",")), args.threads, tuple(map(float, args.weights.split(","))))
    keys = ("valid_NDCG@10", "test_NDCG@10", "test_HR@10", "NDCG@10_moved", "NDCG@10_stayed")
    print("| feature | weight | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 2) + "|")
    for row in rows:
        print(f"| {row['feature']} | {row['weight']} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
