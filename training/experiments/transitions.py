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

from training.data import Inputs, SequenceData, load_files
from training.experiments.ensemble import judge, member_scorer

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


def with_prior(scorer: Any, steps: StepMatrix, n_items: int, weight: float) -> Any:
    """The scorer's scores plus `weight` times the step feature from each row's last item."""
    def score(inputs: Inputs) -> np.ndarray:
        return np.asarray(scorer(inputs), dtype=np.float32) + np.float32(weight) * steps.rows(inputs.items[:, -1], n_items)
    return score


def run(data: SequenceData, package: str, features: tuple[str, ...], threads: int = 2,
        weights: tuple[float, ...] = WEIGHTS) -> list[dict[str, Any]]:
    """One row per feature and weight, judged as the ensemble's rows are: validation and test
    NDCG@10, test HR@10, and test NDCG@10 of moved and stayed shoppers."""
    scorer, cfg = member_scorer(package, data, threads)
    rows = []
    for feature in features:
        steps = StepMatrix(data, feature)
        rows += [{"feature": feature, "weight": w,
                  **judge(data, with_prior(scorer, steps, data.n_items, w), cfg.max_len, cfg.shift_window)}
                 for w in weights]
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
    keys = ("valid_NDCG@10", "test_NDCG@10", "HR@10", "NDCG@10_moved", "NDCG@10_stayed")
    print("| feature | weight | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 2) + "|")
    for row in rows:
        print(f"| {row['feature']} | {row['weight']} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
