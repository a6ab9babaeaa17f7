"""Errors a user can cause and fix: each carries a one-line message and an exit code.

The CLI prints these as `error: <message>` without a traceback; anything else is a bug. A
subclass with `is_error = False` is an intended stop (training stopped by Ctrl-C), printed as
its message alone.
"""

from __future__ import annotations


class SoftpromptError(Exception):
    """A failure the user can act on. Exit code 1 (runtime failure) unless a subclass says."""

    exit_code = 1
    is_error = True  # False: an intended stop, not a failure (no `error:` prefix)


class UsageError(SoftpromptError):
    """Wrong arguments, config keys or values. Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """An invalid training configuration."""


class DataError(SoftpromptError):
    """A data file or data set that cannot be read as asked."""


class ModelError(SoftpromptError):
    """A model that cannot be found, loaded or used as asked."""


class OutputError(SoftpromptError):
    """An output that cannot be written where asked: a full disk, a read-only folder."""


class PromptFileError(SoftpromptError):
    """A prompt artifact that is corrupt or does not fit the model."""
