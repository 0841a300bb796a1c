"""Exceptions that carry a message meant for the user.

`UserError` and its subclasses mark bad input: the CLI prints their message as one line on
stderr and exits with code 2, without a traceback. Messages name the problem and the fix.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (a name, a path, a value); message says what to do."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset's files were not found in any of the searched locations."""


class CorruptDataError(UserError):
    """A data file is truncated, malformed or fails its checksum."""


class UnsafeCheckpointError(UserError):
    """A checkpoint file would need to run code (a pickle with globals) to be opened."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the run stopped with its last checkpoint intact."""
