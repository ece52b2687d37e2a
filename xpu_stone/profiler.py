"""Per-call profiling of xpu_stone kernel launches.

The launch paths call :func:`record_launch` only while :data:`ACTIVE` is
non-empty (one list truth test per call when profiling is off).
"""

from __future__ import annotations

import time
from collections.abc import Callable

ACTIVE: list = []  # open profiles; each has .add(record: dict)


def record_launch(
    op: str, variant: str, shape: tuple, dtype: str, device: int, stream_ptr: int, launch: Callable[[], None]
) -> None:
    """Runs ``launch()`` and gives every open profile a record of it."""
    t0 = time.perf_counter_ns()
    launch()
    host_ns = time.perf_counter_ns() - t0
    rec = {"op": op, "variant": variant, "shape": shape, "dtype": dtype, "device": device, "host_ns": host_ns}
    for p in ACTIVE:
        p.add(rec)
