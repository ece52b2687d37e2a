"""xpu_stone: fused CUDA kernels for hyperbolic geometry, for torch and CuPy.

Importing works with no GPU and with no torch: the CuPy API needs only CuPy,
the CPU path only torch. Kernels compile on first use and are cached on disk;
:func:`xpu_stone.kernels.build` compiles them ahead of time.
"""

from __future__ import annotations

from . import config, constants, errors, poincare
from ._deps import torch as _torch
from .errors import (
    CompilationError,
    CudaError,
    InvalidArgumentError,
    InvalidCurvatureError,
    OutOfMemoryError,
    ShapeMismatchError,
    UnsupportedOperationError,
    XpuStoneError,
)
from .interop import to_cupy, to_torch
from .policies import KernelPolicy

__version__ = "0.1.0"

if _torch is not None:
    from . import rowwise as _rowwise
    from . import torch_ops as _torch_ops
    from .ops import poincare as _poincare_ops

    for _op in vars(_poincare_ops).values():
        if isinstance(_op, _rowwise.RowOp):
            _torch_ops.register(_op)

__all__ = [
    "CompilationError",
    "CudaError",
    "InvalidArgumentError",
    "InvalidCurvatureError",
    "KernelPolicy",
    "OutOfMemoryError",
    "ShapeMismatchError",
    "UnsupportedOperationError",
    "XpuStoneError",
    "config",
    "constants",
    "errors",
    "poincare",
    "to_cupy",
    "to_torch",
]
