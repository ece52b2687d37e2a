"""Riemannian optimizers with fused multi-tensor CUDA steps: :class:`RiemannianSGD`,
:class:`RiemannianAdam` (see :mod:`xpu_stone.optim.optimizers`)."""

from __future__ import annotations

from .optimizers import RiemannianAdam, RiemannianSGD

__all__ = ["RiemannianAdam", "RiemannianSGD"]
