"""Field checks shared by every service. Each returns a description of the problem, or None."""

import math

MAX_ID_LENGTH = 128


def id_problem(value: str, *, required: bool = True, max_length: int = MAX_ID_LENGTH) -> str | None:
    """Ids are 1..128 characters of any unicode, stored verbatim; NUL is refused because
    PostgreSQL text cannot hold it."""
    if not value:
        return "must not be empty" if required else None
    if len(value) > max_length:
        return f"must be at most {max_length} characters (got {len(value)})"
    if "\x00" in value:
        return "must not contain NUL characters"
    return None


def text_problem(value: str, max_length: int) -> str | None:
    """Free text (titles, names): at most `max_length` characters, no NUL."""
    if len(value) > max_length:
        return f"must be at most {max_length} characters (got {len(value)})"
    if "\x00" in value:
        return "must not contain NUL characters"
    return None


def number_problem(value: float, *, minimum: float | None = None) -> str | None:
    """Numbers must be finite (and not below `minimum` when given)."""
    if not math.isfinite(value):
        return f"must be finite (got {value})"
    if minimum is not None and value < minimum:
        return f"must be at least {minimum} (got {value})"
    return None
