"""Old import path (kept for one release): the row-wise engine is :mod:`xpu_stone.engine`."""

from .engine.checks import batch_shape, broadcast
from .engine.launch import TORCH_DTYPES
from .engine.rowop import E0, RowOp
from .engine.rowwise import call, dtype_name, keepdim
from .engine.rowwise_cpu import cpu_backward, cpu_forward
from .engine.rowwise_cuda import launch_backward, launch_forward

__all__ = [
    "E0",
    "TORCH_DTYPES",
    "RowOp",
    "batch_shape",
    "broadcast",
    "call",
    "cpu_backward",
    "cpu_forward",
    "dtype_name",
    "keepdim",
    "launch_backward",
    "launch_forward",
]
