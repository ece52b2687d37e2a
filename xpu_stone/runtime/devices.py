"""The CUDA devices of this process and what they can do."""

from __future__ import annotations

from dataclasses import dataclass

from .._deps import cupy, torch
from ..errors import UnsupportedOperationError


@dataclass(frozen=True)
class DeviceInfo:
    """One CUDA device. Sizes in bytes, clocks in kHz, versions as CUDA encodes
    them (``12080`` is 12.8).

    Tensor-core flags, by compute capability: ``bf16`` from 8.0 (Ampere);
    ``fp8`` from 8.9 (Ada, Hopper, Blackwell); ``int4`` on 7.5 to 8.9 (Turing,
    Ampere, Ada: Hopper and later have no INT4 tensor-core path).
    """

    index: int
    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    total_memory: int
    l2_cache_size: int
    shared_memory_per_block: int
    shared_memory_per_block_optin: int
    clock_rate_khz: int
    memory_clock_rate_khz: int
    memory_bus_width: int
    driver_version: int
    runtime_version: int
    bf16: bool
    fp8: bool
    int4: bool

    @property
    def arch(self) -> str:
        return "sm_{}{}".format(*self.compute_capability)


def tensor_core_flags(major: int, minor: int) -> dict[str, bool]:
    cc = (major, minor)
    return {"bf16": cc >= (8, 0), "fp8": cc >= (8, 9), "int4": (7, 5) <= cc < (9, 0)}


def devices() -> list[DeviceInfo]:
    """Every visible CUDA device; ``[]`` when there is none (or no driver), never an error."""
    if cupy is not None:
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except (RuntimeError, OSError):  # CUDARuntimeError: no device, no driver; a missing libcuda
            return []
        return [_cupy_info(i) for i in range(count)]
    if torch is not None and torch.cuda.is_available():
        return [_torch_info(i) for i in range(torch.cuda.device_count())]
    return []


def _cupy_info(i: int) -> DeviceInfo:
    """From cudaGetDeviceProperties (CuPy returns its fields by their C names);
    the clock fields left CUDA 13's struct, so they read 0 where absent."""
    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(i)
    major, minor = int(props["major"]), int(props["minor"])
    name = props["name"]
    return DeviceInfo(
        index=i,
        name=name.decode() if isinstance(name, bytes) else str(name),
        compute_capability=(major, minor),
        sm_count=int(props["multiProcessorCount"]),
        total_memory=int(props["totalGlobalMem"]),
        l2_cache_size=int(props.get("l2CacheSize", 0)),
        shared_memory_per_block=int(props.get("sharedMemPerBlock", 0)),
        shared_memory_per_block_optin=int(props.get("sharedMemPerBlockOptin", 0)),
        clock_rate_khz=int(props.get("clockRate", 0)),
        memory_clock_rate_khz=int(props.get("memoryClockRate", 0)),
        memory_bus_width=int(props.get("memoryBusWidth", 0)),
        driver_version=rt.driverGetVersion(),
        runtime_version=rt.runtimeGetVersion(),
        **tensor_core_flags(major, minor),
    )


def _torch_info(i: int) -> DeviceInfo:
    """From torch alone (no CuPy): clocks and the driver version are not exposed there (0)."""
    p = torch.cuda.get_device_properties(i)
    cuda = torch.version.cuda or "0.0"
    major_v, minor_v = (int(x) for x in cuda.split(".")[:2])
    return DeviceInfo(
        index=i,
        name=p.name,
        compute_capability=(p.major, p.minor),
        sm_count=p.multi_processor_count,
        total_memory=p.total_memory,
        l2_cache_size=getattr(p, "L2_cache_size", 0),
        shared_memory_per_block=getattr(p, "shared_memory_per_block", 0),
        shared_memory_per_block_optin=getattr(p, "shared_memory_per_block_optin", 0),
        clock_rate_khz=getattr(p, "clock_rate", 0),
        memory_clock_rate_khz=getattr(p, "memory_clock_rate", 0),
        memory_bus_width=getattr(p, "memory_bus_width", 0),
        driver_version=0,
        runtime_version=major_v * 1000 + minor_v * 10,
        **tensor_core_flags(p.major, p.minor),
    )


def current_device() -> int:
    """The current CUDA device (torch's when torch is installed, else CuPy's);
    :class:`~xpu_stone.errors.UnsupportedOperationError` when there is none."""
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.current_device()
    if cupy is not None:
        try:
            if cupy.cuda.runtime.getDeviceCount() > 0:
                return cupy.cuda.runtime.getDevice()
        except (RuntimeError, OSError) as e:
            raise UnsupportedOperationError(f"no usable CUDA device ({e})") from e
    raise UnsupportedOperationError("no CUDA device (or no CUDA build of torch / CuPy) on this machine")
