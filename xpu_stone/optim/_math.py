r"""The torch path of the Riemannian steps: the same per-row formulas, in the same
order, as the fused kernels of ``cuda_src/optim.cu`` (arithmetic in float64,
rounded to the parameter dtype once).

For a row :math:`x` with gradient :math:`g` (weight decay folded in,
:math:`g \leftarrow g + w x`):

* Riemannian gradient: Poincaré :math:`r = \frac{(1-c\|x\|^2)^2}{4} g`, with
  :math:`\|r\|_x^2 = \frac{(1-c\|x\|^2)^2}{4}\|g\|^2`; Lorentz
  :math:`r = Jg + c\langle x,g\rangle x` (:math:`J` flips the time coordinate), with
  :math:`\|r\|_L^2` from the Euclidean dots and the time coordinates.
* SGD: moment :math:`b = \mu b + (1-\tau) r` (:math:`b = r` at the first step),
  step :math:`u = -\eta\,(r + \mu b)` (Nesterov) or :math:`-\eta b`; plain
  :math:`u = -\eta r` without momentum.
* Adam (Bécigneul & Ganea 2019): :math:`m = \beta_1 m + (1-\beta_1) r`, per-row
  :math:`v = \beta_2 v + (1-\beta_2)\|r\|_x^2`, :math:`u = -\eta\,\frac{m/(1-\beta_1^t)}
  {\sqrt{\hat v/(1-\beta_2^t)}+\epsilon}` with :math:`\hat v = v` or its running max (AMSGrad).
* New point :math:`y = \operatorname{proj}(\exp_x u)` (or :math:`\operatorname{proj}(x+u)`),
  moment transported: :math:`b \leftarrow P_{x\to y} b`.

Because :math:`u` and :math:`b` are known elementwise, :math:`y = A x + B u` and
:math:`P_{x\to y} b = T_b b + T_y y + T_x x` with per-row scalars computed from the
dots :math:`\langle x,x\rangle, \langle x,u\rangle, \langle u,u\rangle,
\langle x,b\rangle, \langle u,b\rangle` (:func:`retract_transport`).
"""

from __future__ import annotations

import math

import torch

from ..constants import MIN_DENOM, MIN_SQNORM, TANH_MAX
from ..ops.optim import EUCLIDEAN, LORENTZ, POINCARE, StepConfig

MIN_SQ = MIN_SQNORM["float64"]


def _dot(a, b):
    return (a * b).sum(-1, keepdim=True)


def retract_transport(h: StepConfig, xx, xu, uu, xb, ub, x0, u0, b0):
    """Per-row ``(Ay, By, y0, Tb, Ty, Tx)``: ``y = Ay x + By u`` (Lorentz: time coordinate
    ``y0``), transported moment ``Tb b + Ty y + Tx x``. Mirrors ``xs_retract_transport``."""
    c, sc = h.c, math.sqrt(h.c)
    one = torch.ones_like(xx)
    if h.kind == POINCARE:
        if h.retr:
            ay, by = one, one
        else:
            un = torch.sqrt(torch.clamp_min(uu, MIN_SQ))
            lam = 2.0 / torch.clamp_min(1.0 - c * xx, MIN_DENOM)
            t = torch.tanh(torch.clamp_max(sc * lam * un * 0.5, TANH_MAX)) / (sc * un)
            xw, ww = t * xu, t * t * uu
            den = torch.clamp_min(1.0 + 2.0 * c * xw + c * c * xx * ww, MIN_DENOM)
            ay = (1.0 + 2.0 * c * xw + c * ww) / den
            by = (1.0 - c * xx) * t / den
        yy = torch.clamp_min(ay * ay * xx + 2.0 * ay * by * xu + by * by * uu, 0.0)
        maxn = (1.0 - h.ball_eps) / sc
        p = torch.where(yy > maxn * maxn, maxn / torch.sqrt(torch.clamp_min(yy, MIN_SQ)), one)
        ay, by, yy = ay * p, by * p, yy * p * p
        xy, yb = ay * xx + by * xu, ay * xb + by * ub
        a = -c * c * yb * xx - c * xb + 2.0 * c * c * xy * xb
        bq = c * c * xb * yy - c * yb
        d = torch.clamp_min(1.0 - 2.0 * c * xy + c * c * xx * yy, MIN_DENOM)
        ratio = torch.clamp_min(1.0 - c * yy, MIN_DENOM) / torch.clamp_min(1.0 - c * xx, MIN_DENOM)
        return ay, by, None, ratio, ratio * 2.0 * a / d, -ratio * 2.0 * bq / d
    if h.retr:
        ay, by = one, one
    else:
        th = torch.sqrt(c * torch.clamp_min(uu - 2.0 * u0 * u0, MIN_SQ))
        ay, by = torch.cosh(th), torch.sinh(th) / th
    xxs, xus, uus = xx - x0 * x0, xu - x0 * u0, uu - u0 * u0
    ys2 = torch.clamp_min(ay * ay * xxs + 2.0 * ay * by * xus + by * by * uus, 0.0)
    y0 = torch.sqrt(1.0 / c + ys2)
    yb = -y0 * b0 + ay * (xb - x0 * b0) + by * (ub - u0 * b0)
    xy = -x0 * y0 + ay * xxs + by * xus
    kappa = c * yb / torch.clamp_min(1.0 - c * xy, MIN_DENOM)
    return ay, by, y0, one, kappa, kappa


def manifold_rows(h: StepConfig, x, g, buf, v, vmax):
    """One step of the rows ``x`` (float64, ``(R, D)``) on the Poincaré ball or the
    hyperboloid. Returns ``(y, buf, v, vmax)`` (``None`` for unused state)."""
    lorentz = h.kind == LORENTZ
    g = g + h.wd * x
    xx, gg, xg = _dot(x, x), _dot(g, g), _dot(x, g)
    x0, g0 = x[:, :1], g[:, :1]
    if lorentz:
        ax = h.c * xg
        rg = torch.cat([-g[:, :1], g[:, 1:]], dim=1) + ax * x
        rr = torch.clamp_min(gg - 2.0 * g0 * g0 + 2.0 * ax * xg + ax * ax * (xx - 2.0 * x0 * x0), 0.0)
    else:
        den = torch.clamp_min(1.0 - h.c * xx, MIN_DENOM)
        ag = den * den * 0.25
        rg = ag * g
        rr = ag * gg
    su = -h.lr
    if h.adam:
        b = h.beta1 * buf + (1.0 - h.beta1) * rg
        v = h.beta2 * v + (1.0 - h.beta2) * rr
        vh = v
        if h.amsgrad:
            vmax = torch.maximum(v, vmax)
            vh = vmax
        su = -h.lr / (h.bc1 * (torch.sqrt(vh / h.bc2) + h.eps))
        u = su * b
    elif h.momentum:
        b = rg if h.first_step else h.beta1 * buf + (1.0 - h.beta2) * rg
        u = su * (rg + h.beta1 * b if h.nesterov else b)
    else:
        b = torch.zeros_like(rg)
        u = su * rg
    k = retract_transport(h, xx, _dot(x, u), _dot(u, u), _dot(x, b), _dot(u, b), x0, u[:, :1], b[:, :1])
    ay, by, y0, tb, ty, tx = k
    y = ay * x + by * u
    if lorentz:
        y = torch.cat([y0, y[:, 1:]], dim=1)
    new_buf = tb * b + ty * y + tx * x if (h.adam or h.momentum) else None
    return y, new_buf, v, vmax


def euclidean_rows(h: StepConfig, x, g, buf, v, vmax):
    """The plain elementwise SGD / Adam update (torch.optim semantics, L2 weight decay)."""
    g = g + h.wd * x
    if h.adam:
        buf = h.beta1 * buf + (1.0 - h.beta1) * g
        v = h.beta2 * v + (1.0 - h.beta2) * g * g
        vh = v
        if h.amsgrad:
            vmax = torch.maximum(v, vmax)
            vh = vmax
        return x - h.lr * (buf / h.bc1) / (torch.sqrt(vh / h.bc2) + h.eps), buf, v, vmax
    if h.momentum:
        buf = g if h.first_step else h.beta1 * buf + (1.0 - h.beta2) * g
        g = g + h.beta1 * buf if h.nesterov else buf
    return x - h.lr * g, buf, v, vmax


def torch_step(h: StepConfig, param, grad, buf, v, vmax) -> None:
    """Updates ``param`` and its state in place from a dense or sparse ``grad``.

    Rows are the last dim (Euclidean tensors: any layout, elementwise). Sparse
    gradients update only the rows they name (duplicates summed first)."""
    rows_of = param.shape[-1] if param.dim() > 0 else 1
    p2 = param.view(-1, rows_of)
    per_row = h.kind != EUCLIDEAN
    states = [s.view(-1, s.shape[-1] if s.dim() else 1) if s is not None else None for s in (buf, v, vmax)]
    if grad.is_sparse:
        grad = grad.coalesce()
        idx = grad.indices()[0]
        g = grad.values().reshape(-1, rows_of)
        sel = [s.index_select(0, idx) if s is not None else None for s in states]
        x = p2.index_select(0, idx)
    else:
        idx = None
        g = grad.reshape(-1, rows_of)
        sel, x = states, p2
    f64 = [t.double() if t is not None else None for t in (x, g, *sel)]
    fn = manifold_rows if per_row else euclidean_rows
    outs = fn(h, *f64)
    for target, new in zip((p2, *states), outs, strict=True):
        if target is None or new is None:
            continue
        if idx is None:
            target.copy_(new)
        else:
            target.index_copy_(0, idx, new.to(target.dtype))
