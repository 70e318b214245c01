"""The retrieval path of a large-catalogue package (the contract is in `shared.model_package`):
the user vector from encoder.onnx, an approximate top-M of the item table from the faiss index
(after the step prior's candidates where the encoder gives them), ranked by rank.onnx. The
inference service serves with it; the export measures its recall with it, so what is measured is
what is served. No torch here.

The index answers a maximum-inner-product search through an L2 one (Bachrach et al., 2014): each
item row x gets one more coordinate, sqrt(R² - |x|²) with R the largest row norm, and a query q
gets 0, so that |q - x'|² = |q|² + R² - 2 q·x orders items exactly as q·x does. The lists then
hold items that are near in space; clustered by inner product instead, the rows of large norm
(popular items) drew every query to the few lists that held them, and a million-item index
needed 384 of 4,000 lists to find 92 % of a query's inner-product top 256 (this one: 128 lists,
95 %)."""

from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort

from shared import model_package as pkg
from shared.encoding import cut_padding


class RetrievalError(RuntimeError):
    """A retrieval package part that cannot be used (unreadable, or inconsistent with the rest)."""


def top_columns(columns: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (column, score) pairs, best first, ties by column; columns -1 (no
    candidate) never come first. (B, k) arrays, -1 / -inf where a row has fewer."""
    scores = np.where(columns < 0, -np.inf, scores)
    order = np.lexsort((columns, -scores), axis=-1)[:, :k]
    return np.take_along_axis(columns, order, 1), np.take_along_axis(scores, order, 1)


def merge_columns(first: np.ndarray, rest: np.ndarray, width: int) -> np.ndarray:
    """Per row, the first `width` distinct real columns of `first` (B, K) then `rest` (B, R), in
    that order; -1 pads a row that has fewer. (B, width)."""
    both = np.concatenate([first, rest], axis=1)
    order = np.argsort(both, axis=1, kind="stable")  # equal columns keep their order: the first wins
    ordered = np.take_along_axis(both, order, 1)
    kept = ordered >= 0
    kept[:, 1:] &= ordered[:, 1:] != ordered[:, :-1]
    keep = np.empty_like(kept)
    np.put_along_axis(keep, order, kept, 1)
    place = np.cumsum(keep, axis=1) - 1  # each kept column's place in its row's answer
    rows, cols = np.nonzero(keep & (place < width))
    out = np.full((len(both), width), -1, dtype=both.dtype)
    out[rows, place[rows, cols]] = both[rows, cols]
    return out


def augment_items(table: np.ndarray) -> np.ndarray:
    """Item rows (N, D) -> (N, D + 1) float32 whose L2 order from an augmented query is the
    rows' inner-product order (the extra coordinate sqrt(R² - |x|²), R the largest norm)."""
    table = np.asarray(table, dtype=np.float32)
    sq = np.einsum("nd,nd->n", table, table, dtype=np.float64)
    extra = np.sqrt(np.maximum(sq.max() - sq, 0.0))
    return np.ascontiguousarray(np.hstack([table, extra[:, None].astype(np.float32)]))


def augment_queries(user: np.ndarray) -> np.ndarray:
    """Queries (B, D) -> (B, D + 1) float32 with 0 in the extra coordinate."""
    user = np.asarray(user, dtype=np.float32)
    return np.ascontiguousarray(np.hstack([user, np.zeros((len(user), 1), dtype=np.float32)]))


def search_parameters(nprobe: int) -> faiss.SearchParametersIVF:
    params = faiss.SearchParametersIVF()
    params.nprobe = nprobe  # inverted lists probed per search
    return params


class Retrieval:
    """One package's index and its two small graphs. Thread-safe for concurrent `retrieve`:
    faiss searches and ONNX Runtime runs only read."""

    def __init__(self, package_dir: str | Path, *, n_items: int, dim: int, nprobe: int, candidates: int,
                 providers: list[str], options: ort.SessionOptions | None = None, threads: int | None = None) -> None:
        package_dir = Path(package_dir)
        # faiss searches a batch with OpenMP over every core by default; request threads each
        # doing so oversubscribe the box. OpenMP keeps the setting per calling thread, so it is
        # set at every search (None: faiss's default)
        self.threads = threads
        try:
            self.index = faiss.read_index(str(package_dir / pkg.INDEX_FILE))
        except RuntimeError as exc:  # faiss reports unreadable files as RuntimeError
            raise RetrievalError(f"{package_dir / pkg.INDEX_FILE}: unreadable index: {exc}") from exc
        if faiss.try_extract_index_ivf(self.index) is None:  # nprobe and the direct map need an IVF index
            raise RetrievalError(f"{package_dir / pkg.INDEX_FILE}: not an IVF index ({type(self.index).__name__})")
        # an L2 index over augmented rows (D + 1 dims), or an inner-product one over the rows
        # themselves (packages exported before the augmented index)
        self.augmented = self.index.metric_type == faiss.METRIC_L2 and self.index.d == dim + 1
        plain = self.index.metric_type == faiss.METRIC_INNER_PRODUCT and self.index.d == dim
        if self.index.ntotal != n_items or not (self.augmented or plain):
            raise RetrievalError(f"{package_dir / pkg.INDEX_FILE}: index holds {self.index.ntotal} vectors of "
                                 f"{self.index.d} dims (metric {self.index.metric_type}); the package has "
                                 f"{n_items} items of {dim}")
        try:
            self.encoder = ort.InferenceSession(str(package_dir / pkg.ENCODER_FILE), options, providers=providers)
            self.ranker = ort.InferenceSession(str(package_dir / pkg.RANK_FILE), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise RetrievalError(f"{package_dir}: cannot load the retrieval graphs: {exc}") from exc
        for session, inputs, outputs in (
                (self.encoder, pkg.ENCODER_INPUT_NAMES,
                 ([pkg.OUTPUT_USER_REPR], [pkg.OUTPUT_USER_REPR, pkg.OUTPUT_STEP_CANDIDATES])),
                (self.ranker, pkg.RANK_INPUT_NAMES, ([pkg.OUTPUT_CANDIDATE_SCORES],))):
            if ([i.name for i in session.get_inputs()] != list(inputs)
                    or [o.name for o in session.get_outputs()] not in outputs):
                raise RetrievalError(f"{package_dir}: retrieval graph inputs/outputs differ from the contract")
        self.encoder_outputs = [o.name for o in self.encoder.get_outputs()]
        # graphs with a dynamic event axis are run without the padding every row of a call
        # carries (packages exported before it have a fixed one and get the whole window)
        self.cuts_padding = all(isinstance(i.shape[1], str) for s in (self.encoder, self.ranker)
                                for i in s.get_inputs() if i.name == pkg.INPUT_ITEM_IDS)
        steps = self.encoder.get_outputs()[1].shape[1] if len(self.encoder_outputs) > 1 else 0
        if not isinstance(steps, int):
            raise RetrievalError(f"{package_dir / pkg.ENCODER_FILE}: step candidates of no fixed width ({steps})")
        self.dim = dim
        self.params = search_parameters(nprobe)
        # the index proposes M columns; a step prior's K come first, with as many more from the index
        self.candidates = min(candidates + steps, n_items)
        self.steps = steps if candidates < n_items else 0  # every item a candidate already: none needed

    def vectors(self, columns: np.ndarray) -> np.ndarray:
        """Item-table rows (..., D) of 0-based columns (..., ); zeros where a column is -1."""
        flat = columns.reshape(-1)
        out = np.zeros((len(flat), self.dim), dtype=np.float32)
        real = flat >= 0
        if real.any():
            out[real] = self.index.reconstruct_batch(flat[real])[:, : self.dim]
        return out.reshape(*columns.shape, self.dim)

    def encode(self, feeds: dict[str, np.ndarray], steps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """user_repr (B, D) for model inputs, the history's rows read from the index, and the step
        candidates (B, K) where asked for and the package has them (else None)."""
        if self.cuts_padding:
            feeds = cut_padding(feeds)
        items = feeds[pkg.INPUT_ITEM_IDS]
        history = self.vectors(items - 1)  # padding (0) reads as -1: zeros
        names = self.encoder_outputs[: 2 if steps and self.steps else 1]
        out = self.encoder.run(names, {**feeds, pkg.INPUT_HISTORY_VECTORS: history})
        return out[0], (out[1] if len(out) > 1 else None)

    def user(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """user_repr (B, D) for model inputs (ranking chosen columns needs no step candidates)."""
        return self.encode(feeds, steps=False)[0]

    def search(self, user: np.ndarray, nprobe: int | None = None, steps: np.ndarray | None = None) -> np.ndarray:
        """The candidates (B, M + K): the step candidates (B, K) where given, then the approximate
        top columns by inner product with the item table, distinct; -1 pads a row whose probed
        lists hold fewer."""
        params = self.params if nprobe is None else search_parameters(nprobe)
        if self.threads is not None:
            faiss.omp_set_num_threads(self.threads)
        query = augment_queries(user) if self.augmented else np.ascontiguousarray(user, dtype=np.float32)
        _, columns = self.index.search(query, self.candidates, params=params)
        return columns if steps is None else merge_columns(steps, columns, self.candidates)

    def rank(self, user: np.ndarray, items: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Migration-aware scores (B, M) of the given columns (rank.onnx: the category shares from
        the row's real columns plus the graph's per-category sample; -1 entries score -inf and
        take no share)."""
        scores = np.full(columns.shape, -np.inf, dtype=np.float32)
        if self.cuts_padding:
            items = cut_padding({pkg.INPUT_ITEM_IDS: items})[pkg.INPUT_ITEM_IDS]
        full = (columns >= 0).all(axis=1)
        if full.any():  # the usual case: one call for every row with M real candidates
            scores[full] = self._run_rank(user[full], items[full], columns[full])
        for row in np.flatnonzero(~full):  # rare: probed lists held fewer than M items
            keep = columns[row] >= 0
            if keep.any():
                scores[row, keep] = self._run_rank(user[row : row + 1], items[row : row + 1], columns[row, keep][None])[0]
        return scores

    def _run_rank(self, user: np.ndarray, items: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return self.ranker.run([pkg.OUTPUT_CANDIDATE_SCORES], {
            pkg.OUTPUT_USER_REPR: user, pkg.INPUT_ITEM_IDS: items, pkg.INPUT_CANDIDATES: columns,
            pkg.INPUT_CANDIDATE_VECTORS: self.vectors(columns)})[0]

    def retrieve(self, feeds: dict[str, np.ndarray], nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(columns (B, M), scores (B, M)): the candidates of each row and their ranking scores."""
        user, steps = self.encode(feeds)
        columns = self.search(user, nprobe=nprobe, steps=steps)
        return columns, self.rank(user, feeds[pkg.INPUT_ITEM_IDS], columns)


def build_index(table: np.ndarray, seed: int = 0) -> faiss.Index:
    """An L2 IVF index over the augmented item-table rows (N, D) -> (N, D + 1) (`augment_items`;
    ids = row numbers), with the direct map that lets rows be read back. 4·√N lists, trained on
    up to 64 rows per list."""
    rows = augment_items(table)
    n, d = rows.shape
    nlist = max(1, min(n // 39, int(4 * np.sqrt(n))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist, faiss.METRIC_L2)
    rng = np.random.default_rng(seed)
    sample = rows[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
    index.cp.seed = seed
    index.train(sample)
    index.add(rows)
    index.make_direct_map()
    return index


def write_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))
