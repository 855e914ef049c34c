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


class RunDirError(DltrainError):
    """A run directory that cannot be created, written or read."""


class ExportError(DltrainError):
    """A model or option that cannot be exported."""


class UserCodeError(DltrainError):
    """A --code file or an installed plugin that cannot be imported."""


class RequestError(DltrainError):
    """A request to `dltrain serve` that cannot be answered as sent: answered with `status` (4xx) and the message;
    the server goes on."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Diverged(DltrainError):
    """The loss became NaN or infinite."""

    exit_code = 1


class SearchIncomplete(DltrainError):
    """dltrain tune ended short of its trials (workers that failed or were killed)."""

    exit_code = 1


class Interrupted(DltrainError):
    """Ctrl-C (exit 130) or SIGTERM (exit 143): the run stopped with its files complete."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(BaseException):
    """Raised in the training loop by SIGTERM, as KeyboardInterrupt is by SIGINT (a BaseException, as that is: no
    `except Exception` in between swallows it)."""
