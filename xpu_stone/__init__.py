"""xpu_stone: fused CUDA kernels for hyperbolic geometry, for torch and CuPy.

Importing works with no GPU and with no torch: the CuPy API needs only CuPy,
the CPU path only torch. Kernels compile on first use and are cached on disk;
:func:`xpu_stone.kernels.build` compiles them ahead of time.
"""

from __future__ import annotations

from . import config, constants, convert, errors, klein, linear, lorentz, pairwise, poincare, runtime
from ._deps import torch as _torch
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
from .policies import ExecutionPolicy, KernelPolicy
from .profiler import profile
from .runtime import InferenceSession

__version__ = "0.1.0"

if _torch is not None:
    from . import compat, manifolds, nn, optim  # noqa: F401  (need torch)
    from . import rowwise as _rowwise
    from . import torch_ops as _torch_ops
    from .ops import convert as _convert_ops
    from .ops import klein as _klein_ops
    from .ops import lorentz as _lorentz_ops
    from .ops import poincare as _poincare_ops

    for _module in (_poincare_ops, _lorentz_ops, _klein_ops, _convert_ops):
        for _op in vars(_module).values():
            if isinstance(_op, _rowwise.RowOp):
                _torch_ops.register(_op)

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
