"""Per-call profiling of xpu_stone kernel launches.

    with xpu_stone.profile(gpu_time=True) as p:
        y = model(x)
    print(p.table())
    p.export_chrome_trace("trace.json")   # open in chrome://tracing or ui.perfetto.dev

While a profile is open (:data:`ACTIVE` non-empty) :func:`record_launch` is
installed as :data:`xpu_stone.kernels.launch.RECORDER`, which every launch path
reads (one list lookup per call when profiling is off). While a profile
is open every launch is recorded (op, dispatcher variant, rows x features,
dtype, device, stream, host time) and wrapped in an NVTX range named
``op[variant]`` in the ``xpu_stone`` domain (the ``nvtx`` package when
installed; torch's NVTX, with an ``xpu_stone:`` prefix, otherwise), so Nsight
Systems shows xpu_stone's launches by name. With ``gpu_time=True`` each launch
is also bracketed by two CUDA events on its stream; their times are read when
the profile closes (one synchronisation there, none per call). Launches
recorded during CUDA-graph capture carry no GPU time (their work runs at
replay).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .._deps import require_cupy
from ..errors import XpuStoneError
from ..kernels import launch as kernel_launch

ACTIVE: list = []  # open profiles, innermost last

_clock = time.perf_counter_ns
_sink: list[tuple] = []  # records of every open profile; each takes its slice when it closes
_nvtx_push = None  # NVTX push and pop while an open profile asks for ranges, else None
_nvtx_pop = None
_nvtx_args: dict = {}  # (op, variant) -> what _nvtx_push takes for it
_gpu_events = None  # the event pool while an open profile asks for GPU times, else None
_MISSING = object()


class LaunchRecord(NamedTuple):
    """One recorded call. Times in ns; ``host_start_ns`` on the
    ``time.perf_counter_ns`` clock; ``gpu_ns`` None without GPU timing."""

    op: str
    variant: str
    shape: tuple
    dtype: str
    device: int
    stream: int
    host_start_ns: int
    host_ns: int
    gpu_ns: float | None = None
    gpu_start_ns: float | None = None  # from the first timed launch on the same device


def record_launch(
    op: str, variant: str, shape: tuple, dtype: str, device: int, stream_ptr: int, launch: Callable, *args
) -> None:
    """Runs ``launch(*args)`` once and records it for every open profile (kept
    lean: about 0.5 µs without NVTX and GPU timing)."""
    push, pop = _nvtx_push, _nvtx_pop
    if push is not None:
        arg = _nvtx_args.get((op, variant), _MISSING)
        if arg is _MISSING:
            arg = _nvtx_args[(op, variant)] = _NVTX[0].argument(op, variant)
        push(arg)
    events = _gpu_events
    ev = events.start(device, stream_ptr) if events is not None and device >= 0 else None
    t0 = _clock()
    try:
        launch(*args)
        t1 = _clock()
        if ev is not None:
            events.end(ev, stream_ptr)
    except BaseException:
        if ev is not None:
            events.discard(ev)
        raise
    finally:
        if pop is not None:
            pop()
    _sink.append((op, variant, shape, dtype, device, stream_ptr, t0, t1 - t0, ev))


def call(op: str, variant: str, fn: Callable, *args, shape=(), dtype="", device=-1, stream_ptr=0):
    """``fn(*args)``, recorded like a launch while a profile is open (for work
    that is not one kernel: a session's run, a captured graph's replay)."""
    if not ACTIVE:
        return fn(*args)
    out = []
    record_launch(op, variant, shape, dtype, device, stream_ptr, lambda: out.append(fn(*args)))
    return out[0]


# ------------------------------------------------------------------- NVTX
class _NvtxPackage:
    """Ranges in the ``nvtx`` package's ``xpu_stone`` domain."""

    def __init__(self, nvtx):
        self.domain = nvtx.get_domain("xpu_stone")
        self.push, self.pop = self.domain.push_range, self.domain.pop_range

    def argument(self, op: str, variant: str):
        return self.domain.get_event_attributes(message=f"{op}[{variant}]")


class _NvtxTorch:
    """Ranges through ``torch.cuda.nvtx`` (no domains there: names get an ``xpu_stone:`` prefix)."""

    def __init__(self, nvtx):
        self.push, self.pop = nvtx.range_push, nvtx.range_pop

    def argument(self, op: str, variant: str) -> str:
        return f"xpu_stone:{op}[{variant}]"


_NVTX: list = []  # [emitter or None], found once


def nvtx_emitter():
    """The NVTX emitter of this process (None when neither the ``nvtx`` package
    nor a CUDA build of torch is there)."""
    if not _NVTX:
        _NVTX.append(_find_nvtx())
    return _NVTX[0]


def _find_nvtx():
    try:
        import nvtx

        return _NvtxPackage(nvtx)
    except ImportError:
        pass
    try:
        import torch.cuda.nvtx as tnvtx

        tnvtx.range_push("xpu_stone")  # CPU builds of torch raise here
        tnvtx.range_pop()
        return _NvtxTorch(tnvtx)
    except (ImportError, RuntimeError, AttributeError):
        return None


# ------------------------------------------------------------- CUDA events
class _EventPool:
    """Timing events, created per device and reused; each launch takes a pair."""

    def __init__(self):
        import cupy

        self._rt = cupy.cuda.runtime
        self._cupy = cupy
        self._free: dict[int, list] = {}

    def _take(self, device: int) -> int:
        free = self._free.get(device)
        if free:
            return free.pop()
        with self._cupy.cuda.Device(device):
            return self._rt.eventCreate()

    def start(self, device: int, stream_ptr: int):
        # on the launch's device: handle 0 is the legacy stream of the *current* device
        with self._cupy.cuda.Device(device):
            if self._rt.streamIsCapturing(stream_ptr):
                return None
            start, end = self._take(device), self._take(device)
            self._rt.eventRecord(start, stream_ptr)
        return (device, start, end)

    def end(self, ev, stream_ptr: int) -> None:
        with self._cupy.cuda.Device(ev[0]):
            self._rt.eventRecord(ev[2], stream_ptr)

    def discard(self, ev) -> None:
        device, start, end = ev
        self._free.setdefault(device, []).extend((start, end))

    def elapsed_ns(self, ev, ref) -> tuple[float, float]:
        """(duration, start relative to ``ref``'s start) in ns; waits for the end event."""
        _, start, end = ev
        self._rt.eventSynchronize(end)
        dur = self._rt.eventElapsedTime(start, end) * 1e6
        return dur, self._rt.eventElapsedTime(ref[1], start) * 1e6


_pool: list = []


def _event_pool() -> _EventPool:
    if not _pool:
        _pool.append(_EventPool())
    return _pool[0]


def _refresh() -> None:
    global _nvtx_push, _nvtx_pop, _gpu_events
    emitter = nvtx_emitter() if any(p.nvtx for p in ACTIVE) else None
    _nvtx_push, _nvtx_pop = (emitter.push, emitter.pop) if emitter is not None else (None, None)
    _gpu_events = _event_pool() if any(p.gpu_time for p in ACTIVE) else None
    kernel_launch.set_recorder(record_launch if ACTIVE else None)
    if not ACTIVE:
        _sink.clear()


def _resolve(raw: list[tuple]) -> list[LaunchRecord]:
    """Records with their GPU times (waits for the last timed launch of each)."""
    refs: dict[int, tuple] = {}
    out = []
    for op, variant, shape, dtype, device, stream, t0, dt, ev in raw:
        gpu = gpu_start = None
        if ev is not None:
            ref = refs.setdefault(device, ev)
            gpu, gpu_start = _pool[0].elapsed_ns(ev, ref)
        out.append(LaunchRecord(op, variant, shape, dtype, device, stream, t0, dt, gpu, gpu_start))
    return out


# ----------------------------------------------------------------- Profile
class Profile:
    """Records every xpu_stone launch while open; see the module docstring.

    ``gpu_time``: also measure each launch's GPU time with CUDA events (needs
    CuPy and a GPU). ``nvtx``: emit NVTX ranges (default True).
    """

    def __init__(self, gpu_time: bool = False, nvtx: bool = True):
        self.gpu_time = gpu_time
        self.nvtx = nvtx
        self._first = 0
        self._records: list[LaunchRecord] | None = None
        self.start_ns = self.end_ns = 0

    def __enter__(self) -> Profile:
        if self.gpu_time:
            require_cupy("profile(gpu_time=True)")
        self._records = None
        ACTIVE.append(self)
        _refresh()
        self._first = len(_sink)
        self.start_ns = _clock()
        return self

    def __exit__(self, *exc) -> None:
        self.end_ns = _clock()
        self._records = _resolve(_sink[self._first :])
        ACTIVE.pop(len(ACTIVE) - 1 - ACTIVE[::-1].index(self))
        if not ACTIVE and _pool:  # no open profile can still read the events: reuse them
            for rec in _sink:
                if rec[-1] is not None:
                    _pool[0].discard(rec[-1])
        _refresh()

    @property
    def records(self) -> list[LaunchRecord]:
        """The recorded calls, in call order (available once the profile is closed)."""
        if self._records is None:
            raise XpuStoneError("the profile is still open: read its records after the with block")
        return self._records

    def summary(self) -> list[dict]:
        """One row per (op, variant, dtype): calls, shapes, host and GPU totals and medians (µs)."""
        groups: dict[tuple, list[LaunchRecord]] = {}
        for r in self.records:
            groups.setdefault((r.op, r.variant, r.dtype), []).append(r)
        rows = []
        for (op, variant, dtype), recs in groups.items():
            host = [r.host_ns / 1e3 for r in recs]
            gpu = [r.gpu_ns / 1e3 for r in recs if r.gpu_ns is not None]
            shapes = sorted({r.shape for r in recs}, key=str)
            rows.append(
                {
                    "op": op,
                    "variant": variant,
                    "dtype": dtype,
                    "calls": len(recs),
                    "shapes": shapes,
                    "host_total_us": sum(host),
                    "host_median_us": statistics.median(host),
                    "gpu_total_us": sum(gpu) if gpu else None,
                    "gpu_median_us": statistics.median(gpu) if gpu else None,
                }
            )
        rows.sort(key=lambda row: -(row["gpu_total_us"] or row["host_total_us"]))
        return rows

    def table(self, top: int | None = None) -> str:
        """A text table of :meth:`summary`, costliest first (by GPU time when measured)."""

        def us(v):
            return "-" if v is None else f"{v:.1f}"

        head = ("op", "variant", "dtype", "calls", "shapes", "host µs", "host med", "GPU µs", "GPU med")
        lines = []
        for row in self.summary()[:top]:
            shapes = ", ".join("x".join(map(str, s)) for s in row["shapes"][:3])
            if len(row["shapes"]) > 3:
                shapes += f" (+{len(row['shapes']) - 3})"
            lines.append(
                (
                    row["op"],
                    row["variant"] or "-",
                    row["dtype"] or "-",
                    str(row["calls"]),
                    shapes or "-",
                    us(row["host_total_us"]),
                    us(row["host_median_us"]),
                    us(row["gpu_total_us"]),
                    us(row["gpu_median_us"]),
                )
            )
        widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:{'<' if i < 5 else '>'}{w}}}" for i, w in enumerate(widths))
        out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*line) for line in lines]
        return "\n".join(out)

    def chrome_trace(self) -> dict:
        """The records in the Trace Event Format (complete events, µs): host calls
        on one track per thread of the process, GPU times (when measured) on one
        track per device and stream, aligned at the device's first timed launch."""
        pid = os.getpid()
        origin = self.start_ns
        events = [
            {"name": "process_name", "ph": "M", "pid": pid, "args": {"name": "xpu_stone"}},
            {"name": "thread_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": "host"}},
        ]
        anchors: dict[int, int] = {}
        tracks: dict[tuple, int] = {}
        for r in self.records:
            args = {"variant": r.variant, "shape": list(r.shape), "dtype": r.dtype, "device": r.device}
            name = f"{r.op}[{r.variant}]" if r.variant else r.op
            events.append(
                {
                    "name": name,
                    "cat": "xpu_stone",
                    "ph": "X",
                    "pid": pid,
                    "tid": 0,
                    "ts": (r.host_start_ns - origin) / 1e3,
                    "dur": r.host_ns / 1e3,
                    "args": args,
                }
            )
            if r.gpu_ns is None:
                continue
            anchor = anchors.setdefault(r.device, r.host_start_ns)
            key = (r.device, r.stream)
            if key not in tracks:
                tracks[key] = tid = len(tracks) + 1
                label = f"GPU {r.device} stream 0x{r.stream:x}"
                events.append(
                    {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": label}}
                )
            events.append(
                {
                    "name": name,
                    "cat": "gpu",
                    "ph": "X",
                    "pid": pid,
                    "tid": tracks[key],
                    "ts": (anchor - origin + r.gpu_start_ns) / 1e3,
                    "dur": r.gpu_ns / 1e3,
                    "args": args,
                }
            )
        return {"traceEvents": events, "displayTimeUnit": "ns"}

    def export_chrome_trace(self, path: str | Path) -> Path:
        """Writes :meth:`chrome_trace` as JSON to ``path`` (viewable in chrome://tracing
        or ui.perfetto.dev); returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.chrome_trace()))
        return path


def profile(gpu_time: bool = False, nvtx: bool = True) -> Profile:
    """A :class:`Profile` to use as ``with xpu_stone.profile() as p:``."""
    return Profile(gpu_time=gpu_time, nvtx=nvtx)
