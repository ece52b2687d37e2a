"""GPU launches of row-wise ops: the forward and backward kernels on torch CUDA
tensors, and the forward on CuPy arrays. Each call flattens its operands to rows
(:mod:`xpu_stone.engine.rows`), asks the dispatcher for the variant (cached per
shape class), and makes one launch on the caller's current stream. A failed
allocation raises :class:`~xpu_stone.errors.OutOfMemoryError` (:func:`~xpu_stone.engine.launch.allocates`)."""

from __future__ import annotations

from .._deps import cupy, torch
from ..constants import ACCUM_DTYPE
from ..kernels import dispatcher
from ..kernels.launch import get_function
from .launch import allocates, launch_rows, poison, torch_stream
from .rowop import RowOp
from .rows import (
    collapse,
    cupy_rows,
    cupy_scalar_rows,
    is_aligned,
    prepare,
    prepare_contiguous,
    torch_rows,
    torch_scalar_rows,
)

__all__ = ["launch_backward", "launch_forward", "launch_forward_cupy"]


@allocates
def launch_forward(op: RowOp, vecs, c, c_val, t, t_val, eps, dtype, batch):
    """Runs the forward kernel on torch CUDA tensors; returns a new tensor."""
    x = vecs[0]
    prepared = (
        None if (c is not None or t is not None) else prepare_contiguous(vecs, c_val, t_val, dtype, batch)
    )
    d, rows, keep, fields, aligned = prepared or prepare(
        vecs, ((c, c_val), (t, t_val)), dtype, batch, torch_rows, torch_scalar_rows, torch.float64
    )
    out = torch.empty(batch if op.scalar_out else (*batch, op.out_width(d)), dtype=x.dtype, device=x.device)
    poison(out)
    if rows == 0:
        return out
    dev = x.device.index
    fields += (float(eps), out.data_ptr(), 0, 0, 0, 0, 0, 0, 0, 0)
    _launch(op, "fwd", fields, d, aligned, dtype, torch_stream(dev), dev)
    return out


@allocates
def launch_backward(op: RowOp, grad, vecs, c, c_val, t, t_val, eps, dtype, batch, needs):
    """Runs the backward kernel; returns per-row gradients (None where not needed):
    one rows-shaped tensor per vector, then c and t as (*batch, 1) tensors."""
    x = vecs[0]
    pd = torch.float64  # c, t and their gradients are double in every row kernel
    d, rows, keep, fields, aligned = prepare(
        vecs, ((c, c_val), (t, t_val)), dtype, batch, torch_rows, torch_scalar_rows, pd
    )
    if op.scalar_out:
        ge = grad.expand(batch)
        g_rs = collapse(ge.shape, ge.stride())
        if g_rs is None:
            ge, g_rs = ge.contiguous(), 1
        g_es = 0
    else:
        ge, g_rs, g_es = torch_rows(grad, batch, op.out_width(d))
        aligned = aligned and is_aligned(ge.data_ptr(), g_rs, g_es, d, dtype)
    nv = len(vecs)
    outs = [torch.empty((*batch, d), dtype=x.dtype, device=x.device) if needs[j] else None for j in range(nv)]
    for s, need in ((c, needs[nv]), (t, needs[nv + 1])):
        outs.append(torch.empty((*batch, 1), dtype=pd, device=x.device) if (need and s is not None) else None)
    poison(*outs)
    if rows == 0:
        return outs
    dev = x.device.index
    gv = [o.data_ptr() if o is not None else 0 for o in outs[:nv]] + [0] * (3 - nv)
    gct = [o.data_ptr() if o is not None else 0 for o in outs[nv:]]
    fields += (float(eps), 0, ge.data_ptr(), g_rs, g_es, *gv, *gct)
    _launch(op, "bwd", fields, d, aligned, dtype, torch_stream(dev), dev)
    return outs


@allocates
def launch_forward_cupy(op: RowOp, vecs, c, c_val, t, t_val, eps, dtype, batch):
    """The forward on CuPy arrays (no torch needed), on CuPy's current stream."""
    x = vecs[0]
    pd = "float64"
    d, rows, keep, fields, aligned = prepare(
        vecs, ((c, c_val), (t, t_val)), dtype, batch, cupy_rows, cupy_scalar_rows, pd
    )
    with x.device:
        out = cupy.empty(batch if op.scalar_out else (*batch, op.out_width(d)), dtype=x.dtype)
        poison(out)
        if rows:
            fields += (float(eps), out.data.ptr, 0, 0, 0, 0, 0, 0, 0, 0)
            _launch(op, "fwd", fields, d, aligned, dtype, cupy.cuda.get_current_stream().ptr, x.device.id)
    return out


def _launch(op: RowOp, direction: str, fields, d: int, aligned: bool, dtype: str, stream: int, dev: int):
    if op.shifted:  # the kernel walks the logical row, one element at a time
        d = fields[1] = op.width(d)
        aligned = False
    fn, choice = _kernel(op, direction, dtype, d, aligned, dev)
    grid = -(-fields[0] // choice.config.rows_per_block())
    launch_rows(
        op.labels[direction], choice.variant, fn, grid, choice.config.block, fields, d, dtype, stream, dev
    )


_kernel_cache: dict[tuple, tuple] = {}


def _kernel(op: RowOp, direction: str, dtype: str, d: int, aligned: bool, dev: int):
    """(loaded function, dispatcher choice) for this call; cached per shape class and pins."""
    key = (op.qualname, direction, dtype, d, aligned, dev, dispatcher.pin_token(), dispatcher.generation())
    hit = _kernel_cache.get(key)
    if hit is None:
        choice = dispatcher.select(op.qualname, dtype, d, aligned, dev)
        k = op.kernels
        name = k.kernel_name(direction, dtype, ACCUM_DTYPE[dtype], choice.config)
        hit = _kernel_cache[key] = (get_function(k.source, name, dev, k.defines(dtype)), choice)
    return hit
