r"""Manifold descriptors and parameters that know which manifold they live on.

A descriptor (:class:`PoincareBall`, :class:`Lorentz`, :class:`Euclidean`) is a
small immutable value (hashable, picklable, compared by curvature) that names a
manifold and carries the few operations a Riemannian optimizer needs, on torch
tensors with points in the last dim:

=================  ===========================================================  ==========================================
operation          Poincaré ball, curvature :math:`-c`                          Lorentz (hyperboloid), :math:`\langle x,x\rangle_L=-1/c`
=================  ===========================================================  ==========================================
``egrad2rgrad``    :math:`\frac{(1-c\|x\|^2)^2}{4}\,\nabla`                      :math:`\operatorname{proj}_x(J\nabla)`, :math:`J=\mathrm{diag}(-1,1,\dots)`
``inner(x,u,v)``   :math:`\lambda_x^2\langle u,v\rangle`                         :math:`\langle u,v\rangle_L=-u_0v_0+\sum_{i>0}u_iv_i`
``expmap(x,u)``    :func:`xpu_stone.poincare.expmap`                            :math:`\cosh(\sqrt c\|u\|_L)x+\sinh(\sqrt c\|u\|_L)\frac{u}{\sqrt c\|u\|_L}`
``retr(x,u)``      :math:`\operatorname{proj}(x+u)`                              :math:`\operatorname{proj}(x+u)`
``transp(x,y,v)``  :func:`xpu_stone.poincare.transp`                            :math:`v+\frac{c\langle y,v\rangle_L}{1-c\langle x,y\rangle_L}(x+y)`
``projx(x)``       :func:`xpu_stone.poincare.project`                           :math:`x_0=\sqrt{1/c+\|x_{1:}\|^2}`
=================  ===========================================================  ==========================================

:class:`ManifoldParameter` is a :class:`torch.nn.Parameter` with a ``manifold``
attribute. It is a direct subclass of ``Parameter`` (no ``__torch_function__``
override), so every op on it returns a plain tensor, and modules, optimizers,
``module.to()``, ``deepcopy``, pickling, ``state_dict`` / ``load_state_dict``
and DDP keep the parameter object and therefore its manifold. The one path that
replaces parameter objects, ``load_state_dict(..., assign=True)``, loads plain
parameters; :func:`manifold_of` then returns ``None``, so re-wrap them (or load
without ``assign``).

:func:`manifold_of` also accepts geoopt's ``ManifoldParameter`` / ``ManifoldTensor``
on a PoincareBall / Stereographic with negative curvature, Lorentz or Euclidean,
so :mod:`xpu_stone.optim` can step geoopt models; a geoopt manifold it cannot
represent raises :class:`~xpu_stone.errors.UnsupportedOperationError` instead of
silently getting Euclidean updates.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import torch

from . import poincare
from .constants import BOUNDARY_EPS, MIN_SQNORM
from .engine.scalars import curvature_value
from .errors import InvalidArgumentError, UnsupportedOperationError

__all__ = ["Manifold", "PoincareBall", "Lorentz", "Euclidean", "ManifoldParameter", "manifold_of"]


def _sqnorm_floor(x: torch.Tensor) -> float:
    return MIN_SQNORM["float64" if x.dtype == torch.float64 else "float32"]


class Manifold:
    """Base of the descriptors. ``name`` is a short tag used in kernel dispatch and reprs."""

    name = "manifold"

    def egrad2rgrad(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def inner(self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """Riemannian inner product of tangent vectors at ``x``, per row, keepdim."""
        raise NotImplementedError

    def projx(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def expmap(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def retr(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """First-order retraction :math:`\\operatorname{proj}(x + u)`."""
        return self.projx(x + u)

    def transp(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class Euclidean(Manifold):
    """Flat space: every operation is the ordinary one (parameters get plain updates)."""

    name = "euclidean"

    def egrad2rgrad(self, x, g):
        return g

    def inner(self, x, u, v=None):
        return (u * (u if v is None else v)).sum(-1, keepdim=True)

    def projx(self, x):
        return x

    def proju(self, x, u):
        return u

    def expmap(self, x, u):
        return x + u

    def retr(self, x, u):
        return x + u

    def transp(self, x, y, v):
        return v


@functools.cache
def _below_one(eps: float, dtype: torch.dtype) -> bool:
    """Whether ``1 - eps`` stays below 1 once rounded to ``dtype`` (cached: the
    optimizers ask on every step)."""
    return float(torch.tensor(1.0 - eps, dtype=dtype)) < 1.0


@dataclass(frozen=True)
class PoincareBall(Manifold):
    r"""Poincaré ball of curvature :math:`-c`, radius :math:`1/\sqrt c` (geoopt's ``PoincareBall(c)``).

    ``eps`` (default: :data:`xpu_stone.constants.BOUNDARY_EPS` of the dtype) is the
    margin of :meth:`projx`: rows are kept at norm :math:`\le (1-\epsilon)/\sqrt c`."""

    c: float = 1.0
    eps: float | None = None
    name = "poincare"

    def __post_init__(self):
        object.__setattr__(self, "c", curvature_value(self.c))
        if self.eps is not None and not (0.0 < float(self.eps) < 1.0):
            raise InvalidArgumentError(f"eps must lie in (0, 1), got {self.eps!r}")

    def boundary_eps(self, dtype: torch.dtype) -> float:
        """The margin for points of ``dtype``; a typed error when ``eps`` is below what
        ``dtype`` resolves next to 1 (``1 - eps`` would round to 1: no margin at all)."""
        if self.eps is None:
            return BOUNDARY_EPS[str(dtype).replace("torch.", "")]
        if not _below_one(float(self.eps), dtype):
            raise InvalidArgumentError(
                f"PoincareBall eps={float(self.eps):g}: 1 - eps rounds to 1 in {dtype} (no margin left); "
                f"use a wider dtype or a larger eps"
            )
        return float(self.eps)

    def egrad2rgrad(self, x, g):
        return g * ((1 - self.c * (x * x).sum(-1, keepdim=True)) ** 2 / 4)

    def inner(self, x, u, v=None):
        lam = 2 / (1 - self.c * (x * x).sum(-1, keepdim=True))
        return lam**2 * (u * (u if v is None else v)).sum(-1, keepdim=True)

    def projx(self, x):
        return poincare.project(x, self.c, eps=self.boundary_eps(x.dtype))

    def proju(self, x, u):
        return u

    def expmap(self, x, u):
        return self.projx(poincare.expmap(x, u, self.c))

    def transp(self, x, y, v):
        return poincare.transp(x, y, v, self.c)


@dataclass(frozen=True)
class Lorentz(Manifold):
    r"""Hyperboloid :math:`\{x : \langle x,x\rangle_L = -1/c,\ x_0 > 0\}` in
    :math:`\mathbb R^{1,n}`, time coordinate first (geoopt's ``Lorentz(k=1/c)``)."""

    c: float = 1.0
    name = "lorentz"

    def __post_init__(self):
        object.__setattr__(self, "c", curvature_value(self.c))

    @staticmethod
    def minkowski(u, v):
        r""":math:`\langle u,v\rangle_L = -u_0v_0 + \sum_{i>0} u_iv_i`, per row, keepdim."""
        uv = u * v
        return uv[..., 1:].sum(-1, keepdim=True) - uv[..., :1]

    def egrad2rgrad(self, x, g):
        return self.proju(x, torch.cat([-g[..., :1], g[..., 1:]], dim=-1))

    def inner(self, x, u, v=None):
        return self.minkowski(u, u if v is None else v)

    def projx(self, x):
        space = x[..., 1:]
        time = torch.sqrt(1 / self.c + (space * space).sum(-1, keepdim=True))
        return torch.cat([time, space], dim=-1)

    def proju(self, x, u):
        return u + self.c * self.minkowski(x, u) * x

    def expmap(self, x, u):
        sq = torch.clamp_min(self.minkowski(u, u), _sqnorm_floor(u))
        theta = torch.sqrt(self.c * sq)
        return self.projx(torch.cosh(theta) * x + torch.sinh(theta) / theta * u)

    def transp(self, x, y, v):
        return v + self.c * self.minkowski(y, v) / (1 - self.c * self.minkowski(x, y)) * (x + y)


class ManifoldParameter(torch.nn.Parameter):
    """A :class:`torch.nn.Parameter` on ``manifold`` (a descriptor; default :class:`Euclidean`).

    >>> emb = ManifoldParameter(torch.zeros(10, 5), PoincareBall(c=1.0))
    >>> manifold_of(emb)
    PoincareBall(c=1.0, eps=None)

    Shares storage with ``data`` (like ``Parameter``). Ops on it return plain tensors.
    """

    def __new__(cls, data=None, manifold: Manifold | None = None, requires_grad: bool = True):
        if data is None:
            data = torch.empty(0)
        if not isinstance(data, torch.Tensor):
            raise InvalidArgumentError(f"data must be a torch.Tensor, got {type(data).__name__}")
        if requires_grad and not data.is_floating_point():
            raise InvalidArgumentError(f"a trainable parameter must be floating point, got {data.dtype}")
        if manifold is None:
            manifold = Euclidean()
        if not isinstance(manifold, Manifold):
            raise InvalidArgumentError(
                "manifold must be an xpu_stone.manifolds descriptor (PoincareBall, Lorentz, Euclidean), "
                f"got {type(manifold).__name__}"
            )
        param = torch.Tensor._make_subclass(cls, data.detach(), requires_grad)
        param.manifold = manifold
        return param

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        result = type(self)(
            self.data.clone(memory_format=torch.preserve_format), self.manifold, self.requires_grad
        )
        memo[id(self)] = result
        return result

    def __reduce_ex__(self, proto):
        return (_rebuild_manifold_parameter, (self.data, self.manifold, self.requires_grad))

    def __repr__(self) -> str:
        return f"ManifoldParameter on {self.manifold} containing:\n" + torch.Tensor.__repr__(self.data)


def _rebuild_manifold_parameter(data, manifold, requires_grad):
    return ManifoldParameter(data, manifold, requires_grad)


def manifold_of(tensor) -> Manifold | None:
    """The manifold ``tensor`` lives on: its descriptor for a :class:`ManifoldParameter`
    (or any tensor with a descriptor in ``.manifold``), the translated descriptor for a
    geoopt ManifoldParameter / ManifoldTensor, ``None`` for anything else."""
    m = getattr(tensor, "manifold", None)
    if m is None or isinstance(m, Manifold):
        return m
    if "geoopt" in sys.modules and type(m).__module__.startswith("geoopt"):
        return _from_geoopt(m)
    return None


def _from_geoopt(m) -> Manifold:
    geoopt = sys.modules["geoopt"]
    if isinstance(m, geoopt.Euclidean) and m.ndim <= 1:
        return Euclidean()
    if isinstance(m, geoopt.Lorentz):
        return Lorentz(c=1.0 / float(m.k))
    if isinstance(m, geoopt.Stereographic) and not isinstance(m, geoopt.SphereProjection):
        k = float(m.k)
        if k < 0:
            return PoincareBall(c=-k)
    raise UnsupportedOperationError(
        f"geoopt manifold {m!r} has no xpu_stone counterpart (supported: PoincareBall / Stereographic "
        "with k < 0, Lorentz, Euclidean with ndim <= 1); use geoopt's optimizer for it"
    )
