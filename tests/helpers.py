"""Shared test data: points on the project's stress grid, op call tables.

The stress grid: norms log-uniform from 1e-15 to 1 - 1e-7 of the radius, zero
vectors, c from 1e-3 to 1e3; D in {1, 3, 17, 127, 1000, 4097} and zero rows;
non-contiguous and broadcast inputs; every dtype."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import xpu_stone.convert
import xpu_stone.klein
import xpu_stone.lorentz
import xpu_stone.poincare
from xpu_stone.constants import BOUNDARY_EPS
from xpu_stone.kernels import compiler
from xpu_stone.manifolds import ManifoldParameter
from xpu_stone.reference import poincare as R

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _nvrtc_available() -> bool:
    try:
        compiler.nvrtc_version()
        return True
    except Exception:
        return False


needs_nvrtc = pytest.mark.skipif(not _nvrtc_available(), reason="NVRTC library not installed")
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
    """Random points of the ball of radius 1/sqrt(c) on the stress grid:
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


PAIRWISE = ("cdist", "knn")  # not row-wise: tests/test_pairwise*.py
OPS = tuple(n for n in xpu_stone.poincare.__all__ if n not in PAIRWISE)


SCALAR_ARG = {"mobius_scalar_mul": 0, "geodesic": 2}  # position of the per-row scalar


FP16_MAX = 65504.0


def saturate_fp16(out, ref):
    """The overflow rule of the fp16 comparisons: an exact value beyond fp16's range
    rounds to +-inf, and the kernels store it saturated at +-65504. The reference is
    clamped to +-65504, and where it overflows the output may be either (its inf
    counts as 65504). Returns (out, ref); other dtypes unchanged."""
    if out.dtype != torch.float16:
        return out, ref
    ref = ref.clamp(-FP16_MAX, FP16_MAX)
    over = ref.abs() >= FP16_MAX
    return torch.where(over, out.double().clamp(-FP16_MAX, FP16_MAX), out.double()).to(out.dtype), ref


def _oracle(oracle):
    """(evaluate, per-row scalar positions) of an mpmath oracle module; the Poincare one by default."""
    if oracle is None:
        import mp_reference

        return mp_reference.evaluate, SCALAR_ARG
    return oracle.evaluate, oracle.SCALAR_ARG


def _row_args(name, args, i, rows, scalar_arg=SCALAR_ARG):
    """Row i of each argument: vectors as lists of floats, per-row scalars as floats."""
    out = []
    for k, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            out.append(a)
        elif scalar_arg.get(name) == k:
            flat = a.detach().double().reshape(-1)
            out.append(float(flat[i] if flat.numel() > 1 else flat[0]))
        else:
            out.append(a.detach().double().reshape(rows, -1)[i].tolist())
    return out


def settled_error(name, out, ref, args, c, eps=None, tol=1e-5, max_rows=None, oracle=None, floor=None):
    """Normwise relative error of ``out`` against the float64 reference ``ref``,
    after re-evaluating with mpmath (60 digits) the rows that account for any
    excess over ``tol`` (at most ``max_rows``). ``oracle``: the module with
    ``evaluate`` and ``SCALAR_ARG`` (default ``mp_reference``, the Poincare ops).
    fp16 values settled beyond its range are clamped to +-65504 (saturate_fp16).
    ``floor``: of the norm in rel_err (default: fp16's smallest normal for fp16,
    else 0). Returns (error, rows settled)."""
    evaluate, scalar_arg = _oracle(oracle)
    # fp16 cannot hold values below its smallest normal (6.1e-5) to any relative
    # accuracy: a row of norm 1e-7 over 4097 elements underflows element by element.
    if floor is None:
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
        row = _row_args(name, args, i, rows, scalar_arg)
        exact = evaluate(name, row, ci, eps)
        exact = exact if isinstance(exact, list) else [exact]
        r[i] = torch.tensor([float(v) for v in exact], dtype=torch.float64)
        if out.dtype == torch.float16:
            r[i] = r[i].clamp(-FP16_MAX, FP16_MAX)
    return rel_err(o, r, floor), len(order)


def _objective(evaluate, name, row, dirs, ci, dc, gi, eps, s):
    """<g, f(row + s * dirs)> at 60 digits (c moved by s * dc)."""
    import mpmath as mp

    moved = [
        [mp.mpf(v) + s * float(dd[k]) for k, v in enumerate(r)]
        if isinstance(r, list)
        else mp.mpf(r) + s * float(dd[0])
        for r, dd in zip(row, dirs)
    ]
    out = evaluate(name, moved, mp.mpf(ci) + s * dc, eps)
    out = out if isinstance(out, list) else [out]
    return mp.fsum(p * q for p, q in zip(out, gi))


def settled_grad_errors(name, grads, ref_grads, args, c, g, eps=None, tol=1e-4, max_rows=None, oracle=None):
    """Normwise relative errors of the gradients (inputs, then per-row c) against
    the float64 autograd reference, floored at the output gradient's scale.
    Rows that account for an excess are settled with mpmath: the row's
    directional derivative of <g, f> along two random directions (60 digits,
    central differences with h = 1e-25) must match the kernel's gradients; a
    row that matches takes the kernel's values as its reference. ``oracle`` as
    in settled_error."""
    import mpmath as mp

    evaluate, scalar_arg = _oracle(oracle)
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
        row = _row_args(name, args, i, rows, scalar_arg)
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
                    _objective(evaluate, name, row, dirs, ci, dc, gi, eps, h)
                    - _objective(evaluate, name, row, dirs, ci, dc, gi, eps, -h)
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


# ------------------------------------------------- Lorentz, Klein, conversions
# Largest distance from the origin of the stress grid's hyperboloid points:
# cosh(r) / sqrt(1e-3) must fit the dtype (fp16: 65504).
MAX_DIST = {torch.float64: 20.0, torch.float32: 15.0, torch.bfloat16: 15.0, torch.float16: 7.0}
# ... and of the base points of tangent vectors: a tangent vector rounded to the
# dtype is tangent only to about eps * x_0 of its size (see xpu_stone.lorentz).
# Far out, |u|_L^2 = |u_s|^2 - u_0^2 cancels by x_0^2 even in fp64.
TANGENT_MAX_DIST = {torch.float64: 8.0, torch.float32: 8.0, torch.bfloat16: 3.0, torch.float16: 3.0}


def hyperboloid_points(shape, c=1.0, dtype=torch.float64, device="cpu", gen=None, max_dist=None, nice=False):
    """Points of the hyperboloid <x,x>_L = -1/c at distances from the origin
    log-uniform in [1e-15, max_dist] (40 %), uniform in [0, max_dist] (50 %) and
    zero (10 %), in random directions; made in float64, rounded to ``dtype``.
    ``nice``: distances uniform in [0.05, 3] instead."""
    gen = gen or torch.Generator(device).manual_seed(0)
    max_dist = MAX_DIST[dtype] if max_dist is None else max_dist
    *batch, d = shape
    n = math.prod(batch)
    direction = torch.randn(n, d - 1, generator=gen, dtype=torch.float64, device=device)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    u = torch.rand(n, 1, generator=gen, dtype=torch.float64, device=device)
    kind = torch.randint(0, 10, (n, 1), generator=gen, device=device)
    r = torch.where(kind < 4, max_dist * 10 ** (-16 * u), max_dist * u)
    r = torch.where(kind == 9, torch.zeros_like(r), r)
    if nice:
        r = 0.05 + 2.95 * u
    sc = math.sqrt(c)
    x = torch.cat((torch.cosh(r) / sc, torch.sinh(r) / sc * direction), -1)
    return x.reshape(*batch, d).to(dtype)


def _lorentz_tangent(x, gen, c, max_norm):
    """A tangent vector at each (float64) hyperboloid point x, of Minkowski norm
    log-uniform in [1e-3, 10] and at most ``max_norm``: a random tangent vector
    v = (0, w) at the origin o, moved to x by parallel transport,
    v + c<x,v>_L (o + x) / (1 + sqrt(c) x_0) (projecting a random vector onto
    the tangent space instead gives vectors whose norm cancels to garbage far
    from the origin)."""
    from xpu_stone.reference import lorentz as RL

    w = torch.randn(x.shape, generator=gen, dtype=torch.float64, device=x.device)
    w[..., 0] = 0
    mag = 10 ** (torch.rand(*x.shape[:-1], 1, generator=gen, dtype=torch.float64, device=x.device) * 4 - 3)
    v = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-300) * mag.clamp_max(max_norm)
    sc = math.sqrt(c)
    o = torch.zeros_like(x)
    o[..., 0] = 1 / sc
    return v + c * RL.inner(x, v, keepdim=True) * (o + x) / (1 + sc * x[..., :1])


def model_args(family, name, rows, d, c, dtype, seed, device="cpu", nice=False):
    """Arguments of op ``family.name`` on ``rows`` rows of ``d`` features, drawn
    from one seeded generator: hyperboloid or ball points on the stress grid (or,
    with ``nice``, well inside: distances <= 3, ball norms <= 0.9 of the radius),
    tangent vectors, any vectors and a per-row t in [-0.5, 1.5)."""
    from xpu_stone.reference import convert as RC
    from xpu_stone.reference import klein as RK
    from xpu_stone.reference import lorentz as RL

    kinds = {"lorentz": RL, "klein": RK, "convert": RC}[family].ARG_KINDS[name]
    gen = torch.Generator(device).manual_seed(seed)
    out, first = [], None
    for k in kinds:
        if k == "s":
            t = torch.rand(rows, 1, generator=gen, dtype=torch.float64, device=device) * 2 - 0.5
            out.append(t.to(dtype))
            continue
        if k == "p" and family in ("lorentz", "convert"):
            far = (TANGENT_MAX_DIST if "v" in kinds else MAX_DIST)[dtype]
            a = hyperboloid_points((rows, d), c, torch.float64, device, gen, far, nice)
        elif k in ("p", "b") and nice:  # norms uniform in [0.05, 0.9] of the radius
            a = torch.randn(rows, d, generator=gen, dtype=torch.float64, device=device)
            r = 0.05 + 0.85 * torch.rand(rows, 1, generator=gen, dtype=torch.float64, device=device)
            a = a / a.norm(dim=-1, keepdim=True) * r / math.sqrt(c)
        elif k in ("p", "b"):
            a = ball_points((rows, d), c, dtype, device, gen).double()  # margin kept in dtype
        elif k == "v":  # tangent at the first point (at a fresh one when there is none)
            at = (
                first
                if first is not None
                else hyperboloid_points((rows, d), c, device=device, gen=gen, nice=True)
            )
            a = _lorentz_tangent(at, gen, c, MAX_DIST[dtype] / math.sqrt(c) / 2)
        else:  # "w": any vector (for the hyperboloid, of norm <= MAX_DIST / sqrt(c))
            a = tangent_vectors((rows, d), torch.float64, device, gen)
            if family == "lorentz":
                a = a * (
                    MAX_DIST[dtype] / math.sqrt(c) / a.norm(dim=-1, keepdim=True).clamp_min(1e-300)
                ).clamp_max(1)
        first = a if first is None else first
        out.append(a.to(dtype))
    return tuple(out)


MODEL_OPS = tuple(
    (family, name)
    for family, names in (
        ("lorentz", [n for n in xpu_stone.lorentz.__all__ if n not in PAIRWISE]),
        ("klein", ("dist", "geodesic", "project", "lorentz_factor")),
        ("convert", xpu_stone.convert.__all__),
    )
    for name in names
)


MODEL_MODULES = {"lorentz": xpu_stone.lorentz, "klein": xpu_stone.klein, "convert": xpu_stone.convert}


def model_eps(family, name, dtype):
    """The boundary eps of Klein's project for ``dtype`` (0 for every other op)."""
    return BOUNDARY_EPS[DTYPE_NAME[dtype]] if (family, name) == ("klein", "project") else 0.0


def model_call(family, name, args, c, dtype):
    """Op ``family.name`` of xpu_stone on ``args`` (Klein's project with its dtype's eps)."""
    fn = getattr(MODEL_MODULES[family], name)
    if (family, name) == ("klein", "project"):
        return fn(*args, c=c, eps=model_eps(family, name, dtype))
    return fn(*args, c=c)


def load_script(name: str):
    """``scripts/<name>.py`` as a module (the scripts are not a package)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fresh_twin(make, p, grads):
    """A copy of the ManifoldParameter ``p`` stepped through ``grads`` by a fresh
    optimizer ``make([twin])``: what ``p``'s optimizer must reach after a fault."""
    twin = ManifoldParameter(p.detach().clone(), p.manifold)
    twin_opt = make([twin])
    for g in grads:
        twin.grad = g
        twin_opt.step()
    return twin, twin_opt


def assert_steps_reach_twin(opt, p, grads, twin, twin_opt):
    """``opt`` steps ``p`` through ``grads``; parameter and optimizer state must then
    equal the twin's exactly."""
    for g in grads:
        p.grad = g
        opt.step()
    assert torch.equal(p.detach(), twin.detach())
    assert sorted(opt.state[p]) == sorted(twin_opt.state[twin])
    for k, v in opt.state[p].items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(twin_opt.state[twin][k])), k
