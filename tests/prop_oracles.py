r"""Exact oracles and tolerances of the property tests (``tests/test_properties_*.py``).

**Oracles.** Each op is compared, row by row, with a float64 fast path and the
rows where they disagree are settled at 60 digits (mpmath):

* Poincare: the textbook references of :mod:`xpu_stone.reference.poincare`
  (Ganea et al.; written apart from the kernels and from their CPU
  transcription :mod:`xpu_stone.engine.rowwise_cpu`, importing nothing of the
  package), settled by ``tests/mp_reference.py``;
* Lorentz, Klein, conversions: ``tests/mp_reference_models.py`` (its
  ``fast_path`` and ``evaluate``): each op written once from its documented
  formula, independent of the kernels. A hyperboloid point stored in a dtype is
  off the hyperboloid, where expressions equal on it differ; the ops are
  defined by the documented forms (the chord ``y - x``), functions of the stored
  values, and so is the oracle;
* pairwise: the Poincare distance, and for the hyperboloid the documented
  product form :func:`cdist_lorentz` at the stored points.

**Tolerances.** A row passes when

.. math::

    \|out - exact\| \le \mathrm{tol}\,\|exact\| + \mathrm{floor} + \mathrm{slack},

with tol = ``FWD_TOL[dtype]`` of ``tests/helpers.py`` (a multiple for a
composition of ops: one per rounding) and floor four times the dtype's smallest
normal value per element (below it a dtype holds no relative accuracy) plus
``ZERO_NORM_FLOOR`` (the kernels' zero norms). The slack is the part that
conditioning owns, computed only for a row that fails without it:

* an op's own rows: ``COND_FACTOR`` times the largest of three changes of the
  exact result when every input moves by a random normwise perturbation of
  relative size u = 2^-53 (the kernels compute in float64 for every storage
  dtype; c and t move too). A backward-stable evaluation errs by a small
  multiple of this; random directions can miss the worst one by a modest
  factor, which ``COND_FACTOR`` = 32 covers. Near the boundary this is what
  grows (as 1/(1 - c|x|^2), and faster for sums of points); it does not grow
  for a formula that loses digits the problem does not lose.
* a composition ``g(z)``, ``z`` a result of another op (a round trip, left
  cancellation): the exact image of z's error, ``|g_exact(z) - g_exact(z_exact)|``
  evaluated at 60 digits, plus g's own tolerance and slack at z - granted only
  where the op under test's own result passes its oracle rule, so an identity
  still fails for a wrong op when its oracle is switched off. So the identity
  is held to what an acceptable (stored) intermediate allows, no more.

The failure messages print each failing row with its error, tolerance and slack.
"""

from __future__ import annotations

import math
import random

import mp_reference as MP
import mp_reference_models as MPM
import mpmath as mp
import torch
from helpers import FWD_TOL
from strategies import UNIT, c_rows, result_batch

mp.mp.dps = 60
COND_FACTOR = 32.0
U64 = 2.0**-53
# The kernels count a zero norm as sqrt(MIN_SQNORM) = 1e-100 (xpu_stone.constants), so
# results that are exactly zero come out as ~1e-100: absolute differences below this pass.
ZERO_NORM_FLOOR = 1e-90


# ------------------------------------------------------------ the 60-digit oracles
def _dot(a, b):
    return mp.fsum(x * y for x, y in zip(a, b))


def _norm(a):
    return mp.sqrt(_dot(a, a))


def cdist_lorentz(x, y, c):
    r"""The documented pairwise Lorentz distance :math:`\operatorname{arcosh}(-c\langle x,y\rangle_L)/\sqrt c`
    (xpu_stone.pairwise: the GEMM's product form, at the stored points)."""
    z = -c * (_dot(x[1:], y[1:]) - x[0] * y[0])
    return mp.acosh(max(z, 1)) / mp.sqrt(c)


def exact(key, args, c, eps=None):
    """Op ``key = (family, name)`` on one row at 60 digits (args: lists of floats or
    floats, c a float); a list, or an mpf for ops with one output per row. Poincare:
    ``tests/mp_reference.py``; Lorentz, Klein, conversions: ``tests/mp_reference_models.py``
    (the documented forms, functions of the stored values); pairwise: the Poincare
    distance, and :func:`cdist_lorentz`."""
    family, name = key
    if family == "poincare":
        return MP.evaluate(name, args, c, eps)
    if family == "pairwise":
        if name == "poincare":
            return MP.evaluate("dist", args, c)
        return cdist_lorentz(*[[mp.mpf(v) for v in a] for a in args], mp.mpf(c))
    return MPM.evaluate(f"{family}.{name}", args, c, eps)


def perturbation_change(key, args, c, eps=None, seed=0):
    """The largest of three changes of the exact result when every input moves by a
    random normwise perturbation of relative size 2^-53 (c and scalars too): the
    row's conditioning at the size of the kernels' rounding."""
    rng = random.Random(seed)
    base = _as_list(exact(key, args, c, eps))
    worst = mp.mpf(0)
    for _ in range(3):
        moved = []
        for a in args:
            if isinstance(a, list):
                s = U64 * math.sqrt(sum(v * v for v in a) / len(a))
                moved.append([mp.mpf(v) + mp.mpf(s * rng.gauss(0, 1)) for v in a])
            else:
                moved.append(mp.mpf(a) * (1 + mp.mpf(U64 * rng.gauss(0, 1))))
        cc = mp.mpf(c) * (1 + mp.mpf(U64 * rng.gauss(0, 1)))
        try:
            out = _as_list(exact(key, moved, cc, eps))
            worst = max(worst, _norm([p - q for p, q in zip(out, base)]))
        except (TypeError, ZeroDivisionError):  # a move of one rounding leaves the op's domain
            return math.inf  # (a complex result, or 1 / 0 on its edge): no conditioning bound
    return float(worst)


def _as_list(v):
    return v if isinstance(v, list) else [v]


def floats(v):
    return [float(x) for x in _as_list(v)]


# ------------------------------------------------------------ row checks
def rows(t, batch, width=None):
    """``t`` broadcast to ``batch`` (and the feature width) as a (rows, k) float64 CPU tensor."""
    t = t.detach().cpu().double()
    if width is None:  # scalar per row
        return t.expand(batch).reshape(-1, 1)
    return t.expand(*batch, width).reshape(-1, width)


def row_values(values, kinds, batch):
    """Per-row mp-ready arguments for row i: ``out[k][i]``, vectors as lists of floats,
    per-row scalars (kind ``s``: a float or a (*, 1) tensor) as floats."""
    n = math.prod(batch)
    out = []
    for v, k in zip(values, kinds):
        if k == "s" and not isinstance(v, torch.Tensor):
            out.append([float(v)] * n)
        elif k == "s":
            out.append(v.detach().cpu().double().expand(*batch, 1).reshape(n).tolist())
        else:
            out.append(v.detach().cpu().double().expand(*batch, v.shape[-1]).reshape(n, v.shape[-1]).tolist())
    return out


def check_rows(what, out, expected, tol, dtype, exact_fn=None, slack_fn=None, only=None):
    """Row by row (``out``, ``expected``: (rows, k) float64): |out - expected| <= tol |expected|
    + floor, else (with ``exact_fn(i)``, the row's exact value, for a float64 reference)
    the same against the exact value, else with ``slack_fn(i, exact)`` added.
    ``only``: a mask of the rows to check. Returns the failures as strings."""
    out = out.double()
    expected = expected.double()
    n = out.shape[0]
    width = out.shape[1] if out.dim() > 1 else 1
    floor = _floor(dtype, width)
    if n == 0:
        return []
    err = (out - expected).reshape(n, -1).norm(dim=-1)
    allowed = tol * expected.reshape(n, -1).norm(dim=-1) + floor
    bad = ~(err <= allowed)  # NaN fails
    if only is not None:
        bad &= only.reshape(-1)
    failures = []
    for i in torch.nonzero(bad).flatten().tolist():
        o = out.reshape(n, -1)[i]
        ref = expected.reshape(n, -1)[i]
        if exact_fn is not None:
            ref = torch.tensor(floats(exact_fn(i)), dtype=torch.float64)
        e = float((o - ref).norm())
        a = tol * float(ref.norm()) + floor
        if e <= a:
            continue
        slack = slack_fn(i, ref) if slack_fn is not None else 0.0
        if not e <= a + slack:
            failures.append(
                f"{what}: row {i}: |out - exact| = {e:.3g} > tol {a:.3g} + slack {slack:.3g} "
                f"(|exact| = {float(ref.norm()):.3g}; out {_short(o)}, exact {_short(ref)})"
            )
    return failures


def _floor(dtype, width):
    return 4 * torch.finfo(dtype).tiny * math.sqrt(width) + ZERO_NORM_FLOOR


def _short(t):
    vals = t.tolist()
    s = ", ".join(f"{v:.17g}" for v in vals[:4])
    return f"[{s}{', ...' if len(vals) > 4 else ''}]"


class Computed:
    """An op computed on a drawn case, with the row-wise checks of its oracle and identities.

    ``failures`` collects what fails; the test asserts it is empty at the end.
    """

    def __init__(self, family, name, case, args64, out, rc, eps=None):
        """``args64``, ``rc``: the float64 arguments and c broadcast to the batch
        (:func:`strategies.reference_args`)."""
        self.family, self.name, self.case, self.dtype = family, name, case, case.dtype
        self.rc = rc
        self.batch = result_batch(case)
        self.c = c_rows(case, self.batch)
        self.eps = eps
        self.out = out
        self.row_args = row_values(args64, case.kinds, self.batch)
        self.failures: list[str] = []
        self.summation = None  # per row, a float64 sum's rounding bound (check_oracle)

    @property
    def n(self) -> int:
        return math.prod(self.batch)

    def flat(self, t, scalar=None):
        """(rows, k) float64 CPU view of ``t``: a vector (k = its width) or, with ``scalar``
        (default: ``t`` has the batch's dims, as an op's scalar result does), one value per row."""
        t = torch.as_tensor(t)
        scalar = t.dim() == len(self.batch) if scalar is None else scalar
        return rows(t, self.batch, None if scalar else t.shape[-1])

    def listed(self, t):
        """A vector operand or result as a list of rows (lists of floats)."""
        return self.flat(t, scalar=False).tolist()

    def _key(self, name):
        """An op of this family by name, or (family, name) for another's."""
        return name if isinstance(name, tuple) else (self.family, name or self.name)

    def slack(self, name=None, row_args=None, eps=None):
        """COND_FACTOR times the change of op ``name``'s exact result at ``row_args`` under
        rounding-size perturbations (see the module docstring)."""
        key = self._key(name)
        row_args = row_args or self.row_args

        def fn(i, ref):
            return COND_FACTOR * perturbation_change(key, [a[i] for a in row_args], self.c[i], eps, i)

        return fn

    def composition_slack(self, name, row_args, eps=None):
        """|g_exact(z) - exact| plus g's own tolerance and slack at z, for g = op ``name``
        at ``row_args`` (which hold the intermediates z) - provided this op's own result
        on the row is within its tolerance of the exact one; else none, so that an
        identity fails when the op under test is wrong even without its oracle."""
        own = self.slack(name, row_args, eps)
        key = self._key(name)
        tol = FWD_TOL[self.dtype]

        def fn(i, ref):
            if not self.row_is_accurate(i):
                return 0.0
            try:
                g = torch.tensor(
                    floats(exact(key, [a[i] for a in row_args], self.c[i], eps)), dtype=torch.float64
                )
            except (TypeError, ZeroDivisionError):  # z was rounded out of (complex) or onto the
                return math.inf  # edge of (1 / 0) g's domain: it has no image
            return float((g - ref).norm()) + tol * float(g.norm()) + own(i, ref)

        return fn

    def row_is_accurate(self, i) -> bool:
        """Whether this op's result on row i passes its oracle (the check_oracle rule)."""
        out = self.flat(self.out, scalar=self.out.dim() == len(self.batch))[i]
        ex = torch.tensor(floats(exact(self._key(None), [a[i] for a in self.row_args], self.c[i], self.eps)))
        err, allowed = (
            float((out - ex.double()).norm()),
            FWD_TOL[self.dtype] * float(ex.norm()) + _floor(self.dtype, out.numel()),
        )
        extra = 0.0 if self.summation is None else float(self.summation[i])
        return err <= allowed or err <= allowed + self.slack(eps=self.eps)(i, ex) + extra

    def check(self, what, lhs, expected, tol_mult=1, exact_fn=None, slack_fn=None, only=None, scalar=False):
        """``lhs`` (a computed vector result, or with ``scalar`` one value per row,
        broadcasting to the batch) against ``expected``, row by row."""
        self.failures += check_rows(
            f"{self.family}.{self.name}: {what}",
            self.flat(lhs, scalar),
            self.flat(expected, scalar),
            tol_mult * FWD_TOL[self.dtype],
            self.dtype,
            exact_fn,
            slack_fn,
            only,
        )

    def full(self, v):
        """``v`` (one vector, or one per row) broadcast to the result's batch."""
        return v.expand(*self.batch, v.shape[-1])

    def check_geodesic_ends(self, geodesic, c, u, v, args64):
        """The identities ``geodesic(u, v, 0) = u`` and ``geodesic(u, v, 1) = v``
        (``geodesic`` the model's op, ``args64`` the float64 operands)."""
        ul, vl, _ = self.row_args
        for s, end in ((0.0, 0), (1.0, 1)):
            self.check(
                f"geodesic(u, v, {s:g}) = {'uv'[end]}",
                geodesic(u, v, s, c=c),
                self.full(args64[end]),
                slack_fn=self.slack("geodesic", [ul, vl, [s] * self.n]),
            )

    def check_transp_round_trip(self, transp, c, x, y, args64):
        """``transp(y, x, transp(x, y, v)) = v`` for the model's parallel transport."""
        rl = [self.listed(args64[1]), self.listed(args64[0]), self.listed(self.out)]
        self.check(
            "transp(y, x, transp(x, y, v)) = v",
            transp(y, x, self.out, c=c),
            self.full(args64[2]),
            2,
            slack_fn=self.composition_slack("transp", rl),
        )

    def check_oracle(self, ref, only=None, summation=None):
        """The result against the float64 reference ``ref``, settled at 60 digits
        (``only``: a mask of the rows to check, broadcasting to the batch; ``summation``:
        per row, the rounding bound of a float64 sum the op's result is, added to the
        slack: input perturbations alone underrate a long sum's rounding)."""
        assert self.out.shape == ref.shape, (self.out.shape, ref.shape)
        assert self.out.dtype == self.dtype and self.out.device.type == self.case.device
        key = (self.family, self.name)
        self.summation = summation  # row_is_accurate allows it too
        self.check(
            "vs exact",
            self.out,
            ref,
            scalar=self.out.dim() == len(self.batch),
            exact_fn=lambda i: exact(key, [a[i] for a in self.row_args], self.c[i], self.eps),
            slack_fn=self.slack(eps=self.eps)
            if summation is None
            else self.plus(self.slack(eps=self.eps), summation),
            only=only,
        )

    @staticmethod
    def plus(slack_fn, per_row):
        return lambda i, ref: slack_fn(i, ref) + float(per_row[i])

    def check_ball_project(self, fn, x64, c):
        """``self.out = fn(x, c, eps)`` (Poincare or Klein project): inside the margin up to
        rounding to the dtype, idempotent, and the identity on rows well inside it."""
        eps, dtype, what = self.eps, self.dtype, f"{self.family}.{self.name}"
        cc = torch.tensor(self.c, dtype=torch.float64)
        o = self.flat(self.out, scalar=False)
        norm = cc.sqrt() * o.norm(dim=-1)
        for i in torch.nonzero(~(norm <= 1 - eps + 2 * UNIT[dtype] + 4 * U64)).flatten().tolist():
            self.failures.append(
                f"{what}: row {i}: sqrt(c)|out| = {float(norm[i]):.17g} > 1 - eps = {1 - eps}"
            )
        self.check("idempotent", fn(self.out, c=c, eps=eps), self.out, 4 * UNIT[dtype] / FWD_TOL[dtype])
        x = self.flat(x64, scalar=False)
        inside = cc.sqrt() * x.norm(dim=-1) <= (1 - eps) * (1 - 8 * UNIT[dtype])
        for i in torch.nonzero(inside & ~(o == x).all(dim=-1)).flatten().tolist():
            self.failures.append(f"{what}: row {i} lies inside the margin and was changed")

    def check_triangle(self, name, fn, x, y, z, c):
        """d(x, z) <= d(x, y) + d(y, z) with ``fn`` the distance of op ``name`` (x, y, z
        device tensors; rows of their common batch), within the tolerances and slacks
        of the three distances, plus any excess of the exact values."""
        tol = FWD_TOL[self.dtype]
        d = [fn(p, q, c=c) for p, q in ((x, y), (y, z), (x, z))]
        batch = tuple(torch.broadcast_shapes(*(t.shape for t in d)))
        b, s, a = (t.detach().cpu().double().expand(batch).reshape(-1) for t in d)
        x, y, z = (
            v.detach().cpu().double().expand(*batch, v.shape[-1]).reshape(-1, v.shape[-1]).tolist()
            for v in (x, y, z)
        )
        cs = c_rows(self.case, batch)
        excess = a - b - s
        bad = ~(excess <= tol * (a + b + s))
        key = self._key(name)
        for i in torch.nonzero(bad).flatten().tolist():
            pairs = ((x, y), (y, z), (x, z))
            slack = sum(
                COND_FACTOR * perturbation_change(key, [p[i], q[i]], cs[i], None, i) for p, q in pairs
            )
            # where the exact values break it (Lorentz: the documented forms at points a
            # dtype holds only near the hyperboloid are no metric), by that much more
            dxy, dyz, dxz = (exact(key, [p[i], q[i]], cs[i]) for p, q in pairs)
            slack += max(0.0, float(dxz - dxy - dyz))
            if not excess[i] <= tol * (a[i] + b[i] + s[i]) + slack:
                self.failures.append(
                    f"{self.family}.{name}: triangle inequality: row {i}: d(x,z) = {float(a[i]):.17g} > "
                    f"d(x,y) + d(y,z) = {float(b[i] + s[i]):.17g} + {tol * float(a[i] + b[i] + s[i]) + slack:.3g}"
                )
