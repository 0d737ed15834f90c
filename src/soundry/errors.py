"""User-facing errors.

A `SoundryError` is something the user can fix (a bad file, a bad config, a missing optional
dependency, a mismatch between model and data). The CLI prints its message without a stack
trace; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SoundryError(Exception):
    """An error the user caused and can fix; the message says what and how."""


class ConfigError(SoundryError):
    """A recipe or override is invalid (unknown key, wrong type, out of range)."""


class DataError(SoundryError):
    """The data cannot be used (no usable file, unreadable manifest, ...)."""


class TrainingStopped(SoundryError):
    """Training stopped before its last step (e.g. a run of non-finite losses); the run
    directory keeps its last good checkpoint."""


class MissingDependencyError(SoundryError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the optional package '{package}'. "
            f"Install it with: pip install 'soundry[{extra}]'"
        )
