"""The model package contract shared by training (writer) and inference (reader): ONNX input and
output names, the manifest, and atomic publication into a model directory. No torch here.

A model directory holds one sub-directory per version plus a `LATEST` file naming the version
to serve:

    <model_dir>/LATEST                   "20250101T120000Z-1a2b3c4d\\n"
    <model_dir>/<version>/model.onnx
    <model_dir>/<version>/manifest.json
    <model_dir>/<version>/training_curve.png

Inputs (all int64, shape (B, L) with L <= MAX_LEN, left-padded: the most recent event is in the
last column, padding columns are on the left and hold 0 in all three inputs; graphs exported with
a dynamic event axis answer the same for any L that keeps every row's events, so serving drops the
columns that are padding in every row, `shared.encoding.cut_padding`):
    item_ids     1 + the item's position in `manifest.item_vocab`; 0 = padding
    event_types  1 view, 2 click, 3 add_to_cart, 4 purchase, 5 favorite, 6 review; 0 = padding
    timestamps   the event's time in unix seconds (only differences are used)

Outputs (float32):
    scores         (B, N_ITEMS) next-item logits; column j is `manifest.item_vocab[j]`
    probabilities  (B, N_ITEMS) calibrated interest probability in [0, 1] (Platt scaling of the
                   log-softmax of `scores`, parameters in `manifest.calibration`)
    user_repr      (B, D) the user representation at the last position (layer-normed)
    shift_probability       (B,) calibrated probability that the next event's category is absent
                            from the categories of the last `manifest.shift["window"]` events
    category_probabilities  (B, N_CATEGORIES) predicted category of the next event; column c is
                            `manifest.categories[c]`; sums to 1 per row

Retrieval packages (large catalogues; `manifest.retrieval` non-empty) carry beside model.onnx an
approximate top-M path that never multiplies by the whole item table:
    items.faiss    the item table's rows 1..N (item_vocab order, id = column) in a faiss IVF
                   index with a direct map (rows are read back from it): L2 over the rows with
                   one more coordinate, sqrt(R² - |row|²), searched with 0 there, which orders
                   by inner product (`shared.retrieval.augment_items`); packages from before
                   hold an inner-product index over the rows themselves, and are read as such
    encoder.onnx   item_ids, event_types, timestamps (as above) + history_vectors (B, L, D) float32,
                   the item-table rows of item_ids (any values at padding) -> user_repr (B, D)
                   [, step_candidates (B, K) int64: where the model has a step prior, the
                   columns it lifts for the last event's item, -1 in unused slots]
    rank.onnx      user_repr (B, D), item_ids (B, L), candidates (B, M) int64 columns,
                   candidate_vectors (B, M, D) -> candidate_scores (B, M): the migration-aware
                   scores, each category's share of the next-item distribution taken over the
                   M candidates plus a per-category sample of the catalogue held in the graph
                   (weighted by the items each sampled item stands for; no sample when M >= N)
Recommend searches the index with user_repr for `retrieval["candidates"]` columns at
`retrieval["nprobe"]` (K more where the encoder gives step candidates, which then come first:
M + K distinct columns, so that every item the prior lifts is ranked) and ranks them with
rank.onnx; the manifest records the recall@10 of that path against model.onnx's exact top 10,
measured at export on real histories.

`scores` are already migration-aware: the next-item logits re-weighted toward the predicted
next categories (`manifest.shift["beta"]`; 0 leaves them as the plain next-item logits).
Packages from before the shift outputs carry only the first three outputs; readers accept both.
"""

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shiftrec.v1 import common_pb2

INPUT_ITEM_IDS = "item_ids"
INPUT_EVENT_TYPES = "event_types"
INPUT_TIMESTAMPS = "timestamps"
INPUT_NAMES = (INPUT_ITEM_IDS, INPUT_EVENT_TYPES, INPUT_TIMESTAMPS)

OUTPUT_SCORES = "scores"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_USER_REPR = "user_repr"
OUTPUT_NAMES = (OUTPUT_SCORES, OUTPUT_PROBABILITIES, OUTPUT_USER_REPR)
OUTPUT_SHIFT_PROBABILITY = "shift_probability"
OUTPUT_CATEGORY_PROBABILITIES = "category_probabilities"
SHIFT_OUTPUT_NAMES = (OUTPUT_SHIFT_PROBABILITY, OUTPUT_CATEGORY_PROBABILITIES)
ALL_OUTPUT_NAMES = OUTPUT_NAMES + SHIFT_OUTPUT_NAMES
# retrieval packages
INPUT_HISTORY_VECTORS = "history_vectors"
ENCODER_INPUT_NAMES = (*INPUT_NAMES, INPUT_HISTORY_VECTORS)
# encoder.onnx's second output where the model has a step prior: (B, K) 0-based columns of the
# items it lifts for the last event's item (-1 unused), added to the index's candidates
OUTPUT_STEP_CANDIDATES = "step_candidates"
INPUT_CANDIDATES = "candidates"
INPUT_CANDIDATE_VECTORS = "candidate_vectors"
RANK_INPUT_NAMES = (OUTPUT_USER_REPR, INPUT_ITEM_IDS, INPUT_CANDIDATES, INPUT_CANDIDATE_VECTORS)
OUTPUT_CANDIDATE_SCORES = "candidate_scores"
ENCODER_FILE = "encoder.onnx"
RANK_FILE = "rank.onnx"
INDEX_FILE = "items.faiss"

PADDING_INDEX = 0  # in item_ids and event_types (EVENT_TYPE_UNSPECIFIED is never stored)
# The event-type numbering is the proto enum's: name -> value, the unspecified 0 as padding.
EVENT_TYPES = {
    "padding" if value == PADDING_INDEX else name.removeprefix("EVENT_TYPE_").lower(): value
    for name, value in common_pb2.EventType.items()
}
N_EVENT_TYPES = max(EVENT_TYPES.values()) + 1  # rows of the model's event-type embedding
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
CURVE_FILE = "training_curve.png"
LATEST_FILE = "LATEST"
FORMAT_VERSION = 1

PADDING_DOC = (
    "Inputs are left-padded to max_len: the most recent event is in the last column. "
    "Index 0 is padding in item_ids and event_types (timestamps 0 there). item_ids[b, t] = 1 + "
    "position of the item in item_vocab; scores[:, j] belongs to item_vocab[j]. Items unknown "
    "to item_vocab must be dropped before calling the model."
)


@dataclass
class Manifest:
    """Everything the serving side needs to use and re-check a model package."""

    version: str
    created_at: str  # ISO 8601, UTC
    data_fingerprint: str  # sha256 of the training sequences and item features
    item_vocab: list[str]  # item_id strings in index order (model index = position + 1)
    config: dict[str, Any]  # the resolved model + training config
    max_len: int
    dim: int  # size of user_repr
    calibration: dict[str, float]  # {"a": .., "b": ..}: p = sigmoid(a * log_softmax(score) + b)
    metrics: dict[str, Any] = field(default_factory=dict)
    parity_sample: dict[str, Any] = field(default_factory=dict)  # inputs, expected top-10/scores
    parent_version: str | None = None
    item_categories: list[str] = field(default_factory=list)  # aligned with item_vocab
    popular_items: list[str] = field(default_factory=list)  # most-interacted in training, first
    categories: list[str] = field(default_factory=list)  # columns of category_probabilities
    shift: dict[str, Any] = field(default_factory=dict)  # window, calibration, dest_mix, beta
    input_names: list[str] = field(default_factory=lambda: list(INPUT_NAMES))
    output_names: list[str] = field(default_factory=lambda: list(ALL_OUTPUT_NAMES))
    padding: str = PADDING_DOC
    padding_index: int = PADDING_INDEX
    event_types: dict[str, int] = field(default_factory=lambda: dict(EVENT_TYPES))
    data_source: str = ""
    # retrieval packages only: nlist, nprobe, candidates, step_candidates, mass_sample, recall_at_10 (+ users
    # measured), and `sample`, the top 10 the retrieval path gave for parity_sample's inputs;
    # {} = exact only
    retrieval: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, raw: Any) -> "Manifest":
        """The manifest in `raw` (parsed JSON); TypeError or ValueError naming the first defect."""
        if not isinstance(raw, dict):
            raise TypeError(f"manifest must be a JSON object, not {type(raw).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        manifest = cls(**{k: v for k, v in raw.items() if k in known})
        problem = manifest.problem()
        if problem:
            raise ValueError(f"manifest: {problem}")
        return manifest

    def problem(self) -> str | None:
        """What makes this manifest unusable for serving, or None."""
        checks: list[tuple[bool, str]] = [
            (isinstance(self.version, str) and VERSION_PATTERN.fullmatch(self.version) is not None,
             "version must be a plain name"),
            (_positive_int(self.max_len), "max_len must be a positive integer"),
            (_positive_int(self.dim), "dim must be a positive integer"),
            (isinstance(self.item_vocab, list) and len(self.item_vocab) > 0
             and all(isinstance(i, str) for i in self.item_vocab), "item_vocab must be a non-empty list of strings"),
            (isinstance(self.item_categories, list) and all(isinstance(c, str) for c in self.item_categories),
             "item_categories must be a list of strings"),
            (isinstance(self.popular_items, list), "popular_items must be a list"),
            (isinstance(self.calibration, dict) and all(
                isinstance(self.calibration.get(k), int | float) for k in ("a", "b")),
             "calibration must hold numbers a and b"),
            (isinstance(self.parity_sample, dict), "parity_sample must be an object"),
            (isinstance(self.retrieval, dict) and (not self.retrieval or (
                all(_positive_int(self.retrieval.get(k)) for k in ("nprobe", "candidates"))
                and isinstance(self.retrieval.get("sample"), dict))),
             "retrieval must be {} or hold positive integers nprobe and candidates and a sample"),
        ]
        return next((message for ok, message in checks if not ok), None)


VERSION_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a directory name, never a path


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def load_manifest(package_dir: str | Path) -> Manifest:
    """The manifest of one published package directory."""
    return Manifest.from_dict(json.loads((Path(package_dir) / MANIFEST_FILE).read_text()))


def latest_version(model_dir: str | Path) -> str | None:
    """The version named by `<model_dir>/LATEST`, or None when nothing is published."""
    path = Path(model_dir) / LATEST_FILE
    try:
        name = path.read_text().strip()
    except FileNotFoundError:
        return None
    return name or None


def published_versions(model_dir: str | Path) -> list[str]:
    """The version directories in `model_dir` (staging directories excluded), newest first:
    by when their files were written, then by name."""
    root = Path(model_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and VERSION_PATTERN.fullmatch(p.name)]
    return [p.name for p in sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)]


def older_versions(model_dir: str | Path, than: str | None) -> list[str]:
    """The published versions with a manifest other than `than`, newest first."""
    root = Path(model_dir)
    return [v for v in published_versions(root) if v != than and (root / v / MANIFEST_FILE).is_file()]


def prune_versions(model_dir: str | Path, keep: int) -> list[str]:
    """Delete all but the `keep` newest versions, never the one LATEST names; return the
    deleted ones. Old packages go, and with them whatever they hold (retention)."""
    root = Path(model_dir)
    latest = latest_version(root)
    doomed = [v for v in published_versions(root)[max(keep, 1):] if v != latest]
    for version in doomed:
        shutil.rmtree(root / version, ignore_errors=True)
    return doomed


def resolve_package(path: str | Path) -> Path:
    """A package directory from either a package directory or a model directory (uses LATEST)."""
    path = Path(path)
    if (path / MANIFEST_FILE).exists():
        return path
    version = latest_version(path)
    if version is None:
        raise FileNotFoundError(f"{path}: neither a model package nor a model directory with {LATEST_FILE}")
    return path / version


def staging_dir(model_dir: str | Path, version: str) -> Path:
    """A fresh temporary directory beside the final place, on the same file system."""
    root = Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=root))


def publish_package(staged: str | Path, model_dir: str | Path, version: str, keep: int | None = None) -> Path:
    """Move a fully written staging directory to `<model_dir>/<version>` and point LATEST at it,
    then keep only the `keep` newest versions (default SHIFTREC_MODEL_KEEP).

    Files and directories are fsynced before each rename, and both renames are atomic, so a
    reader that follows LATEST sees either the previous package or the complete new one.
    """
    staged, root = Path(staged), Path(model_dir)
    final = root / version
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    os.chmod(staged, 0o755)  # mkdtemp makes it private; readers may run as another user
    for child in staged.iterdir():
        _fsync_file(child)
    _fsync_dir(staged)
    os.rename(staged, final)
    _fsync_dir(root)
    fd, tmp_latest = tempfile.mkstemp(prefix=".LATEST-", dir=root)
    with os.fdopen(fd, "w") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_latest, root / LATEST_FILE)
    _fsync_dir(root)
    if keep is None:
        from shared.settings import Settings

        keep = Settings().model_keep
    prune_versions(root, keep)
    return final


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
