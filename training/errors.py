"""The root of every error the ``training`` package raises, and its kinds.

Each kind also derives from the builtin a caller would expect (``ValueError`` for unusable data or
options, ``FileNotFoundError`` for a missing file), so ``except ValueError`` keeps working while
``except TrainingError`` catches everything this package refuses.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Raised by ``training`` (preprocessing, data, methods, the loop, evaluation)."""


class TrainingInputError(TrainingError, ValueError):
    """The label list, the crops, a method's options or a checkpoint cannot be trained on."""


class TrainingFileMissing(TrainingError, FileNotFoundError):
    """A file the data or the options name is not there."""


class TrainingWriteError(TrainingError, OSError):
    """A file training writes could not be written."""


class TrainingFailure(TrainingError, RuntimeError):
    """Something inside a run went wrong that no option causes (a programming error, a broken state)."""
