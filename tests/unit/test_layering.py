"""The tree's layering, read from the imports (any import, top level or inside a function):

- shared/ is the kernel: it imports no service, no trainer and not the composition root (app/);
- a service imports no other service, no trainer and not app/;
- the trainer imports no service and not app/; its core never imports its experiments;
- only tests import app/.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (REPO / "services").iterdir() if (p / "__init__.py").exists())


def imports_of(source: str, package: tuple[str, ...]) -> set[str]:
    """Absolute module names imported by `source`, a module of `package` (relative imports
    resolved); `from a import b` counts as importing both a and a.b."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def imported_modules(path: Path) -> set[str]:
    return imports_of(path.read_text(), path.relative_to(REPO).with_suffix("").parts[:-1])


def modules_under(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def violations(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for path in modules_under(folder):
        bad = sorted(m for m in imported_modules(path)
                     if any(m == f or m.startswith(f + ".") for f in forbidden))
        if bad:
            out[str(path.relative_to(REPO))] = bad
    return out


def test_the_reader_sees_every_kind_of_import() -> None:
    source = "import app.cli\nfrom training import data\ndef f():\n    from . import history\n"
    names = imports_of(source, ("services", "features"))
    assert {"app.cli", "training", "training.data", "services.features.history"} <= names
    assert imports_of("from ..inference import ranking\n", ("services", "features")) >= {
        "services.inference.ranking"}


def test_shared_imports_no_service_trainer_or_app() -> None:
    assert violations("shared", ("services", "training", "app")) == {}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service_trainer_or_app(service: str) -> None:
    others = tuple(f"services.{s}" for s in SERVICES if s != service)
    assert violations(f"services/{service}", (*others, "training", "app")) == {}


def test_training_imports_no_service_or_app() -> None:
    assert violations("training", ("services", "app")) == {}


def test_the_model_core_never_imports_its_experiments() -> None:
    core = {str(p.relative_to(REPO)): imported_modules(p) for p in modules_under("training")
            if "experiments" not in p.parts}
    assert {f: sorted(m for m in ms if m.startswith("training.experiments")) for f, ms in core.items()
            if any(m.startswith("training.experiments") for m in ms)} == {}


def test_only_tests_import_the_composition_root() -> None:
    for folder in ("services", "shared", "training", "deploy"):
        assert violations(folder, ("app",)) == {}, folder
