"""The security suite reuses the reliability suite's tiny world (trained once per session)."""

from tests.reliability.conftest import tiny_world  # noqa: F401
