"""Old import path (kept for one release): see :mod:`xpu_stone.runtime.policies`
(and :mod:`xpu_stone.runtime.torch_flags` for the torch-side settings)."""

from .kernels.dispatcher import pin_token as policy_token
from .runtime.policies import (
    DEFAULT_EXECUTION,
    ExecutionPolicy,
    KernelPolicy,
    active_execution_policy,
    active_policy,
)
from .runtime.torch_flags import ATTENTION_BACKENDS, MATMUL_KEYS, MATMUL_PRESETS

__all__ = [
    "ATTENTION_BACKENDS",
    "DEFAULT_EXECUTION",
    "MATMUL_KEYS",
    "MATMUL_PRESETS",
    "ExecutionPolicy",
    "KernelPolicy",
    "active_execution_policy",
    "active_policy",
    "policy_token",
]
