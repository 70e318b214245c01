"""The step prior's weight (`ShiftRec.step_weight`), fitted on validation after training: the
weight of the log-count of the step from the shopper's last item to each item, added to the
next-item logits, that gives the best validation NDCG@10 over all shoppers (ties: the smaller
weight). The migration re-weighting is fitted afterwards on the distribution with it, so the
weights are judged here without it (beta 0)."""

from typing import Any

import numpy as np

from training import metrics
from training.data import SequenceData, eval_set
from training.evaluation import mask_history
from training.migration import served_batches

# weights tried; on Beauty validation NDCG@10 rose to a broad top at .75-1.25 (.0791 -> .0831) and
# fell past 2 (.0820) and 4 (.0790) (training/RESULTS.md, 2026-12-06)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def fit(model: Any, data: SequenceData, device: Any, weights: tuple[float, ...] | None = None,
        batch_size: int = 512) -> dict[str, Any]:
    """Choose and set `model.step_weight` in place; returns the choice and validation NDCG@10 by weight."""
    import torch

    weights = WEIGHTS if weights is None else weights
    if not model.cfg.step_prior_k:
        return {"weight": 0.0, "skipped": "no step prior (step_prior_k 0)"}
    es = eval_set(data, "valid", model.cfg.max_len)
    if not len(es.users):
        return {"weight": float(model.step_weight), "skipped": "validation is empty"}
    greater = {w: np.zeros(len(es.users), np.int64) for w in weights}
    ties = {w: np.zeros(len(es.users), np.int64) for w in weights}
    with torch.no_grad():
        model.step_weight.zero_()
    for rows, res in served_batches(model, es, device, batch_size):
        base, prior = res["base"].float().cpu().numpy(), res["prior"].float().cpu().numpy()
        for w in weights:
            scores = base + np.float32(w) * prior
            mask_history(scores, es, rows)
            greater[w][rows], ties[w][rows] = metrics.target_ranks(scores, es.targets[rows] - 1)
    ndcg = {w: metrics.ranking_metrics(greater[w], ties[w], (10,))["NDCG@10"] for w in weights}
    best = max(weights, key=lambda w: (ndcg[w], -w))
    with torch.no_grad():
        model.step_weight.fill_(best)
    return {"weight": best, "valid_NDCG@10_by_weight": {str(w): v for w, v in ndcg.items()}}
