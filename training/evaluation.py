"""The evaluation harness shared by the model (PyTorch or ONNX Runtime) and the baselines.

Literature protocol: each user's target is ranked against ALL items with the user's history
masked. Interest probabilities: the log-softmax of the scores, Platt-calibrated on validation,
judged on the target against random items the user never interacted with. Interest shift: a
test user is *shifted* when the target shares no informative tag with the last few history
items. Torch-free; a scorer is any function from model inputs to (B, N) scores.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training import metrics
from training.data import EvalSet, Inputs, SequenceData, eval_set

Scorer = Callable[[Inputs], np.ndarray]  # (B, L) inputs -> (B, N) scores, column j = item j + 1

KS = (5, 10, 20)


@dataclass
class RawEval:
    """Per-user outcomes of one split, enough to compute every metric."""

    greater: np.ndarray  # (U,) items scoring above the target (history masked)
    ties: np.ndarray  # (U,)
    pos_logp: np.ndarray  # (U,) log-softmax score of the target (nothing masked, as served)
    neg_logp: np.ndarray  # (U, K) of random items the user never interacted with
    shifted: np.ndarray  # (U,) bool


def sample_negatives(data: SequenceData, users: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(U, k) random item indices outside each user's whole sequence (seeded)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(users), k), dtype=np.int64)
    for row, u in enumerate(users):
        seen = set(data.items[u].tolist())
        draw = rng.integers(1, data.n_items + 1, size=2 * k + len(seen))
        fresh = [i for i in draw.tolist() if i not in seen][:k]
        while len(fresh) < k:
            i = int(rng.integers(1, data.n_items + 1))
            if i not in seen:
                fresh.append(i)
        out[row] = fresh
    return out


def informative_tags(data: SequenceData, max_share: float = 0.5) -> list[set[int]]:
    """Per item, its tags minus those carried by more than `max_share` of the catalogue (a
    domain-wide tag such as a top-level category says nothing about a shift)."""
    tags = data.item_tags[1:]
    counts = np.bincount(tags.ravel(), minlength=data.n_tags + 1)
    common = {t for t in range(1, data.n_tags + 1) if counts[t] > max_share * data.n_items}
    return [set()] + [{int(t) for t in row if t and t not in common} for row in tags]


def shifted_users(data: SequenceData, es: EvalSet, window: int = 5) -> np.ndarray:
    """True where the target shares no informative tag with the last `window` history items."""
    tags = informative_tags(data)
    out = np.zeros(len(es.users), dtype=bool)
    for row, (history, target) in enumerate(zip(es.histories, es.targets)):
        recent = set().union(*(tags[i] for i in history[-window:]))
        out[row] = not (tags[int(target)] & recent)
    return out


def ranks(es: EvalSet, scorer: Scorer, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Only the target ranks (history masked): the cheap path for per-epoch validation."""
    greater = np.zeros(len(es.users), dtype=np.int64)
    ties = np.zeros(len(es.users), dtype=np.int64)
    for rows in length_batches(es, batch_size):
        scores = np.array(scorer(es.inputs.rows(rows)), dtype=np.float32)  # (b, N)
        target_col = es.targets[rows] - 1
        mask_history(scores, es, rows)
        greater[rows], ties[rows] = metrics.target_ranks(scores, target_col)
    return greater, ties


SCORE_BATCH_BUDGET = 1 << 24  # user x item scores per batch (64 MiB of float32): 16 rows at 1M items


def length_batches(es: EvalSet, batch_size: int) -> list[np.ndarray]:
    """Row batches of users with similar history lengths (shortest first), so that a scorer
    can drop the columns that are padding in the whole batch. Large catalogues get fewer rows
    per batch, so that a batch's (rows, items) score matrices stay within SCORE_BATCH_BUDGET."""
    batch_size = max(1, min(batch_size, SCORE_BATCH_BUDGET // max(es.n_items, 1)))
    order = np.argsort((es.inputs.items > 0).sum(axis=1), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def mask_history(scores: np.ndarray, es: EvalSet, rows: np.ndarray) -> None:
    """Set each row's history items to -inf, except its target (a repeated target stays rankable)."""
    target_col = es.targets[rows] - 1
    target_score = scores[np.arange(len(rows)), target_col]
    lengths = [len(es.histories[r]) for r in rows]
    if sum(lengths):
        scores[np.repeat(np.arange(len(rows)), lengths), np.concatenate([es.histories[r] for r in rows]) - 1] = -np.inf
    scores[np.arange(len(rows)), target_col] = target_score


def collect(
    data: SequenceData,
    scorer: Scorer,
    split: str,
    max_len: int,
    *,
    batch_size: int = 512,
    n_negatives: int = 100,
    seed: int = 0,
) -> RawEval:
    """Ranks, log-softmax scores of target and negatives, and the shift flag of each user."""
    es = eval_set(data, split, max_len)
    negatives = sample_negatives(data, es.users, n_negatives, seed)
    n = len(es.users)
    greater, ties = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    pos_logp, neg_logp = np.zeros(n), np.zeros((n, n_negatives))
    for rows in length_batches(es, batch_size):
        scores = np.asarray(scorer(es.inputs.rows(rows)), dtype=np.float64)  # (b, N)
        target_col = es.targets[rows] - 1
        top = scores.max(axis=1, keepdims=True)
        logp = scores - top - np.log(np.exp(scores - top).sum(axis=1, keepdims=True))  # (b, N)
        pos_logp[rows] = logp[np.arange(len(rows)), target_col]
        neg_logp[rows] = np.take_along_axis(logp, negatives[rows] - 1, axis=1)
        mask_history(scores, es, rows)
        greater[rows], ties[rows] = metrics.target_ranks(scores, target_col)
    return RawEval(greater, ties, pos_logp, neg_logp, shifted_users(data, es))


def summarize(raw: RawEval, calibration: tuple[float, float] | None = None) -> dict[str, float]:
    """Ranking metrics, shifted/stable NDCG@10, AUC/GAUC and P/R/F1 at 0.5 (balanced pairs:
    the target and one random non-interacted item per user) of calibrated probabilities."""
    out = metrics.ranking_metrics(raw.greater, raw.ties, KS)
    out["users"] = float(len(raw.greater))
    for name, group in (("shifted", raw.shifted), ("stable", ~raw.shifted)):
        out[f"NDCG@10_{name}"] = metrics.ranking_metrics(raw.greater[group], raw.ties[group], (10,))["NDCG@10"]
        out[f"users_{name}"] = float(group.sum())
    out["AUC"] = metrics.auc(raw.pos_logp, raw.neg_logp)
    out["GAUC"] = metrics.gauc(raw.pos_logp, raw.neg_logp)
    if calibration is not None and raw.neg_logp.shape[1] > 0:
        a, b = calibration
        probs = metrics.sigmoid(a * np.concatenate([raw.pos_logp, raw.neg_logp[:, 0]]) + b)
        labels = np.r_[np.ones(len(raw.pos_logp)), np.zeros(len(raw.pos_logp))]
        out.update(metrics.precision_recall_f1(probs, labels, 0.5))
    return out


def fit_calibration(raw: RawEval) -> tuple[float, float]:
    """Platt scaling of the log-softmax score, fitted on (validation) targets vs negatives with
    balanced class weights: p = sigmoid(a * logp + b)."""
    x = np.concatenate([raw.pos_logp, raw.neg_logp.ravel()])
    y = np.r_[np.ones(len(raw.pos_logp)), np.zeros(raw.neg_logp.size)]
    return metrics.fit_platt(x, y, balance=True)


def evaluate(
    data: SequenceData,
    scorer: Scorer,
    max_len: int,
    *,
    split: str = "test",
    calibration: tuple[float, float] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Every metric of one split; fits the calibration on validation when none is given."""
    if calibration is None:
        calibration = fit_calibration(collect(data, scorer, "valid", max_len, seed=seed + 1))
    out = summarize(collect(data, scorer, split, max_len, seed=seed), calibration)
    out["calibration_a"], out["calibration_b"] = calibration
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    """A two-column table of the metrics."""
    return "\n".join(f"  {k:<20} {v:.4f}" if isinstance(v, float) else f"  {k:<20} {v}"
                      for k, v in metrics.items())


def remap_to_vocab(data: SequenceData, vocab: list[str]) -> SequenceData:
    """The same sequences over another item vocabulary (a package's); events on items unknown
    to it are dropped, as the server does."""
    index = {item: i + 1 for i, item in enumerate(vocab)}
    old_to_new = np.array([0] + [index.get(item, 0) for item in data.item_vocab], dtype=np.int64)
    item_tags = np.zeros((len(vocab) + 1, data.item_tags.shape[1]), dtype=np.int64)
    known = old_to_new > 0
    item_tags[old_to_new[known]] = data.item_tags[known]
    items, types, times = [], [], []
    for seq, ty, tm in zip(data.items, data.types, data.times):
        new = old_to_new[seq]
        keep = new > 0
        items.append(new[keep])
        types.append(ty[keep])
        times.append(tm[keep])
    titles = [""] * len(vocab)
    return SequenceData(list(vocab), titles, data.tag_vocab, item_tags, data.users, items, types,
                        times, data.holdout, data.source)


def onnx_scorer(package_dir: str) -> tuple[Scorer, dict]:
    """A harness scorer running a published package in ONNX Runtime, and its manifest."""
    import onnxruntime as ort

    from shared import model_package as pkg

    path = pkg.resolve_package(package_dir)
    manifest = pkg.load_manifest(path)
    session = ort.InferenceSession(str(path / pkg.MODEL_FILE), providers=["CPUExecutionProvider"])

    def score(inputs: Inputs) -> np.ndarray:
        feeds = {pkg.INPUT_ITEM_IDS: inputs.items, pkg.INPUT_EVENT_TYPES: inputs.types,
                 pkg.INPUT_TIMESTAMPS: inputs.times}
        return session.run([pkg.OUTPUT_SCORES], feeds)[0]

    return score, {"manifest": manifest, "path": str(path)}


def evaluate_package(package_dir: str, data: SequenceData, seed: int = 0) -> dict[str, float]:
    """Every metric of a published package on `data` (test split, or validation when the data
    holds nothing else out), with the package's own calibration."""
    scorer, info = onnx_scorer(package_dir)
    manifest = info["manifest"]
    data = remap_to_vocab(data, manifest.item_vocab)
    split = "test" if data.holdout == "test" else "valid"
    calibration = (manifest.calibration["a"], manifest.calibration["b"])
    return evaluate(data, scorer, manifest.max_len, split=split, calibration=calibration, seed=seed)
