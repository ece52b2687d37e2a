r"""geoopt drop-in: :func:`patch_geoopt` routes geoopt's hyperbolic math to xpu_stone.

    import geoopt, xpu_stone.compat
    xpu_stone.compat.patch_geoopt()      # existing geoopt code now runs xpu_stone's kernels
    ...
    xpu_stone.compat.unpatch_geoopt()    # geoopt as it was

The methods of ``geoopt.Stereographic`` (so ``PoincareBall``, ``Scaled`` versions, ...)
listed in :data:`POINCARE_METHODS` and those of ``geoopt.Lorentz`` listed in
:data:`LORENTZ_METHODS` are wrapped. **A call is exact or declines**: it is served by
xpu_stone only when xpu_stone computes geoopt's own function of those inputs, up to
rounding; otherwise geoopt's code runs (a *fallback*, counted with its reason by
:func:`stats`). A call is served when

* the curvature ``k`` is a float32/float64 tensor with one value (0-d, or shape ``(1,)``
  with inputs of 2 or more dims), not requiring grad while grad mode is on, on the
  inputs' device (or a 0-d CPU tensor), and read on the host at every call (no cache):

  - ball: :math:`k \le -10^{-5}`, ``c = -k`` (geoopt takes :math:`|k| \le 10^{-8}` as
    flat and uses Taylor series there, and :math:`\sqrt{|k| + 10^{-15}}` elsewhere;
    :math:`k > 0` is the sphere);
  - hyperboloid :math:`\langle x,x\rangle_L = -k`: :math:`k > 0`, ``c = 1/k``;
* the tensors are plain tensors (or geoopt's ``ManifoldTensor``) of one dtype, float32
  or float64, on one enabled device, with features on the last dim (``dim`` is -1 or
  the last dim of every tensor), the same number of them (2 or more) and broadcastable
  batch dims with one row or more; no functorch transform, forward-mode AD,
  ``torch.compile`` tracing or CUDA-graph capture is active; the options
  (``keepdim``, ``project``, ``norm_tan``) are booleans;
* every input is finite and every input that xpu_stone takes as a point is one within
  its rounding tolerance (:mod:`xpu_stone.engine.checks`: xpu_stone gives NaN for
  other rows, geoopt numbers). This costs one pass over the inputs and one host
  synchronisation a call (which also reads ``k``).

Where geoopt's maths differs from the kernels', the patch follows geoopt:

* the curvature values geoopt's formulas take, rounded as geoopt rounds them in
  ``k``'s dtype: the ball's square roots of :math:`|k| + 10^{-15}` (``dist0``,
  ``expmap0``, ``logmap0``, the projections; ``dist``, ``expmap``, ``logmap`` take
  ``k`` in their Mobius sums and so one ``c = -k``), the hyperboloid's ``1.0 / k``;
* artanh's argument clamped at :math:`1 - 10^{-7}` (rounded to the data's dtype):
  ``dist`` and ``dist0`` are capped at :math:`2\operatorname{artanh}(1-10^{-7})/\sqrt c`;
  in ``logmap0`` / ``logmap`` the rows where geoopt clamps get geoopt's value,
  :math:`\operatorname{artanh}(1-10^{-7})/\sqrt c` / :math:`2\operatorname{artanh}(1-10^{-7})
  /(\sqrt c\,\lambda_x)` along :math:`y` / :math:`(-x)\oplus y`, and its gradient
  (checked only when the inputs' norms allow a clamp: the triangle inequality bounds
  :math:`\sqrt c\|(-x)\oplus y\|`);
* Lorentz ``dist`` and ``logmap`` are geoopt's formulas (its ``arcosh`` of the
  Minkowski product, its norm clamp at :math:`10^{-4}`) built from xpu_stone's
  Minkowski product, tangent projection and norm kernels (``logmap`` in float64 for
  float32 inputs, see :func:`_lorentz_logmap`); ``expmap0(u)`` is ``expmap(o, u)`` at
  the origin ``o``, which is what geoopt's formula is for any ``u``;
* Lorentz ``expmap`` / ``expmap0``: geoopt counts Minkowski norms of ``u`` (after its
  tangent projection, with ``norm_tan``) below :math:`10^{-4}` as :math:`10^{-4}`, the
  kernel does not: calls with such a row decline (the same pass checks it), as do
  tangent vectors long enough for geoopt's float32/float64 ``cosh`` to overflow.

Lorentz ``dist0``, ``logmap0`` and ``transp`` stay geoopt's: its formulas (arcosh of
:math:`x_0`, the transport through two log maps) differ from the kernels' off the
hyperboloid and between close points, and they have no kernel of their own to reuse.

Gradients: first order by xpu_stone's backward kernels; a backward pass that builds a
graph (``create_graph=True``, for second derivatives) recomputes the call with
geoopt's code (with the patch off for its inner calls), and so do the call's later
backward passes, so that its derivatives of every order are those of one function.

Results agree with geoopt's to its own rounding: ``tests/test_compat_differential.py``
runs random programs both ways and states the tolerances.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import threading
from collections import Counter

import torch
import torch.autograd.forward_ad as _fwad

from . import lorentz, poincare
from .engine.checks import BALL, HYPERBOLOID, domain_tol, not_points
from .engine.launch import TORCH_DTYPES
from .engine.scalars import tracing
from .errors import UnsupportedOperationError, XpuStoneError

POINCARE_METHODS = ("dist", "dist0", "expmap", "expmap0", "logmap", "logmap0", "mobius_add", "projx", "transp",
                    "lambda_x")  # fmt: skip
LORENTZ_METHODS = ("dist", "expmap", "expmap0", "logmap", "projx", "proju")
# geoopt's boundary margins of PoincareBall.projx (geoopt.manifolds.stereographic.math)
GEOOPT_BALL_EPS = {torch.float32: 4e-3, torch.float64: 1e-5}
# geoopt's artanh clamps its argument at 1 - 1e-7, in the data's dtype
GEOOPT_ARTANH_MAX = {dt: float(torch.tensor(1 - 1e-7, dtype=dt)) for dt in GEOOPT_BALL_EPS}
GEOOPT_LORENTZ_MIN_NORM = 1e-4  # geoopt's _norm: sqrt(clamp_min(<u,u>_L, 1e-8))
MIN_BALL_C = 1e-5  # clear of geoopt's flat case (Taylor series for |k| <= 1e-8)
# logmap/logmap0 apply geoopt's artanh clamp unless the inputs' norms keep
# artanh(sqrt(c)|(-x)+y|) this far below artanh(1 - 1e-7): a factor e^-1 in 1 - z,
# more than the float32 rounding of geoopt's own z.
ARTANH_SLACK = 0.5

_originals: dict[tuple[type, str], object] = {}
_state = {"devices": ("cuda",)}
_geoopt_only = threading.local()  # .depth > 0 while a backward recomputes with geoopt's code
_served: Counter = Counter()  # "Class.method" -> calls served by xpu_stone
_declined: Counter = Counter()  # ("Class.method", reason) -> calls passed to geoopt


class _Declined(Exception):
    """A call the patch cannot serve exactly; the message is the reason counted."""


# ------------------------------------------------------------------ served maths
class _Curvature:
    r"""One call's curvature: geoopt's ``k`` (tensor and value) and the values geoopt's
    formulas take from it, computed as geoopt does, in ``k``'s dtype:

    * ``c``: :math:`-k` on the ball (the Mobius sums, :math:`\lambda_x`), :math:`1/k`
      on the hyperboloid;
    * ``c_root``: the ball's :math:`|k| + 10^{-15}`, whose square root geoopt's
      tan_k / artan_k and projection take;
    * ``c_recip``: the hyperboloid's ``1.0 / k`` of geoopt's logmap;

    and the data dtype's largest artanh value of geoopt."""

    def __init__(self, k, kv: float, family: str, dtype):
        self.k, self.kv = k, kv
        kt = torch.tensor(kv, dtype=k.dtype)  # on the host: no synchronisation
        self.c = -kv if family == "ball" else 1 / kv
        self.c_root = float(kt.abs() + 1e-15)
        self.c_recip = float(1.0 / kt)
        self.artanh_max = math.atanh(GEOOPT_ARTANH_MAX[dtype])
        self.may_saturate = False  # set for logmap / logmap0 by _may_saturate

    def dist_cap(self):
        """geoopt's largest distance, ``2 artanh(1 - 1e-7) / sqrt(|k| + 1e-15)``."""
        return 2 * self.artanh_max / math.sqrt(self.c_root)


def _saturated(cv, w, out, length):
    """``out`` with the rows where geoopt's artanh clamps ``sqrt(|k| + 1e-15) |w|`` given
    geoopt's result there, ``length`` along ``w``: the clamp also cuts the gradient of
    ``|w|``, which the kernels' unclamped result would carry (huge there)."""
    n = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
    clamped = n * math.sqrt(cv.c_root) > GEOOPT_ARTANH_MAX[w.dtype]
    return torch.where(clamped, length * w / n.clamp_min(torch.finfo(w.dtype).tiny), out)


def _ball_proj(cv, x, project):
    return poincare.project(x, cv.c_root, eps=GEOOPT_BALL_EPS[x.dtype]) if project else x


def _ball_dist(cv, x, y, keepdim):
    return torch.clamp_max(poincare.dist(x, y, cv.c, keepdim), cv.dist_cap())


def _ball_dist0(cv, x, keepdim):
    return torch.clamp_max(poincare.dist0(x, cv.c_root, keepdim), cv.dist_cap())


def _ball_logmap0(cv, x):
    out = poincare.logmap0(x, cv.c_root)
    return _saturated(cv, x, out, cv.dist_cap() / 2) if cv.may_saturate else out


def _ball_logmap(cv, x, y):
    out = poincare.logmap(x, y, cv.c)
    if not cv.may_saturate:
        return out
    w = poincare.mobius_add(-x, y, cv.c)
    return _saturated(cv, w, out, cv.dist_cap() / poincare.lambda_x(x, cv.c, keepdim=True))


def _ball_expmap(cv, x, u, project):
    return _ball_proj(cv, poincare.expmap(x, u, cv.c), project)


def _ball_expmap0(cv, u, project):
    return _ball_proj(cv, poincare.expmap0(u, cv.c_root), project)


def _ball_mobius_add(cv, x, y, project):
    return _ball_proj(cv, poincare.mobius_add(x, y, cv.c), project)


def _ball_projx(cv, x):
    return poincare.project(x, cv.c_root, eps=GEOOPT_BALL_EPS[x.dtype])


def _ball_transp(cv, x, y, v):
    return poincare.transp(x, y, v, cv.c)


def _ball_lambda_x(cv, x, keepdim):
    return poincare.lambda_x(x, cv.c, keepdim)


def _geoopt_lorentz_dist(cv, inner):
    """geoopt's ``sqrt(k) * arcosh(-<x,y>_L / k)`` (its own arcosh, clamps and dtypes)."""
    return torch.sqrt(cv.k) * _state["arcosh"](-inner / cv.k)


def _lorentz_dist(cv, x, y, keepdim):
    return _geoopt_lorentz_dist(cv, lorentz.inner(x, y, keepdim=keepdim))


def _lorentz_logmap(cv, x, y):
    """geoopt's ``dist(x, y) * w / max(|w|_L, 1e-4)``, ``w = y + <x,y>_L x / k``; in
    float64 for float32 inputs: far from the origin ``|w|_L^2 = |w_s|^2 - w_0^2`` of a
    ``w`` rounded to float32 cancels to nothing, even to a negative value, which the
    clamp turns into a result 1e10 times too long."""
    dtype = x.dtype
    x, y = x.to(torch.float64), y.to(torch.float64)
    dist = _geoopt_lorentz_dist(cv, lorentz.inner(x, y, keepdim=True))
    w = lorentz.proj_tan(x, y, cv.c_recip)
    return (dist * w / torch.clamp_min(lorentz.norm(w, keepdim=True), GEOOPT_LORENTZ_MIN_NORM)).to(dtype)


def _lorentz_project(cv, out, project):
    return lorentz.project(out, cv.c) if project is True else out  # geoopt tests `is True`


def _lorentz_expmap(cv, x, u, norm_tan, project):
    if norm_tan is True:
        u = lorentz.proj_tan(x, u, cv.c)
    return _lorentz_project(cv, lorentz.expmap(x, u, cv.c), project)


def _lorentz_expmap0(cv, u, project):
    origin = torch.zeros(u.shape[-1], dtype=u.dtype, device=u.device)
    origin[0] = math.sqrt(cv.kv)
    return _lorentz_project(cv, lorentz.expmap(origin, u, cv.c), project)


def _lorentz_projx(cv, x):
    return lorentz.project(x, cv.c)


def _lorentz_proju(cv, x, v):
    return lorentz.proj_tan(x, v, cv.c)


# method -> (indices of the tensors xpu_stone takes as points, the served maths)
_BALL_SPECS = {
    "dist": ((0, 1), _ball_dist),
    "dist0": ((0,), _ball_dist0),
    "expmap": ((0,), _ball_expmap),
    "expmap0": ((), _ball_expmap0),
    "logmap": ((0, 1), _ball_logmap),
    "logmap0": ((0,), _ball_logmap0),
    "mobius_add": ((0, 1), _ball_mobius_add),
    "projx": ((), _ball_projx),
    "transp": ((0, 1), _ball_transp),
    "lambda_x": ((0,), _ball_lambda_x),
}
_LORENTZ_SPECS = {
    "dist": ((), _lorentz_dist),
    "expmap": ((0,), _lorentz_expmap),
    "expmap0": ((), _lorentz_expmap0),
    "logmap": ((0,), _lorentz_logmap),
    "projx": ((), _lorentz_projx),
    "proju": ((0,), _lorentz_proju),
}


# ------------------------------------------------------------------ eligibility
def _curvature_tensor(k, tensors):
    """Checks geoopt's ``k`` (type, grad, shape, dtype, device) against the call."""
    if not isinstance(k, torch.Tensor):
        raise _Declined("curvature not a tensor")
    if k.requires_grad and torch.is_grad_enabled():
        raise _Declined("learnable curvature")
    if k.numel() != 1 or k.dtype not in GEOOPT_BALL_EPS:
        raise _Declined("curvature shape or dtype")
    lowest = min(t.dim() for t in tensors)
    if k.dim() > 0 and (k.dim() > 1 or lowest < 2):
        raise _Declined("curvature shape or dtype")  # geoopt's results would take k's shape
    if (k.dim() > 0 or lowest < 2) and torch.promote_types(k.dtype, tensors[0].dtype) != tensors[0].dtype:
        # k of shape (1,), or 0-d k against 0-d row reductions of 1-d inputs: geoopt's
        # results would take k's dtype
        raise _Declined("curvature shape or dtype")
    if k.device != tensors[0].device and not (k.device.type == "cpu" and k.dim() == 0):
        raise _Declined("curvature device")
    return k.detach()


def _check_tensors(tensors, dim):
    """Checks the call's tensors: device, dtype, kind, autograd mode, dim, shapes. Two
    features at least: the hyperboloid needs a space coordinate, and on a 1-d ball
    geoopt's gradients cancel exactly where the kernels' cancel to rounding."""
    first = tensors[0]
    if first.device.type not in _state["devices"]:
        raise _Declined("device not enabled")
    if first.dtype not in GEOOPT_BALL_EPS:
        raise _Declined("dtype")
    if torch.overrides.has_torch_function(tensors):
        raise _Declined("tensor subclass")
    if torch._C._are_functorch_transforms_active() or tracing(first):
        raise _Declined("transform, tracing or capture")
    if any(_fwad.unpack_dual(t).tangent is not None for t in tensors):
        raise _Declined("forward-mode AD")
    if any(t.device != first.device or t.dtype != first.dtype for t in tensors):
        raise _Declined("mixed devices or dtypes")
    if (
        isinstance(dim, bool)
        or not isinstance(dim, int)
        or any(dim not in (-1, t.dim() - 1) for t in tensors)
    ):
        raise _Declined("dim not the last")
    d = first.shape[-1] if first.dim() else 0
    if d < 2 or any(t.dim() == 0 or t.shape[-1] != d for t in tensors):
        raise _Declined("feature dims")
    if any(t.numel() == 0 for t in tensors):  # geoopt's gradient of a broadcast empty batch is NaN
        raise _Declined("no rows")
    try:
        torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    except RuntimeError:
        raise _Declined("batch dims do not broadcast") from None


def _minkowski(a, b):
    """Rows' Minkowski products ``<a, b>_L`` (no keepdim)."""
    ab = a * b
    return ab[..., 1:].sum(-1) - ab[..., 0]


def _tangent_sq(tensors, projected: bool, c):
    """Rows' squared Minkowski norms of the tangent vector whose norm geoopt's expmap
    takes: ``u`` (tensors ``(u,)`` or ``(x, u)``), or with ``projected`` its projection
    ``u + c<x,u>_L x``, of squared norm ``uu + c xu^2 (2 + c xx)``."""
    u = tensors[-1].detach().to(torch.float64)
    uu = _minkowski(u, u)
    if projected:
        x = tensors[0].detach().to(torch.float64)
        xu = _minkowski(x, u)
        uu = uu + c * xu * xu * (2 + c * _minkowski(x, x))
    return uu


def _screen(k, family: str, tensors, points, tangent):
    """One pass over the inputs and one host read: ``(k value, [max c|x|^2 of each
    point input])``. Declines rows that are not finite or so long (beyond the fourth
    root of the dtype's largest value) that geoopt's products of three of them might
    overflow, point rows outside xpu_stone's domain and, for the Lorentz exponential
    maps (``tangent``: None or whether ``u`` is projected first), tangent vectors
    shorter than geoopt's norm clamp or long enough for its cosh to overflow so."""
    if k.device.type == "cpu":
        kv = float(k)
        _check_value(family, kv)
        values, c = [], (-kv if family == "ball" else 1 / kv)
    else:
        k64 = k.to(torch.float64).reshape(())
        values, c = [k64], (-k64 if family == "ball" else 1 / k64)
    domain = BALL if family == "ball" else HYPERBOLOID
    for i, t in enumerate(tensors):
        sq = torch.linalg.vector_norm(t.detach(), dim=-1, dtype=torch.float64).square()
        values.append(sq.amax())  # NaN for a NaN, inf for an inf
        if i in points:
            tol = domain_tol(domain, TORCH_DTYPES[t.dtype], t.shape[-1])
            if family == "ball":  # not_points' rule for the ball, from the squared norms
                bad = ~(c * sq <= 1 + tol)
            else:
                bad = not_points(domain, t.detach().to(torch.float64), c, tol)
            values.append(bad.any().to(torch.float64))
    if tangent is not None:
        uu = _tangent_sq(tensors, tangent, c)
        values += [uu.amin(), uu.amax()]
    read = torch.stack(values).tolist()  # the one synchronisation
    if k.device.type != "cpu":
        kv = read.pop(0)
        _check_value(family, kv)
        c = -kv if family == "ball" else 1 / kv
    longest = math.sqrt(torch.finfo(tensors[0].dtype).max)  # squared
    maxsq = []
    for i in range(len(tensors)):
        sq = read.pop(0)
        if not sq <= longest:
            raise _Declined("non-finite or huge input")
        if i in points:
            if read.pop(0):
                raise _Declined("point outside the model")
            maxsq.append(c * sq)
    if tangent is not None:
        shortest, widest = read.pop(0), read.pop(0)
        if not shortest >= GEOOPT_LORENTZ_MIN_NORM**2:
            raise _Declined("tangent shorter than geoopt's norm clamp")
        if not c * widest <= (math.log(longest) / 2) ** 2:  # cosh(theta) <= max^(1/4)
            raise _Declined("tangent long enough to overflow")
    return kv, maxsq


def _check_value(family: str, kv: float) -> None:
    if not math.isfinite(kv):
        raise _Declined("curvature value")
    if family == "ball" and not kv <= -MIN_BALL_C:
        raise _Declined("curvature value")
    if family == "lorentz" and not kv > 0:
        raise _Declined("curvature value")


def _may_saturate(cv: _Curvature, maxsq) -> bool:
    """Whether some row of logmap/logmap0 may reach geoopt's artanh bound: by the
    triangle inequality artanh(sqrt(c)|(-x)+y|) <= artanh(sqrt(c)|x|) + artanh(sqrt(c)|y|)."""
    reach = sum(math.atanh(min(math.sqrt(max(m, 0.0)), GEOOPT_ARTANH_MAX[torch.float64])) for m in maxsq)
    return reach > cv.artanh_max - ARTANH_SLACK


def _prepare(family: str, name: str, manifold, tensors, options):
    """The served maths of this call as a function of its tensors, or :class:`_Declined`."""
    points, maths = (_BALL_SPECS if family == "ball" else _LORENTZ_SPECS)[name]
    dim = options.pop("dim", -1)
    if any(not isinstance(v, bool) for v in options.values()):
        raise _Declined("non-boolean option")
    _check_tensors(tensors, dim)
    k = _curvature_tensor(manifold.k, tensors)
    tangent = None  # the Lorentz exponential maps: whether u is projected first
    if family == "lorentz" and name in ("expmap", "expmap0"):
        tangent = options.get("norm_tan") is True
    kv, maxsq = _screen(k, family, tensors, points, tangent)
    cv = _Curvature(k, kv, family, tensors[0].dtype)
    cv.may_saturate = name in ("logmap", "logmap0") and _may_saturate(cv, maxsq)
    return functools.partial(maths, cv, **options)


# ------------------------------------------------------------------ autograd
class _Served(torch.autograd.Function):
    """Runs the served maths ``fast``; backward takes xpu_stone's gradient of it, or,
    when the backward builds a graph (second derivatives), geoopt's ``slow``."""

    @staticmethod
    def forward(ctx, fast, slow, *tensors):
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in tensors]
        with torch.enable_grad():
            out = fast(*leaves)
        ctx.fast, ctx.slow, ctx.graph = fast, slow, (out, leaves)
        ctx.save_for_backward(*tensors)
        return out.detach()

    @staticmethod
    def backward(ctx, grad):
        tensors = ctx.saved_tensors
        need = ctx.needs_input_grad[2:]
        if torch.is_grad_enabled() or ctx.graph is False:
            # create_graph=True: geoopt's maths, differentiable again, on fresh views (an
            # input computed from another one, as expmap_transp's y from x, must not pass
            # its share on twice); the call's later backward passes take geoopt's too, so
            # that its second derivatives are those of one function
            ctx.graph = False
            _geoopt_only.depth = getattr(_geoopt_only, "depth", 0) + 1  # its inner calls too
            try:
                with torch.enable_grad():
                    inputs = [t.view_as(t) for t in tensors]
                    out = ctx.slow(*inputs)
            finally:
                _geoopt_only.depth -= 1
        else:
            out, inputs = ctx.graph or _Served._rebuild(ctx.fast, tensors)
            ctx.graph = None  # a second backward (retain_graph=True) rebuilds it
        wanted = [t for t, n in zip(inputs, need) if n]
        grads = iter(
            torch.autograd.grad(out, wanted, grad, allow_unused=True, create_graph=torch.is_grad_enabled())
        )
        return (None, None, *(next(grads) if n else None for n in need))

    @staticmethod
    def _rebuild(fast, tensors):
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in tensors]
        with torch.enable_grad():
            return fast(*leaves), leaves


def _run(fast, slow, tensors):
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _Served.apply(fast, slow, *tensors)
    return fast(*tensors)


# ------------------------------------------------------------------ patching
def _wrap(cls, name: str, family: str):
    original = getattr(cls, name)
    signature = inspect.signature(original)
    tensor_names = [p.name for p in signature.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD][1:]
    qualname = f"{cls.__name__}.{name}"

    @functools.wraps(original)
    def method(self, *args, **kwargs):
        if _originals.get((cls, name)) is not original or getattr(_geoopt_only, "depth", 0):
            return original(self, *args, **kwargs)  # unpatched (e.g. kept by a geoopt.Scaled)
        try:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                raise _Declined("arguments geoopt rejects") from None
            bound.apply_defaults()
            tensors = [bound.arguments[n] for n in tensor_names]
            if not all(isinstance(t, torch.Tensor) for t in tensors):
                raise _Declined("non-tensor argument")
            options = {n: v for n, v in bound.arguments.items() if n != "self" and n not in tensor_names}
            fast = _prepare(family, name, self, tensors, options)

            def slow(*ts):
                bound.arguments.update(zip(tensor_names, ts))
                return original(*bound.args, **bound.kwargs)

            out = _run(fast, slow, tensors)
        except _Declined as why:
            _declined[qualname, str(why)] += 1
            return original(self, *args, **kwargs)
        except XpuStoneError as err:  # a check above missed a case: geoopt's answer, and counted
            _declined[qualname, f"xpu_stone raised {type(err).__name__}"] += 1
            return original(self, *args, **kwargs)
        _served[qualname] += 1
        return out

    method.__xpu_stone_original__ = original
    return original, method


def patch_geoopt(devices: tuple[str, ...] = ("cuda",)) -> list[str]:
    """Routes geoopt's Stereographic (PoincareBall) and Lorentz math to xpu_stone for tensors
    on ``devices`` (device types, e.g. ``("cuda", "cpu")``); returns the patched
    ``Class.method`` names. Idempotent; :func:`unpatch_geoopt` undoes it."""
    try:
        geoopt = importlib.import_module("geoopt")
    except ImportError:
        raise UnsupportedOperationError("patch_geoopt needs geoopt installed (pip install geoopt)") from None
    _state["devices"] = tuple(devices)
    _state["arcosh"] = importlib.import_module("geoopt.manifolds.lorentz.math").arcosh
    targets = [(geoopt.Stereographic, POINCARE_METHODS, "ball"), (geoopt.Lorentz, LORENTZ_METHODS, "lorentz")]
    patched = []
    for cls, names, family in targets:
        for name in names:
            if (cls, name) not in _originals:
                original, method = _wrap(cls, name, family)
                _originals[cls, name] = original
                setattr(cls, name, method)
            patched.append(f"{cls.__name__}.{name}")
    return patched


def unpatch_geoopt() -> None:
    """Restores every geoopt method :func:`patch_geoopt` replaced; wrappers still held
    elsewhere (a ``geoopt.Scaled`` binds its methods when made) call geoopt's code."""
    for (cls, name), original in list(_originals.items()):
        setattr(cls, name, original)
        del _originals[cls, name]


def is_patched() -> bool:
    return bool(_originals)


def stats() -> dict:
    """Calls served by xpu_stone (``calls``) and passed to geoopt (``fallbacks``) since
    the import, in total and per ``"Class.method"`` under ``methods``, each fallback
    count split by its reason: ``{"calls": 3, "fallbacks": 1, "methods":
    {"Stereographic.dist": {"calls": 3, "fallbacks": 1, "reasons": {"learnable curvature": 1}}}}``."""
    methods: dict[str, dict] = {}
    for name, n in _served.items():
        methods.setdefault(name, {"calls": 0, "fallbacks": 0, "reasons": {}})["calls"] = n
    for (name, reason), n in _declined.items():
        entry = methods.setdefault(name, {"calls": 0, "fallbacks": 0, "reasons": {}})
        entry["fallbacks"] += n
        entry["reasons"][reason] = n
    return {
        "calls": sum(_served.values()),
        "fallbacks": sum(_declined.values()),
        "methods": dict(sorted(methods.items())),
    }


unpatch = unpatch_geoopt
