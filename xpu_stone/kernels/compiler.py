r"""CUDA sources -> NVRTC -> cubin, cached on disk, loaded per device.

A kernel is named by its source file (under ``cuda_src/``) and a C++ name
expression such as ``xs_rowwise_fwd<PoincareMobiusAdd, float, double, 32, 2, 4, 256>``.
Each kernel is compiled on its first use into its own cubin, so a first call
costs one small compile (about 0.1-0.3 s) and never the whole library.

``#include "..."`` lines are inlined before compiling, so the cache key (a
SHA-256 of the inlined source, options, name expression, target, NVRTC
version and cache format) changes whenever a header does; CuPy's own cache keys miss header
edits. Compilation needs only the NVRTC library (no GPU): ``compile_kernel`` is
what ``scripts/check_kernels.py`` runs on CPU-only CI.

Cache format: one file a kernel, ``<key>.xsk`` in :func:`cache_dir`::

    XSKC 1\n                                          magic and format version (7 bytes)
    {"key": ..., "meta": {...}, "sha256": ..., "size": N}\n     one line of JSON
    <N bytes>                                          the cubin (an ELF image)

``key`` is the file's own name (the hash above, which covers the format version),
``meta`` the mangled name and what ptxas reported, ``sha256`` and ``size`` those
of the cubin. An entry is written to a temporary file in the same folder and
renamed over its name (``os.replace``, atomic), so a reader sees a whole entry or
none, and processes that compile the same kernel at once each rename a whole
entry (the last one stays). An entry whose magic, header, key, size, checksum or
ELF signature is wrong (a truncated or garbage file) is reported with one
:class:`~xpu_stone.errors.KernelCacheWarning`, recompiled and rewritten. A cache
folder that cannot be written (read-only, or not a folder) costs one
KernelCacheWarning; the process then keeps the kernels it compiles in memory.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import struct
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompilationError, KernelCacheWarning, UnsupportedOperationError

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


_EIATTR_REGCOUNT = 0x2F  # .nv.info attribute: (symbol index, registers) of a kernel
_EIFMT_SVAL = 0x04  # .nv.info entry with a 16-bit size and that many payload bytes


def cubin_registers(cubin: bytes, symbol: str) -> int:
    """Registers of kernel ``symbol`` (its mangled name) read from the cubin itself:
    the ``EIATTR_REGCOUNT`` entry of its ELF ``.nv.info`` section. -1 when absent.
    The fallback for an NVRTC whose log carries no ptxas report."""
    try:
        shoff = struct.unpack_from("<Q", cubin, 0x28)[0]
        entsize, count, names_index = struct.unpack_from("<HHH", cubin, 0x3A)
        sections = [struct.unpack_from("<IIQQQQII", cubin, shoff + i * entsize) for i in range(count)]

        def cstr(table_offset: int, at: int) -> str:
            start = table_offset + at
            return cubin[start : cubin.index(b"\0", start)].decode()

        names = sections[names_index][4]
        by_name = {cstr(names, sec[0]): sec for sec in sections}
        symtab, info = by_name[".symtab"], by_name[".nv.info"]
        strings = sections[symtab[6]][4]  # sh_link: the symbol names' table
        index = next(
            i
            for i in range(symtab[5] // 24)
            if cstr(strings, struct.unpack_from("<I", cubin, symtab[4] + 24 * i)[0]) == symbol
        )
        data, at = cubin[info[4] : info[4] + info[5]], 0
        while at + 4 <= len(data):
            fmt, attr = data[at], data[at + 1]
            size = struct.unpack_from("<H", data, at + 2)[0] if fmt == _EIFMT_SVAL else 0
            if attr == _EIATTR_REGCOUNT and size == 8:
                sym, regs = struct.unpack_from("<II", data, at + 4)
                if sym == index:
                    return regs
            at += 4 + size
    except (struct.error, KeyError, StopIteration, IndexError, ValueError, UnicodeDecodeError):
        pass
    return -1


CACHE_MAGIC = b"XSKC 1\n"
CACHE_SUFFIX = ".xsk"
_ELF_MAGIC = b"\x7fELF"
_META_FIELDS = ("lowered_name", "registers", "spill_bytes", "stack_bytes", "smem_bytes")


def _options(arch: str, defines: tuple[str, ...]) -> tuple[str, ...]:
    return (*NVRTC_OPTIONS, f"-arch={arch}", *(f"-D{d}" for d in defines))


def cache_key(source: str, name: str, arch: str, defines: tuple[str, ...] = ()) -> str:
    """The cache key of a kernel: a hash of its inlined source, NVRTC options, name
    expression, target, NVRTC version and the cache format."""
    options = _options(arch, defines)
    key_text = json.dumps([CACHE_MAGIC.decode(), load_source(source), options, name, arch, nvrtc_version()])
    return hashlib.sha256(key_text.encode()).hexdigest()[:40]


def entry_path(key: str) -> Path:
    """Where the cache entry of ``key`` lives."""
    return cache_dir() / f"{key}{CACHE_SUFFIX}"


def encode_entry(key: str, cubin: bytes, meta: dict) -> bytes:
    """The bytes of a cache entry (see the module docstring)."""
    header = {"key": key, "meta": meta, "sha256": hashlib.sha256(cubin).hexdigest(), "size": len(cubin)}
    return CACHE_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + cubin


def decode_entry(key: str, blob: bytes) -> tuple[dict, bytes]:
    """``(meta, cubin)`` of the cache entry ``blob`` of ``key``; ValueError saying
    what is wrong when it is not a whole, valid entry of that key."""
    if not blob.startswith(CACHE_MAGIC):
        raise ValueError("no xpu_stone cache header (garbage, or another format)")
    end = blob.find(b"\n", len(CACHE_MAGIC))
    if end < 0:
        raise ValueError("truncated header")
    try:
        header = json.loads(blob[len(CACHE_MAGIC) : end])
        size, digest, meta = header["size"], header["sha256"], header["meta"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable header ({type(e).__name__})") from None
    if header.get("key") != key:
        raise ValueError("the header names another kernel")
    cubin = blob[end + 1 :]
    if len(cubin) != size:
        raise ValueError(f"{len(cubin)} bytes of cubin where the header says {size} (truncated?)")
    if hashlib.sha256(cubin).hexdigest() != digest:
        raise ValueError("the cubin's SHA-256 does not match the header's")
    if not cubin.startswith(_ELF_MAGIC):
        raise ValueError("the payload is not a cubin (no ELF signature)")
    if not isinstance(meta, dict) or sorted(meta) != sorted(_META_FIELDS):
        raise ValueError("the header's metadata has other fields")
    return meta, cubin


def write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder that is
    then renamed over ``path``: a reader sees the old file or the new one, never a
    part. Raises OSError (nothing is left behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the entry from other users of the cache
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# Entries of cache folders this process could not write, by path, and those folders
# (each warned about once).
_in_memory: dict[str, bytes] = {}
_unwritable: set[str] = set()
_warn_lock = threading.Lock()


def _read_entry(path: Path) -> tuple[dict, bytes] | None:
    """The entry at ``path`` (or kept in memory for it), None when there is none or it is damaged."""
    blob = _in_memory.get(str(path))
    if blob is None:
        try:
            blob = path.read_bytes()
        except OSError:  # none yet, or not readable: a miss
            return None
    try:
        return decode_entry(path.name.removesuffix(CACHE_SUFFIX), blob)
    except ValueError as e:
        warnings.warn(
            f"damaged kernel cache entry {path}: {e}; recompiling the kernel",
            KernelCacheWarning,
            stacklevel=3,
        )
        return None


def _store_entry(path: Path, blob: bytes) -> None:
    try:
        write_atomic(path, blob)
    except OSError as e:
        _in_memory[str(path)] = blob
        folder = str(path.parent)
        with _warn_lock:
            if folder in _unwritable:
                return
            _unwritable.add(folder)
        warnings.warn(
            f"cannot write the kernel cache {folder} ({e}); this process keeps the kernels it compiles "
            "in memory (set XPU_STONE_CACHE_DIR to a writable folder)",
            KernelCacheWarning,
            stacklevel=3,
        )


def compile_kernel(
    source: str, name: str, arch: str, use_cache: bool = True, defines: tuple[str, ...] = ()
) -> CompiledKernel:
    """Compiles kernel ``name`` of ``source`` for ``arch`` (e.g. ``"sm_90"``), with
    extra preprocessor ``defines`` such as ``("XS_FAST_TRANSCENDENTALS=1",)``; with
    ``use_cache``, loads it from the disk cache or stores it there (see the module
    docstring: damaged entries and unwritable folders warn, they never raise).

    Raises :class:`CompilationError` carrying NVRTC's log when the compile fails.
    """
    path = entry_path(cache_key(source, name, arch, defines))
    if use_cache:
        hit = _read_entry(path)
        if hit is not None:
            meta, cubin = hit
            return CompiledKernel(source, name, arch, cubin, from_cache=True, **meta)

    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(load_source(source), source, [], [])
    try:
        nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, list(_options(arch, defines)))
        except nvrtc.NVRTCError:
            raise CompilationError(f"{name} ({source}, {arch})", nvrtc.getProgramLog(prog)) from None
        log = nvrtc.getProgramLog(prog)
        lowered = nvrtc.getLoweredName(prog, name)
        cubin = nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    meta = {"lowered_name": lowered, **_resources(log)}
    if meta["registers"] < 0:  # an NVRTC that leaves the ptxas report out of its log
        meta["registers"] = cubin_registers(cubin, lowered)
    if use_cache:
        _store_entry(path, encode_entry(path.name.removesuffix(CACHE_SUFFIX), cubin, meta))
    return CompiledKernel(source, name, arch, cubin, from_cache=False, **meta)
