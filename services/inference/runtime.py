"""One loaded model package in ONNX Runtime: encoding of histories into model inputs, the
session (CUDA when there is a GPU, CPU otherwise), warm-up and the parity re-check. No gRPC."""

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from services.inference.batching import DynamicBatcher
from shared import model_package as pkg
from shared.encoding import cut_padding, encode_histories, item_index
from shared.retrieval import Retrieval, RetrievalError, top_columns

log = logging.getLogger(__name__)

EXACT_BATCH_BUDGET = 1 << 22  # item scores per whole-catalogue call (32 rows at 131k items, 4 at 1M)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class PackageError(RuntimeError):
    """A model package that cannot be served (unreadable, inconsistent, or fails parity)."""


class Step(NamedTuple):
    """One event of a history as the model sees it (a named tuple: hundreds are made per
    request, on the event loop)."""

    item_id: str
    event_type: int
    occurred_at_us: int


def gpu_present() -> bool:
    """A CUDA device node exists (asking ORT for CUDA without one only produces errors)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")


def choose_providers(device: str) -> list[str]:
    """Execution providers to ask for: `cuda`, `cpu`, or `auto` (CUDA when usable)."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device == "cuda" or (device == "auto" and CUDA in available and gpu_present()):
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN libraries shipped by a PyTorch install, if any
        return [CUDA, CPU]
    return [CPU]


class ModelRuntime:
    """A model package ready to serve. Thread-safe: ONNX Runtime sessions allow concurrent run().
    With `batch_max` > 1, concurrent `run()` calls are gathered into one session call
    (`services.inference.batching`), `batch_threads` such calls at a time; `close()` stops that
    when the runtime is swapped out."""

    def __init__(self, package_dir: str | Path, *, device: str = "auto", threads: int = 1,
                 batch_max: int = 1, batch_wait_s: float = 0.0, batch_threads: int = 1) -> None:
        self.package_dir = Path(package_dir)
        try:
            self.manifest = pkg.load_manifest(self.package_dir)
        except (OSError, ValueError, TypeError) as exc:
            raise PackageError(f"{self.package_dir}: unreadable manifest: {exc}") from exc
        self.version = self.manifest.version
        self.max_len = self.manifest.max_len
        self.item_vocab = self.manifest.item_vocab
        self.item_index = item_index(self.item_vocab)
        categories = getattr(self.manifest, "item_categories", None) or [""] * len(self.item_vocab)
        if len(categories) != len(self.item_vocab):
            raise PackageError(f"{self.package_dir}: item_categories do not match item_vocab")
        self.item_categories = list(categories)
        by_category: dict[str, list[int]] = {}
        for column, category in enumerate(categories):
            by_category.setdefault(category, []).append(column)
        self.category_columns = {c: np.array(cols, dtype=np.int64) for c, cols in by_category.items()}
        self.popular_items = [i for i in (getattr(self.manifest, "popular_items", None) or []) if i in self.item_index]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.package_dir / pkg.MODEL_FILE), options, providers=choose_providers(device)
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise PackageError(f"{self.package_dir}: cannot load model: {exc}") from exc
        self.provider = self.session.get_providers()[0]
        names = [o.name for o in self.session.get_outputs()]
        if names not in (list(pkg.OUTPUT_NAMES), list(pkg.ALL_OUTPUT_NAMES)) or (
                [i.name for i in self.session.get_inputs()] != list(pkg.INPUT_NAMES)):
            raise PackageError(f"{self.package_dir}: model inputs/outputs differ from the contract")
        self.has_shift = names == list(pkg.ALL_OUTPUT_NAMES)  # packages from before the shift head: False
        # a graph with a dynamic event axis is run without the padding every row of a call carries
        # (packages exported before it have a fixed one and get the whole window)
        self.cuts_padding = isinstance(self.session.get_inputs()[0].shape[1], str)
        self.categories = list(getattr(self.manifest, "categories", None) or [])
        if self.has_shift:
            n_cat = self.session.get_outputs()[len(names) - 1].shape[-1]
            if not self.categories or (isinstance(n_cat, int) and n_cat != len(self.categories)):
                raise PackageError(f"{self.package_dir}: manifest categories do not match the model's outputs")
        self.shift_window = int((getattr(self.manifest, "shift", None) or {}).get("window", 0))
        self.retrieval: Retrieval | None = None
        if self.manifest.retrieval:  # a large catalogue: Recommend's approximate top-k path
            try:
                self.retrieval = Retrieval(
                    self.package_dir, n_items=len(self.item_vocab), dim=self.manifest.dim,
                    nprobe=self.manifest.retrieval["nprobe"], candidates=self.manifest.retrieval["candidates"],
                    providers=self.session.get_providers(), options=options, threads=threads)
            except RetrievalError as exc:
                raise PackageError(str(exc)) from exc
        self.batch_max = batch_max
        # a call over the whole catalogue holds several (rows, items) matrices: at a million items
        # 32 rows would take gigabytes, so such calls gather fewer rows
        self.exact_batch_max = max(1, min(batch_max, EXACT_BATCH_BUDGET // len(self.item_vocab)))
        # one batcher per output set: Recommend asks for the scores alone (ONNX Runtime then skips
        # the probability nodes), ScoreItems for scores, probabilities and the user vector; a
        # retrieval package's Recommend for the candidates
        calls = [("scores", self._run_scores, self.exact_batch_max), ("all", self._run_all, self.exact_batch_max)]
        if self.retrieval is not None:
            calls.append(("retrieve", self._retrieve, batch_max))
        self._batchers = {
            name: DynamicBatcher(fn, max_batch=rows, max_wait_s=batch_wait_s, threads=batch_threads,
                                 name=f"batcher-{name}-{self.version}")
            for name, fn, rows in calls if rows > 1}

    def close(self) -> None:
        """Stop gathering calls (what is queued is served; later calls run alone)."""
        for batcher in self._batchers.values():
            batcher.close()

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, histories: Sequence[Sequence[Step]]) -> dict[str, np.ndarray]:
        """Left-padded (B, max_len) inputs; items unknown to the vocabulary are dropped."""
        return encode_histories(histories, self.item_index, self.max_len)

    def known_indices(self, item_ids: Sequence[str]) -> np.ndarray:
        """Column indices (0-based, into scores) of the known items among `item_ids`."""
        return np.array([self.item_index[i] - 1 for i in item_ids if i in self.item_index], dtype=np.int64)

    # -- running --------------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores (B, N), probabilities (B, N), user_repr (B, D)); shares a model call with
        concurrent callers when batching is on."""
        if "all" not in self._batchers:
            return self._run_all(feeds)
        scores, probabilities, user = self._batchers["all"].run(feeds)
        return scores, probabilities, user

    def run_scores(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Scores (B, N) alone: what Recommend ranks by (the graph's probability part is skipped)."""
        if "scores" not in self._batchers:
            return self._run_scores(feeds)[0]
        return self._batchers["scores"].run(feeds)[0]

    def retrieve(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """A retrieval package's candidates: (columns (B, M), scores (B, M)), columns -1 (score
        -inf) where the index found fewer; shares a call with concurrent callers when batching."""
        if "retrieve" not in self._batchers:
            return self._retrieve(feeds)
        columns, scores = self._batchers["retrieve"].run(feeds)
        return columns, scores

    def _retrieve(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.retrieval is None:
            raise PackageError(f"{self.package_dir}: not a retrieval package")
        return self.retrieval.retrieve(feeds)

    def rank_columns(self, feeds: dict[str, np.ndarray], columns: np.ndarray) -> np.ndarray:
        """A retrieval package's scores (B, M) of chosen columns (B, M)."""
        if self.retrieval is None:
            raise PackageError(f"{self.package_dir}: not a retrieval package")
        user = self.retrieval.user(feeds)
        return self.retrieval.rank(user, feeds[pkg.INPUT_ITEM_IDS], columns)

    def _session_run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(outputs, cut_padding(feeds) if self.cuts_padding else feeds)

    def _run_all(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scores, probabilities, user = self._session_run(list(pkg.OUTPUT_NAMES), feeds)
        return scores, probabilities, user

    def _run_scores(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray]:
        return (self._session_run([pkg.OUTPUT_SCORES], feeds)[0],)

    def run_shift(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        """(shift_probability (B,), category_probabilities (B, C)), or None for a package
        without the shift outputs."""
        if not self.has_shift:
            return None
        shift, categories = self._session_run(list(pkg.SHIFT_OUTPUT_NAMES), feeds)
        return shift, categories

    def run_profile(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """One call for a profile: (user_repr (B, D), shift_probability (B,), category_probabilities
        (B, C)); the last two None for a package without the shift outputs."""
        if not self.has_shift:
            return self._session_run([pkg.OUTPUT_USER_REPR], feeds)[0], None, None
        user, shift, categories = self._session_run([pkg.OUTPUT_USER_REPR, *pkg.SHIFT_OUTPUT_NAMES], feeds)
        return user, shift, categories

    def warm_up(self) -> None:
        """First runs allocate and tune; do them before taking traffic."""
        for batch in sorted({1, min(8, self.exact_batch_max), self.exact_batch_max}):
            feeds = {name: np.ones((batch, self.max_len), dtype=np.int64) for name in pkg.INPUT_NAMES}
            scores, _, _ = self._run_all(feeds)
            if scores.shape != (batch, len(self.item_vocab)):
                raise PackageError(f"{self.package_dir}: model scores {scores.shape[1:]} items, "
                                   f"item_vocab has {len(self.item_vocab)}")
        if self.retrieval is not None:
            for batch in sorted({1, 8, self.batch_max}):
                self._retrieve({name: np.ones((batch, self.max_len), dtype=np.int64) for name in pkg.INPUT_NAMES})

    def check_parity(self) -> float:
        """Re-run the manifest's sample: identical top-10 and scores within tolerance, else
        PackageError. Returns the largest score difference seen."""
        sample = self.manifest.parity_sample
        if not sample or "inputs" not in sample:
            raise PackageError(f"{self.package_dir}: manifest has no parity sample")
        feeds = {name: np.asarray(sample["inputs"][name], dtype=np.int64) for name in pkg.INPUT_NAMES}
        scores, _, _ = self.run(feeds)
        tolerance = float(sample.get("tolerance", 1e-4)) * (10 if self.provider == CUDA else 1)
        expected_scores = np.asarray(sample["top10_scores"], dtype=np.float32)
        worst = 0.0
        for row, expected_ids in enumerate(sample["top10_item_ids"]):
            columns = self.known_indices(expected_ids)
            got = scores[row, columns]
            worst = max(worst, float(np.abs(got - expected_scores[row]).max()))
            top = np.argsort(-scores[row], kind="stable")[: len(expected_ids)]
            if worst > tolerance:
                raise PackageError(f"{self.package_dir}: parity: score differs by {worst:.2e}")
            if not np.allclose(scores[row, top], expected_scores[row], atol=tolerance, rtol=0):
                raise PackageError(f"{self.package_dir}: parity: top-10 differs from the manifest")
        shift = self.run_shift(feeds)
        if shift is not None:
            for name, got in zip(pkg.SHIFT_OUTPUT_NAMES, shift):
                if name not in sample:
                    raise PackageError(f"{self.package_dir}: manifest parity sample lacks {name}")
                diff = float(np.abs(got - np.asarray(sample[name], dtype=np.float32)).max())
                if diff > tolerance:
                    raise PackageError(f"{self.package_dir}: parity: {name} differs by {diff:.2e}")
                worst = max(worst, diff)
        if self.retrieval is not None:
            worst = max(worst, self._check_retrieval(feeds, tolerance))
        return worst

    def _check_retrieval(self, feeds: dict[str, np.ndarray], tolerance: float) -> float:
        """The retrieval path on the parity sample gives the manifest's top 10 (a swap only
        between scores that tie) with scores within tolerance."""
        expected = self.manifest.retrieval["sample"]
        columns, scores = top_columns(*self._retrieve(feeds), 10)
        worst = 0.0
        for row, (want_ids, want_scores) in enumerate(zip(expected["top10_item_ids"], expected["top10_scores"])):
            got = scores[row, : len(want_ids)]
            diff = float(np.abs(got - np.asarray(want_scores[: len(want_ids)], dtype=np.float32)).max())
            worst = max(worst, diff)
            same = {self.item_vocab[c] for c in columns[row, : len(want_ids)]} == set(want_ids)
            if diff > tolerance or not same:
                raise PackageError(f"{self.package_dir}: parity: the retrieval path's top-10 differs from "
                                   f"the manifest (largest score difference {diff:.2e})")
        return worst
