"""ONNX export of the model's inference path, parity check against PyTorch on real sequences,
and atomic publication of the model package (see `shared.model_package` for the contract)."""

import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared import model_package as pkg
from shared.encoding import cut_padding, model_inputs
from training import retrieval
from training.data import SequenceData, eval_set
from training.evaluation import SCORE_BATCH_BUDGET
from training.model import ExportTable, ShiftRec
from training.parity_sample import synthetic_parity_inputs
from training.text import ENCODER_NAME
from training.tracing import trace_to_onnx

SCORE_TOLERANCE = 1e-4
TOP_K = 10
PARITY_USERS = 256  # real sequences compared between ONNX Runtime and PyTorch
RETRIEVAL_USERS = 1024  # as many for a retrieval package: half choose nprobe, half measure recall
SAMPLE_USERS = 4  # of which a few go into the manifest for the serving side to re-check
POPULAR_ITEMS = 100  # the manifest's cold-start list
WEIGHTS_FILE = "weights.pt"  # PyTorch state for fine-tuning; the serving side ignores it


def load_weights(path: str | Path) -> dict[str, Any]:
    """The PyTorch weights of a published package (for fine-tuning), with its vocabularies."""
    package = pkg.resolve_package(path)
    return torch.load(package / WEIGHTS_FILE, map_location="cpu", weights_only=True)


def weights_state(model: ShiftRec, data: SequenceData, version: str, *, pretrain: bool = False) -> dict[str, Any]:
    """What `weights.pt` holds: the PyTorch state with the vocabularies it was trained on, and
    what fine-tuning needs to know of its origin (`load_warm_start` reads it)."""
    return {"state_dict": model.state_dict(), "model_config": asdict(model.cfg), "version": version,
            "item_vocab": list(data.item_vocab), "tag_vocab": list(data.tag_vocab),
            "pretrain": pretrain, "data_until": data.last_timestamp()}


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree; the package is not published."""


class ServingModel(nn.Module):
    """The inference path with constants baked in: the item table (id + attribute embeddings,
    folded), the Platt calibration of the log-softmax score, and the shift head with its fitted
    calibration, destination mix and re-weighting (outputs in `shared.model_package` order)."""

    def __init__(self, model: ShiftRec, calibration: tuple[float, float]) -> None:
        super().__init__()
        self.model = model.eval()
        with torch.no_grad():
            # (N+1, D): the graph carries the table once (ExportTable)
            self.register_buffer("table", model.item_table().detach().contiguous())
        self.register_buffer("cal", torch.tensor(calibration, dtype=torch.float32))  # (2,)

    def forward(
        self, items: torch.Tensor, types: torch.Tensor, times: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out = self.model.serve(items, types, times, table=ExportTable(self.table))
        scores = out["scores"]  # (B, N) migration-aware
        logp = torch.log_softmax(scores, dim=-1)  # (B, N)
        probs = torch.sigmoid(self.cal[0] * logp + self.cal[1])  # (B, N)
        return scores, probs, out["user"], out["shift_probability"], out["category_probabilities"]


def new_version(fingerprint: str) -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + fingerprint[:8]


def parity_inputs(data: SequenceData, max_len: int, n: int = PARITY_USERS) -> dict[str, np.ndarray]:
    """Real histories: the inputs of each user's last prediction (validation or test split)."""
    split = "test" if eval_set(data, "test", max_len).users.size else "valid"
    es = eval_set(data, split, max_len)
    if es.users.size == 0:
        raise ParityError("no user has a history to check parity on")
    # a spread of users, longest histories included, so padding and full windows are both seen
    order = np.argsort(-(es.inputs.items > 0).sum(axis=1), kind="stable")
    rows = np.unique(np.r_[order[: n // 4], np.linspace(0, len(order) - 1, n - n // 4).astype(int)])
    return model_inputs(es.inputs.items[rows], es.inputs.types[rows], es.inputs.times[rows])


def popular_columns(data: SequenceData, n: int = POPULAR_ITEMS) -> list[int]:
    """Vocabulary positions of the most-interacted items in the training events, most first."""
    counts = np.bincount(np.concatenate([data.items[u][: data.train_end(u)] for u in range(len(data.users))]),
                         minlength=data.n_items + 1)[1:]
    return [int(j) for j in np.argsort(-counts, kind="stable")[:n] if counts[j] > 0]


def top_k_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's k best columns, best first, ties by column (a partition, then a sort of k: a
    full sort of a million scores per row made a large catalogue's export minutes slower)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(scores, part, 1)), axis=1)
    return np.take_along_axis(part, order, 1)


def top_k_agree(reference: np.ndarray, other: np.ndarray, k: int = TOP_K, tie: float = 1e-6) -> bool:
    """Identical top-k per row; a swap is tolerated only between reference scores that tie."""
    ref_top, oth_top = top_k_columns(reference, k), top_k_columns(other, k)
    for r in range(len(reference)):
        if np.array_equal(ref_top[r], oth_top[r]):
            continue
        if not np.allclose(reference[r, ref_top[r]], reference[r, oth_top[r]], atol=tie, rtol=0):
            return False
    return True


def check_parity(onnx_path: Path, serving: ServingModel, feeds: dict[str, np.ndarray]
                 ) -> tuple[dict[str, float], np.ndarray]:
    """ONNX Runtime vs PyTorch on `feeds`: the largest differences per output (ParityError past
    the tolerance or when a top 10 differs), and ONNX Runtime's exact top-10 columns (U, 10)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    n_users, n_items = len(feeds[pkg.INPUT_ITEM_IDS]), len(serving.table) - 1
    step = max(1, min(n_users, SCORE_BATCH_BUDGET // n_items))  # bounded (rows, items) matrices
    diffs: dict[str, float] = {}
    tops = []
    for start in range(0, n_users, step):
        part = {n: feeds[n][start : start + step] for n in pkg.INPUT_NAMES}
        got = session.run(list(pkg.ALL_OUTPUT_NAMES), part)
        with torch.no_grad():
            want = [t.cpu().numpy() for t in serving(*(torch.from_numpy(part[n]) for n in pkg.INPUT_NAMES))]
        diffs = {name: max(float(np.abs(g - w).max()), diffs.get(name, 0.0))
                 for name, g, w in zip(pkg.ALL_OUTPUT_NAMES, got, want)}
        if max(diffs.values()) > SCORE_TOLERANCE:
            raise ParityError(f"ONNX Runtime vs PyTorch max abs difference {diffs} > {SCORE_TOLERANCE}")
        if not top_k_agree(want[0], got[0]):
            raise ParityError("ONNX Runtime and PyTorch top-10 differ")
        tops.append(top_k_columns(got[0], TOP_K))
    diffs["cut"] = _check_cut_padding(session, serving, feeds)
    return {f"max_abs_diff_{k}": v for k, v in diffs.items()} | {"users": float(n_users)}, np.concatenate(tops)


def _check_cut_padding(session: Any, serving: ServingModel, feeds: dict[str, np.ndarray], n: int = 8) -> float:
    """Serving cuts the padding every row of a call carries (`cut_padding`): on the `n` shortest
    histories, grouped by length and cut, the graph gives what PyTorch gives on the whole window.
    Returns the largest difference over every output."""
    lengths = (feeds[pkg.INPUT_ITEM_IDS] > 0).sum(axis=1)
    shortest = np.argsort(lengths, kind="stable")[:n]
    worst = 0.0
    for length in np.unique(lengths[shortest]):
        part = {name: feeds[name][shortest[lengths[shortest] == length]] for name in pkg.INPUT_NAMES}
        got = session.run(list(pkg.ALL_OUTPUT_NAMES), cut_padding(part))
        with torch.no_grad():
            want = [t.cpu().numpy() for t in serving(*(torch.from_numpy(part[name]) for name in pkg.INPUT_NAMES))]
        worst = max([worst, *(float(np.abs(g - w).max()) for g, w in zip(got, want))])
    if worst > SCORE_TOLERANCE:
        raise ParityError(f"ONNX Runtime on inputs without their common padding vs PyTorch: max abs "
                          f"difference {worst:.2e} > {SCORE_TOLERANCE}")
    return worst


def export_onnx(serving: ServingModel, path: Path, max_len: int) -> None:
    """Batch and event axes dynamic: serving passes at most `max_len` events and cuts the padding
    every row of a call carries (`shared.encoding.cut_padding`; a Beauty history is 9 events)."""
    example = tuple(torch.ones(2, max_len, dtype=torch.int64) for _ in pkg.INPUT_NAMES)
    trace_to_onnx(serving, example, path, pkg.INPUT_NAMES, pkg.ALL_OUTPUT_NAMES,
                  {n: {0: "batch", 1: "events"} for n in pkg.INPUT_NAMES} | {n: {0: "batch"} for n in pkg.ALL_OUTPUT_NAMES})


def save_curve(history: list[dict[str, float]], path: Path) -> None:
    """Training loss and validation NDCG@10 per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax1.plot(epochs, [r["loss"] for r in history], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [r["valid_NDCG@10"] for r in history], color="tab:red", label="valid NDCG@10")
    ax2.set_ylabel("valid NDCG@10", color="tab:red")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def export_package(
    trained: Any,
    data: SequenceData,
    calibration: tuple[float, float],
    report: dict[str, Any],
    model_dir: str | Path,
    *,
    version: str | None = None,
    parent_version: str | None = None,
    retrieval_path: bool | None = None,
) -> Path:
    """Export, check parity, write the manifest and curve, publish atomically; return the path.
    Catalogues of `training.retrieval.MIN_ITEMS` items or more also get the retrieval path
    (`retrieval_path` True/False forces it either way)."""
    cfg = trained.model_cfg
    model = trained.model.to("cpu").eval()
    serving = ServingModel(model, calibration).eval()
    fingerprint = data.fingerprint()
    version = version or new_version(fingerprint)
    staged = pkg.staging_dir(model_dir, version)
    try:
        onnx_path = staged / pkg.MODEL_FILE
        export_onnx(serving, onnx_path, cfg.max_len)
        with_retrieval = data.n_items >= retrieval.MIN_ITEMS if retrieval_path is None else retrieval_path
        feeds = parity_inputs(data, cfg.max_len, RETRIEVAL_USERS if with_retrieval else PARITY_USERS)
        parity, exact_top = check_parity(onnx_path, serving, feeds)
        sample = synthetic_parity_inputs(data.n_items, cfg.max_len, SAMPLE_USERS)  # no shopper's data
        retrieval_entry = retrieval.add_retrieval(
            model, serving.table[1:].numpy(), staged, cfg.max_len, feeds, exact_top, sample,
            list(data.item_vocab)) if with_retrieval else {}
        if retrieval_entry and max(retrieval_entry["parity"].values()) > SCORE_TOLERANCE:
            raise ParityError(f"retrieval graphs: ONNX Runtime vs PyTorch {retrieval_entry['parity']} > {SCORE_TOLERANCE}")
        with torch.no_grad():
            scores, probs, _, shift, categories = serving(*(torch.from_numpy(sample[n]) for n in pkg.INPUT_NAMES))
        top_scores, top_idx = scores.topk(TOP_K, dim=1)
        manifest = pkg.Manifest(
            version=version,
            created_at=datetime.now(UTC).isoformat(),
            data_fingerprint=fingerprint,
            item_vocab=list(data.item_vocab),
            config={"model": asdict(cfg), "train": asdict(trained.train_cfg),
                    "pretrain": bool(report.get("pretrain")), "train_since": report.get("train_since"),
                    "text_encoder": ENCODER_NAME if cfg.use_text else None},
            max_len=cfg.max_len,
            dim=cfg.dim,
            calibration={"a": calibration[0], "b": calibration[1]},
            metrics={"split": report.get("split"), **report.get("metrics", {}),
                     "best_epoch": report.get("best_epoch"), "train_seconds": report.get("train_seconds"),
                     "step_prior_weight": float(model.step_weight) if cfg.step_prior_k else 0.0,
                     "parity": parity},
            parity_sample={
                "inputs": {n: sample[n].tolist() for n in pkg.INPUT_NAMES},
                "top10_item_ids": [[data.item_vocab[j] for j in row] for row in top_idx.tolist()],
                "top10_scores": top_scores.tolist(),
                "top10_probabilities": probs.gather(1, top_idx).tolist(),
                "shift_probability": shift.tolist(),
                "category_probabilities": categories.tolist(),
                "tolerance": SCORE_TOLERANCE,
            },
            parent_version=parent_version,
            item_categories=list(data.item_categories or [""] * data.n_items),
            popular_items=[data.item_vocab[j] for j in popular_columns(data)],
            categories=data.category_vocab(),
            shift={"window": cfg.shift_window, "calibration": model.shift_cal.tolist(),
                   "dest_mix": float(model.dest_mix), "beta": float(model.beta), "head": cfg.shift_weight > 0},
            data_source=data.source,
            retrieval=retrieval_entry,
        )
        (staged / pkg.MANIFEST_FILE).write_text(manifest.to_json())
        torch.save(weights_state(model, data, version, pretrain=bool(report.get("pretrain"))),
                   staged / WEIGHTS_FILE)
        save_curve(trained.history, staged / pkg.CURVE_FILE)
        return pkg.publish_package(staged, model_dir, version)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
