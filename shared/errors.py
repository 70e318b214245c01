"""Domain errors raised by the cores; one server interceptor maps them to gRPC status codes."""

from dataclasses import dataclass, field


class ShiftRecError(Exception):
    """Base of every error a core raises on purpose."""


@dataclass
class InvalidArgument(ShiftRecError):
    """The request is malformed; `violations` are (field, description) pairs."""

    violations: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{f}: {d}" for f, d in self.violations)


class Unavailable(ShiftRecError):
    """A dependency (database, feature service) cannot be reached; the client may retry."""


class FailedPrecondition(ShiftRecError):
    """The system is not in a state that allows the call (e.g. no model loaded yet)."""


class ConfigurationError(ValueError):
    """The settings cannot be served safely (e.g. half a TLS configuration); the process
    refuses to start, the message naming what is missing."""
