"""make bench-drift: how well the interest profile's drift score predicts that a shopper's next
event falls in a category new to them (AUC), on a real dataset. The profile is computed exactly as
GetInterestProfile computes it (services.inference.profile), from each history prefix.

For comparison, a second predictor: the recent window's novelty, the share of its events in
categories absent from the older history (drift measures how far interest moved; novelty how much
of the recent interest is in places the shopper had never been)."""

import argparse
import os
from pathlib import Path

import numpy as np

from services.inference.profile import interest_profile
from shared.datasets import read_s3rec, s3rec_items
from tests.bench.common import print_table, write_json
from training.metrics import auc

REVIEW = 6


def samples(domain_dir: Path, domain: str, window: int, min_history: int, last_only: bool):
    data = read_s3rec(domain_dir, domain)
    by_asin = {i.item_id: i.category for i in s3rec_items(data)}
    category = {s3: by_asin[data.item_names.get(s3, str(s3))] for s3 in data.item_names}
    scores, novelty, labels = [], [], []
    for seq in data.sequences.values():
        cats = [category.get(i, "") for i in seq]
        positions = [len(seq) - 1] if last_only else range(min_history, len(seq))
        for t in positions:
            if t < min_history:
                continue
            history = cats[:t]
            profile = interest_profile(history, [REVIEW] * t, window)
            scores.append(profile.drift_score)
            older = set(history[:-window])
            novelty.append(sum(c not in older for c in history[-window:]) / min(window, t))
            labels.append(cats[t] not in set(history))
    return np.array(scores), np.array(novelty), np.array(labels, dtype=bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", default=os.environ.get("SHIFTREC_DATASETS", "../shared/datasets"))
    parser.add_argument("--domains", default="Beauty,Sports_and_Outdoors")
    parser.add_argument("--windows", default="3,5,10")
    parser.add_argument("--min-history", type=int, default=4)
    parser.add_argument("--out", default="var/bench/drift.json")
    args = parser.parse_args()
    rows = []
    for domain in args.domains.split(","):
        for window in (int(w) for w in args.windows.split(",")):
            for last_only in (True, False):
                s, novelty, y = samples(Path(args.datasets) / "amazon", domain, window, args.min_history, last_only)
                rows.append({
                    "domain": domain, "recent_window": window,
                    "positions": "last event per user" if last_only else "every event",
                    "samples": len(y), "new_category_rate": float(y.mean()),
                    "auc": auc(s[y], s[~y]),
                    "auc_recent_novelty": auc(novelty[y], novelty[~y]),
                })
                print(f"  {domain} window {window} {rows[-1]['positions']}: AUC {rows[-1]['auc']:.3f}", flush=True)
    print("\nDrift score as a predictor that the next event's category is new to the shopper\n")
    print_table(["domain", "recent window", "positions", "samples", "new-category rate", "AUC drift score",
                 "AUC recent novelty"],
                [[r["domain"], r["recent_window"], r["positions"], r["samples"], r["new_category_rate"], r["auc"],
                  r["auc_recent_novelty"]] for r in rows])
    write_json(args.out, {"benchmark": "drift", "min_history": args.min_history, "results": rows})


if __name__ == "__main__":
    main()
