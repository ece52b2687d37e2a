"""Typed errors of xpu_stone.

Every error names the argument at fault and the form that was expected. They are
raised before any kernel launch, so no output or input has been touched.
"""

from __future__ import annotations


class XpuStoneError(Exception):
    """Base class of every error raised by xpu_stone."""


XpuRuntimeError = XpuStoneError
"""The runtime layer's name for the base class (one hierarchy: the same class)."""


class ShapeMismatchError(XpuStoneError, ValueError):
    """Operands whose shapes cannot be combined (the DimensionMismatch of Reality Stone)."""


class InvalidCurvatureError(XpuStoneError, ValueError):
    """A curvature ``c`` that is not a finite positive number."""


class InvalidArgumentError(XpuStoneError, ValueError):
    """An argument of the wrong type, dtype, device or value."""


class NonFiniteError(XpuStoneError, ValueError):
    """An input row holds a NaN or an inf. Raised only in the checked mode
    (``xpu_stone.config.check_finite``); otherwise such a row gives NaN outputs.
    ``op`` names the function, ``argument`` the input, ``row`` the index of its
    first such row (a tuple over its leading dims)."""

    def __init__(self, message: str, op: str | None = None, argument: str | None = None, row=None):
        super().__init__(message)
        self.op = op
        self.argument = argument
        self.row = row


class DomainError(XpuStoneError, ValueError):
    """An input that must be a point of its model is outside the domain beyond
    rounding (outside the Poincare ball or the Klein disk, off the hyperboloid).
    Raised only in the checked mode (``xpu_stone.config.check_finite``);
    otherwise such a row gives NaN outputs. ``op``, ``argument`` and ``row`` as
    for :class:`NonFiniteError`."""

    def __init__(self, message: str, op: str | None = None, argument: str | None = None, row=None):
        super().__init__(message)
        self.op = op
        self.argument = argument
        self.row = row


class UnsupportedOperationError(XpuStoneError, NotImplementedError):
    """An operation the current build, device or installation cannot run."""


class CudaError(XpuStoneError, RuntimeError):
    """A CUDA call failed; ``name`` is the CUDA error name when known."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message if name is None else f"{name}: {message}")
        self.name = name


class OutOfMemoryError(CudaError, MemoryError):
    """A device allocation failed; ``requested`` and ``free`` are in bytes when known."""

    def __init__(
        self, message: str, name: str | None = None, requested: int | None = None, free: int | None = None
    ):
        super().__init__(message, name)
        self.requested = requested
        self.free = free


def cuda_error(exc: BaseException, what: str = "") -> CudaError:
    """The typed error for a failed CUDA call raised by CuPy or torch, with the
    CUDA error name (``cudaErrorIllegalAddress``, ``CUDA_ERROR_OUT_OF_MEMORY``...)
    when it can be found. ``what`` says which call failed. Raise it ``from exc``."""
    text = str(exc)
    head, _, rest = text.partition(":")
    if head.startswith(("cudaError", "CUDA_ERROR")):
        name, text = head, rest.strip()
    else:
        code = getattr(exc, "error_code", None)  # torch.AcceleratorError
        name = _runtime_error_name(code) if isinstance(code, int) else None
    message = f"{what}: {text}" if what else text
    if name in ("cudaErrorMemoryAllocation", "CUDA_ERROR_OUT_OF_MEMORY"):
        return OutOfMemoryError(message, name)
    return CudaError(message, name)


def _runtime_error_name(code: int) -> str | None:
    try:
        from cupy.cuda.runtime import CUDARuntimeError
    except ImportError:
        return None
    head = str(CUDARuntimeError(code)).split(":", 1)[0]
    return head if head.startswith("cudaError") else None


class CompilationError(XpuStoneError, RuntimeError):
    """NVRTC rejected a kernel; ``log`` holds the compiler's output."""

    def __init__(self, kernel: str, log: str):
        super().__init__(f"NVRTC failed to compile {kernel}:\n{log}")
        self.kernel = kernel
        self.log = log


class RBEFormatError(XpuStoneError, ValueError):
    """A Packed128 code, compressed-layer file or state dict that breaks the RBE format
    (``xpu_stone.rbe.format``): a reserved track, a version byte other than 1, a radius
    ``r`` outside ``[0, 1)``, a NaN or infinite parameter, a field out of its range, a
    truncated or inconsistent file."""


class KernelCacheWarning(UserWarning):
    """The on-disk kernel cache could not be used as it is: a damaged entry (recompiled
    and rewritten) or a folder that cannot be written (kernels kept in memory)."""
