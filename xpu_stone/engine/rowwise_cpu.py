"""The row-wise kernels' maths transcribed in torch: used for CPU tensors (and so by
CPU CI), on any device by tests. ``cpu_forward`` evaluates terms, dots, the op's
``coeffs`` and the output as ``xs_rowwise_fwd`` does (in fp64 for every dtype: the
kernels combine fp16/bf16 elements in fp32, so for those the two differ by fp32
rounding, see ``cuda_src/common/rowwise.cuh``); ``cpu_backward``
assembles the gradient as ``xs_rowwise_bwd`` does (per-row adjoints of the dots
by autograd of ``coeffs``, then the term sums). Checked by ``gradcheck`` against
the forward and by the independent references of :mod:`xpu_stone.reference`.

The clamped functions (``tanh_c``, ``artanh_c``, ...) are the ones the ops'
``coeffs`` use, mirroring ``cuda_src/common/math.cuh``. Their clamps serve rows
that are in the op's domain (up to rounding): :func:`bad_rows` makes every
coefficient of a row NaN when an input holds a NaN or inf, or when a point input
lies outside its domain beyond the rounding tolerance of its dtype (the rule of
:mod:`xpu_stone.engine.checks`, the same as ``xs_row_bad`` of
``cuda_src/common/rowwise.cuh``): such a row's outputs and gradients are NaN,
never a clamped number.
"""

from __future__ import annotations

from .._deps import torch
from ..constants import ACCUM_DTYPE, ARTANH_MAX, COSH_MAX, MIN_SQNORM, TANH_MAX
from .checks import POINT_INPUTS, batch_shape, domain_tol, not_points
from .launch import TORCH_DTYPES, TORCH_OF
from .rowop import E0, RowOp, term_flags

__all__ = [
    "artanh_c",
    "bad_rows",
    "clamp_min",
    "cosh_c",
    "cpu_backward",
    "cpu_forward",
    "norm_from_sq",
    "sinh_c",
    "tanh_c",
]

FP16_MAX = 65504.0  # fp16 stores saturate at +-this: fminf(fmaxf(v, ..)) of xs_from_e<xs_half>, dtype.cuh


def clamp_min(x, lo):
    return torch.clamp_min(x, lo)


def _limit_key(x) -> str:
    return "float64" if x.dtype == torch.float64 else "float32"


def norm_from_sq(sq):
    """sqrt of a squared norm, zero norms counted as sqrt(MIN_SQNORM)."""
    return torch.sqrt(torch.clamp_min(sq, MIN_SQNORM[_limit_key(sq)]))


def tanh_c(x):
    return torch.tanh(torch.clamp(x, -TANH_MAX, TANH_MAX))


def artanh_c(x):
    hi = ARTANH_MAX[_limit_key(x)]
    return torch.atanh(torch.clamp(x, -hi, hi))


def sinh_c(x):
    hi = COSH_MAX[_limit_key(x)]
    return torch.sinh(torch.clamp(x, -hi, hi))


def cosh_c(x):
    hi = COSH_MAX[_limit_key(x)]
    return torch.cosh(torch.clamp(x, -hi, hi))


def _store(x, dtype: torch.dtype):
    """Rounds to the storage dtype; fp16 saturates at +-65504 as the kernels do."""
    if dtype == torch.float16:
        x = x.clamp(-FP16_MAX, FP16_MAX)
    return x.to(dtype)


def _accum_dtype(dtype: torch.dtype):
    """The row maths' type (ACCUM_DTYPE): fp64 for every storage dtype."""
    return TORCH_OF[ACCUM_DTYPE[TORCH_DTYPES[dtype]]]


def _as_rows_scalar(s, val, like, dt):
    return torch.full((), val, dtype=dt, device=like.device) if s is None else s.to(dt)


def _space_mask(n: int, like):
    """(0, 1, 1, ...): multiplies a row into its space part (element 0 zeroed)."""
    m = torch.ones(n, dtype=like.dtype, device=like.device)
    m[0] = 0
    return m


def _terms(op: RowOp, vecs, dt):
    """The op's terms as logical rows (inputs shifted right by ``in_shift``)."""
    vs = [v.to(dt) for v in vecs]
    if op.in_shift:
        vs = [torch.nn.functional.pad(v, (op.in_shift, 0)) for v in vs]
    n = vs[0].shape[-1]
    out = []
    for term in op.terms:
        a, b = term[:2]
        spatial, add = term_flags(term)
        if a == E0:
            t = torch.zeros(n, dtype=dt, device=vs[0].device)
            t[0] = 1
        elif b < 0:
            t = vs[a]
        else:
            t = vs[a] + vs[b] if add else vs[a] - vs[b]
        out.append(t * _space_mask(n, t) if spatial else t)
    return out


def _self_dot(op: RowOp, j: int):
    """The index of the op's dot |v_j|^2 (input j alone, not spatial, with itself),
    or None (``norm_dot`` of rowwise.cuh)."""
    for d, (p, q) in enumerate(op.dots):
        t = op.terms[p]
        if p == q and t[0] == j and t[1] < 0 and not term_flags(t)[0]:
            return d
    return None


def bad_rows(op: RowOp, vecs, dots, cs, tt):
    """``(..., 1)`` booleans: the rows whose coefficients are NaN (``xs_row_bad`` of
    rowwise.cuh): a c that is not finite and positive, or a t that is not finite; a
    point input (:data:`~xpu_stone.engine.checks.POINT_INPUTS`) that is not a point of
    its domain (:func:`~xpu_stone.engine.checks.not_points`: NaN and inf included);
    another input whose |v|^2 dot is inf or NaN; or dot 0 plus ``0 * v`` of the
    elements of the remaining inputs NaN. ``cs``, ``tt``: c and t in the arithmetic
    dtype, that of ``dots``."""
    dt = dots[0].dtype
    domain, points = POINT_INPUTS.get(op.qualname, (None, ()))
    if points:
        tol = domain_tol(domain, TORCH_DTYPES[vecs[0].dtype], op.width(vecs[0].shape[-1]), TORCH_DTYPES[dt])
    marker = dots[0]
    bad = ~(torch.isfinite(cs) & (cs > 0)) | ~torch.isfinite(tt)
    for j, v in enumerate(vecs):
        d = _self_dot(op, j)
        if j in points:
            bad = bad | not_points(domain, v.to(dt), cs, tol)
        elif d is not None:
            bad = bad | ~torch.isfinite(dots[d])
        else:
            marker = marker + (0 * v.to(dt)).sum(-1, keepdim=True)
    return bad | torch.isnan(marker)


def _nan_where(bad, x):
    return torch.where(bad, torch.full((), float("nan"), dtype=x.dtype, device=x.device), x)


def _late_w(op: RowOp, ts, s):
    """(w, t_b) of an op's late dot (a, b): w = t_a + s t_b, its |w|^2 the late dot."""
    a, b = op.dots[-1]
    return ts[a] + s * ts[b], ts[b]


def cpu_forward(op: RowOp, vecs, c, c_val, t, t_val, eps):
    """The kernel's maths in torch (any device): terms, dots, coeffs (NaN for
    :func:`bad_rows`), output."""
    accum = _accum_dtype(vecs[0].dtype)
    ts = _terms(op, vecs, accum)
    dots = [(ts[p] * ts[q]).sum(-1, keepdim=True) for p, q in op.summed_dots]
    cs, tt = _as_rows_scalar(c, c_val, vecs[0], accum), _as_rows_scalar(t, t_val, vecs[0], accum)
    if op.late:  # the second pass: |t_a + s t_b|^2 from the elements
        w, _ = _late_w(op, ts, op.late(dots, cs))
        dots.append((w * w).sum(-1, keepdim=True))
    bad = bad_rows(op, vecs, dots, cs, tt)
    coef = [_nan_where(bad, k) for k in op.coeffs(dots, cs, tt, eps)]
    if op.scalar_out:
        return _store(coef[0].squeeze(-1), vecs[0].dtype)
    out = sum(coef[k] * ts[op.out[k]] for k in range(len(op.out)))
    return _store(out[..., op.out_shift :], vecs[0].dtype)


def cpu_backward(op: RowOp, grad, vecs, c, c_val, t, t_val, eps, needs):
    """The backward kernel's assembly in torch; same outputs as launch_backward
    (every gradient of a :func:`bad_rows` row NaN)."""
    accum = _accum_dtype(vecs[0].dtype)
    batch = batch_shape(vecs, c, t)
    d = vecs[0].shape[-1]
    ts = _terms(op, vecs, accum)

    def leaf(v):  # one independent value per row, so adjoints stay per row
        return v.expand(*batch, 1).detach().contiguous().requires_grad_()

    if op.out_shift and not op.scalar_out:
        grad = torch.nn.functional.pad(grad, (op.out_shift, 0))
    with torch.enable_grad():
        dots = [leaf((ts[p] * ts[q]).sum(-1, keepdim=True)) for p, q in op.summed_dots]
        cs = leaf(_as_rows_scalar(c, c_val, vecs[0], accum))
        tt = leaf(_as_rows_scalar(t, t_val, vecs[0], accum))
        if op.late:  # the late dot a leaf too, from the elements (as the kernels have it)
            s_late = op.late(dots, cs)
            w_late, t_b = _late_w(op, ts, s_late.detach())
            wb = (w_late * t_b).sum(-1, keepdim=True)  # d|w|^2/ds = 2 <w, t_b>
            dots.append(leaf((w_late * w_late).sum(-1, keepdim=True)))
        coef = op.coeffs(dots, cs, tt, eps)
        if op.scalar_out:
            weights = [grad.to(accum).unsqueeze(-1)]
        else:
            weights = [(grad.to(accum) * ts[k]).sum(-1, keepdim=True) for k in op.out]
        pairs = [(cf.expand(w.shape), w) for cf, w in zip(coef, weights) if cf.requires_grad]
        sbar = torch.autograd.grad(
            [p[0] for p in pairs], [*dots, cs, tt], [p[1] for p in pairs], allow_unused=True
        )
    sbar = [torch.zeros((), dtype=accum) if s is None else s for s in sbar]
    gterm = [0] * len(op.terms)
    if op.late:  # the late dot's adjoint: through s into the other dots and c, through 2w into its terms
        nd = len(op.summed_dots)
        chain = (2 * sbar[nd] * wb).expand(s_late.shape)
        through_s = torch.autograd.grad(s_late, [*dots[:nd], cs], chain, allow_unused=True)
        for j, g in zip([*range(nd), nd + 1], through_s):
            if g is not None:
                sbar[j] = sbar[j] + g
        a, b = op.dots[-1]
        gterm[a] = gterm[a] + 2 * sbar[nd] * w_late
        gterm[b] = gterm[b] + 2 * sbar[nd] * s_late.detach() * w_late
    if not op.scalar_out:
        for k, term in enumerate(op.out):
            gterm[term] = gterm[term] + coef[k].detach() * grad.to(accum)
    for (p, q), s in zip(op.summed_dots, sbar[: len(op.summed_dots)]):
        if p == q:
            gterm[p] = gterm[p] + 2 * s * ts[p]
        else:
            gterm[p] = gterm[p] + s * ts[q]
            gterm[q] = gterm[q] + s * ts[p]
    grads = [0] * len(vecs)
    for term, g in zip(op.terms, gterm):
        a, b = term[:2]
        spatial, add = term_flags(term)
        if a == E0:
            continue  # a constant
        if spatial:
            g = g * _space_mask(ts[0].shape[-1], ts[0])
        grads[a] = grads[a] + g
        if b >= 0:
            grads[b] = grads[b] + g if add else grads[b] - g
    nv = len(vecs)
    bad = bad_rows(op, vecs, [k.detach() for k in dots], cs.detach(), tt.detach())
    out = []
    for j in range(nv):
        if not needs[j]:
            out.append(None)
            continue
        gj = grads[j] if isinstance(grads[j], torch.Tensor) else torch.zeros((), dtype=accum)
        gj = _nan_where(bad, gj.expand(*batch, op.width(d)))[..., op.in_shift :]
        out.append(_store(gj, vecs[0].dtype).contiguous())
    pd = torch.float64  # as the kernels' c and t gradients
    for s, sb, need in ((c, sbar[-2], needs[nv]), (t, sbar[-1], needs[nv + 1])):
        out.append(
            _nan_where(bad, sb.expand(*batch, 1)).to(pd).contiguous() if (need and s is not None) else None
        )
    return out
