r"""Pairwise hyperbolic distances and k-nearest neighbours, as one GEMM plus one fused epilogue.

``cdist(x, y, c, model)`` returns the matrix of geodesic distances between the rows of
``x`` (``(*, N, D)``) and of ``y`` (``(*, M, D)``), for the Poincaré ball and the hyperboloid
(Lorentz model, time coordinate first):

.. math::

    d_{\mathbb B}(x, y) = \tfrac{1}{\sqrt c}\operatorname{arcosh}\Big(1 +
        \frac{2c\,\|x-y\|^2}{(1-c\|x\|^2)(1-c\|y\|^2)}\Big),\qquad
    d_{\mathbb L}(x, y) = \tfrac{1}{\sqrt c}\operatorname{arcosh}(-c\langle x,y\rangle_L),

with :math:`\|x-y\|^2 = \|x\|^2+\|y\|^2-2\langle x,y\rangle` and
:math:`\langle x,y\rangle_L = -x_0y_0+\sum_{i>0}x_iy_i`. The inner products come from
one GEMM (cuBLAS through torch); one kernel (``cuda_src/pairwise.cu``) turns them into
distances in place, with the row norms computed once. No ``N x M x D`` tensor is
formed, forward or backward: the backward is one kernel over the ``N x M`` gradient
(writing the GEMM operand and the row/column sums) and two GEMMs.

**Accuracy.** The GEMM rounds each inner product to a few units of roundoff
:math:`u` of :math:`\|x\|\|y\|` (:math:`u = 2^{-24}` in fp32, also for fp16/bf16
inputs, whose GEMM accumulates and stores in fp32; :math:`2^{-53}` in fp64). Squared
gaps below :math:`\tau(\|x\|^2+\|y\|^2)` (Lorentz: :math:`\tau\,2c\,x_0y_0`),
:math:`\tau = 4u\sqrt D`, cannot be told from rounding noise and are snapped to
distance 0 (and gradient 0), so ``cdist(x, x)`` has an exact zero diagonal. The
absolute error of a distance is therefore about
:math:`\lambda\sqrt{\tau(\|x\|^2+\|y\|^2)}` for nearby points (:math:`\lambda` the
conformal factor; fp32, D = 128, points of norm 0.5: about 5e-3), and its relative
error about :math:`\tau(\|x\|^2+\|y\|^2)/\|x-y\|^2` for separated ones. Where
nearby pairs matter, use the row-wise :func:`xpu_stone.poincare.dist` on the pairs
(:func:`knn` does so for the distances it returns). With TF32 matmuls enabled in
torch, :math:`u` is :math:`2^{-11}`.

``c`` is a positive float or a one-element tensor (a tensor that requires grad gets
its gradient; it is read on the host, which synchronises once a call).
"""

from __future__ import annotations

import math

from . import config
from ._deps import cupy, is_cupy_array, require_cupy, require_torch, torch
from .constants import MIN_DENOM
from .errors import InvalidArgumentError, InvalidCurvatureError, ShapeMismatchError
from .kernels.launch import get_function, launch_kernel
from .kernels.registry import CXX_TYPE, DTYPES, REGISTRY, KernelList
from .rowwise import TORCH_DTYPES

__all__ = ["cdist", "knn"]

MODELS = {"poincare": 0, "lorentz": 1}
BLOCK = 256  # XS_PAIR_BLOCK in pairwise.cu
WARPS = BLOCK // 32
# Bytes of the GEMM output computed before its epilogue runs. A chunk that fits in
# L2 is still there when the epilogue reads it, so the epilogue adds little memory
# traffic to the GEMM's. None: half the device's L2; 0: one GEMM for the whole matrix.
GEMM_CHUNK_BYTES: int | None = None
KNN_CHUNK_BYTES = 1 << 28  # distance block per knn step (256 MiB)


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


# ------------------------------------------------------------------ validation
def check_model(model) -> int:
    if model not in MODELS:
        raise InvalidArgumentError(f"model must be one of {', '.join(map(repr, MODELS))}, got {model!r}")
    return MODELS[model]


def check_curvature(c, like):
    """(tensor or None, float value) of a curvature given as a positive number or a
    one-element tensor. The value of a tensor is read only where it is needed."""
    if isinstance(c, torch.Tensor if torch is not None else ()):
        if c.numel() != 1:
            raise InvalidCurvatureError(
                f"c must be a positive number or a one-element tensor, got a tensor of shape {tuple(c.shape)}"
            )
        if not c.dtype.is_floating_point:
            raise InvalidCurvatureError(f"c must have a floating dtype, got {c.dtype}")
        if c.device != like.device and not (c.device.type == "cpu"):
            raise InvalidArgumentError(f"c is on {c.device} but the inputs are on {like.device}")
        c = c.reshape(())
        if config.check_tensor_values and not torch.compiler.is_compiling():
            if not (like.is_cuda and torch.cuda.is_current_stream_capturing()):
                v = float(c.detach())
                if not (math.isfinite(v) and v > 0):
                    raise InvalidCurvatureError(f"c must be a finite positive number, got {v}")
        return c, 1.0
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        raise InvalidCurvatureError(
            f"c must be a positive number or a one-element tensor, got {type(c).__name__}"
        )
    v = float(c)
    if not (math.isfinite(v) and v > 0):
        raise InvalidCurvatureError(f"c must be a finite positive number, got {c!r}")
    return None, v


def _check_pair(x, y):
    for name, v in (("x", x), ("y", y)):
        if not isinstance(v, torch.Tensor):
            raise InvalidArgumentError(
                f"{name} must be a torch.Tensor or a cupy.ndarray, got {type(v).__name__}"
            )
        if v.dtype not in TORCH_DTYPES:
            raise InvalidArgumentError(f"{name} must be float16, bfloat16, float32 or float64, got {v.dtype}")
        if v.dim() < 2:
            raise ShapeMismatchError(f"{name} must have shape (*, rows, D), got shape {tuple(v.shape)}")
    if x.dtype != y.dtype:
        raise InvalidArgumentError(f"y has dtype {y.dtype} but x has {x.dtype}; cast one of them")
    if x.device != y.device:
        raise InvalidArgumentError(f"y is on {y.device} but x is on {x.device}")
    if x.shape[-1] != y.shape[-1]:
        raise ShapeMismatchError(
            f"x has {x.shape[-1]} features but y has {y.shape[-1]} (shapes {tuple(x.shape)}, {tuple(y.shape)})"
        )
    if x.shape[-1] == 0:
        raise ShapeMismatchError(f"x and y have an empty feature dim (shape {tuple(x.shape)})")
    try:
        return tuple(torch.broadcast_shapes(x.shape[:-2], y.shape[:-2]))
    except RuntimeError:
        raise ShapeMismatchError(
            f"batch dims of x {tuple(x.shape[:-2])} and y {tuple(y.shape[:-2])} do not broadcast"
        ) from None


def compute_dtype(dtype):
    """Arithmetic dtype of the epilogues: fp64 for fp64, fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def unit_roundoff(dtype) -> float:
    return 2.0**-53 if dtype == torch.float64 else 2.0**-24


def snap_tau(dtype, d: int) -> float:
    """The snapping threshold tau = 4 u sqrt(D) (see the module docstring)."""
    return 4.0 * unit_roundoff(dtype) * math.sqrt(d)


# ------------------------------------------------------- the maths, in torch
def pair_scalars(a, model: int, c, scale):
    """(p0, p1) of the rows of ``a`` (``(B, R, D)``) in the compute dtype:
    Poincare |a|^2 and scale / (1 - c|a|^2) (reduced in fp64); Lorentz a_0, None."""
    e = compute_dtype(a.dtype)
    if model == MODELS["lorentz"]:
        return a[..., 0].to(e), None
    aa = a.double().square().sum(-1)
    return aa.to(e), (scale / (1 - c * aa).clamp_min(MIN_DENOM)).to(e)


def _pair_w(gram, p0, p1, q0, q1, model: int, c, tau):
    if model == MODELS["poincare"]:
        scale = p0[..., :, None] + q0[..., None, :]
        sq = scale - 2 * gram
        w = sq * p1[..., :, None] * q1[..., None, :]
        return torch.where(sq > tau * scale, w, torch.zeros_like(w))
    pq = 2 * c * p0[..., :, None] * q0[..., None, :]
    w = (pq - c * gram) - 1
    return torch.where(w > tau * pq.abs(), w, torch.zeros_like(w))


def gemm_f32(a, b):
    """a @ b with fp32 accumulation and output for fp16/bf16/fp32 operands
    (fp64 for fp64)."""
    e = compute_dtype(a.dtype)
    if a.dtype == e:
        return torch.matmul(a, b)
    return torch.matmul(a.to(e), b.to(e))


def _epilogue_fwd_torch(gram, p0, p1, q0, q1, model, c, tau, out_dtype):
    w = _pair_w(gram, p0, p1, q0, q1, model, c, tau)
    return (torch.log1p(w + torch.sqrt(w * (w + 2))) / math.sqrt(c)).to(out_dtype)


def _epilogue_bwd_torch(dist, grad, p0, p1, q0, q1, model, c, need_c):
    """(A, row sums, column sums, dL/dc) of the backward, as the kernel computes them."""
    e = p0.dtype
    d = dist.to(e)
    g = grad.to(e)
    sc = math.sqrt(c)
    s = (sc * d).clamp_max(700.0 if e == torch.float64 else 80.0)
    em = torch.expm1(s)
    half = 0.5 * em
    sinh_s = half * ((em + 2) / (em + 1))
    pos = d > 0
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
            gy = torch.baddbmm(cols[..., None] * y.to(e), a.transpose(1, 2), x.to(e), beta=2, alpha=-2).to(
                y.dtype
            )
        return gx, gy
    if needs[0]:
        gx = torch.bmm(a, y.to(e))
        gx[..., 0].neg_()
        gx = gx.to(x.dtype)
    if needs[1]:
        gy = torch.bmm(a.transpose(1, 2), x.to(e))
        gy[..., 0].neg_()
        gy = gy.to(y.dtype)
    return gx, gy


# ------------------------------------------------------------------ CPU path
def _cdist_cpu(x, y, c_val, model):
    e = compute_dtype(x.dtype)
    p0, p1 = pair_scalars(x, model, c_val, 1.0)
    q0, q1 = pair_scalars(y, model, c_val, 2 * c_val)
    gram = gemm_f32(x, y.transpose(1, 2))
    tau = snap_tau(e, x.shape[-1])
    return _epilogue_fwd_torch(gram, p0, p1, q0, q1, model, c_val, tau, x.dtype)


def _cdist_bwd_cpu(grad, x, y, out, c_val, model, needs):
    p0, p1 = pair_scalars(x, model, c_val, 1.0)
    q0, q1 = pair_scalars(y, model, c_val, 2 * c_val)
    a, rows, cols, gc = _epilogue_bwd_torch(out, grad, p0, p1, q0, q1, model, c_val, needs[2])
    gx, gy = _assemble_grads(a, rows, cols, x, y, model, needs)
    return gx, gy, gc


# ------------------------------------------------------------------ GPU path
def _stream(device_index: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device_index)


def _fn(kind, model, dtype, vec, dev):
    return get_function("pairwise.cu", kernel_name(kind, model, dtype, vec), dev, KERNELS.defines(dtype))


def _np_e(dtype: str):
    import numpy

    return numpy.float64 if dtype == "float64" else numpy.float32


def _launch_scalars(a_ptr, rows, d, ld, model, dtype, c, scale, p0_ptr, p1_ptr, stream, dev):
    import numpy

    if rows == 0:
        return
    fn = _fn("scalars", model, dtype, 1, dev)
    grid = -(-rows * 32 // BLOCK)
    args = (
        numpy.uint64(a_ptr),
        numpy.int64(rows),
        numpy.int64(d),
        numpy.int64(ld),
        numpy.float64(c),
        numpy.float64(scale),
        numpy.uint64(p0_ptr),
        numpy.uint64(p1_ptr),
    )
    launch_kernel(fn, grid, BLOCK, args, stream, dev, op="pairwise_scalars", shape=(rows, d), dtype=dtype)


def _grid_cols(m: int, vec: int) -> int:
    return -(-m // (BLOCK * vec))


def _launch_fwd(gram_ptr, out_ptr, scal, rows, n, m, model, dtype, vec, c, tau, stream, dev, sm_count):
    if rows == 0 or m == 0:
        return
    fn = _fn("fwd", model, dtype, vec, dev)
    f = _np_e(dtype)
    gx = _grid_cols(m, vec)
    gy = max(1, min(rows, 65535, -(-sm_count * 16 // gx)))
    import numpy

    args = (
        numpy.uint64(gram_ptr),
        numpy.uint64(out_ptr),
        *(numpy.uint64(p) for p in scal),
        numpy.int64(rows),
        numpy.int64(n),
        numpy.int64(m),
        f(c),
        f(tau),
    )
    launch_kernel(
        fn, (gx, gy), BLOCK, args, stream, dev, op="pairwise_cdist.fwd", shape=(rows, m), dtype=dtype
    )


def _sm_count(dev: int) -> int:
    return _props(dev)[0]


_PROPS: dict[int, tuple[int, int]] = {}


def _props(dev: int) -> tuple[int, int]:
    p = _PROPS.get(dev)
    if p is None:
        props = torch.cuda.get_device_properties(dev)
        p = _PROPS[dev] = (props.multi_processor_count, getattr(props, "L2_cache_size", 50 << 20))
    return p


def _poison(t):
    if config.poison_outputs:
        t.fill_(float("nan"))


def _cdist_cuda(x, y, c_val, model):
    """x (B, N, D), y (B, M, D) contiguous CUDA tensors -> (B, N, M)."""
    dtype = TORCH_DTYPES[x.dtype]
    e = compute_dtype(x.dtype)
    bsz, n, d = x.shape
    m = y.shape[1]
    dev = x.device.index
    stream = _stream(dev)
    p0 = torch.empty(bsz * n, dtype=e, device=x.device)
    p1 = torch.empty_like(p0)
    q0 = torch.empty(bsz * m, dtype=e, device=x.device)
    q1 = torch.empty_like(q0)
    _launch_scalars(
        x.data_ptr(), bsz * n, d, d, model, dtype, c_val, 1.0, p0.data_ptr(), p1.data_ptr(), stream, dev
    )
    _launch_scalars(
        y.data_ptr(), bsz * m, d, d, model, dtype, c_val, 2 * c_val, q0.data_ptr(), q1.data_ptr(), stream, dev
    )
    scal = (p0.data_ptr(), p1.data_ptr(), q0.data_ptr(), q1.data_ptr())
    in_place = x.dtype == e
    out = torch.empty((bsz, n, m), dtype=x.dtype, device=x.device)
    _poison(out)
    if bsz * n == 0 or m == 0:
        return out
    vec = _vec(dtype) if m % _vec(dtype) == 0 else 1
    tau = snap_tau(e, d)
    sm, l2 = _props(dev)
    xe, ye = (x, y) if in_place else (x.to(e), y.to(e))
    yt = ye.transpose(1, 2)
    chunk_bytes = l2 // 2 if GEMM_CHUNK_BYTES is None else GEMM_CHUNK_BYTES
    chunk = max(128, chunk_bytes // (m * e.itemsize)) if chunk_bytes > 0 else n
    if bsz > 1 or chunk >= n:  # one GEMM, one epilogue
        gram = out if in_place else torch.empty((bsz, n, m), dtype=e, device=x.device)
        torch.bmm(xe, yt, out=gram)
        _launch_fwd(
            gram.data_ptr(),
            out.data_ptr(),
            scal,
            bsz * n,
            n,
            m,
            model,
            dtype,
            vec,
            c_val,
            tau,
            stream,
            dev,
            sm,
        )
        return out
    # Row blocks small enough to stay in L2 between the GEMM and the epilogue.
    gram = None if in_place else torch.empty((chunk, m), dtype=e, device=x.device)
    step = e.itemsize
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        g = out[0, r0:r1] if in_place else gram[: r1 - r0]
        torch.mm(xe[0, r0:r1], yt[0], out=g)
        rows_scal = (scal[0] + r0 * step, scal[1] + r0 * step, scal[2], scal[3])
        _launch_fwd(
            g.data_ptr(),
            out[0, r0:r1].data_ptr(),
            rows_scal,
            r1 - r0,
            r1 - r0,
            m,
            model,
            dtype,
            vec,
            c_val,
            tau,
            stream,
            dev,
            sm,
        )
    return out


def _cdist_bwd_cuda(grad, x, y, out, c_val, model, needs):
    import numpy

    dtype = TORCH_DTYPES[x.dtype]
    e = compute_dtype(x.dtype)
    bsz, n, d = x.shape
    m = y.shape[1]
    dev = x.device.index
    stream = _stream(dev)
    grad = grad.contiguous()
    p0 = torch.empty(bsz * n, dtype=e, device=x.device)
    p1 = torch.empty_like(p0)
    q0 = torch.empty(bsz * m, dtype=e, device=x.device)
    q1 = torch.empty_like(q0)
    _launch_scalars(
        x.data_ptr(), bsz * n, d, d, model, dtype, c_val, 1.0, p0.data_ptr(), p1.data_ptr(), stream, dev
    )
    _launch_scalars(
        y.data_ptr(), bsz * m, d, d, model, dtype, c_val, 2 * c_val, q0.data_ptr(), q1.data_ptr(), stream, dev
    )
    vec = _vec(dtype) if m % _vec(dtype) == 0 else 1
    gxc = _grid_cols(m, vec)
    sm_count = _sm_count(dev)
    tiles = max(1, min(n, 65535 // max(bsz, 1), -(-sm_count * 16 // (gxc * max(bsz, 1)))))
    tile_rows = -(-n // tiles) if n else 1
    tiles = -(-n // tile_rows) if n else 1
    poincare = model == MODELS["poincare"]
    a = torch.empty((bsz, n, m), dtype=e, device=x.device)
    row_part = torch.empty((bsz * n, gxc * WARPS) if poincare else (0,), dtype=e, device=x.device)
    col_part = torch.empty((tiles, bsz * m) if poincare else (0,), dtype=e, device=x.device)
    c_part = torch.zeros(gxc * bsz * tiles if needs[2] else 0, dtype=e, device=x.device)
    for t in (a, row_part, col_part):
        _poison(t)
    if bsz * n and m:
        f = _np_e(dtype)
        args = (
            numpy.uint64(out.data_ptr()),
            numpy.uint64(grad.data_ptr()),
            numpy.uint64(a.data_ptr()),
            numpy.uint64(row_part.data_ptr()),
            numpy.uint64(col_part.data_ptr()),
            numpy.uint64(c_part.data_ptr()),
            numpy.uint64(p0.data_ptr()),
            numpy.uint64(p1.data_ptr()),
            numpy.uint64(q0.data_ptr()),
            numpy.uint64(q1.data_ptr()),
            numpy.int64(n),
            numpy.int64(m),
            numpy.int64(tiles),
            numpy.int64(tile_rows),
            f(c_val),
            numpy.int32(1 if needs[2] else 0),
        )
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
    rows = row_part.sum(1).reshape(bsz, n) if poincare else None
    cols = col_part.sum(0).reshape(bsz, m) if poincare else None
    if poincare and (bsz * n == 0 or m == 0):
        rows, cols = (
            torch.zeros((bsz, n), dtype=e, device=x.device),
            torch.zeros((bsz, m), dtype=e, device=x.device),
        )
    gc = c_part.sum() if needs[2] else None
    gx, gy = _assemble_grads(a, rows, cols, x, y, model, needs)
    return gx, gy, gc


# ------------------------------------------------------------ torch.library
_LIB = None


def _register():
    global _LIB
    if _LIB is not None or torch is None:
        return
    lib = torch.library.Library("xpu_stone", "FRAGMENT")
    lib.define("pairwise_cdist(Tensor x, Tensor y, Tensor? c, float c_val, int model) -> Tensor")
    lib.define(
        "pairwise_cdist_backward(Tensor grad, Tensor x, Tensor y, Tensor out, Tensor? c, float c_val, "
        "int model, bool[] needs) -> Tensor[]"
    )

    def value(c, c_val):
        return float(c) if c is not None else c_val

    def fwd(impl):
        return lambda x, y, c, c_val, model: impl(x, y, value(c, c_val), model)

    def bwd(impl):
        def run(grad, x, y, out, c, c_val, model, needs):
            gx, gy, gc = impl(grad, x, y, out, value(c, c_val), model, needs)
            empty = x.new_empty(0)
            return [
                gx if gx is not None else empty,
                gy if gy is not None else empty,
                gc.reshape(()).to(c.dtype) if gc is not None and c is not None else empty,
            ]

        return run

    lib.impl("pairwise_cdist", fwd(_cdist_cuda), "CUDA")
    lib.impl("pairwise_cdist", fwd(_cdist_cpu), "CPU")
    lib.impl("pairwise_cdist_backward", bwd(_cdist_bwd_cuda), "CUDA")
    lib.impl("pairwise_cdist_backward", bwd(_cdist_bwd_cpu), "CPU")

    @torch.library.register_fake("xpu_stone::pairwise_cdist", lib=lib)
    def _(x, y, c, c_val, model):
        return x.new_empty((x.shape[0], x.shape[1], y.shape[1]))

    @torch.library.register_fake("xpu_stone::pairwise_cdist_backward", lib=lib)
    def _(grad, x, y, out, c, c_val, model, needs):
        return [
            torch.empty_like(x) if needs[0] else x.new_empty(0),
            torch.empty_like(y) if needs[1] else x.new_empty(0),
            c.new_empty(()) if (needs[2] and c is not None) else x.new_empty(0),
        ]

    def setup_context(ctx, inputs, output):
        x, y, c, c_val, model = inputs
        ctx.save_for_backward(x, y, output, c)
        ctx.consts = (c_val, model)

    def backward(ctx, grad):
        x, y, out, c = ctx.saved_tensors
        c_val, model = ctx.consts
        ng = ctx.needs_input_grad
        needs = [bool(ng[0]), bool(ng[1]), bool(ng[2]) and c is not None]
        gx, gy, gc = torch.ops.xpu_stone.pairwise_cdist_backward(grad, x, y, out, c, c_val, model, needs)
        return (gx if needs[0] else None, gy if needs[1] else None, gc if needs[2] else None, None, None)

    torch.library.register_autograd(
        "xpu_stone::pairwise_cdist", backward, setup_context=setup_context, lib=lib
    )
    _LIB = lib


# ------------------------------------------------------------------ public API
def cdist(x, y, c=1.0, model="poincare"):
    r"""Geodesic distances between every row of ``x`` (``(*, N, D)``) and every row of
    ``y`` (``(*, M, D)``): a ``(*, N, M)`` tensor (batch dims broadcast).

    ``model="poincare"``: points of the ball of radius :math:`1/\sqrt c`;
    ``model="lorentz"``: points of the hyperboloid :math:`\langle x,x\rangle_L=-1/c`,
    time coordinate first. See the module docstring for the formulas and the
    accuracy of nearby pairs. fp16/bf16 inputs are multiplied with fp32
    accumulation and output; the distances are stored in the input dtype.
    """
    mid = check_model(model)
    if is_cupy_array(x):
        return _cdist_cupy(x, y, c, mid)
    require_torch("xpu_stone.pairwise.cdist on non-CuPy inputs")
    batch = _check_pair(x, y)
    c_t, c_val = check_curvature(c, x)
    if c_t is not None and c_t.device != x.device:
        c_t = c_t.to(x.device)
    n, m, d = x.shape[-2], y.shape[-2], x.shape[-1]
    nb = math.prod(batch)
    xb = x.expand(*batch, n, d).reshape(nb, n, d)
    yb = y.expand(*batch, m, d).reshape(nb, m, d)
    _register()
    out = torch.ops.xpu_stone.pairwise_cdist(xb.contiguous(), yb.contiguous(), c_t, c_val, mid)
    return out.reshape(*batch, n, m)


def _pair_dist_rows(x, yk, c, mid):
    """Distances between x (.., N, D) and its selected neighbours yk (.., N, k, D),
    from differences (accurate for nearby points), differentiable."""
    if mid == MODELS["poincare"]:
        from . import poincare

        return poincare.dist(x.unsqueeze(-2), yk, c)
    diff = x.unsqueeze(-2) - yk
    sq = diff[..., 1:].square().sum(-1) - diff[..., 0].square()
    w = (0.5 * c * sq).clamp_min(0)
    return torch.log1p(w + torch.sqrt(w * (w + 2))) / (
        c.sqrt() if isinstance(c, torch.Tensor) else math.sqrt(c)
    )


def knn(x, y, k: int, c=1.0, model="poincare", chunk_rows: int | None = None):
    r"""The ``k`` rows of ``y`` nearest to each row of ``x``: ``(values, indices)``, each
    ``(*, N, k)``, sorted by increasing distance (batch dims broadcast).

    Neighbours are selected on :func:`cdist` blocks of ``chunk_rows`` rows of ``x``
    at a time (default: blocks of at most 256 MiB), so the full ``N x M`` matrix is
    never formed; ``values`` are then recomputed from the differences of the
    selected pairs (the row-wise :func:`xpu_stone.poincare.dist` for the ball), so
    they are accurate for nearby points and differentiable in ``x``, ``y`` and ``c``.
    """
    mid = check_model(model)
    if is_cupy_array(x):
        require_cupy("knn on CuPy arrays")
        return _knn_cupy(x, y, k, c, mid, chunk_rows)
    require_torch("xpu_stone.pairwise.knn on non-CuPy inputs")
    batch = _check_pair(x, y)
    check_curvature(c, x)
    n, m, d = x.shape[-2], y.shape[-2], x.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= m:
        raise InvalidArgumentError(f"k must be an int in [1, {m}] (the number of rows of y), got {k!r}")
    if chunk_rows is None:
        chunk_rows = max(1, KNN_CHUNK_BYTES // (4 * m * max(1, math.prod(batch))))
    elif isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise InvalidArgumentError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    xb = x.expand(*batch, n, d)
    yb = y.expand(*batch, m, d)
    c_sel = float(c) if isinstance(c, torch.Tensor) else c
    parts = []
    with torch.no_grad():
        for r0 in range(0, n, chunk_rows):
            dist = cdist(xb[..., r0 : r0 + chunk_rows, :].detach(), yb.detach(), c_sel, model)
            parts.append(torch.topk(dist, k, dim=-1, largest=False, sorted=True).indices)
    idx = (
        torch.cat(parts, dim=-2) if parts else torch.empty((*batch, 0, k), dtype=torch.long, device=x.device)
    )
    # Indexing (not gather on an expanded y): its backward accumulates into (*, M, D).
    nb = math.prod(batch)
    yf = yb.reshape(nb, m, d)
    bidx = torch.arange(nb, device=x.device).reshape(nb, 1, 1)
    yk = yf[bidx, idx.reshape(nb, n, k)].reshape(*batch, n, k, d)
    values = _pair_dist_rows(xb, yk, c, mid)
    values, order = torch.sort(values, dim=-1)
    return values, torch.gather(idx, -1, order)


# ---------------------------------------------------------------------- CuPy
def _cupy_check(x, y):
    for name, v in (("x", x), ("y", y)):
        if not is_cupy_array(v):
            raise InvalidArgumentError(f"{name} must be a cupy.ndarray like x, got {type(v).__name__}")
        if v.ndim != 2:
            raise ShapeMismatchError(f"{name} must have shape (rows, D) for CuPy inputs, got {v.shape}")
    if x.dtype != y.dtype:
        raise InvalidArgumentError(f"y has dtype {y.dtype} but x has {x.dtype}")
    if str(x.dtype) not in ("float32", "float64", "float16"):
        raise InvalidArgumentError(f"x must be float16, float32 or float64, got {x.dtype}")
    if x.shape[1] != y.shape[1] or x.shape[1] == 0:
        raise ShapeMismatchError(
            f"x and y need the same nonzero number of features, got {x.shape}, {y.shape}"
        )
    if x.device.id != y.device.id:
        raise InvalidArgumentError(f"y is on GPU {y.device.id} but x is on GPU {x.device.id}")


def _cdist_cupy(x, y, c, mid):
    """Forward on 2-D CuPy arrays, on CuPy's current stream (no torch needed)."""
    _cupy_check(x, y)
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not (math.isfinite(c) and c > 0):
        raise InvalidCurvatureError(f"c must be a finite positive number for CuPy inputs, got {c!r}")
    c = float(c)
    dtype = str(x.dtype)
    e = "float64" if dtype == "float64" else "float32"
    n, d = x.shape
    m = y.shape[0]
    with x.device:
        x = cupy.ascontiguousarray(x)
        y = cupy.ascontiguousarray(y)
        dev = x.device.id
        stream = cupy.cuda.get_current_stream().ptr
        p0, p1 = cupy.empty(n, dtype=e), cupy.empty(n, dtype=e)
        q0, q1 = cupy.empty(m, dtype=e), cupy.empty(m, dtype=e)
        _launch_scalars(x.data.ptr, n, d, d, mid, dtype, c, 1.0, p0.data.ptr, p1.data.ptr, stream, dev)
        _launch_scalars(y.data.ptr, m, d, d, mid, dtype, c, 2 * c, q0.data.ptr, q1.data.ptr, stream, dev)
        gram = cupy.matmul(x.astype(e, copy=False), y.astype(e, copy=False).T)
        out = gram if dtype == e else cupy.empty((n, m), dtype=dtype)
        if config.poison_outputs and out is not gram:
            out.fill(float("nan"))
        vec = _vec(dtype) if m % _vec(dtype) == 0 else 1
        sm = cupy.cuda.Device(dev).attributes["MultiProcessorCount"]
        scal = (p0.data.ptr, p1.data.ptr, q0.data.ptr, q1.data.ptr)
        tau = 4.0 * (2.0**-53 if e == "float64" else 2.0**-24) * math.sqrt(d)
        _launch_fwd(gram.data.ptr, out.data.ptr, scal, n, n, m, mid, dtype, vec, c, tau, stream, dev, sm)
    return out


def _knn_cupy(x, y, k, c, mid, chunk_rows):
    _cupy_check(x, y)
    n, m = x.shape[0], y.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= m:
        raise InvalidArgumentError(f"k must be an int in [1, {m}] (the number of rows of y), got {k!r}")
    chunk_rows = chunk_rows or max(1, KNN_CHUNK_BYTES // (4 * m))
    vals, idxs = [], []
    model = "poincare" if mid == 0 else "lorentz"
    with x.device:
        for r0 in range(0, n, chunk_rows):
            dist = cdist(x[r0 : r0 + chunk_rows], y, c, model)
            part = cupy.argpartition(dist, k - 1, axis=1)[:, :k] if k < m else cupy.argsort(dist, axis=1)
            pv = cupy.take_along_axis(dist, part, axis=1)
            order = cupy.argsort(pv, axis=1)
            idxs.append(cupy.take_along_axis(part, order, axis=1))
            vals.append(cupy.take_along_axis(pv, order, axis=1))
        if not vals:
            return cupy.empty((0, k), dtype=x.dtype), cupy.empty((0, k), dtype=cupy.int64)
        return cupy.concatenate(vals), cupy.concatenate(idxs)
