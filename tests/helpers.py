"""Shared test data: points on the stress grid of DESIGN.md, op call tables."""

from __future__ import annotations

import math

import torch

import xpu_stone.poincare
from xpu_stone.constants import BOUNDARY_EPS
from xpu_stone.reference import poincare as R

LOW_PRECISION = (torch.float16, torch.bfloat16)
DTYPE_NAME = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}
# The targets for fp32 and fp16/bf16. fp64 has none; it is held to 1e-6,
# what fp64 arithmetic keeps of these formulas near the boundary (the float64
# reference itself strays further there, and only a bounded number of rows is
# settled at 60 digits).
FWD_TOL = {torch.float64: 1e-6, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
GRAD_TOL = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def ball_points(shape, c=1.0, dtype=torch.float64, device="cpu", gen=None, boundary=False):
    """Random points of the ball of radius 1/sqrt(c) on the stress grid of DESIGN.md:
    norms log-uniform in [1e-15, 1 - 1e-7] of the radius (40 %), uniform (50 %),
    exact zeros (10 %). ``boundary=True`` replaces the uniform share by norms
    1 - log-uniform[1e-7, 1], crowding the boundary. fp32 points keep 2e-7 and
    fp16/bf16 points twice their boundary eps away from the boundary so that
    rounding keeps them inside."""
    gen = gen or torch.Generator(device).manual_seed(0)
    *batch, d = shape
    n = math.prod(batch)
    direction = torch.randn(n, d, generator=gen, dtype=torch.float64, device=device)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    u = torch.rand(n, generator=gen, dtype=torch.float64, device=device)
    kind = torch.randint(0, 10, (n,), generator=gen, device=device)
    log_uniform = 10 ** (-15 * u)  # (1e-15, 1]
    other = 1 - 10 ** (-7 * u) if boundary else u
    r = torch.where(kind < 4, log_uniform, other)
    r = torch.where(kind == 9, torch.zeros_like(r), r)
    margin = {torch.float64: 1e-7, torch.float32: 2e-7}.get(dtype, BOUNDARY_EPS[DTYPE_NAME[dtype]] * 2)
    r = r.clamp_max(1 - margin)
    x = direction * r[:, None]
    c_t = torch.as_tensor(c, dtype=torch.float64, device=device)
    x = x.reshape(*batch, d) / torch.sqrt(c_t)
    return x.to(dtype)


def tangent_vectors(shape, dtype=torch.float64, device="cpu", gen=None, scale=1.0):
    gen = gen or torch.Generator(device).manual_seed(1)
    n = math.prod(shape[:-1])
    mag = 10 ** (torch.rand(n, 1, generator=gen, dtype=torch.float64, device=device) * 4 - 3) * scale
    v = torch.randn(*shape, generator=gen, dtype=torch.float64, device=device) * mag.reshape(*shape[:-1], 1)
    return v.to(dtype)


def rel_err(out, ref, floor: float = 0.0) -> float:
    """||out - ref|| / max(||ref||, floor * sqrt(numel)): normwise relative error;
    ``floor`` keeps results that are zero up to rounding (an identity's
    gradient) from turning noise into a large ratio."""
    out = out.double()
    ref = ref.double()
    den = max(ref.norm().item(), floor * math.sqrt(max(ref.numel(), 1)))
    num = (out - ref).norm().item()
    if den == 0:
        return num
    return num / den


def row_inputs(rows, d, c, dtype, seed, device="cpu", boundary=False):
    """Three ball points x, y, z, a tangent vector u and a per-row weight t in
    [-0.5, 1.5), each of shape (rows, d) or (rows, 1), drawn from one seeded generator."""
    gen = torch.Generator(device).manual_seed(seed)
    x, y, z = (ball_points((rows, d), c, dtype, device, gen, boundary) for _ in range(3))
    u = tangent_vectors((rows, d), dtype, device, gen)
    t = (torch.rand(rows, 1, generator=gen, dtype=torch.float64, device=device) * 2 - 0.5).to(dtype)
    return x, y, z, u, t


def op_args(name, x, y, z, u, t):
    """Arguments of op ``name``: points x, y, z (in order), tangent u, per-row t."""
    return R.arguments(name, (x, y, z), u, t)


OPS = tuple(xpu_stone.poincare.__all__)


SCALAR_ARG = {"mobius_scalar_mul": 0, "geodesic": 2}  # position of the per-row scalar


def _row_args(name, args, i, rows):
    """Row i of each argument: vectors as lists of floats, per-row scalars as floats."""
    out = []
    for k, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            out.append(a)
        elif SCALAR_ARG.get(name) == k:
            flat = a.detach().double().reshape(-1)
            out.append(float(flat[i] if flat.numel() > 1 else flat[0]))
        else:
            out.append(a.detach().double().reshape(rows, -1)[i].tolist())
    return out


def settled_error(name, out, ref, args, c, eps=None, tol=1e-5, max_rows=None):
    """Normwise relative error of ``out`` against the float64 reference ``ref``,
    after re-evaluating with mpmath (60 digits) the rows that account for any
    excess over ``tol`` (at most ``max_rows``). Returns (error, rows settled)."""
    from mp_reference import evaluate

    # fp16 cannot hold values below its smallest normal (6.1e-5) to any relative
    # accuracy: a row of norm 1e-7 over 4097 elements underflows element by element.
    floor = torch.finfo(torch.float16).tiny if out.dtype == torch.float16 else 0.0
    err = rel_err(out, ref, floor)
    if not err > tol or out.numel() == 0:
        return err, 0
    rows = out.shape[0] if out.dim() else 1
    o = out.double().reshape(rows, -1).cpu()
    r = ref.double().reshape(rows, -1).cpu().clone()
    max_rows = max_rows or max(16, min(1024, 50000 // o.shape[1]))
    row_err = (o - r).norm(dim=-1)
    order = torch.argsort(row_err, descending=True)[:max_rows]
    c_rows = c.detach().double().reshape(-1).cpu() if isinstance(c, torch.Tensor) else None
    args = [a.detach().double().cpu() if isinstance(a, torch.Tensor) else a for a in args]
    for i in order.tolist():
        if row_err[i] <= 0.1 * tol * r.norm():
            break
        ci = float(c_rows[i] if c_rows.numel() > 1 else c_rows[0]) if c_rows is not None else c
        row = _row_args(name, args, i, rows)
        exact = evaluate(name, row, ci, eps)
        exact = exact if isinstance(exact, list) else [exact]
        r[i] = torch.tensor([float(v) for v in exact], dtype=torch.float64)
    return rel_err(o, r, floor), len(order)


def _objective(name, row, dirs, ci, dc, gi, eps, s):
    """<g, f(row + s * dirs)> at 60 digits (c moved by s * dc)."""
    import mpmath as mp
    from mp_reference import evaluate

    moved = [
        [mp.mpf(v) + s * float(dd[k]) for k, v in enumerate(r)]
        if isinstance(r, list)
        else mp.mpf(r) + s * float(dd[0])
        for r, dd in zip(row, dirs)
    ]
    out = evaluate(name, moved, mp.mpf(ci) + s * dc, eps)
    out = out if isinstance(out, list) else [out]
    return mp.fsum(p * q for p, q in zip(out, gi))


def settled_grad_errors(name, grads, ref_grads, args, c, g, eps=None, tol=1e-4, max_rows=None):
    """Normwise relative errors of the gradients (inputs, then per-row c) against
    the float64 autograd reference, floored at the output gradient's scale.
    Rows that account for an excess are settled with mpmath: the row's
    directional derivative of <g, f> along two random directions (60 digits,
    central differences with h = 1e-25) must match the kernel's gradients; a
    row that matches takes the kernel's values as its reference."""
    import mpmath as mp

    floor = g.double().norm().item() / math.sqrt(max(g.numel(), 1))
    errs = [rel_err(a, b, floor) for a, b in zip(grads, ref_grads)]
    if all(e <= tol for e in errs):
        return errs
    rows = g.shape[0]
    g = g.cpu()
    flat = [a.double().reshape(rows, -1).cpu() for a in grads]
    ref_flat = [b.double().reshape(rows, -1).cpu().clone() for b in ref_grads]
    max_rows = max_rows or max(4, min(64, 2000 // flat[0].shape[1]))
    excess = sum((a - b).norm(dim=-1) ** 2 for a, b in zip(flat, ref_flat))
    gen = torch.Generator().manual_seed(0)
    h = mp.mpf("1e-25")
    c_rows = c.detach().double().reshape(-1).cpu() if isinstance(c, torch.Tensor) else None
    args = [a.detach().double().cpu() if isinstance(a, torch.Tensor) else a for a in args]
    for i in torch.argsort(excess, descending=True)[:max_rows].tolist():
        row = _row_args(name, args, i, rows)
        ci = float(c_rows[i]) if c_rows is not None else c
        gi = [mp.mpf(float(v)) for v in g.double().reshape(rows, -1)[i]]
        ok = True
        for _ in range(2):
            dirs = [
                torch.randn(len(r) if isinstance(r, list) else 1, generator=gen, dtype=torch.float64)
                for r in row
            ]
            dc = float(torch.randn(1, generator=gen, dtype=torch.float64)) if c_rows is not None else 0.0

            exact = float(
                (
                    _objective(name, row, dirs, ci, dc, gi, eps, h)
                    - _objective(name, row, dirs, ci, dc, gi, eps, -h)
                )
                / (2 * h)
            )
            ours = sum(float((a[i] * dd).sum()) for a, dd in zip(flat[: len(row)], dirs))
            scale = sum(float(a[i].norm()) ** 2 for a in flat) ** 0.5
            if c_rows is not None:
                ours += float(flat[-1][i, 0]) * dc
            if abs(ours - exact) > tol * max(scale, floor) * 3:
                ok = False
        if ok:
            for a, b in zip(flat, ref_flat):
                b[i] = a[i]
    return [rel_err(a, b, floor) for a, b in zip(flat, ref_flat)]
