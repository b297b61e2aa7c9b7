"""Errors core raises; the worker and the CLI map them to job failures and exit codes."""


class CoreError(Exception):
    """Base class: a problem the caller can explain to a user in one line."""

    code = "core_error"


class InvalidInput(CoreError):
    code = "invalid_input"


class ModelLoadError(CoreError):
    code = "model_load_failed"


class Cancelled(CoreError):
    """Raised between steps when the caller's cancel check answers True."""

    code = "cancelled"
