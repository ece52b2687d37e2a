r"""Hyperbolic neural-network layers (``torch.nn.Module``) on the kernels of xpu_stone.

==================  =========================================================================
layer               maps
==================  =========================================================================
Curvature           learnable :math:`c = c_{min} + \operatorname{softplus}(\rho)` (or fixed)
ToPoincare          Euclidean features -> ball: :math:`\operatorname{proj}(\exp_0(\operatorname{clip}_r(x)))`
HypLinear           :math:`\operatorname{proj}((W\otimes_c x)\oplus_c b)` (HNN; bias a point of the ball)
PoincareLinear      HNN++ Poincaré fully-connected layer (:func:`xpu_stone.linear.poincare_fc`)
HypMLR              HNN++ / Ganea Poincaré MLR logits (:func:`xpu_stone.linear.poincare_mlr`)
HypAct              activation in the tangent space at 0: :math:`\exp_0(\sigma(\log_0 x))`
PoincareBallLayer   point at fraction t of the geodesic u -> v (Poincaré ball)
LorentzLayer        the same on the hyperboloid (:func:`xpu_stone.lorentz.geodesic`)
KleinLayer          the same in the Klein model (:func:`xpu_stone.klein.geodesic`)
==================  =========================================================================

Parameters that are points of a manifold (HypLinear's bias) are
:class:`xpu_stone.manifolds.ManifoldParameter` on :class:`~xpu_stone.manifolds.PoincareBall`,
so a Riemannian optimizer can find them with :func:`xpu_stone.manifolds.manifold_of`;
a Euclidean optimizer also works (the layer projects the bias into the ball).
Every ``c`` argument is a positive float or a :class:`Curvature` module (shared
between layers to learn one curvature); the HNN++ layers take a fixed curvature.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import klein, linear, lorentz, poincare
from .engine.scalars import check_number, curvature_value
from .errors import InvalidArgumentError, InvalidCurvatureError
from .manifolds import ManifoldParameter, PoincareBall

__all__ = [
    "Curvature",
    "ToPoincare",
    "HypLinear",
    "PoincareLinear",
    "HypMLR",
    "HypAct",
    "PoincareBallLayer",
    "LorentzLayer",
    "KleinLayer",
]


class Curvature(nn.Module):
    r"""A curvature :math:`c > 0` (sectional curvature :math:`-c`).

    Learnable: :math:`c = c_{min} + \operatorname{softplus}(\rho)`, with the raw
    parameter :math:`\rho` initialised so that ``forward()`` returns ``c``.
    Fixed (``learnable=False``): ``forward()`` returns the float ``c``."""

    def __init__(self, c: float = 1.0, learnable: bool = True, min_c: float = 1e-5):
        super().__init__()
        c = check_number(c, "c")
        if isinstance(min_c, bool) or not isinstance(min_c, (int, float)) or not min_c >= 0:
            raise InvalidCurvatureError(f"min_c must be >= 0, got {min_c!r}")
        if not c > min_c:
            raise InvalidCurvatureError(f"c must be a finite number above min_c={min_c}, got {c!r}")
        self.min_c = float(min_c)
        self.learnable = bool(learnable)
        if learnable:
            y = float(c) - self.min_c
            raw = y + math.log(-math.expm1(-y))  # softplus^{-1}(y), stable for large and small y
            self.raw = nn.Parameter(torch.tensor(raw, dtype=torch.float32))
        else:
            self.value = float(c)

    def forward(self):
        if self.learnable:
            return self.min_c + nn.functional.softplus(self.raw)
        return self.value

    def extra_repr(self) -> str:
        return f"learnable={self.learnable}, min_c={self.min_c}"


def _sizes(layer: str, **sizes) -> tuple[int, ...]:
    """The layer's feature counts, each a positive int (``torch.nn.Linear`` would
    take 0 and build an empty layer; here it is an error)."""
    for name, n in sizes.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InvalidArgumentError(f"{layer}: {name} must be a positive int, got {n!r}")
    return tuple(sizes.values())


def _curvature(c):
    """A Curvature module or a validated float, as given to a layer."""
    if isinstance(c, Curvature):
        return c
    if isinstance(c, torch.Tensor) and c.requires_grad:
        raise InvalidCurvatureError(
            "a learnable curvature is a Curvature module: pass Curvature(c, learnable=True)"
        )
    return curvature_value(c)


def _value(c):
    return c() if isinstance(c, Curvature) else c


def _float_value(c, layer: str) -> float:
    if isinstance(c, Curvature):
        if c.learnable:
            raise InvalidArgumentError(
                f"{layer} takes a fixed curvature: pass a float or Curvature(learnable=False)"
            )
        return c.value
    return c


def _c_repr(c) -> str:
    return f"c={c:g}" if isinstance(c, float) else "c=Curvature"


class ToPoincare(nn.Module):
    r"""Maps Euclidean features into the Poincaré ball:
    :math:`y = \operatorname{proj}(\exp_0(\min(1, r/\|x\|)\,x))`.

    ``clip_r``: the feature clipping of Guo et al., *Clipped Hyperbolic Classifiers
    Are Super-Hyperbolic Classifiers* (CVPR 2022): inputs are first scaled to norm
    at most ``clip_r`` (None: no clipping), which keeps the outputs away from the
    boundary and their gradients alive. ``learnable_c``: learn the curvature
    (through a :class:`Curvature`, reachable as ``.curvature``)."""

    def __init__(self, c=1.0, learnable_c: bool = False, clip_r: float | None = None):
        super().__init__()
        if clip_r is not None and not (isinstance(clip_r, (int, float)) and clip_r > 0):
            raise InvalidArgumentError(f"clip_r must be a positive number or None, got {clip_r!r}")
        if isinstance(c, Curvature):
            self.curvature = c
        else:
            self.curvature = Curvature(_curvature(c), learnable=learnable_c)
        self.clip_r = None if clip_r is None else float(clip_r)

    def forward(self, x):
        if self.clip_r is not None:
            norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-15)
            x = x * torch.clamp(self.clip_r / norm, max=1.0)
        c = self.curvature()
        return poincare.project(poincare.expmap0(x, c), c)

    def extra_repr(self) -> str:
        return f"clip_r={self.clip_r}"


class HypLinear(nn.Module):
    r"""Hyperbolic linear layer (Ganea et al. 2018; the layer of hyptorch and HGCN):
    :math:`y = \operatorname{proj}((W\otimes_c x)\oplus_c b)`, with
    :func:`xpu_stone.linear.mobius_matvec` and a bias ``b`` that is a point of the
    ball (a :class:`~xpu_stone.manifolds.ManifoldParameter`, initialised at 0)."""

    def __init__(self, in_features: int, out_features: int, c=1.0, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = _sizes(
            "HypLinear", in_features=in_features, out_features=out_features
        )
        self.c = _curvature(c)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if bias:
            # the ball the Riemannian optimizer keeps the bias on; with a learnable
            # curvature that is the initial one (forward projects with the current c)
            with torch.no_grad():
                c0 = float(self.c()) if isinstance(self.c, Curvature) else float(_value(self.c))
            self.bias = ManifoldParameter(torch.zeros(out_features), PoincareBall(c=c0))
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        c = _value(self.c)
        y = linear.mobius_matvec(self.weight, x, c)
        if self.bias is not None:
            b = poincare.project(self.bias.to(x.dtype), c)
            y = poincare.mobius_add(y, b, c)
        return poincare.project(y, c)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {_c_repr(self.c)}, bias={self.bias is not None}"


class PoincareLinear(nn.Module):
    r"""The Poincaré fully-connected layer of HNN++ (Shimizu et al. 2021,
    :func:`xpu_stone.linear.poincare_fc`), output projected into the ball.
    ``weight`` ``z`` is ``(in, out)`` (initialised :math:`\mathcal N(0, (2\,in\,out)^{-1})`
    as in HNN++), ``bias`` ``r`` is ``(out,)`` (zeros); both Euclidean."""

    def __init__(self, in_features: int, out_features: int, c=1.0, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = _sizes(
            "PoincareLinear", in_features=in_features, out_features=out_features
        )
        self.c = _float_value(_curvature(c), "PoincareLinear")
        self.weight = nn.Parameter(
            torch.randn(in_features, out_features) * (2 * in_features * out_features) ** -0.5
        )
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=bias)

    def forward(self, x):
        return poincare.project(linear.poincare_fc(x, self.weight, self.bias.to(x.dtype), self.c), self.c)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, c={self.c:g}"


class HypMLR(nn.Module):
    r"""Poincaré multinomial logistic regression: logits of ``num_classes`` hyperplanes
    (HNN++ unidirectional form of Ganea et al.'s MLR, :func:`xpu_stone.linear.poincare_mlr`).
    Feed the logits to ``nn.CrossEntropyLoss``."""

    def __init__(self, in_features: int, num_classes: int, c=1.0):
        super().__init__()
        self.in_features, self.num_classes = _sizes(
            "HypMLR", in_features=in_features, num_classes=num_classes
        )
        self.c = _float_value(_curvature(c), "HypMLR")
        self.weight = nn.Parameter(
            torch.randn(in_features, num_classes) * (2 * in_features * num_classes) ** -0.5
        )
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x):
        return linear.poincare_mlr(x, self.weight, self.bias.to(x.dtype), self.c)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.num_classes}, c={self.c:g}"


class HypAct(nn.Module):
    r"""An activation applied in the tangent space at the origin:
    :math:`y = \operatorname{proj}(\exp_0(\sigma(\log_0 x)))` (``act`` a module or a callable,
    default ReLU)."""

    def __init__(self, act=None, c=1.0):
        super().__init__()
        self.act = act if act is not None else nn.ReLU()
        if not callable(self.act):
            raise InvalidArgumentError(f"act must be callable, got {type(act).__name__}")
        self.c = _curvature(c)

    def forward(self, x):
        c = _value(self.c)
        return poincare.project(poincare.expmap0(self.act(poincare.logmap0(x, c)), c), c)


class _GeodesicLayer(nn.Module):
    """Point at fraction ``t`` of the geodesic from ``u`` to ``v`` (a Reality Stone
    layer); ``t`` fixed or learnable (a scalar parameter), ``c`` a float or Curvature."""

    model = ""

    def __init__(self, t: float = 0.5, learnable: bool = False, c=1.0):
        super().__init__()
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise InvalidArgumentError(f"t must be a finite number, got {t!r}")
        self.learnable = bool(learnable)
        if learnable:
            self.t = nn.Parameter(torch.tensor(float(t)))
        else:
            self.t = float(t)
        self.c = _curvature(c)

    def _geodesic(self):
        raise NotImplementedError

    def forward(self, u, v):
        t = self.t.to(u.dtype) if isinstance(self.t, torch.Tensor) else self.t
        return self._geodesic()(u, v, t, _value(self.c))

    def extra_repr(self) -> str:
        t = float(self.t) if isinstance(self.t, torch.Tensor) else self.t
        return f"t={t:g}, learnable={self.learnable}, {_c_repr(self.c)}"


class PoincareBallLayer(_GeodesicLayer):
    r""":math:`u \oplus_c (t \otimes_c ((-u) \oplus_c v))` (:func:`xpu_stone.poincare.geodesic`)."""

    def _geodesic(self):
        return poincare.geodesic


class LorentzLayer(_GeodesicLayer):
    r"""The geodesic interpolation on the hyperboloid :math:`\langle x,x\rangle_L=-1/c`
    (:func:`xpu_stone.lorentz.geodesic`)."""

    def _geodesic(self):
        return lorentz.geodesic


class KleinLayer(_GeodesicLayer):
    r"""The geodesic interpolation in the Klein model (:func:`xpu_stone.klein.geodesic`)."""

    def _geodesic(self):
        return klein.geodesic
