"""The README stays true to the code: every setting and every CLI command is documented."""

from pathlib import Path

from app.cli import build_parser
from shared.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [name for name in Settings.model_fields if f"`SHIFTREC_{name.upper()}`" not in README]
    assert missing == []


def test_every_command_is_documented() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {name for name in commands if f"shiftrec {name}" not in README} == set()


def test_every_make_verb_named_in_the_readme_exists() -> None:
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    import re

    verbs = set(re.findall(r"`make ([a-z-]+)", README))
    assert verbs and {v for v in verbs if f"\n{v}:" not in makefile} == set()
