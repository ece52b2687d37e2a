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
one GEMM (cuBLAS through torch); one kernel (``cuda_src/pairwise.cu``, launched by :mod:`xpu_stone.ops.pairwise`) turns them into
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
torch, :math:`u` is :math:`2^{-11}`. Squared norms below the smallest normal number
of the GEMM's dtype (points within about 1e-19 of the origin in fp32) underflow, so
a squared gap carries a further absolute error of that size (a distance error of
about its square root).

**Bad rows.** A row of ``x`` or ``y`` with a NaN or inf, or that is not a point of
the model beyond the rounding tolerance of its dtype (outside the ball, off the
hyperboloid: the rule of :mod:`xpu_stone.engine.checks`), has NaN distances to every
row of the other operand (never snapped to 0), and NaN gradients for everything
that depends on them. With ``xpu_stone.config.check_finite`` on, such a row raises
:class:`~xpu_stone.errors.NonFiniteError` / :class:`~xpu_stone.errors.DomainError`
instead.

``c`` is a positive float or a one-element tensor (a tensor that requires grad gets
its gradient; it is read on the host, which synchronises once a call). The size of
the GEMM blocks that stay in L2 for their epilogue is
``xpu_stone.ops.pairwise.GEMM_CHUNK_BYTES`` (None: half the L2; 0: one GEMM).
"""

from __future__ import annotations

import math

from ._deps import cupy, is_cupy_array, require_cupy, require_torch, torch
from .engine import call, check_curvature
from .engine.checks import check_values
from .engine.custom_op import eager
from .engine.launch import TORCH_DTYPES
from .engine.scalars import check_number, read_curvature
from .errors import InvalidArgumentError, ShapeMismatchError
from .ops import lorentz as _lorentz_ops
from .ops import poincare as _poincare_ops
from .ops.pairwise import (
    DOMAINS,
    MODELS,
    cdist_cupy,
    cdist_op,
    snap_tau,  # noqa: F401  (the documented threshold)
)

__all__ = ["cdist", "knn"]

KNN_CHUNK_BYTES = 1 << 28  # distance block per knn step (256 MiB)


def check_model(model) -> int:
    if model not in MODELS:
        raise InvalidArgumentError(f"model must be one of {', '.join(map(repr, MODELS))}, got {model!r}")
    return MODELS[model]


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


def _check_k(k, m: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= m:
        raise InvalidArgumentError(f"k must be an int in [1, {m}] (the number of rows of y), got {k!r}")


def _check_values(op: str, x, y, c, mid: int) -> None:
    """The checked mode (``config.check_finite``): x and y are finite points of the model."""
    check_values(f"pairwise.{op}", [("x", x, DOMAINS[mid]), ("y", y, DOMAINS[mid])], c)


def cdist(x, y, c=1.0, model="poincare"):
    r"""Geodesic distances between every row of ``x`` (``(*, N, D)``) and every row of
    ``y`` (``(*, M, D)``): a ``(*, N, M)`` tensor (batch dims broadcast).

    ``model="poincare"``: points of the ball of radius :math:`1/\sqrt c`;
    ``model="lorentz"``: points of the hyperboloid :math:`\langle x,x\rangle_L=-1/c`,
    time coordinate first. See the module docstring for the formulas and the
    accuracy of nearby pairs. fp16/bf16 inputs are multiplied with fp32
    accumulation and output; the distances are stored in the input dtype. A row
    with a NaN or inf, or that is not a point of the model, has NaN distances
    (see the module docstring).
    """
    mid = check_model(model)
    if is_cupy_array(x):
        _cupy_check(x, y)
        c = check_number(c, "c")  # CuPy inputs take a number only
        _check_values("cdist", x, y, c, mid)
        return cdist_cupy(x, y, c, mid)
    require_torch("xpu_stone.pairwise.cdist on non-CuPy inputs")
    batch = _check_pair(x, y)
    c_t, c_val = check_curvature(c, x)
    _check_values("cdist", x, y, c_val if c_t is None else c_t, mid)
    return _cdist(x, y, c_t, c_val, mid, batch)


def _cdist(x, y, c_t, c_val, mid, batch):
    """cdist of checked torch inputs."""
    n, m, d = x.shape[-2], y.shape[-2], x.shape[-1]
    nb = math.prod(batch)
    xb = x.expand(*batch, n, d).reshape(nb, n, d)
    yb = y.expand(*batch, m, d).reshape(nb, m, d)
    out = eager("pairwise_cdist", cdist_op, xb)(xb.contiguous(), yb.contiguous(), c_t, c_val, mid)
    return out.reshape(*batch, n, m)


def _pair_dist_rows(x, yk, c, mid):
    """Distances between x (.., N, D) and its selected neighbours yk (.., N, k, D):
    the row-wise distance of the model (from differences: accurate for nearby
    points; NaN for bad rows), differentiable."""
    op = _poincare_ops.DIST if mid == MODELS["poincare"] else _lorentz_ops.DIST
    return call(op, (x.unsqueeze(-2), yk), c)


def knn(x, y, k: int, c=1.0, model="poincare", chunk_rows: int | None = None):
    r"""The ``k`` rows of ``y`` nearest to each row of ``x``: ``(values, indices)``, each
    ``(*, N, k)``, sorted by increasing distance (batch dims broadcast).

    Neighbours are selected on :func:`cdist` blocks of ``chunk_rows`` rows of ``x``
    at a time (default: blocks of at most 256 MiB), so the full ``N x M`` matrix is
    never formed; ``values`` are then recomputed from the differences of the
    selected pairs (the row-wise distance of the model), so they are accurate for
    nearby points and differentiable in ``x``, ``y`` and ``c``.

    **NaN distances rank last.** A row of ``y`` with a NaN or inf, or that is not a
    point of the model, is at distance NaN from every query (see the module
    docstring): it is ranked after every finite distance (after ``+inf`` too) and
    is returned only when a query has fewer than ``k`` other neighbours, with value
    NaN. A bad row of ``x`` has NaN for all its ``k`` values (and meaningless
    indices). Nothing raises, unless ``xpu_stone.config.check_finite`` is on:
    then such rows raise :class:`~xpu_stone.errors.NonFiniteError` /
    :class:`~xpu_stone.errors.DomainError` before anything runs.
    """
    mid = check_model(model)
    if is_cupy_array(x):
        require_cupy("knn on CuPy arrays")
        return _knn_cupy(x, y, k, c, mid, chunk_rows)
    require_torch("xpu_stone.pairwise.knn on non-CuPy inputs")
    batch = _check_pair(x, y)
    c_t, c_val = check_curvature(c, x)
    n, m, d = x.shape[-2], y.shape[-2], x.shape[-1]
    _check_k(k, m)
    _check_values("knn", x, y, c_val if c_t is None else c_t, mid)
    if chunk_rows is None:
        chunk_rows = max(1, KNN_CHUNK_BYTES // (4 * m * max(1, math.prod(batch))))
    elif isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise InvalidArgumentError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    xb = x.expand(*batch, n, d)
    yb = y.expand(*batch, m, d)
    c_sel = read_curvature(c_t) if c_t is not None else c_val
    parts = []
    with torch.no_grad():
        for r0 in range(0, n, chunk_rows):
            dist = _cdist(xb[..., r0 : r0 + chunk_rows, :].detach(), yb.detach(), None, c_sel, mid, batch)
            # NaN ranks after every number in topk: bad rows of y come last
            parts.append(torch.topk(dist, k, dim=-1, largest=False, sorted=True).indices)
            del dist  # one tile at a time: not held while the next one, or the neighbours, are made
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


def _knn_cupy(x, y, k, c, mid, chunk_rows):
    _cupy_check(x, y)
    n, m = x.shape[0], y.shape[0]
    _check_k(k, m)
    c = check_number(c, "c")
    _check_values("knn", x, y, c, mid)
    chunk_rows = chunk_rows or max(1, KNN_CHUNK_BYTES // (4 * m))
    vals, idxs = [], []
    with x.device:
        for r0 in range(0, n, chunk_rows):
            dist = cdist_cupy(x[r0 : r0 + chunk_rows], y, c, mid)  # NaN sorts last in CuPy too
            part = cupy.argpartition(dist, k - 1, axis=1)[:, :k] if k < m else cupy.argsort(dist, axis=1)
            pv = cupy.take_along_axis(dist, part, axis=1)
            order = cupy.argsort(pv, axis=1)
            idxs.append(cupy.take_along_axis(part, order, axis=1))
            vals.append(cupy.take_along_axis(pv, order, axis=1))
        if not vals:
            return cupy.empty((0, k), dtype=x.dtype), cupy.empty((0, k), dtype=cupy.int64)
        return cupy.concatenate(vals), cupy.concatenate(idxs)
