"""xpu_stone: fused CUDA kernels for hyperbolic geometry, for torch and CuPy.

Importing works with no GPU and with no torch: the CuPy API needs only CuPy,
the CPU path only torch. Kernels compile on first use and are cached on disk;
:func:`xpu_stone.kernels.build` compiles them ahead of time.
"""

from __future__ import annotations

from . import config, constants, convert, errors, klein, linear, lorentz, pairwise, poincare, runtime
from ._deps import torch as _torch
from ._version import __version__
from .convert import (
    klein_to_lorentz,
    klein_to_poincare,
    lorentz_to_klein,
    lorentz_to_poincare,
    poincare_to_klein,
    poincare_to_lorentz,
)
from .errors import (
    CompilationError,
    CudaError,
    InvalidArgumentError,
    InvalidCurvatureError,
    OutOfMemoryError,
    ShapeMismatchError,
    UnsupportedOperationError,
    XpuRuntimeError,
    XpuStoneError,
)
from .interop import to_cupy, to_torch
from .runtime import ExecutionPolicy, InferenceSession, KernelPolicy, profile

if _torch is not None:
    from . import compat, manifolds, nn, optim  # noqa: F401  (need torch)

__all__ = [
    "CompilationError",
    "ExecutionPolicy",
    "InferenceSession",
    "CudaError",
    "InvalidArgumentError",
    "InvalidCurvatureError",
    "KernelPolicy",
    "OutOfMemoryError",
    "ShapeMismatchError",
    "UnsupportedOperationError",
    "XpuRuntimeError",
    "XpuStoneError",
    "__version__",
    "config",
    "constants",
    "convert",
    "errors",
    "klein",
    "linear",
    "lorentz",
    "pairwise",
    "poincare",
    "klein_to_lorentz",
    "klein_to_poincare",
    "lorentz_to_klein",
    "lorentz_to_poincare",
    "poincare_to_klein",
    "poincare_to_lorentz",
    "profile",
    "runtime",
    "to_cupy",
    "to_torch",
]
