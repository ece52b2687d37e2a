"""Typed errors of xpu_stone.

Every error names the argument at fault and the form that was expected. They are
raised before any kernel launch, so no output or input has been touched.
"""

from __future__ import annotations


class XpuStoneError(Exception):
    """Base class of every error raised by xpu_stone."""


class ShapeMismatchError(XpuStoneError, ValueError):
    """Operands whose shapes cannot be combined (the DimensionMismatch of Reality Stone)."""


class InvalidCurvatureError(XpuStoneError, ValueError):
    """A curvature ``c`` that is not a finite positive number."""


class InvalidArgumentError(XpuStoneError, ValueError):
    """An argument of the wrong type, dtype, device or value."""


class UnsupportedOperationError(XpuStoneError, NotImplementedError):
    """An operation the current build, device or installation cannot run."""


class CudaError(XpuStoneError, RuntimeError):
    """A CUDA call failed; ``name`` is the CUDA error name when known."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message if name is None else f"{name}: {message}")
        self.name = name


class OutOfMemoryError(CudaError, MemoryError):
    """A device allocation failed."""


class CompilationError(XpuStoneError, RuntimeError):
    """NVRTC rejected a kernel; ``log`` holds the compiler's output."""

    def __init__(self, kernel: str, log: str):
        super().__init__(f"NVRTC failed to compile {kernel}:\n{log}")
        self.kernel = kernel
        self.log = log
