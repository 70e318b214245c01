"""Helpers of the end-to-end tests (the process machinery itself is app.processes)."""

import json
from pathlib import Path


def write_config(path: Path, overrides: dict[str, object]) -> Path:
    path.write_text(json.dumps(overrides))
    return path
