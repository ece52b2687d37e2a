"""Operands as rows: every vector input viewed as ``rows x D`` with one row stride
and one element stride (batch broadcasting by zero strides, no copy unless a
broadcast pattern cannot be walked with one stride), and the leading fields of
the kernels' parameter struct ``xs_row_args`` (``cuda_src/common/rowwise.cuh``)
in :data:`xpu_stone.kernels.launch.ROW_ARG_FIELDS` order."""

from __future__ import annotations

import math

from .._deps import cupy
from ..kernels.registry import VEC_WIDTH
from .launch import address

__all__ = [
    "collapse",
    "cupy_rows",
    "cupy_scalar_rows",
    "is_aligned",
    "prepare",
    "prepare_contiguous",
    "torch_rows",
    "torch_scalar_rows",
]


def collapse(sizes, strides):
    """One stride that walks all batch dims in order, or None if there is none."""
    row_stride = expected = None
    for size, stride in zip(reversed(sizes), reversed(strides)):
        if size == 1:
            continue
        if row_stride is None:
            row_stride = stride
        elif stride != expected:
            return None
        expected = stride * size
    return 0 if row_stride is None else row_stride


def torch_rows(v, batch, d):
    """(tensor kept alive, row stride, element stride) of v as rows x d."""
    if v.is_contiguous() and v.shape[:-1] == batch:
        return v, d, 1
    ve = v.expand(*batch, v.shape[-1])
    rs = collapse(ve.shape[:-1], ve.stride()[:-1])
    if rs is None:
        ve = ve.contiguous()
        rs = d
    return ve, rs, (ve.stride(-1) if d > 1 else 1)


def cupy_rows(v, batch, d):
    """:func:`torch_rows` for a CuPy array."""
    if v.shape[:-1] == batch and v.flags.c_contiguous:
        return v, d, 1
    ve = cupy.broadcast_to(v, (*batch, v.shape[-1]))
    item = ve.itemsize
    rs = collapse(ve.shape[:-1], [s // item for s in ve.strides[:-1]])
    if rs is None:
        ve = cupy.ascontiguousarray(ve)
        rs = d
    return ve, rs, (ve.strides[-1] // item if d > 1 else 1)


def torch_scalar_rows(s, batch, param_dtype):
    """(tensor, row stride) of a per-row scalar in the parameter dtype."""
    s = s.to(param_dtype)
    if s.dim() == 0:
        return s, 0
    se = s.expand(*batch, 1)
    rs = collapse(se.shape[:-1], se.stride()[:-1])
    if rs is None:
        se, rs = se.contiguous(), 1
    return se, rs


def cupy_scalar_rows(s, batch, param_dtype):
    """:func:`torch_scalar_rows` for a CuPy array."""
    s = s.astype(param_dtype, copy=False)
    if s.ndim == 0:
        return s, 0
    se = cupy.broadcast_to(s, (*batch, 1))
    rs = collapse(se.shape[:-1], [st // se.itemsize for st in se.strides[:-1]])
    if rs is None:
        se, rs = cupy.ascontiguousarray(se), 1
    return se, rs


def is_aligned(ptr: int, row_stride: int, elem_stride: int, d: int, dtype: str) -> bool:
    """Whether one operand can take the 16-byte vector loads: a 16-byte aligned
    base, unit element stride, D and the row stride multiples of the vector width."""
    vec = VEC_WIDTH[dtype]
    return d % vec == 0 and ptr % 16 == 0 and row_stride % vec == 0 and (elem_stride == 1 or d == 1)


def prepare(vecs, scalars, dtype: str, batch, rows_of, scalar_rows, param_dtype):
    """Rows view of every operand: (d, rows, kept arrays, leading xs_row_args fields,
    aligned). ``scalars``: ((c tensor or None, c value), (t tensor or None, t value))."""
    d = vecs[0].shape[-1]
    rows = math.prod(batch)
    aligned = d % VEC_WIDTH[dtype] == 0
    keep, ptrs, rss, ess = [], [0, 0, 0], [0, 0, 0], [0, 0, 0]
    for j, v in enumerate(vecs):
        ve, rs, es = rows_of(v, batch, d)
        keep.append(ve)
        p = ptrs[j] = address(ve)
        rss[j], ess[j] = rs, es
        aligned = aligned and is_aligned(p, rs, es, d, dtype)
    fields = [rows, d, *ptrs, *rss, *ess]
    for s, val in scalars:
        if s is None:
            fields += (0, 0, val)
        else:
            se, rs = scalar_rows(s, batch, param_dtype)
            keep.append(se)
            fields += (address(se), rs, 0.0)
    return d, rows, keep, fields, aligned


def prepare_contiguous(vecs, c_val, t_val, dtype: str, batch):
    """:func:`prepare` for the commonest call: vectors contiguous and of one shape,
    c and t plain numbers. None when the call is not of that kind."""
    x = vecs[0]
    d = x.shape[-1]
    aligned = d % VEC_WIDTH[dtype] == 0
    ptrs = [0, 0, 0]
    for j, v in enumerate(vecs):
        if not v.is_contiguous() or v.shape != x.shape:
            return None
        p = ptrs[j] = v.data_ptr()
        aligned = aligned and p % 16 == 0
    nv = len(vecs)
    rs = [d] * nv + [0] * (3 - nv)
    es = [1] * nv + [0] * (3 - nv)
    rows = math.prod(batch)
    return d, rows, vecs, [rows, d, *ptrs, *rs, *es, 0, 0, c_val, 0, 0, t_val], aligned
