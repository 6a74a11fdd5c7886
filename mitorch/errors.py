"""Errors that describe a user's mistake: printed as one line, without a traceback."""
from __future__ import annotations

_WORKER_TRACEBACK_MARK = "Original Traceback"


def first_line(error: BaseException) -> str:
    """The first line of an error's message, else its type name: a reason that fits in one line."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__


class MiTorchError(Exception):
    """A problem with the user's input (config, files, data) that they can fix.

    The command-line entry points print these as one line and exit non-zero; anything
    else is a bug in MiTorch and keeps its traceback.
    """

    def __init__(self, message: str) -> None:
        # A DataLoader worker re-raises a failure in the main process as
        # type(error)("Caught ... Original Traceback ... <module>.<Class>: <message>").
        # Keep only the original message so the user still gets one line.
        if _WORKER_TRACEBACK_MARK in message:
            last = message.strip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


class ConfigError(MiTorchError):
    """The composed config is invalid (unknown option or key, wrong type, bad value)."""


class DataError(MiTorchError):
    """A dataset file or image is missing, unreadable or inconsistent."""


class TrainingError(MiTorchError):
    """Training cannot go on (for example a non-finite loss)."""


class Stopped(MiTorchError):
    """Training was stopped on purpose at an epoch end (a cancel, a search job's pruner, an
    attempt that another one replaced); exit_code is the process's exit status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(MiTorchError):
    """Training stopped on SIGTERM or SIGINT after saving a checkpoint to resume from."""

    def __init__(self, message: str, exit_code: int = 143) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(MiTorchError):
    """The command line itself is malformed: exit status 2, as argparse's usage errors."""

    exit_code = 2
