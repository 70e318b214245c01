"""The retrieval part of a large-catalogue package (contract in `shared.model_package`): the two
small graphs (the user encoder fed with the history's item rows, the candidate ranker), the faiss
index over the item table, and the choice of nprobe by the recall@10 of the served path against
the exact top 10 on real histories (half of them to choose, the other half to report)."""

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared import model_package as pkg
from shared.retrieval import Retrieval, build_index, top_columns, write_index
from training.model import ShiftRec
from training.tracing import trace_to_onnx

MIN_ITEMS = 100_000  # catalogues from this size get the retrieval path (below it exact is cheap)
CANDIDATES = 256  # M: items the index proposes per request, ranked exactly by rank.onnx
MASS_SAMPLE = 8_192  # items (per category: 8,192 / categories) whose scores estimate each category's share
RECALL_TARGET = 0.95
# lists probed, tried in order: steps of about √2 above 32, where each doubling costs more search
# time than the recall it buys is worth (at a million items recall@10 rose .931 → .948 → .965 from
# 64 to 128 to 256 lists, just short of the target at 128, and the search took 2.5 ms at 256)
NPROBES = (4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
TOP_K = 10
PARITY_ROWS = 64  # real histories compared between the graphs in ONNX Runtime and PyTorch


class Entry(nn.Module):
    """One of the model's inference entry points (`encode_user`, `rank_candidates`) as a module
    to export."""

    def __init__(self, model: ShiftRec, entry: str) -> None:
        super().__init__()
        self.model = model
        self.entry = entry
        self.eval()  # the wrapper too: the exporter restores the wrapper's mode on all it holds

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.entry)(*inputs)


class EncodeWithSteps(nn.Module):
    """`encode_user` and the step prior's candidates for the last event's item."""

    def __init__(self, model: ShiftRec) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, items: torch.Tensor, types: torch.Tensor, times: torch.Tensor,
                history_vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_user(items, types, times, history_vectors), self.model.step_candidates(items)


def has_step_candidates(model: ShiftRec) -> bool:
    """Whether the model's scores carry a step prior (a weight of 0, chosen on validation, adds none)."""
    return bool(model.cfg.step_prior_k) and float(model.step_weight) != 0.0


class RankWithMass(nn.Module):
    """`rank_candidates` with the package's per-category sample baked in as constants."""

    def __init__(self, model: ShiftRec, table: np.ndarray, columns: np.ndarray, weights: np.ndarray) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("vectors", torch.from_numpy(table[columns]))
        self.register_buffer("categories", model.item_cat[1:][torch.from_numpy(columns)])
        self.register_buffer("weights", torch.from_numpy(weights))
        slots = np.full(len(table), -1, dtype=np.int64)
        slots[columns] = np.arange(len(columns))
        self.register_buffer("slots", torch.from_numpy(slots))  # each column's place in the sample
        self.eval()

    def forward(self, user: torch.Tensor, items: torch.Tensor, candidates: torch.Tensor,
                candidate_vectors: torch.Tensor) -> torch.Tensor:
        return self.model.rank_candidates(user, items, candidates, candidate_vectors,
                                          mass=(self.vectors, self.categories, self.weights, self.slots))


def mass_sample(item_cat: np.ndarray, budget: int = MASS_SAMPLE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed sample of the catalogue's columns, up to budget / categories per category (at
    least one), and each one's weight: how many items of its category it stands for."""
    categories = np.unique(item_cat)
    per = max(1, budget // len(categories))
    rng = np.random.default_rng(seed)
    columns, weights = [], []
    for c in categories:
        members = np.flatnonzero(item_cat == c)
        picked = np.sort(rng.choice(members, min(per, len(members)), replace=False))
        columns.append(picked)
        weights.append(np.full(len(picked), len(members) / len(picked), dtype=np.float32))
    return np.concatenate(columns), np.concatenate(weights)


def export_graphs(model: ShiftRec, staged: Path, max_len: int, table: np.ndarray | None = None) -> nn.Module:
    """encoder.onnx and rank.onnx; with the item table (N, D) given, rank.onnx carries the
    per-category mass sample (`mass_sample`), without it the candidates alone make the mass.
    Returns the ranking module exported (for the parity check)."""
    d = model.cfg.dim
    g = torch.Generator().manual_seed(0)
    n_items = model.cfg.n_items
    items = torch.randint(1, n_items + 1, (2, max_len), generator=g)
    types = torch.randint(1, pkg.N_EVENT_TYPES, (2, max_len), generator=g)
    times = torch.cumsum(torch.randint(0, 100_000, (2, max_len), generator=g), 1) + 1_400_000_000
    encoder: nn.Module = Entry(model, "encode_user")
    outputs: tuple[str, ...] = (pkg.OUTPUT_USER_REPR,)
    if has_step_candidates(model):
        encoder, outputs = EncodeWithSteps(model), (pkg.OUTPUT_USER_REPR, pkg.OUTPUT_STEP_CANDIDATES)
    # batch and event axes dynamic, as in model.onnx: serving cuts the padding every row carries
    trace_to_onnx(encoder, (items, types, times, torch.randn(2, max_len, d, generator=g)),
            staged / pkg.ENCODER_FILE, pkg.ENCODER_INPUT_NAMES, outputs,
            {n: {0: "batch", 1: "events"} for n in pkg.ENCODER_INPUT_NAMES} | {n: {0: "batch"} for n in outputs})
    candidates = torch.randint(0, n_items, (2, 3), generator=g)
    ranker: nn.Module = Entry(model, "rank_candidates")
    if table is not None:
        columns, weights = mass_sample(model.item_cat[1:].numpy())
        ranker = RankWithMass(model, table, columns, weights)
    trace_to_onnx(ranker, (torch.randn(2, d, generator=g), items, candidates, torch.randn(2, 3, d, generator=g)),
            staged / pkg.RANK_FILE, pkg.RANK_INPUT_NAMES, (pkg.OUTPUT_CANDIDATE_SCORES,),
            {pkg.OUTPUT_USER_REPR: {0: "batch"}, pkg.INPUT_ITEM_IDS: {0: "batch", 1: "events"}}
            | {n: {0: "batch", 1: "candidates"} for n in (pkg.INPUT_CANDIDATES, pkg.INPUT_CANDIDATE_VECTORS,
                                                           pkg.OUTPUT_CANDIDATE_SCORES)})
    return ranker


def recall_at_k(got: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact top k found in its approximate top k."""
    return float(np.mean([len(set(g[g >= 0]) & set(e)) / len(e) for g, e in zip(got, exact)]))


def graph_parity(model: ShiftRec, ranker: nn.Module, path: Retrieval, feeds: dict[str, np.ndarray],
                 nprobe: int) -> dict[str, float]:
    """Largest differences between the two graphs in ONNX Runtime and the same code in PyTorch."""
    items = feeds[pkg.INPUT_ITEM_IDS]
    user, steps = path.encode(feeds)
    columns = path.search(user, nprobe=nprobe, steps=steps)
    scores = path.rank(user, items, columns)
    with torch.no_grad():
        t_items, t_types, t_times = (torch.from_numpy(feeds[n]) for n in pkg.INPUT_NAMES)
        want_user = model.encode_user(t_items, t_types, t_times, torch.from_numpy(path.vectors(items - 1)))
        real = (columns >= 0).all(axis=1)
        want = ranker(torch.from_numpy(user[real]), t_items[real], torch.from_numpy(columns[real]),
                      torch.from_numpy(path.vectors(columns[real])))
        # columns: 0 when equal, else the largest difference (a wrong column is never near one)
        step_diff = 0.0 if steps is None else float(np.abs(steps - model.step_candidates(t_items).numpy()).max())
    return {"max_abs_diff_user_repr": float(np.abs(user - want_user.numpy()).max()),
            "max_abs_diff_candidate_scores": float(np.abs(scores[real] - want.numpy()).max()) if real.any() else 0.0,
            "max_abs_diff_step_candidates": step_diff}


def served_top(path: Retrieval, feeds: dict[str, np.ndarray], nprobe: int, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    columns, scores = path.retrieve(feeds, nprobe=nprobe)
    return top_columns(columns, scores, k)


def add_retrieval(model: ShiftRec, table: np.ndarray, staged: Path, max_len: int, feeds: dict[str, np.ndarray],
                  exact_top: np.ndarray, sample: dict[str, np.ndarray], item_vocab: list[str]) -> dict[str, Any]:
    """Write items.faiss, encoder.onnx and rank.onnx into `staged`; choose nprobe on half of the
    real histories in `feeds` (their exact top 10: `exact_top`) and measure recall@10 on the
    other half; returns the manifest's `retrieval` entry (with the served top 10 of `sample`)."""
    started = time.perf_counter()
    index = build_index(table)
    write_index(index, staged / pkg.INDEX_FILE)
    # with fewer candidates than items the per-category shares need the rest of the catalogue
    ranker = export_graphs(model, staged, max_len, table if CANDIDATES < len(table) else None)
    build_seconds = time.perf_counter() - started
    path = Retrieval(staged, n_items=len(table), dim=table.shape[1], nprobe=NPROBES[0], candidates=CANDIDATES,
                     providers=["CPUExecutionProvider"])
    n = len(exact_top)
    choose, report = np.arange(0, n, 2), np.arange(1, n, 2)
    half = {name: {k: v[rows] for k, v in feeds.items()} for name, rows in (("choose", choose), ("report", report))}
    tried = {probe: recall_at_k(served_top(path, half["choose"], probe)[0], exact_top[choose])
             for probe in NPROBES if probe <= index.nlist} or {index.nlist: 0.0}
    # the fewest lists that reach the target, or, where recall stops growing short of it (the
    # estimate of category shares, not the index, limits it), that come within 0.005 of the best
    enough = min(RECALL_TARGET, max(tried.values()) - 0.005)
    nprobe = min(p for p, r in tried.items() if r >= enough)
    recall = recall_at_k(served_top(path, half["report"], nprobe)[0], exact_top[report])
    parity = graph_parity(model, ranker, path, {k: v[:PARITY_ROWS] for k, v in feeds.items()}, nprobe)
    columns, scores = served_top(path, sample, nprobe)
    return {"nlist": int(index.nlist), "nprobe": int(nprobe), "candidates": int(min(CANDIDATES, len(table))),
            "step_candidates": int(path.steps),
            "recall_at_10": recall, "recall_users": len(report), "recall_by_nprobe": tried,
            "build_seconds": build_seconds, "parity": parity,
            "mass_sample": int(getattr(ranker, "weights", torch.zeros(0)).numel()),
            "sample": {"top10_item_ids": [[item_vocab[c] for c in row if c >= 0] for row in columns.tolist()],
                       "top10_scores": scores.tolist()}}
