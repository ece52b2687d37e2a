r"""The op half of :mod:`xpu_stone.pairwise` (kernels in ``cuda_src/pairwise.cu``):
kernel names, the epilogue maths in torch (the CPU path), the CUDA launchers
around the GEMMs, the custom op ``xpu_stone::pairwise_cdist`` and the CuPy path.

Forward: per-row scalars of both operands (one kernel each), one GEMM of the
inner products (cuBLAS through torch), and one epilogue kernel that turns them
into distances in place; on a single matrix the GEMM runs in row blocks that
stay in L2 until their epilogue reads them. Backward: one kernel over the
``N x M`` gradient writes the GEMM operand ``A`` and the per-row / per-column
partial sums; two GEMMs finish it. The formulas are in :mod:`xpu_stone.pairwise`.
"""

from __future__ import annotations

import math

import numpy

from .._deps import cupy, torch
from ..constants import MIN_DENOM
from ..engine.checks import BALL, HYPERBOLOID, domain_tol, not_points
from ..engine.custom_op import Impls, define_differentiable, empty_if_none, none_unless
from ..engine.launch import TORCH_DTYPES, allocates, compute_dtype, device_props, poison, ptr, torch_stream
from ..engine.scalars import read_curvature
from ..kernels.launch import get_function, launch_kernel
from ..kernels.registry import CXX_TYPE, DTYPES, REGISTRY, KernelList

__all__ = ["DOMAINS", "GEMM_CHUNK_BYTES", "KERNELS", "MODELS", "cdist_cupy", "cdist_op", "snap_tau"]

MODELS = {"poincare": 0, "lorentz": 1}
DOMAINS = {MODELS["poincare"]: BALL, MODELS["lorentz"]: HYPERBOLOID}  # the points' domain of each model
BLOCK = 256  # XS_PAIR_BLOCK in pairwise.cu
WARPS = BLOCK // 32
EXP_ARG_MAX = {"float64": 700.0, "float32": 80.0}  # s_max of xs_cdist_bwd (pairwise.cu), by its type E
# Bytes of the GEMM output computed before its epilogue runs. A chunk that fits in
# L2 is still there when the epilogue reads it, so the epilogue adds little memory
# traffic to the GEMM's. None: half the device's L2; 0: one GEMM for the whole matrix.
GEMM_CHUNK_BYTES: int | None = None


def _gemm_ctype(dtype: str) -> str:
    return "double" if dtype == "float64" else "float"


def _vec(dtype: str) -> int:
    return 2 if dtype == "float64" else 4


def kernel_name(kind: str, model: int, dtype: str, vec: int = 1) -> str:
    t, e = CXX_TYPE[dtype], _gemm_ctype(dtype)
    if kind == "scalars":
        return f"xs_pair_scalars<{model}, {t}, {e}>"
    if kind == "fwd":
        return f"xs_cdist_fwd<{model}, {t}, {e}, {e}, {vec}>"
    return f"xs_cdist_bwd<{model}, {t}, {e}, {vec}>"


def _all_kernels():
    out = []
    for dtype in DTYPES:
        for model in MODELS.values():
            out.append((dtype, kernel_name("scalars", model, dtype)))
            for vec in (1, _vec(dtype)):
                out.append((dtype, kernel_name("fwd", model, dtype, vec)))
                out.append((dtype, kernel_name("bwd", model, dtype, vec)))
    return tuple(out)


KERNELS = REGISTRY.register(KernelList("pairwise_cdist", "pairwise.cu", _all_kernels()))


def unit_roundoff(dtype) -> float:
    """u of the GEMM's accumulation for ``dtype`` (a torch dtype or a name)."""
    return 2.0**-53 if str(dtype).endswith("float64") else 2.0**-24


_STORAGE_U = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def snap_tau(dtype, d: int, model: int = MODELS["poincare"]) -> float:
    """The snapping threshold tau = 4 u sqrt(D) (see :mod:`xpu_stone.pairwise`), u that
    of the GEMM for the storage ``dtype`` (a torch dtype or a name). Lorentz adds 2 u_s + u_s^2,
    u_s the unit roundoff of the storage dtype: a stored point is on the hyperboloid only
    to that rounding, |-c<x,x>_L - 1| <= (2 u_s + u_s^2) c (x_0^2 + |x_s|^2) < (2 u_s + u_s^2) 2c x_0^2,
    so w(x, x) reaches that and must snap to 0."""
    tau = 4.0 * unit_roundoff(dtype) * math.sqrt(d)
    if model == MODELS["lorentz"]:
        us = _STORAGE_U[str(dtype).removeprefix("torch.")]
        tau += 2.0 * us + us * us
    return tau


# ------------------------------------------------------- the maths, in torch
def pair_scalars(a, model: int, c, scale):
    """(p0, p1) of the rows of ``a`` (``(B, R, D)``) in the compute dtype:
    Poincare |a|^2 and scale / (1 - c|a|^2) (reduced in fp64); Lorentz a_0, None.
    A row that is not a point of the model (:func:`~xpu_stone.engine.checks.not_points`,
    NaN and inf included) gets p1 = NaN (Poincare) or p0 = NaN (Lorentz)."""
    e = compute_dtype(a.dtype)
    a64 = a.double()
    domain = DOMAINS[model]
    bad = not_points(domain, a64, c, domain_tol(domain, TORCH_DTYPES[a.dtype], a.shape[-1]))[..., 0]
    nan = torch.full((), math.nan, dtype=torch.float64, device=a.device)
    if model == MODELS["lorentz"]:
        return torch.where(bad, nan, a64[..., 0]).to(e), None
    aa = a64.square().sum(-1)
    return aa.to(e), torch.where(bad, nan, scale / (1 - c * aa).clamp_min(MIN_DENOM)).to(e)


def _pair_w(gram, p0, p1, q0, q1, model: int, c, tau):
    """w of every pair, snapped to 0 below the rounding noise of G (NaN stays NaN)."""
    if model == MODELS["poincare"]:
        scale = p0[..., :, None] + q0[..., None, :]
        sq = scale - 2 * gram
        w = sq * p1[..., :, None] * q1[..., None, :]
        return torch.where((sq > tau * scale) | torch.isnan(w), w, torch.zeros_like(w))
    pq = 2 * c * p0[..., :, None] * q0[..., None, :]
    w = (pq - c * gram) - 1
    return torch.where((w > tau * pq.abs()) | torch.isnan(w), w, torch.zeros_like(w))


def gemm_f32(a, b):
    """a @ b with fp32 accumulation and output for fp16/bf16/fp32 operands (fp64 for fp64)."""
    e = compute_dtype(a.dtype)
    if a.dtype == e:
        return torch.matmul(a, b)
    return torch.matmul(a.to(e), b.to(e))


def _epilogue_bwd_torch(dist, grad, p0, p1, q0, q1, model, c, need_c):
    """(A, row sums, column sums, dL/dc) of the backward, as the kernel computes them."""
    e = p0.dtype
    d = dist.to(e)
    g = grad.to(e)
    sc = math.sqrt(c)
    s = (sc * d).clamp_max(EXP_ARG_MAX["float64" if e == torch.float64 else "float32"])
    em = torch.expm1(s)
    half = 0.5 * em
    sinh_s = half * ((em + 2) / (em + 1))
    pos = ~(d <= 0)  # positive or NaN (a NaN distance makes every term NaN)
    f = torch.where(pos, 1 / (sc * torch.where(pos, sinh_s, torch.ones_like(sinh_s))), torch.zeros_like(d))
    gc = None
    if model == MODELS["poincare"]:
        rp0, rp1 = p0[..., :, None], p1[..., :, None]
        cq0, cq1 = q0[..., None, :], q1[..., None, :]
        t = torch.where(pos, g * (em / (em + 2)) / sc, torch.zeros_like(d))
        a = g * f * rp1 * cq1
        rows = (a + c * rp1 * t).sum(-1)
        cols = (a + 0.5 * cq1 * t).sum(-2)
        if need_c:
            gc = (
                torch.where(pos, -g * d * 0.5 / c, torch.zeros_like(d))
                + t * (1 / c + rp0 * rp1 + 0.5 * cq0 * cq1 / c)
            ).sum()
        return a, rows, cols, gc
    w = half * (em / (em + 1))
    a = -c * g * f
    if need_c:
        gc = torch.where(pos, -g * d * 0.5 / c + g * f * (1 + w) / c, torch.zeros_like(d)).sum()
    return a, None, None, gc


def _assemble_grads(a, rows, cols, x, y, model, needs):
    """dL/dx, dL/dy from the epilogue's A and sums (two GEMMs), in the input dtypes."""
    e = a.dtype
    gx = gy = None
    if model == MODELS["poincare"]:
        if needs[0]:
            gx = torch.baddbmm(rows[..., None] * x.to(e), a, y.to(e), beta=2, alpha=-2).to(x.dtype)
        if needs[1]:
            gy = torch.baddbmm(cols[..., None] * y.to(e), a.transpose(1, 2), x.to(e), beta=2, alpha=-2)
            gy = gy.to(y.dtype)
        return gx, gy
    if needs[0]:
        gx = torch.bmm(a, y.to(e))
        gx[..., 0].neg_()  # the Minkowski product's time coordinate
        gx = gx.to(x.dtype)
    if needs[1]:
        gy = torch.bmm(a.transpose(1, 2), x.to(e))
        gy[..., 0].neg_()
        gy = gy.to(y.dtype)
    return gx, gy


def cdist_cpu(x, y, c_val, model):
    """The forward in torch: x (B, N, D), y (B, M, D) -> (B, N, M)."""
    p0, p1 = pair_scalars(x, model, c_val, 1.0)
    q0, q1 = pair_scalars(y, model, c_val, 2 * c_val)
    w = _pair_w(
        gemm_f32(x, y.transpose(1, 2)), p0, p1, q0, q1, model, c_val, snap_tau(x.dtype, x.shape[-1], model)
    )
    return (torch.log1p(w + torch.sqrt(w * (w + 2))) / math.sqrt(c_val)).to(x.dtype)


def cdist_bwd_cpu(grad, x, y, out, c_val, model, needs):
    p0, p1 = pair_scalars(x, model, c_val, 1.0)
    q0, q1 = pair_scalars(y, model, c_val, 2 * c_val)
    a, rows, cols, gc = _epilogue_bwd_torch(out, grad, p0, p1, q0, q1, model, c_val, needs[2])
    gx, gy = _assemble_grads(a, rows, cols, x, y, model, needs)
    return gx, gy, gc


# ------------------------------------------------------------------ GPU path
def _fn(kind, model, dtype, vec, dev):
    return get_function(KERNELS.source, kernel_name(kind, model, dtype, vec), dev, KERNELS.defines(dtype))


def _grid_cols(m: int, vec: int) -> int:
    return -(-m // (BLOCK * vec))


def _launch_scalars(a, rows, d, model, dtype, c, scale, p0, p1, stream, dev):
    """Per-row scalars of the rows of ``a`` into ``p0``, ``p1`` (torch tensors or CuPy arrays)."""
    if rows == 0:
        return
    args = (ptr(a), numpy.int64(rows), numpy.int64(d), numpy.int64(d), numpy.float64(c), numpy.float64(scale),
            ptr(p0), ptr(p1))  # fmt: skip
    fn = _fn("scalars", model, dtype, 1, dev)
    launch_kernel(
        fn,
        -(-rows * 32 // BLOCK),
        BLOCK,
        args,
        stream,
        dev,
        op="pairwise_scalars",
        shape=(rows, d),
        dtype=dtype,
    )


def _scalars(x, n, y, m, d, model, dtype, c_val, stream, dev, empty):
    """(p0, p1, q0, q1) of the ``n`` rows of ``x`` and the ``m`` rows of ``y``
    (``empty(k)`` allocates one vector of the compute dtype)."""
    p0, p1, q0, q1 = empty(n), empty(n), empty(m), empty(m)
    _launch_scalars(x, n, d, model, dtype, c_val, 1.0, p0, p1, stream, dev)
    _launch_scalars(y, m, d, model, dtype, c_val, 2 * c_val, q0, q1, stream, dev)
    return p0, p1, q0, q1


def _launch_fwd(gram, out, scal, rows, n, m, model, dtype, c, tau, stream, dev, offset=0):
    """The epilogue over ``rows`` rows of the Gram matrix (in place when ``gram is out``);
    ``offset``: the first row's index into the row scalars."""
    if rows == 0 or m == 0:
        return
    vec = _vec(dtype) if m % _vec(dtype) == 0 else 1
    gx = _grid_cols(m, vec)
    gy = max(1, min(rows, 65535, -(-device_props(dev)[0] * 16 // gx)))
    f = numpy.float64 if dtype == "float64" else numpy.float32
    step = 8 if dtype == "float64" else 4
    p0, p1, q0, q1 = (int(ptr(s)) for s in scal)
    args = (ptr(gram), ptr(out), numpy.uint64(p0 + offset * step), numpy.uint64(p1 + offset * step),
            numpy.uint64(q0), numpy.uint64(q1), numpy.int64(rows), numpy.int64(n), numpy.int64(m), f(c), f(tau))  # fmt: skip
    fn = _fn("fwd", model, dtype, vec, dev)
    launch_kernel(
        fn, (gx, gy), BLOCK, args, stream, dev, op="pairwise_cdist.fwd", shape=(rows, m), dtype=dtype
    )


def _torch_empty(dtype, device):
    return lambda k: torch.empty(k, dtype=dtype, device=device)


def _cuda_call(x, y, c_val, model):
    """What both directions start with on CUDA tensors x (B, N, D), y (B, M, D):
    (dtype name, compute dtype, B, N, M, D, device, stream, row scalars)."""
    dtype = TORCH_DTYPES[x.dtype]
    e = compute_dtype(x.dtype)
    bsz, n, d = x.shape
    m = y.shape[1]
    dev = x.device.index
    stream = torch_stream(dev)
    scal = _scalars(x, bsz * n, y, bsz * m, d, model, dtype, c_val, stream, dev, _torch_empty(e, x.device))
    return dtype, e, bsz, n, m, d, dev, stream, scal


@allocates
def cdist_cuda(x, y, c_val, model):
    """x (B, N, D), y (B, M, D) contiguous CUDA tensors -> (B, N, M)."""
    dtype, e, bsz, n, m, d, dev, stream, scal = _cuda_call(x, y, c_val, model)
    in_place = x.dtype == e
    out = torch.empty((bsz, n, m), dtype=x.dtype, device=x.device)
    poison(out)
    if bsz * n == 0 or m == 0:
        return out
    tau = snap_tau(x.dtype, d, model)
    l2 = device_props(dev)[1]
    xe, ye = (x, y) if in_place else (x.to(e), y.to(e))
    yt = ye.transpose(1, 2)
    chunk_bytes = l2 // 2 if GEMM_CHUNK_BYTES is None else GEMM_CHUNK_BYTES
    chunk = max(128, chunk_bytes // (m * e.itemsize)) if chunk_bytes > 0 else n
    if bsz > 1 or chunk >= n:  # one GEMM, one epilogue
        gram = out if in_place else torch.empty((bsz, n, m), dtype=e, device=x.device)
        torch.bmm(xe, yt, out=gram)
        _launch_fwd(gram, out, scal, bsz * n, n, m, model, dtype, c_val, tau, stream, dev)
        return out
    # Row blocks small enough to stay in L2 between the GEMM and the epilogue.
    gram = None if in_place else torch.empty((chunk, m), dtype=e, device=x.device)
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        g = out[0, r0:r1] if in_place else gram[: r1 - r0]
        torch.mm(xe[0, r0:r1], yt[0], out=g)
        _launch_fwd(g, out[0, r0:r1], scal, r1 - r0, r1 - r0, m, model, dtype, c_val, tau, stream, dev, r0)
    return out


@allocates
def cdist_bwd_cuda(grad, x, y, out, c_val, model, needs):
    dtype, e, bsz, n, m, d, dev, stream, (p0, p1, q0, q1) = _cuda_call(x, y, c_val, model)
    grad = grad.contiguous()
    vec = _vec(dtype) if m % _vec(dtype) == 0 else 1
    gxc = _grid_cols(m, vec)
    tiles = max(1, min(n, 65535 // max(bsz, 1), -(-device_props(dev)[0] * 16 // (gxc * max(bsz, 1)))))
    tile_rows = -(-n // tiles) if n else 1
    tiles = -(-n // tile_rows) if n else 1
    poincare = model == MODELS["poincare"]
    a = torch.empty((bsz, n, m), dtype=e, device=x.device)
    row_part = torch.empty((bsz * n, gxc * WARPS) if poincare else (0,), dtype=e, device=x.device)
    col_part = torch.empty((tiles, bsz * m) if poincare else (0,), dtype=e, device=x.device)
    c_part = torch.zeros(gxc * bsz * tiles if needs[2] else 0, dtype=e, device=x.device)
    poison(a, row_part, col_part)
    if bsz * n and m:
        f = numpy.float64 if dtype == "float64" else numpy.float32
        args = (ptr(out), ptr(grad), ptr(a), ptr(row_part), ptr(col_part), ptr(c_part), ptr(p0), ptr(p1), ptr(q0),
                ptr(q1), numpy.int64(n), numpy.int64(m), numpy.int64(tiles), numpy.int64(tile_rows), f(c_val),
                numpy.int32(1 if needs[2] else 0))  # fmt: skip
        fn = _fn("bwd", model, dtype, vec, dev)
        launch_kernel(
            fn,
            (gxc, bsz * tiles),
            BLOCK,
            args,
            stream,
            dev,
            op="pairwise_cdist.bwd",
            shape=(bsz * n, m),
            dtype=dtype,
        )
    if poincare and bsz * n and m:
        rows, cols = row_part.sum(1).reshape(bsz, n), col_part.sum(0).reshape(bsz, m)
    elif poincare:
        rows, cols = (
            torch.zeros((bsz, n), dtype=e, device=x.device),
            torch.zeros((bsz, m), dtype=e, device=x.device),
        )
    else:
        rows = cols = None
    gc = c_part.sum() if needs[2] else None
    gx, gy = _assemble_grads(a, rows, cols, x, y, model, needs)
    return gx, gy, gc


# ------------------------------------------------------------------ custom op
def _value(c, c_val):
    return read_curvature(c) if c is not None else c_val


def _fwd(impl):
    return lambda x, y, c, c_val, model: impl(x, y, _value(c, c_val), model)


def _bwd(impl):
    def run(grad, x, y, out, c, c_val, model, needs):
        gx, gy, gc = impl(grad, x, y, out, _value(c, c_val), model, needs)
        gc = gc.reshape(()).to(c.dtype) if gc is not None and c is not None else None
        return empty_if_none([gx, gy, gc], x)

    return run


def _fake_fwd(x, y, c, c_val, model):
    return x.new_empty((x.shape[0], x.shape[1], y.shape[1]))


def _fake_bwd(grad, x, y, out, c, c_val, model, needs):
    gc = c.new_empty(()) if (needs[2] and c is not None) else None
    return empty_if_none(
        [torch.empty_like(x) if needs[0] else None, torch.empty_like(y) if needs[1] else None, gc], x
    )


def _save(ctx, inputs, output):
    x, y, c, c_val, model = inputs
    ctx.save_for_backward(x, y, output, c)
    ctx.consts = (c_val, model)


def _backward(backward_op, ctx, grad):
    x, y, out, c = ctx.saved_tensors
    ng = ctx.needs_input_grad
    needs = [bool(ng[0]), bool(ng[1]), bool(ng[2]) and c is not None]
    grads = backward_op(grad, x, y, out, c, *ctx.consts, needs)
    return (*none_unless(grads, needs), None, None)


cdist_op = None
if torch is not None:
    cdist_op = define_differentiable(
        "pairwise_cdist",
        "(Tensor x, Tensor y, Tensor? c, float c_val, int model) -> Tensor",
        Impls(_fake_fwd, cuda=_fwd(cdist_cuda), cpu=_fwd(cdist_cpu)),
        "(Tensor grad, Tensor x, Tensor y, Tensor out, Tensor? c, float c_val, int model, bool[] needs) -> Tensor[]",
        Impls(_fake_bwd, cuda=_bwd(cdist_bwd_cuda), cpu=_bwd(cdist_bwd_cpu)),
        _save,
        _backward,
    )


# ---------------------------------------------------------------------- CuPy
@allocates
def cdist_cupy(x, y, c: float, model: int):
    """The forward on 2-D CuPy arrays (checked by the caller), on CuPy's current stream."""
    dtype = str(x.dtype)
    e = "float64" if dtype == "float64" else "float32"
    n, d = x.shape
    m = y.shape[0]
    with x.device:
        x = cupy.ascontiguousarray(x)
        y = cupy.ascontiguousarray(y)
        dev = x.device.id
        stream = cupy.cuda.get_current_stream().ptr
        scal = _scalars(x, n, y, m, d, model, dtype, c, stream, dev, lambda k: cupy.empty(k, dtype=e))
        gram = cupy.matmul(x.astype(e, copy=False), y.astype(e, copy=False).T)
        out = gram if dtype == e else cupy.empty((n, m), dtype=dtype)
        if out is not gram:
            poison(out)
        _launch_fwd(gram, out, scal, n, n, m, model, dtype, c, snap_tau(dtype, d, model), stream, dev)
    return out
