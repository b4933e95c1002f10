"""The root of every error the ``export`` package raises, and its kinds.

``ExportError`` derives from ``RuntimeError`` (an export or check that failed); its kinds also
derive from the builtin a caller would expect, so ``except ValueError`` keeps working while
``except ExportError`` catches everything this package refuses.
"""

from __future__ import annotations


class ExportError(RuntimeError):
    """Raised by ``export`` (ONNX and TensorRT writers, Triton configs, calibration, quantization)."""


class ExportInputError(ExportError, ValueError):
    """An option, a checkpoint, a manifest or a label list that cannot be exported or measured."""


class ExportFileMissing(ExportError, FileNotFoundError):
    """A repository, model folder or file the command names is not there."""
