"""One exception family: the CLI turns each into a clear message and an exit code."""


class DltrainError(Exception):
    """Base of every error a user can cause; `exit_code` is what the CLI returns."""

    exit_code = 2


class ShapeError(DltrainError):
    """Arrays whose shapes do not fit an op or a layer."""


class ConfigError(DltrainError):
    """A config file or a --set override that does not validate."""


class DataError(DltrainError):
    """Data files that are missing, malformed or do not fit the task."""


class CheckpointError(DltrainError):
    """A checkpoint that is missing, truncated, corrupt or from another model."""


class DeviceError(DltrainError):
    """A device that was asked for and is not there."""
