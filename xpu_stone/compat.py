"""geoopt drop-in: :func:`patch_geoopt` routes geoopt's hyperbolic math to xpu_stone.

    import geoopt, xpu_stone.compat
    xpu_stone.compat.patch_geoopt()      # existing geoopt code now runs xpu_stone's kernels
    ...
    xpu_stone.compat.unpatch_geoopt()    # geoopt as it was

The methods of ``geoopt.Stereographic`` (so ``PoincareBall``) listed in
:data:`POINCARE_METHODS` and those of ``geoopt.Lorentz`` listed in
:data:`LORENTZ_METHODS` are wrapped. A call goes to xpu_stone when its inputs
allow it:

* the curvature is negative and fixed (``k`` does not require grad), with
  ``c = -k`` on the ball and ``c = 1/k`` on geoopt's hyperboloid
  :math:`\\langle x,x\\rangle_L = -k`;
* ``dim`` is the last dim, the tensors are on an enabled device (CUDA by
  default) with one dtype among float32 / float64;
* the method's options have an xpu_stone counterpart (``project=True`` results
  are projected with geoopt's own margins).

Anything else runs geoopt's own code, unchanged. The value of ``k`` is read once
per tensor version (one device sync on first use), not at every call.
"""

from __future__ import annotations

import functools
import importlib

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import lorentz, poincare
from .errors import UnsupportedOperationError

POINCARE_METHODS = ("dist", "dist0", "expmap", "expmap0", "logmap", "logmap0", "mobius_add", "projx", "transp",
                    "lambda_x")  # fmt: skip
LORENTZ_METHODS = ("dist", "dist0", "expmap", "expmap0", "logmap", "logmap0", "projx", "proju", "transp")
# geoopt's boundary margins of PoincareBall.projx (geoopt.manifolds.stereographic.math)
GEOOPT_BALL_EPS = {torch.float32: 4e-3, torch.float64: 1e-5}

_originals: dict[tuple[type, str], object] = {}
_state = {"devices": ("cuda",), "calls": 0, "fallbacks": 0}
# k tensor -> (its version, its value). Held weakly: an entry goes when its tensor is
# freed, before another tensor can be made at the same address (a cache keyed by id()
# gave a new manifold the curvature of a freed one).
_k_cache = WeakIdKeyDictionary()


def _curvature(k) -> float | None:
    """The value of geoopt's ``k`` (cached per tensor version), or None if it is learnable."""
    if not isinstance(k, torch.Tensor):
        return float(k)
    if k.requires_grad or k.numel() != 1:
        return None
    hit = _k_cache.get(k)
    if hit is not None and hit[0] == k._version:
        return hit[1]
    value = float(k)
    _k_cache[k] = (k._version, value)
    return value


def _eligible(tensors, dim) -> bool:
    first = tensors[0]
    if first.device.type not in _state["devices"] or first.dtype not in GEOOPT_BALL_EPS:
        return False
    if dim not in (-1, first.dim() - 1):
        return False
    return all(t.device == first.device and t.dtype == first.dtype for t in tensors)


def _keepdim(out, keepdim):
    return out.unsqueeze(-1) if keepdim else out


def _poincare_impl(name, self, args, kw):
    """xpu_stone's result of ``PoincareBall.name(*args, **kw)``, or NotImplemented."""
    k = _curvature(self.k)
    if k is None or not k < 0:
        return NotImplemented
    c = -k
    dim = kw.pop("dim", -1)
    project = kw.pop("project", True)
    keepdim = kw.pop("keepdim", False)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if kw or len(tensors) != len(args) or not tensors or not _eligible(tensors, dim):
        return NotImplemented

    def proj(x):
        return poincare.project(x, c, eps=GEOOPT_BALL_EPS[x.dtype]) if project else x

    if name == "dist":
        return poincare.dist(*args, c=c, keepdim=keepdim)
    if name == "dist0":
        return poincare.dist0(*args, c=c, keepdim=keepdim)
    if name == "lambda_x":
        return poincare.lambda_x(*args, c=c, keepdim=keepdim)
    if name == "projx":
        return poincare.project(*args, c=c, eps=GEOOPT_BALL_EPS[args[0].dtype])
    if name in ("expmap", "expmap0", "mobius_add"):
        return proj(getattr(poincare, name)(*args, c=c))
    return getattr(poincare, name)(*args, c=c)  # logmap, logmap0, transp


def _lorentz_impl(name, self, args, kw):
    k = _curvature(self.k)
    if k is None or not k > 0:
        return NotImplemented
    c = 1.0 / k
    dim = kw.pop("dim", -1)
    project = kw.pop("project", True)
    keepdim = kw.pop("keepdim", False)
    norm_tan = kw.pop("norm_tan", True)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if kw or len(tensors) != len(args) or not tensors or not _eligible(tensors, dim):
        return NotImplemented
    if name in ("dist", "dist0"):
        out = getattr(lorentz, name)(*args, c)
        return (
            _keepdim(out, keepdim)
            if out.dim() == args[0].dim() - 1
            else (out if keepdim else out.squeeze(-1))
        )
    if name == "projx":
        return lorentz.project(args[0], c)
    if name == "proju":
        return lorentz.proj_tan(args[0], args[1], c)
    if name == "expmap":
        x, u = args
        if norm_tan:
            u = lorentz.proj_tan(x, u, c)
        out = lorentz.expmap(x, u, c)
        return lorentz.project(out, c) if project else out
    if name == "expmap0":
        out = lorentz.expmap0(args[0], c)
        return lorentz.project(out, c) if project else out
    return getattr(lorentz, name)(*args, c)  # logmap, logmap0, transp


def _wrap(cls, name, impl):
    original = getattr(cls, name)

    @functools.wraps(original)
    def method(self, *args, **kwargs):
        out = impl(name, self, args, dict(kwargs))
        if out is NotImplemented:
            _state["fallbacks"] += 1
            return original(self, *args, **kwargs)
        _state["calls"] += 1
        return out

    method.__xpu_stone_original__ = original
    return original, method


def patch_geoopt(devices: tuple[str, ...] = ("cuda",)) -> list[str]:
    """Routes geoopt's PoincareBall and Lorentz math to xpu_stone for tensors on ``devices``; returns the patched ``Class.method``
    names. Idempotent; :func:`unpatch_geoopt` undoes it."""
    try:
        geoopt = importlib.import_module("geoopt")
    except ImportError:
        raise UnsupportedOperationError("patch_geoopt needs geoopt installed (pip install geoopt)") from None
    _state["devices"] = tuple(devices)
    targets = [
        (geoopt.Stereographic, POINCARE_METHODS, _poincare_impl),
        (geoopt.Lorentz, LORENTZ_METHODS, _lorentz_impl),
    ]
    patched = []
    for cls, names, impl in targets:
        for name in names:
            key = (cls, name)
            if key not in _originals:
                original, method = _wrap(cls, name, impl)
                _originals[key] = original
                setattr(cls, name, method)
            patched.append(f"{cls.__name__}.{name}")
    return patched


def unpatch_geoopt() -> None:
    """Restores every geoopt method :func:`patch_geoopt` replaced."""
    for (cls, name), original in list(_originals.items()):
        setattr(cls, name, original)
        del _originals[(cls, name)]
    _k_cache.clear()


def is_patched() -> bool:
    return bool(_originals)


def stats() -> dict:
    """Counts of calls served by xpu_stone (``calls``) and passed to geoopt (``fallbacks``)."""
    return {"calls": _state["calls"], "fallbacks": _state["fallbacks"]}


unpatch = unpatch_geoopt
