"""Interest migration measured and fitted: a shopper *moved* when the category of the split's
target is absent from the categories of the last `window` events before it. For the model this
module fits the shift head's served constants on validation (the Platt calibration of P(move),
the destination mix, and `beta`, the strength of the migration-aware re-weighting of the
next-item scores) and measures, per split: AUC and expected calibration error of P(move) against
"moved", top-1/top-3 destination accuracy on moved shoppers, and NDCG@10, HR@10 and
category-hit@10 (the target's category among the top 10's categories) for moved and stayed
shoppers. Baselines that only score items (co-occurrence, a category-transition model) are
measured the same way from their normalised scores. History items are masked as in the harness.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training import metrics
from training.data import EvalSet, Inputs, SequenceData, eval_set
from training.evaluation import length_batches, mask_history

BETAS = (0.0, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # re-weighting strengths tried on validation
DEST_MIXES = (0.0, 0.5, 1.0)  # destinations: 0 = destination head, 1 = next-item distribution, between: geometric
STAYED_FLOOR = 0.97  # a beta may cost stayed shoppers at most 3 % of their validation NDCG@10 ...
OVERALL_FLOOR = 0.995  # ... and all shoppers at most 0.5 % (about one seed spread)


@dataclass
class SplitOutcome:
    """Per-user outcomes of one split, for one predictor of moves and one or more rankings."""

    moved: np.ndarray  # (U,) bool
    move_score: np.ndarray  # (U,) the predictor (a probability when calibrated, else any score)
    dest_rank: dict[str, np.ndarray]  # per destination variant: (U,) 0-based rank of the target's
    # category among the categories outside the window (-1 for stayed shoppers)
    greater: dict[str, np.ndarray] = field(default_factory=dict)  # per ranking: (U,) items above the target
    ties: dict[str, np.ndarray] = field(default_factory=dict)
    cat_hit: dict[str, np.ndarray] = field(default_factory=dict)  # (U,) target's category in the top 10
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other per-user scores (e.g. raw logits)


def window_categories(item_cat: np.ndarray, history: np.ndarray, window: int) -> set[int]:
    return {int(c) for c in item_cat[history[-window:]]}


def _inside(item_cat: np.ndarray, es: EvalSet, rows: np.ndarray, n_cat: int, window: int) -> np.ndarray:
    """(b, C+1) float: 1 for the categories of each row's last `window` history events."""
    inside = np.zeros((len(rows), n_cat + 1))
    for r, row in enumerate(rows):
        inside[r, list(window_categories(item_cat, es.histories[row], window))] = 1.0
    inside[:, 0] = 0.0
    return inside


def _dest_rank(log_q: np.ndarray, inside: np.ndarray, target_cat: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """Rank of the target category among the categories outside the window (moved rows), by log_q."""
    q = np.where(inside > 0, -np.inf, log_q)
    q[:, 0] = -np.inf
    target = q[np.arange(len(q)), target_cat][:, None]
    rank = (q > target).sum(axis=1) + 0.5 * ((q == target).sum(axis=1) - 1)
    return np.where(moved, rank, -1)


def _rank_rows(scores: np.ndarray, es: EvalSet, rows: np.ndarray, item_cat: np.ndarray,
               target_cat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.array(scores, dtype=np.float32)
    mask_history(scores, es, rows)
    greater, ties = metrics.target_ranks(scores, es.targets[rows] - 1)
    top = np.argpartition(-scores, 9, axis=1)[:, :10]  # (b, 10) columns
    hit = (item_cat[top + 1] == target_cat[:, None]).any(axis=1)
    return greater, ties, hit


def served_batches(model: Any, es: EvalSet, device: Any, batch_size: int = 512) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """(rows, `model.serve` outputs) over the eval set in batches of similar history length, each
    cut to its longest history, under no_grad with the item table built once."""
    import torch

    model.eval()
    with torch.no_grad():
        table = model.item_table()  # once: a million-item table costs about a second to build
        for rows in length_batches(es, batch_size):
            width = max(int((es.inputs.items[rows] > 0).sum(axis=1).max(initial=0)), 1)
            feeds = [torch.from_numpy(np.ascontiguousarray(a[rows, -width:])).to(device)
                     for a in (es.inputs.items, es.inputs.types, es.inputs.times)]
            yield rows, model.serve(*feeds, table=table)


def collect_model(model: Any, data: SequenceData, split: str, device: Any, betas: tuple[float, ...] = (),
                  batch_size: int = 512) -> SplitOutcome:
    """Run the model's served path on `split`: P(move) as served, destinations for every mix,
    and the ranking at the model's own beta ("served") plus each of `betas` ("beta=…")."""
    item_cat = model.item_cat.cpu().numpy()
    es = eval_set(data, split, model.cfg.max_len)
    n = len(es.users)
    target_cat = item_cat[es.targets]
    out = SplitOutcome(np.zeros(n, bool), np.zeros(n), {f"mix={m}": np.zeros(n) for m in DEST_MIXES})
    out.extra = {"move_logit": np.zeros(n), "p_out_items": np.zeros(n)}
    names = ["served", *(f"beta={b}" for b in betas)]
    for name in names:
        out.greater[name], out.ties[name] = np.zeros(n, np.int64), np.zeros(n, np.int64)
        out.cat_hit[name] = np.zeros(n, bool)
    for rows, res in served_batches(model, es, device, batch_size):
        inside = res["inside"].cpu().numpy()
        moved = inside[np.arange(len(rows)), target_cat[rows]] == 0
        out.moved[rows] = moved
        out.move_score[rows] = res["shift_probability"].cpu().numpy()
        out.extra["move_logit"][rows] = res["move_logit"].cpu().numpy()
        item_cat_logp = res["item_cat_logp"].cpu().numpy()
        outside = (1 - inside)
        outside[:, 0] = 0
        out.extra["p_out_items"][rows] = (np.exp(item_cat_logp) * outside).sum(axis=1)
        for m in DEST_MIXES:
            log_q = (1 - m) * res["dest_logp"].cpu().numpy() + m * item_cat_logp
            out.dest_rank[f"mix={m}"][rows] = _dest_rank(log_q, inside, target_cat[rows], moved)
        base = res["base"].cpu().numpy()
        delta = res["delta"].cpu().numpy()[:, item_cat[1:]]  # (b, N) per item's category
        for name in names:
            beta = float(model.beta) if name == "served" else float(name.split("=")[1])
            scores = res["scores"].cpu().numpy() if name == "served" else base + beta * delta
            g, t, h = _rank_rows(scores, es, rows, item_cat, target_cat[rows])
            out.greater[name][rows], out.ties[name][rows], out.cat_hit[name][rows] = g, t, h
    return out


def collect_scorer(data: SequenceData, scorer: Callable[[Inputs], np.ndarray], split: str, max_len: int,
                   window: int, batch_size: int = 512) -> SplitOutcome:
    """A baseline that scores items (non-negative scores, normalised into a distribution): P(move)
    = its mass outside the window's categories, destinations = its mass per category."""
    item_cat = data.item_category_index()
    n_cat = len(data.category_vocab())
    es = eval_set(data, split, max_len)
    n = len(es.users)
    target_cat = item_cat[es.targets]
    out = SplitOutcome(np.zeros(n, bool), np.zeros(n), {"scores": np.zeros(n)})
    out.greater["served"], out.ties["served"] = np.zeros(n, np.int64), np.zeros(n, np.int64)
    out.cat_hit["served"] = np.zeros(n, bool)
    onehot = np.zeros((len(item_cat) - 1, n_cat + 1))
    onehot[np.arange(len(item_cat) - 1), item_cat[1:]] = 1.0
    for rows in length_batches(es, batch_size):
        scores = np.asarray(scorer(es.inputs.rows(rows)), dtype=np.float64)
        p = np.clip(scores, 0, None)
        p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        per_cat = p @ onehot  # (b, C+1)
        inside = _inside(item_cat, es, rows, n_cat, window)
        moved = inside[np.arange(len(rows)), target_cat[rows]] == 0
        out.moved[rows] = moved
        outside = 1 - inside
        outside[:, 0] = 0
        out.move_score[rows] = (per_cat * outside).sum(axis=1)
        out.dest_rank["scores"][rows] = _dest_rank(np.log(np.maximum(per_cat, 1e-300)), inside,
                                                   target_cat[rows], moved)
        g, t, h = _rank_rows(scores, es, rows, item_cat, target_cat[rows])
        out.greater["served"][rows], out.ties["served"][rows], out.cat_hit["served"][rows] = g, t, h
    return out


def move_labels(data: SequenceData, split: str, window: int, max_len: int = 50) -> tuple[EvalSet, np.ndarray]:
    """The split's eval set and its (U,) moved flags."""
    item_cat = data.item_category_index()
    es = eval_set(data, split, max_len)
    moved = np.array([int(item_cat[t]) not in window_categories(item_cat, h, window)
                      for h, t in zip(es.histories, es.targets)], dtype=bool)
    return es, moved


def summarize(out: SplitOutcome, *, calibrated: bool = True, dest: str | None = None,
              ranking: str | None = "served") -> dict[str, float]:
    """The migration table's figures of one predictor/ranking."""
    moved = out.moved
    row: dict[str, float] = {"users": float(len(moved)), "moved_share": float(moved.mean()) if len(moved) else 0.0}
    row["AUC_move"] = metrics.auc(out.move_score[moved], out.move_score[~moved])
    if calibrated:
        row["ECE_move"] = metrics.expected_calibration_error(out.move_score, moved)
    if dest is not None:
        ranks = out.dest_rank[dest][moved]
        row["dest_top1"] = float(np.mean(ranks < 1)) if len(ranks) else float("nan")
        row["dest_top3"] = float(np.mean(ranks < 3)) if len(ranks) else float("nan")
    if ranking is not None and ranking in out.greater:
        for group, sel in (("all", np.ones_like(moved)), ("moved", moved), ("stayed", ~moved)):
            m = metrics.ranking_metrics(out.greater[ranking][sel], out.ties[ranking][sel], (10,))
            row[f"NDCG@10_{group}"] = m["NDCG@10"]
            row[f"HR@10_{group}"] = m["HR@10"]
            row[f"cat_hit@10_{group}"] = float(out.cat_hit[ranking][sel].mean()) if sel.any() else float("nan")
    return row


def fit(model: Any, data: SequenceData, device: Any) -> dict[str, Any]:
    """Fit the served constants on validation, in place: Platt calibration of the move logit,
    the destination mix (best top-3 accuracy on moved shoppers), then beta: the best NDCG@10 of
    moved shoppers among the strengths that cost stayed shoppers at most 3 % and all shoppers at
    most 0.5 % of their NDCG@10 without it. Returns what was chosen and the validation figures."""
    import torch

    first = collect_model(model, data, "valid", device)
    if not 0 < first.moved.sum() < len(first.moved):  # nothing to learn a move from: leave it off
        return {"shift_calibration": model.shift_cal.tolist(), "dest_mix": float(model.dest_mix),
                "beta": float(model.beta), "skipped": "validation has no moved or no stayed shopper"}
    a, b = metrics.fit_platt(first.extra["move_logit"], first.moved, balance=False)
    top3 = {m: summarize(first, calibrated=False, dest=f"mix={m}", ranking=None)["dest_top3"] for m in DEST_MIXES}
    mix = max(DEST_MIXES, key=lambda m: (top3[m], -m))
    with torch.no_grad():
        model.shift_cal.copy_(torch.tensor([a, b]))
        model.dest_mix.fill_(mix)
    second = collect_model(model, data, "valid", device, betas=BETAS)
    rows = {beta: summarize(second, dest=None, ranking=f"beta={beta}") for beta in BETAS}
    plain = rows[0.0]
    allowed = [beta for beta in BETAS if rows[beta]["NDCG@10_stayed"] >= STAYED_FLOOR * plain["NDCG@10_stayed"]
               and rows[beta]["NDCG@10_all"] >= OVERALL_FLOOR * plain["NDCG@10_all"]]
    beta = max(allowed, key=lambda x: (rows[x]["NDCG@10_moved"], -x))  # beta 0 always qualifies
    with torch.no_grad():
        model.beta.fill_(beta)
    return {"shift_calibration": [a, b], "dest_mix": mix, "beta": beta,
            "valid_dest_top3": {str(m): v for m, v in top3.items()},
            "valid_by_beta": {str(k): v for k, v in rows.items()},
            "valid_AUC_move": summarize(second, ranking=None)["AUC_move"],
            "valid_ECE_move": summarize(second, ranking=None)["ECE_move"]}


def evaluate(model: Any, data: SequenceData, split: str, device: Any) -> dict[str, Any]:
    """The model's migration figures on `split`: as served, and with the re-weighting off (beta 0,
    P(move) = the next-item distribution's mass outside the window, destinations from it)."""
    out = collect_model(model, data, split, device, betas=(0.0,))
    mix = f"mix={float(model.dest_mix)}"
    served = summarize(out, dest=mix if mix in out.dest_rank else "mix=0.0")
    plain = SplitOutcome(out.moved, out.extra["p_out_items"], out.dest_rank, out.greater, out.ties, out.cat_hit)
    no_rerank = summarize(plain, calibrated=False, dest="mix=1.0", ranking="beta=0.0")
    head_only = {"dest_top3_head": summarize(out, calibrated=False, dest="mix=0.0", ranking=None)["dest_top3"],
                 "dest_top1_head": summarize(out, calibrated=False, dest="mix=0.0", ranking=None)["dest_top1"]}
    return {"served": served | head_only, "next_item_only": no_rerank}
