"""The root of every error the ``models`` package raises, and its kinds.

Each kind also derives from the builtin a caller would expect (``ValueError`` for a bad option,
``FileNotFoundError`` for a missing file), so ``except ValueError`` keeps working while
``except ModelError`` catches everything this package refuses.
"""

from __future__ import annotations


class ModelError(Exception):
    """Raised by ``models`` (networks, specs, registry, checkpoints)."""


class ModelInputError(ModelError, ValueError):
    """A constructor option, an input's shape or a checkpoint is not one the network takes."""


class ModelFileMissing(ModelError, FileNotFoundError):
    """A weights file the caller named, or a package should ship, is not there."""
