"""The package's own exception types.

Every error a user can cause (missing data, corrupt files, impossible configs,
bad flags, incompatible checkpoints) is raised as a subclass of
`TFMetaNASError` with a message that names the offending value, what was
expected and how to fix it.
"""


class TFMetaNASError(Exception):
    """Base class of every error tfmetanas raises on bad user input."""


class ConfigError(TFMetaNASError, ValueError):
    """An unknown, missing or impossible configuration value."""


class DataError(TFMetaNASError):
    """A data set that is missing, corrupt, or cannot supply what was asked."""


class CheckpointError(TFMetaNASError):
    """A missing checkpoint, or one written by an incompatible config."""


class ExportError(TFMetaNASError):
    """A bad support set or export destination."""


class NonFiniteLossError(TFMetaNASError, FloatingPointError):
    """Training produced a NaN or infinite loss."""
