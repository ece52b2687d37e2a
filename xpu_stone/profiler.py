"""Old import path (kept for one release): see :mod:`xpu_stone.runtime.profiler`."""

from .runtime.profiler import ACTIVE, LaunchRecord, Profile, call, nvtx_emitter, profile, record_launch

__all__ = ["ACTIVE", "LaunchRecord", "Profile", "call", "nvtx_emitter", "profile", "record_launch"]
