"""The three services as processes, for end-to-end tests (the machinery is shared.processes)."""

import json
from pathlib import Path

from shared.processes import Stack, run_cli, running_stack

__all__ = ["Stack", "running_stack", "shiftrec", "write_config"]


def shiftrec(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run the `shiftrec` command line; returns stdout, raises on a non-zero exit."""
    return run_cli(*args, env=env, timeout=timeout)


def write_config(path: Path, overrides: dict[str, object]) -> Path:
    path.write_text(json.dumps(overrides))
    return path
