"""Old import path (kept for one release): see :mod:`xpu_stone.runtime.policies`."""

from .runtime.policies import ExecutionPolicy, KernelPolicy, active_execution_policy, active_policy

__all__ = ["ExecutionPolicy", "KernelPolicy", "active_execution_policy", "active_policy"]
