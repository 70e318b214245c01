"""Finding 4: one bad package must never crash inference. Each defect is a refused version
(logged once, never retried), and a pod starting with a bad LATEST serves the newest older
good version on disk; with nothing good on disk it starts NOT_SERVING instead of exiting."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.inference.server import build_server
from shared import model_package as pkg
from shared.settings import Settings
from tests.reliability.helpers import publish_copy


def rewrite_manifest(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def damage(package: Path) -> None:
        path = package / pkg.MANIFEST_FILE
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return damage


def set_key(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda manifest: {**manifest, key: value}


def shift_parity(manifest: dict[str, Any]) -> dict[str, Any]:
    sample = manifest["parity_sample"]
    sample["top10_scores"] = [[s + 1.0 for s in row] for row in sample["top10_scores"]]
    return manifest


DEFECTS: dict[str, Callable[[Path], None]] = {
    "manifest is a JSON list": rewrite_manifest(lambda manifest: [manifest]),
    "negative max_len": rewrite_manifest(set_key("max_len", -5)),
    "manifest not JSON": lambda package: (package / pkg.MANIFEST_FILE).write_text("{not json"),
    "manifest missing": lambda package: (package / pkg.MANIFEST_FILE).unlink(),
    "item_vocab not a list": rewrite_manifest(set_key("item_vocab", {"a": 1})),
    "vocabulary shorter than the model": rewrite_manifest(
        lambda m: {**m, "item_vocab": m["item_vocab"][:-3], "item_categories": m["item_categories"][:-3]}),
    "parity sample missing": rewrite_manifest(set_key("parity_sample", {})),
    "parity sample malformed": rewrite_manifest(set_key("parity_sample", {"inputs": {"item_ids": "x"}})),
    "parity fails": rewrite_manifest(shift_parity),
    "ONNX file garbage": lambda package: (package / pkg.MODEL_FILE).write_bytes(b"\x00garbage" * 64),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_a_bad_latest_package_at_start_up_falls_back_to_the_older_good_one(
        defect: str, tiny_world, serve_in_process, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    publish_copy(tiny_world.package, model_dir, "v1")
    DEFECTS[defect](publish_copy(tiny_world.package, model_dir, "v2"))
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'store.db'}", model_dir=str(model_dir))
    server = serve_in_process(lambda: build_server(settings, port=0))  # starts: no exception
    registry = server.registry
    assert registry.current().version == "v1"
    assert registry.stats.refused_versions == ["v2"]
    for _ in range(3):  # later polls do not retry the refused version
        assert registry.refresh() is False
    assert registry.stats.refused_versions == ["v2"] and registry.stats.loads == 1


@pytest.mark.parametrize("defect", ["manifest is a JSON list", "negative max_len"])
def test_a_bad_only_package_starts_not_serving(defect: str, tiny_world, serve_in_process,
                                               tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    DEFECTS[defect](publish_copy(tiny_world.package, model_dir, "v1"))
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'store.db'}", model_dir=str(model_dir))
    server = serve_in_process(lambda: build_server(settings, port=0))
    assert not server.registry.loaded and server.registry.stats.refused_versions == ["v1"]
    publish_copy(tiny_world.package, model_dir, "v2")  # a good version published later is served
    assert server.registry.refresh() is True and server.registry.current().version == "v2"


def test_latest_naming_a_path_is_refused(tiny_world, tmp_path: Path) -> None:
    from services.inference.registry import ModelRegistry

    model_dir = tmp_path / "models"
    publish_copy(tiny_world.package, model_dir, "v1")
    (model_dir / pkg.LATEST_FILE).write_text("../elsewhere\n")
    registry = ModelRegistry(model_dir, device="cpu")
    assert registry.refresh() is True and registry.current().version == "v1"
    assert registry.stats.refused_versions == ["../elsewhere"]
