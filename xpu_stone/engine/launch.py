"""The chores every launcher shares, row-wise and GEMM-style alike: the dtype
tables, the compute dtype, the caller's stream, raw pointers, NaN-poisoning of
outputs, device properties, typed out-of-memory errors (:func:`allocates`), and
the row-wise launch (recorded, like every launch, through
:data:`xpu_stone.kernels.launch.RECORDER` while a profile is open). Other kernels
launch through :func:`xpu_stone.kernels.launch.launch_kernel`.
"""

from __future__ import annotations

import functools

import numpy

from .. import config
from .._deps import require_cupy, torch
from ..kernels.launch import RECORDER, launch_row
from ..runtime.memory import OOM_CANDIDATES, typed_out_of_memory

__all__ = [
    "CUPY_DTYPES",
    "TORCH_DTYPES",
    "TORCH_OF",
    "address",
    "allocates",
    "compute_dtype",
    "device_props",
    "launch_rows",
    "poison",
    "ptr",
    "torch_stream",
]

if torch is not None:
    TORCH_DTYPES = {
        torch.float32: "float32",
        torch.float64: "float64",
        torch.float16: "float16",
        torch.bfloat16: "bfloat16",
    }
else:  # the CuPy-only installation
    TORCH_DTYPES = {}
TORCH_OF = {v: k for k, v in TORCH_DTYPES.items()}
CUPY_DTYPES = {"float32": "float32", "float64": "float64", "float16": "float16"}


def compute_dtype(dtype):
    """The torch dtype the GEMM-style kernels (pairwise, linear) compute and keep their
    per-row scalars in for rows stored in ``dtype``: float64 for float64, float32 for
    the others (the row kernels take every per-row scalar in float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def torch_stream(device_index: int) -> int:
    """The raw handle of torch's current stream on the device (what a launch must
    use so that CUDA-graph capture and side streams see it)."""
    return torch._C._cuda_getCurrentRawStream(device_index)


def address(a) -> int:
    """A torch tensor's or CuPy array's device address; 0 for None."""
    if a is None:
        return 0
    return a.data_ptr() if hasattr(a, "data_ptr") else a.data.ptr


def ptr(t) -> numpy.uint64:
    """:func:`address` as a kernel argument."""
    return numpy.uint64(address(t))


def poison(*arrays) -> None:
    """Fills outputs with NaN before a launch when ``config.poison_outputs`` is on,
    so an element a kernel fails to write cannot pass a test."""
    if config.poison_outputs:
        for a in arrays:
            if a is not None:
                a.fill_(float("nan")) if hasattr(a, "fill_") else a.fill(float("nan"))


def allocates(launcher):
    """Decorator for a launcher (a function that allocates its outputs and
    workspaces, then launches): a failed device allocation inside it (torch's or
    CuPy's out-of-memory error, or a CUDA call such as a kernel load that failed
    out of memory) is raised as :class:`~xpu_stone.errors.OutOfMemoryError`, from the original
    error. Launchers allocate before they launch and never write their inputs, so
    after the error the inputs are as they were and the next call starts afresh."""

    @functools.wraps(launcher)
    def guarded(*args, **kwargs):
        try:
            return launcher(*args, **kwargs)
        except OOM_CANDIDATES as e:
            typed = typed_out_of_memory(e)
            if typed is None:
                raise
            raise typed from e

    return guarded


_PROPS: dict[int, tuple[int, int]] = {}


def device_props(dev: int) -> tuple[int, int]:
    """(SM count, L2 bytes) of CUDA device ``dev`` (read once per device, through CuPy,
    so the CuPy-only path has it too)."""
    p = _PROPS.get(dev)
    if p is None:
        props = require_cupy("running kernels").cuda.runtime.getDeviceProperties(dev)
        p = _PROPS[dev] = (props["multiProcessorCount"], props["l2CacheSize"])
    return p


def launch_rows(label: str, variant: str, fn, grid: int, block: int, fields, d: int, dtype: str, stream, dev):
    """One row-wise launch (``fields`` in :data:`xpu_stone.kernels.launch.ROW_ARG_FIELDS`
    order); ``label``, ``variant`` and ``(rows, d)`` name it for the profiler's recorder."""
    recorder = RECORDER[0]
    if recorder is not None:
        recorder(
            label,
            variant,
            (fields[0], d),
            dtype,
            dev,
            stream,
            launch_row,
            fn,
            grid,
            block,
            fields,
            stream,
            dev,
        )
    else:
        launch_row(fn, grid, block, fields, stream, dev)
