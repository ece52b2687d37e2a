"""The kernel path: sources and compilation, registry, dispatcher, launch."""

from .dispatcher import explain, select, set_tuned_table
from .registry import REGISTRY

__all__ = ["REGISTRY", "build", "explain", "select", "set_tuned_table"]


def build(ops=None, dtypes=None, arch=None, workers=None, progress=None):
    """Compiles (or loads from the disk cache) every kernel of ``ops`` for
    ``arch`` (default: the current GPU's). Returns the compiled kernels.
    ``progress(done, total, kernel)`` is called after each one."""
    from concurrent.futures import ThreadPoolExecutor

    from .compiler import compile_kernel
    from .launch import device_arch
    from .registry import DTYPES

    arch = arch or device_arch(_current_device())
    jobs = []
    for kernels in REGISTRY:
        if ops is None or kernels.op in ops:
            jobs += [(kernels.source, name, defs) for name, defs in kernels.all_kernels(dtypes or DTYPES)]
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(compile_kernel, src, name, arch, True, defs) for src, name, defs in jobs]
        for i, f in enumerate(futures):
            results.append(f.result())
            if progress is not None:
                progress(i + 1, len(futures), results[-1])
    return results


def _current_device() -> int:
    from .._deps import require_cupy

    return require_cupy("building kernels").cuda.runtime.getDevice()
