"""Old import path (kept for one release): the row-wise engine is :mod:`xpu_stone.engine`."""

from .engine.checks import batch_shape, broadcast
from .engine.launch import CUPY_DTYPES, TORCH_DTYPES, TORCH_OF
from .engine.rowop import E0, RowOp
from .engine.rowwise import call, dtype_name
from .engine.rowwise_cpu import (
    artanh_c,
    clamp_min,
    cosh_c,
    cpu_backward,
    cpu_forward,
    norm_from_sq,
    sinh_c,
    tanh_c,
)
from .engine.rowwise_cuda import launch_backward, launch_forward

__all__ = [
    "CUPY_DTYPES",
    "E0",
    "TORCH_DTYPES",
    "TORCH_OF",
    "artanh_c",
    "clamp_min",
    "cosh_c",
    "norm_from_sq",
    "sinh_c",
    "tanh_c",
    "RowOp",
    "batch_shape",
    "broadcast",
    "call",
    "cpu_backward",
    "cpu_forward",
    "dtype_name",
    "launch_backward",
    "launch_forward",
]
