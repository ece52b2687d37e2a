r"""Riemannian SGD and Adam for parameters on the Poincaré ball, the hyperboloid or
flat space (:mod:`xpu_stone.manifolds`).

A parameter's manifold is :func:`xpu_stone.manifolds.manifold_of` (a
:class:`~xpu_stone.manifolds.ManifoldParameter`, or a geoopt ManifoldParameter);
other parameters get the ordinary Euclidean update, exactly as ``torch.optim.SGD`` /
``Adam`` (L2 weight decay) would give them. The formulas are in
:mod:`xpu_stone.optim._math`. Every step ends with the stabilising projection
onto the manifold (rows of the ball kept at norm :math:`\le (1-\epsilon)/\sqrt c`,
hyperboloid points get :math:`x_0 = \sqrt{1/c + \|x_{1:}\|^2}`).

On CUDA (with CuPy installed) all parameters of one device and dtype are updated
by one fused kernel launch; elsewhere, or with ``fused=False``, by torch ops with
the same formulas. Sparse gradients (``nn.Embedding(sparse=True)``) update only
the rows they name (Adam's moments of other rows are left as they are, like
``torch.optim.SparseAdam``).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from .._deps import cupy
from ..engine.launch import TORCH_DTYPES, allocates
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..manifolds import Euclidean, Lorentz, PoincareBall, manifold_of
from ..ops.optim import EUCLIDEAN, LORENTZ, POINCARE, ReplayPlan, StepConfig, fused_step
from ._math import torch_step

__all__ = ["RiemannianSGD", "RiemannianAdam"]

_RETRACTIONS = ("expmap", "retr")


def _geometry(p) -> tuple[int, float, float]:
    m = manifold_of(p)
    if m is None or isinstance(m, Euclidean):
        return EUCLIDEAN, 1.0, 0.0
    if isinstance(m, PoincareBall):
        return POINCARE, m.c, m.boundary_eps(p.dtype)
    if isinstance(m, Lorentz):
        return LORENTZ, m.c, 0.0
    raise InvalidArgumentError(f"no Riemannian update for manifold {m!r}")


def _check(name, value, low=0.0, high=None):
    if (
        not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < low
        or (high is not None and value >= high)
    ):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise InvalidArgumentError(f"{name} must be a finite number {bound}, got {value!r}")


class _Riemannian(torch.optim.Optimizer):
    _adam = False

    def __init__(self, params, defaults, fused):
        if fused not in (None, True, False):
            raise InvalidArgumentError(f"fused must be None, True or False, got {fused!r}")
        self.fused = fused
        self._plan: ReplayPlan | None = None
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict):
        self._plan = None  # the state tensors are replaced
        super().load_state_dict(state_dict)

    def add_param_group(self, param_group):
        """torch's ``add_param_group``, with the group's hyperparameters (its own or
        the defaults) checked first: a bad value raises and adds nothing."""
        if isinstance(param_group, dict):
            merged = {**self.defaults, **param_group}
            if merged["retraction"] not in _RETRACTIONS:
                raise InvalidArgumentError(
                    f"retraction must be one of {_RETRACTIONS}, got {merged['retraction']!r}"
                )
            self._check_hyperparameters(merged)
        self._plan = None
        super().add_param_group(param_group)

    def _check_hyperparameters(self, group) -> None:
        raise NotImplementedError

    def _fusable(self, p, grad) -> bool:
        if self.fused is False or not p.is_cuda:
            ok = False
        else:
            ok = (
                cupy is not None
                and p.dtype in TORCH_DTYPES
                and p.is_contiguous()
                and grad.dtype == p.dtype
                and (grad.is_sparse or (grad.is_contiguous() and grad.shape == p.shape))
            )
        if self.fused is True and not ok:
            raise InvalidArgumentError(
                "fused=True needs contiguous CUDA parameters of float32/float64/float16/bfloat16 with "
                f"gradients of the same dtype and CuPy installed; got a {p.dtype} parameter on {p.device}"
            )
        return ok

    def _init_state(self, state, p, kind, group) -> None:
        raise NotImplementedError

    @allocates
    def _init_states(self, todo) -> None:
        """Creates the state of every parameter stepped for the first time, all before any
        update: an allocation that fails (:class:`~xpu_stone.errors.OutOfMemoryError`)
        leaves no half-made state behind."""
        fresh = [(group, p, kind) for group, p, _grad, kind, *_ in todo if not self.state[p]]
        try:
            for group, p, kind in fresh:
                self._init_state(self.state[p], p, kind, group)
        except BaseException:
            for _, p, _ in fresh:
                self.state.pop(p, None)
            raise

    def _config(self, group, state, kind, c, ball_eps) -> StepConfig:
        raise NotImplementedError

    def _state_tensors(self, state):
        raise NotImplementedError

    def _checked_params(self) -> list:
        """Every parameter that has a gradient, with its group, geometry and route,
        all checked before any of them is stepped: one bad parameter anywhere fails
        the step with nothing updated."""
        todo = []
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if not p.is_floating_point():
                    raise InvalidArgumentError(
                        f"parameters must be floating point, got a {p.dtype} parameter"
                    )
                if grad.dtype != p.dtype or grad.device != p.device:
                    raise InvalidArgumentError(
                        f"a gradient must have its parameter's dtype and device: {grad.dtype} on "
                        f"{grad.device} for a {p.dtype} parameter on {p.device}"
                    )
                if grad.shape != p.shape:
                    raise ShapeMismatchError(
                        f"gradient of shape {tuple(grad.shape)} for a parameter of shape {tuple(p.shape)}"
                    )
                if grad.is_sparse and p.dim() != 2:
                    raise InvalidArgumentError(
                        f"sparse gradients are supported for 2-D parameters (embeddings), got shape "
                        f"{tuple(p.shape)}"
                    )
                todo.append((group, p, grad, *_geometry(p), self._fusable(p, grad)))
        return todo

    # torch.compile runs the step eagerly (one graph break): its host-side plan cache and
    # per-parameter checks are Python state that dynamo cannot trace (torch 2.11 raises on
    # the first setattr). A whole step in one graph: xpu_stone.runtime.capture.
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()``'s loss.
        Every parameter is checked first (:class:`~xpu_stone.errors.InvalidArgumentError`,
        :class:`~xpu_stone.errors.ShapeMismatchError`); a failed check leaves all
        parameters and all optimizer state as they were."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._plan is not None and self._plan.replay(self):
            return loss
        self._plan = None
        fused = defaultdict(list)
        todo = self._checked_params()
        self._init_states(todo)
        for group, p, grad, kind, c, ball_eps, fusable in todo:
            state = self.state[p]
            state["step"] += 1
            h = self._config(group, state, kind, c, ball_eps)
            buf, v, vmax = self._state_tensors(state)
            if fusable:
                fused[(p.device, p.dtype)].append((h, p, grad, buf, v, vmax))
            else:
                torch_step(h, p, grad, buf, v, vmax)
        launched = {}
        for key, items in fused.items():
            try:
                launched[key] = fused_step(items, self._adam)
            except BaseException:  # nothing of this group was launched: its steps are not counted
                for _h, p, *_rest in items:
                    self.state[p]["step"] -= 1
                raise
        if (
            fused
            and all(r is not None for r in launched.values())
            and not torch.cuda.is_current_stream_capturing()  # no pinned buffers while capturing
            and not any(g.is_sparse for items in fused.values() for (_, _, g, *_r) in items)
            and sum(len(items) for items in fused.values()) == len(todo)
        ):
            self._plan = ReplayPlan(self, fused, launched)
        return loss


class RiemannianSGD(_Riemannian):
    r"""Riemannian SGD (Bonnabel 2013) with momentum (transported along each step),
    dampening, Nesterov momentum and L2 weight decay:

    .. math::
        b_t = \mu\,P_{x_{t-1}\to x_t}(b_{t-1}) + (1-\tau)\,\operatorname{grad} f(x_t),\qquad
        x_{t+1} = \operatorname{proj}\big(\exp_{x_t}(-\eta\,b_t)\big)

    (:math:`b_1 = \operatorname{grad} f(x_1)`; Nesterov steps along
    :math:`\operatorname{grad} f + \mu b_t`). ``retraction="retr"`` replaces
    :math:`\exp_x(u)` by :math:`\operatorname{proj}(x + u)` (Nickel & Kiela's update,
    and geoopt's). ``fused``: ``None`` uses the CUDA kernels where possible,
    ``True`` requires them, ``False`` uses torch ops."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        retraction: str = "expmap",
        *,
        fused: bool | None = None,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            retraction=retraction,
        )
        super().__init__(params, defaults, fused)

    def _check_hyperparameters(self, group):
        _check("lr", group["lr"])
        _check("momentum", group["momentum"])
        _check("dampening", group["dampening"], high=1.0 + 1e-12)
        _check("weight_decay", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise InvalidArgumentError("nesterov momentum needs momentum > 0 and dampening = 0")

    def _init_state(self, state, p, kind, group):
        state["step"] = 0
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)

    def _state_tensors(self, state):
        return state.get("momentum_buffer"), None, None

    def _config(self, group, state, kind, c, ball_eps):
        has_momentum = "momentum_buffer" in state
        return StepConfig(
            adam=False,
            kind=kind,
            c=c,
            ball_eps=ball_eps,
            lr=group["lr"],
            wd=group["weight_decay"],
            beta1=group["momentum"],
            beta2=group["dampening"],
            nesterov=group["nesterov"],
            retr=group["retraction"] == "retr",
            momentum=has_momentum,
            first_step=has_momentum and state["step"] == 1,
        )


class RiemannianAdam(_Riemannian):
    r"""Riemannian Adam (Bécigneul & Ganea, *Riemannian Adaptive Optimization
    Methods*, ICLR 2019), with AMSGrad and L2 weight decay; on manifold rows the
    second moment is the per-row squared Riemannian norm :math:`\|\operatorname{grad}\|_x^2`
    (as in geoopt) and the first moment is transported along each step:

    .. math::
        m_t = \beta_1 P(m_{t-1}) + (1-\beta_1) r_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2)\|r_t\|_x^2,
        \quad x_{t+1} = \operatorname{proj}\Big(\exp_{x_t}\Big(-\eta\,\frac{m_t/(1-\beta_1^t)}
        {\sqrt{v_t/(1-\beta_2^t)}+\epsilon}\Big)\Big).

    Euclidean parameters get ``torch.optim.Adam``'s update. ``retraction`` and
    ``fused`` as in :class:`RiemannianSGD`."""

    _adam = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        retraction: str = "expmap",
        *,
        fused: bool | None = None,
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            retraction=retraction,
        )
        super().__init__(params, defaults, fused)

    def _check_hyperparameters(self, group):
        _check("lr", group["lr"])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise InvalidArgumentError(f"betas must be a pair of numbers, got {betas!r}")
        _check("betas[0]", betas[0], high=1.0)
        _check("betas[1]", betas[1], high=1.0)
        _check("eps", group["eps"])
        _check("weight_decay", group["weight_decay"])

    def _init_state(self, state, p, kind, group):
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        shape = p.shape if kind == EUCLIDEAN else (*p.shape[:-1], 1)
        state["exp_avg_sq"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros(shape, dtype=p.dtype, device=p.device)

    def _state_tensors(self, state):
        return state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq")

    def _config(self, group, state, kind, c, ball_eps):
        beta1, beta2 = group["betas"]
        t = state["step"]
        return StepConfig(
            adam=True,
            kind=kind,
            c=c,
            ball_eps=ball_eps,
            lr=group["lr"],
            wd=group["weight_decay"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            amsgrad=group["amsgrad"] and "max_exp_avg_sq" in state,
            retr=group["retraction"] == "retr",
            bc1=1.0 - beta1**t,
            bc2=1.0 - beta2**t,
        )
