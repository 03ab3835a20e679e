"""User-facing errors: one clear line naming the file or field, plus a hint to fix it.

The CLI prints ``UserError`` as a single line (a traceback only with ``--debug``); every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input (a file, a flag, a config field)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(UserError):
    """A config file or override names an unknown field or an impossible value."""


class AudioError(UserError):
    """An audio file is missing, unreadable, empty or holds non-finite samples."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, of the wrong model or has mis-shaped tensors."""


class DataError(UserError):
    """A dataset, manifest or transcript is malformed."""


class DecodeConfigError(UserError):
    """A decoding configuration is invalid (checked before anything compiles)."""
