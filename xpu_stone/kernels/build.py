"""Ahead-of-time compilation of registered kernels: the one build loop, used by
:func:`xpu_stone.kernels.build`, ``python -m xpu_stone`` and
``scripts/check_kernels.py``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .._deps import require_cupy
from ..errors import CompilationError
from .compiler import CompiledKernel, compile_kernel
from .launch import device_arch
from .registry import DTYPES, REGISTRY

__all__ = ["BuildResult", "build", "compile_all", "jobs"]


@dataclass(frozen=True)
class BuildResult:
    """One kernel of a build: its source, name expression, target, the compiled
    kernel or the compilation error, and the wall seconds its compile (or its load from
    the disk cache) took on its worker thread."""

    source: str
    name: str
    arch: str
    kernel: CompiledKernel | None
    error: CompilationError | None = None
    seconds: float = 0.0


def jobs(ops=None, dtypes=None, archs=("sm_90",), first_only: bool = False) -> list[tuple]:
    """(source, name expression, defines, arch) of every kernel of ``ops`` (default:
    all registered) for ``dtypes`` and each of ``archs``; ``first_only`` keeps one
    kernel per op (a quick check that each source compiles)."""
    out = []
    for arch in archs:
        for kernels in REGISTRY:
            if ops is not None and kernels.op not in ops:
                continue
            listed = kernels.all_kernels(tuple(dtypes or DTYPES))
            for i, (name, defines) in enumerate(listed):
                if first_only and i:
                    break
                out.append((kernels.source, name, defines, arch))
    return out


def compile_all(
    ops: Iterable[str] | None = None,
    dtypes: Iterable[str] | None = None,
    arch: str | Iterable[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int, BuildResult], None] | None = None,
    *,
    use_cache: bool = True,
    first_only: bool = False,
    raise_errors: bool = True,
) -> list[BuildResult]:
    """The build loop: compiles (or loads from the disk cache) every kernel of ``ops``
    for ``arch`` (a target such as ``"sm_90"``, a list of them, or None for the
    current GPU's) on ``workers`` threads; ``progress(done, total, result)`` after
    each kernel. With ``raise_errors`` the first failure raises its
    :class:`~xpu_stone.errors.CompilationError`; otherwise failures come back as
    results with ``error`` set (what ``scripts/check_kernels.py`` reports)."""
    if arch is None:
        archs = [device_arch(require_cupy("building kernels").cuda.runtime.getDevice())]
    else:
        archs = [arch] if isinstance(arch, str) else list(arch)
    todo = jobs(ops, dtypes, archs, first_only)

    def run(job) -> BuildResult:
        src, name, defines, target = job
        start = time.perf_counter()
        try:
            kernel = compile_kernel(src, name, target, use_cache, defines)
            return BuildResult(src, name, target, kernel, seconds=time.perf_counter() - start)
        except CompilationError as e:
            if raise_errors:
                raise
            return BuildResult(src, name, target, None, e, time.perf_counter() - start)

    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(run, todo):
            results.append(result)
            if progress is not None:
                progress(len(results), len(todo), result)
    return results


def build(ops=None, dtypes=None, arch=None, workers=None, progress=None, *, first_only: bool = False):
    """Compiles (or loads from the disk cache) every kernel of ``ops`` (default: all
    registered) for ``arch`` (default: the current GPU's). Returns the compiled
    kernels; ``progress(done, total, kernel)`` is called after each one. Raises
    :class:`~xpu_stone.errors.CompilationError` on the first failure."""
    report = None if progress is None else (lambda done, total, result: progress(done, total, result.kernel))
    return [r.kernel for r in compile_all(ops, dtypes, arch, workers, report, first_only=first_only)]
