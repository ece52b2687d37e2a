"""The runtime around the kernels: devices, memory, streams and events, CUDA-graph
capture, the launch profiler, kernel and execution policies, inference sessions
and their engines.

Nothing here initialises CUDA at import; every function works (or raises a
typed error) on a machine without a GPU, and :func:`devices` returns ``[]`` there.
"""

from __future__ import annotations

from .devices import DeviceInfo, devices
from .graphs import CapturedGraph, capture
from .memory import (
    MemoryStats,
    empty_cache,
    memory_stats,
    pinned_empty,
    reset_peak,
    torch_allocator_enabled,
    use_torch_allocator,
)
from .policies import ExecutionPolicy, KernelPolicy, active_execution_policy
from .profiler import Profile, profile
from .session import ENGINES, Engine, EngineRegistry, InferenceSession, register_engine
from .streams import Event, Stream, Timer, current_stream, stream, synchronize, timed

__all__ = [
    "ENGINES",
    "CapturedGraph",
    "DeviceInfo",
    "Engine",
    "EngineRegistry",
    "Event",
    "ExecutionPolicy",
    "InferenceSession",
    "KernelPolicy",
    "MemoryStats",
    "Profile",
    "Stream",
    "Timer",
    "active_execution_policy",
    "capture",
    "current_stream",
    "devices",
    "empty_cache",
    "memory_stats",
    "pinned_empty",
    "profile",
    "register_engine",
    "reset_peak",
    "stream",
    "synchronize",
    "timed",
    "torch_allocator_enabled",
    "use_torch_allocator",
]
