"""CUDA sources -> NVRTC -> cubin, cached on disk, loaded per device.

A kernel is named by its source file (under ``cuda_src/``) and a C++ name
expression such as ``xs_rowwise_fwd<PoincareMobiusAdd, float, double, 32, 2, 4, 256>``.
Each kernel is compiled on its first use into its own cubin, so a first call
costs one small compile (about 0.1-0.3 s) and never the whole library.

``#include "..."`` lines are inlined before compiling, so the cache key (a
SHA-256 of the inlined source, options, name expression, target and NVRTC
version) changes whenever a header does; CuPy's own cache keys miss header
edits. Compilation needs only the NVRTC library (no GPU): ``compile_kernel`` is
what ``scripts/check_kernels.py`` runs on CPU-only CI.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompilationError, UnsupportedOperationError

NVRTC_OPTIONS = ("-std=c++17", "-default-device", "-Xptxas=-v")
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def source_dir() -> Path:
    """The folder holding the ``.cu`` sources: inside the installed package, or
    the repository's top-level ``cuda_src/`` when running from a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "cuda_src", here.parent / "cuda_src"):
        if candidate.is_dir():
            return candidate
    raise UnsupportedOperationError(f"cannot find the CUDA sources next to {here}")


def _inline(path: Path, seen: set[Path]) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        m = _INCLUDE.match(line)
        if m:
            target = (path.parent / m.group(1)).resolve()
            if target not in seen:
                seen.add(target)
                lines.append(f"// ---- {m.group(1)}")
                lines.extend(_inline(target, seen))
            continue
        if line.strip() == "#pragma once":
            continue
        lines.append(line)
    return lines


@functools.cache
def load_source(name: str) -> str:
    """The source ``name`` with its local headers inlined (each once)."""
    path = source_dir() / name
    return "\n".join(_inline(path, {path.resolve()})) + "\n"


def cache_dir() -> Path:
    """Disk cache of cubins: ``$XPU_STONE_CACHE_DIR`` or ``~/.cache/xpu_stone/kernels``."""
    root = os.environ.get("XPU_STONE_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "xpu_stone" / "kernels"
    return base


def _nvrtc():
    try:
        from cupy.cuda import nvrtc
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise UnsupportedOperationError(
            "compiling kernels needs CuPy and NVRTC (pip install cupy-cuda13x nvidia-cuda-nvrtc)"
        ) from e
    return nvrtc


@functools.cache
def nvrtc_version() -> tuple[int, int]:
    return tuple(_nvrtc().getVersion())


@dataclass(frozen=True)
class CompiledKernel:
    """A compiled kernel: its cubin, its mangled name and what ptxas reported."""

    source: str
    name: str
    arch: str
    cubin: bytes
    lowered_name: str
    registers: int
    spill_bytes: int
    stack_bytes: int
    smem_bytes: int
    from_cache: bool


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def _resources(log: str) -> dict:
    regs = _PTXAS_REGS.search(log)
    spill = _PTXAS_SPILL.search(log)
    smem = _PTXAS_SMEM.search(log)
    return {
        "registers": int(regs.group(1)) if regs else -1,
        "stack_bytes": int(spill.group(1)) if spill else 0,
        "spill_bytes": int(spill.group(2)) + int(spill.group(3)) if spill else 0,
        "smem_bytes": int(smem.group(1)) if smem else 0,
    }


_cache_lock = threading.Lock()


def compile_kernel(
    source: str, name: str, arch: str, use_cache: bool = True, defines: tuple[str, ...] = ()
) -> CompiledKernel:
    """Compiles kernel ``name`` of ``source`` for ``arch`` (e.g. ``"sm_90"``), with
    extra preprocessor ``defines`` such as ``("XS_FAST_TRANSCENDENTALS=1",)``.

    Raises :class:`CompilationError` carrying NVRTC's log when the compile fails.
    """
    code = load_source(source)
    options = (*NVRTC_OPTIONS, f"-arch={arch}", *(f"-D{d}" for d in defines))
    key_text = json.dumps([code, options, name, arch, nvrtc_version()])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:40]
    path = cache_dir() / f"{key}.cubin"
    meta_path = path.with_suffix(".json")
    if use_cache and path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            return CompiledKernel(source, name, arch, path.read_bytes(), from_cache=True, **meta)
        except (OSError, ValueError, TypeError):
            pass  # a damaged entry is recompiled below

    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(code, source, [], [])
    try:
        nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError:
            raise CompilationError(f"{name} ({source}, {arch})", nvrtc.getProgramLog(prog)) from None
        log = nvrtc.getProgramLog(prog)
        lowered = nvrtc.getLoweredName(prog, name)
        cubin = nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    meta = {"lowered_name": lowered, **_resources(log)}
    if use_cache:
        _write_atomic(path, cubin, meta_path, json.dumps(meta).encode())
    return CompiledKernel(source, name, arch, cubin, from_cache=False, **meta)


def _write_atomic(path: Path, data: bytes, meta_path: Path, meta: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _cache_lock:
            for target, payload in ((path, data), (meta_path, meta)):
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp")
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                os.replace(tmp, target)
    except OSError:
        pass  # a read-only cache only costs a recompile next time
