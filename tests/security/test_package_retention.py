"""Finding 7: erasure must not miss copies. A package holds no shopper's sequence (its parity
sample is synthetic), and old packages are deleted after each publish (SHIFTREC_MODEL_KEEP), so
nothing erased lives on in a model directory."""

import json
from pathlib import Path

import pytest

from shared import model_package as pkg
from tests.reliability.helpers import publish_copy


def test_the_parity_sample_holds_no_shoppers_sequence(tiny_world) -> None:
    manifest = pkg.load_manifest(tiny_world.package)
    vocab = {item: i + 1 for i, item in enumerate(manifest.item_vocab)}
    histories: dict[str, list[tuple[int, int]]] = {}
    for e in sorted(tiny_world.events, key=lambda e: e.occurred_at_us):
        histories.setdefault(e.user_id, []).append((vocab.get(e.item_id, 0), e.occurred_at_us // 1_000_000))
    real_times = {t for history in histories.values() for _, t in history}
    inputs = manifest.parity_sample["inputs"]
    for items, times in zip(inputs[pkg.INPUT_ITEM_IDS], inputs[pkg.INPUT_TIMESTAMPS], strict=True):
        row = [i for i in items if i]
        assert row, "an empty parity row checks nothing"
        assert not {t for t in times if t} & real_times, "a real event time in the manifest"
        for history in histories.values():
            sequence = [i for i, _ in history]
            assert not any(sequence[k : k + len(row)] == row for k in range(len(sequence) - len(row) + 1))


def test_old_versions_are_pruned_after_a_publish(tiny_world, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = tmp_path / "models"
    monkeypatch.setenv("SHIFTREC_MODEL_KEEP", "3")
    for n in range(1, 8):
        publish_copy(tiny_world.package, model_dir, f"v{n}")
    assert sorted(pkg.published_versions(model_dir)) == ["v5", "v6", "v7"]
    assert pkg.latest_version(model_dir) == "v7"


def test_pruning_never_deletes_what_latest_names(tiny_world, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    for n in range(1, 4):
        publish_copy(tiny_world.package, model_dir, f"v{n}")
    (model_dir / pkg.LATEST_FILE).write_text("v1\n")  # an operator rolled back by hand
    assert pkg.prune_versions(model_dir, keep=1) == ["v2"]
    assert sorted(pkg.published_versions(model_dir)) == ["v1", "v3"]
    assert json.loads((model_dir / "v1" / pkg.MANIFEST_FILE).read_text())["version"] == "v1"
