"""The one hierarchy of errors a user can cause: each message is one line.

``linflow``'s error boundary (cli.py) catches :class:`LinflowError` and prints
``linflow <stage>: error: <message>``, exit code 1; anything else is a bug and
keeps its traceback. Pure modules raise these too (they import nothing else).
"""

from __future__ import annotations

__all__ = [
    "LinflowError",
    "ConfigError",
    "TaskMismatchError",
    "DataError",
    "WriteError",
    "DivergenceError",
    "ToleranceError",
    "TrackingError",
    "VerifyError",
    "Interrupted",
]


class LinflowError(Exception):
    """A problem the user can fix (params, input files, the environment); one line."""


class ConfigError(LinflowError, ValueError):
    """A bad value in params.yaml (or a setting this machine cannot honour)."""


class TaskMismatchError(ConfigError):
    """An input made for another task than datasets.<ds>.task says (stale outputs)."""

    def __init__(self, path: object, found: str, dataset: str, task: str, what: str = "data"):
        super().__init__(
            f"{path}: holds {found} {what} but datasets.{dataset}.task is {task} (run dvc repro)"
        )


class DataError(LinflowError, ValueError):
    """A missing, corrupt or inconsistent input file."""


class WriteError(DataError):
    """An output could not be written (disk full, read-only folder, ...).

    Names the final path, not the temp file, since that is what the user asked for.
    """


class DivergenceError(LinflowError, RuntimeError):
    """Training produced a non-finite loss."""


class ToleranceError(LinflowError, ValueError):
    """A gap to the reference exceeds its tolerance in params.yaml compare."""


class DistributedError(LinflowError, RuntimeError):
    """A rank of a torchrun training failed, hung or could not reach the others."""


class TrackingError(LinflowError, RuntimeError):
    """The tracking store cannot be reached or used."""


class VerifyError(DataError):
    """`linflow verify` cannot run or read its inputs (dvc.lock, dvc.yaml, dvc itself)."""


class Interrupted(BaseException):
    """Raised by the SIGTERM handler so a stage ends like Ctrl-C (its MLflow run KILLED)."""
