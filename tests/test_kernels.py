"""CPU tests of the kernel path: compilation (no GPU needed), cache keys, the
parameter struct, the registry, the dispatcher and KernelPolicy."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import needs_nvrtc

import xpu_stone
from xpu_stone import KernelPolicy
from xpu_stone.errors import CompilationError, InvalidArgumentError
from xpu_stone.kernels import REGISTRY, compiler, dispatcher, explain
from xpu_stone.kernels.auto_table import TunedTable
from xpu_stone.kernels.launch import ROW_ARG_FIELDS, ROW_ARGS
from xpu_stone.kernels.registry import DTYPES, MAX_CACHED

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("cupy")


@needs_nvrtc
@pytest.mark.parametrize("arch", ("sm_80", "sm_90"))
def test_one_kernel_of_every_op_compiles(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("XPU_STONE_CACHE_DIR", str(tmp_path))
    for kernels in REGISTRY:
        for name, defines in list(kernels.all_kernels(["float32", "bfloat16"]))[:2]:
            k = compiler.compile_kernel(kernels.source, name, arch, defines=defines)
            assert k.cubin and k.lowered_name.startswith("_Z") and 0 < k.registers <= 255


@needs_nvrtc
def test_compile_error_carries_the_nvrtc_log(tmp_path, monkeypatch):
    monkeypatch.setenv("XPU_STONE_CACHE_DIR", str(tmp_path))
    with pytest.raises(CompilationError) as info:
        compiler.compile_kernel(
            "poincare.cu", "xs_rowwise_fwd<NoSuchOp, float, double, 32, 1, 4, 256>", "sm_90"
        )
    assert "NoSuchOp" in info.value.log and "NoSuchOp" in info.value.kernel


@needs_nvrtc
def test_disk_cache_hit_and_header_edit_changes_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XPU_STONE_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "src"
    (src / "common").mkdir(parents=True)
    (src / "common" / "h.cuh").write_text("#pragma once\n#define XS_SCALE 2\n")
    (src / "k.cu").write_text('#include "common/h.cuh"\n__global__ void k(float* x) { x[0] *= XS_SCALE; }\n')
    monkeypatch.setattr(compiler, "source_dir", lambda: src)
    compiler.load_source.cache_clear()
    try:
        first = compiler.compile_kernel("k.cu", "k", "sm_90")
        again = compiler.compile_kernel("k.cu", "k", "sm_90")
        assert not first.from_cache and again.from_cache
        (src / "common" / "h.cuh").write_text("#pragma once\n#define XS_SCALE 3\n")
        compiler.load_source.cache_clear()
        edited = compiler.compile_kernel("k.cu", "k", "sm_90")
        assert not edited.from_cache and edited.cubin != first.cubin
    finally:
        compiler.load_source.cache_clear()


def test_headers_are_inlined_once():
    code = compiler.load_source("poincare.cu")
    assert "#include" not in code.replace("#include <", "")
    assert code.count("struct xs_row_args {") == 1


def test_parameter_struct_matches_the_cuda_declaration():
    """The host packs xs_row_args field by field: same count, all 8-byte fields."""
    text = (ROOT / "cuda_src" / "common" / "rowwise.cuh").read_text()
    body = re.search(r"struct xs_row_args \{(.*?)\};", text, re.S).group(1)
    fields = []
    for line in body.splitlines():
        decl = line.split("//")[0].strip().rstrip(";")
        if not decl:
            continue
        names = re.match(r"^(?:const\s+)?(?:long long|double|void)\s*\*?\s*(.*)$", decl).group(1)
        for n in names.replace("*", "").split(","):
            n = n.strip()
            m = re.match(r"(\w+)\[(\d+)\]", n)
            fields += [f"{m.group(1)}{i}" for i in range(int(m.group(2)))] if m else [n]
    assert len(fields) == len(ROW_ARG_FIELDS) == 27
    assert ROW_ARGS.size == 27 * 8


def test_registry_lists_every_poincare_op_and_bounded_variants():
    ops = {k.op for k in REGISTRY}
    row_ops = set(xpu_stone.poincare.__all__) - {"cdist", "knn"}  # those two: a GEMM and an epilogue
    assert {f"poincare_{n}" for n in row_ops} <= ops
    kernels = REGISTRY.get("poincare_dist")
    assert [v.name for v in kernels.variants] == ["rows_per_warp", "warp_per_row", "block_per_row", "generic"]
    for dtype in DTYPES:
        for v in kernels.variants:
            for cfg in v.configs(dtype):
                assert cfg.iters * cfg.vec <= MAX_CACHED[dtype]
    with pytest.raises(InvalidArgumentError, match="unknown op"):
        REGISTRY.get("poincare_nope")


@pytest.fixture
def heuristic_only():
    """The empty table: every choice the heuristic's (also when the suite runs with the
    shipped tables, XPU_STONE_TEST_TABLES=shipped)."""
    dispatcher.set_tuned_table(TunedTable())
    yield
    dispatcher.set_tuned_table(None)


@pytest.mark.parametrize(
    "dtype, d, aligned, variant",
    [
        ("float32", 16, True, "rows_per_warp"),
        ("float32", 64, True, "rows_per_warp"),
        ("float32", 256, True, "warp_per_row"),
        ("float32", 4096, True, "block_per_row"),
        ("float32", 100000, True, "block_per_row"),
        ("bfloat16", 128, True, "rows_per_warp"),
        ("float32", 17, False, "generic"),
        ("float64", 1, False, "generic"),
    ],
)
def test_heuristic_choices(dtype, d, aligned, variant, heuristic_only):
    choice = dispatcher.select("poincare_mobius_add", dtype, d, aligned)
    assert choice.variant == variant and choice.reason == "heuristic"
    assert choice.config.covers(d)


def test_policy_overrides_then_restores_and_is_cached():
    base = dispatcher.select("poincare_dist", "float32", 256, True)
    with KernelPolicy({"poincare_dist": "block_per_row"}):
        inside = dispatcher.select("poincare_dist", "float32", 256, True)
        assert inside.variant == "block_per_row" and inside.reason == "policy"
        assert dispatcher.select("poincare_dist", "float32", 256, True) is inside  # cached
        # a vectorized variant cannot take unaligned rows: heuristic, and explain says why
        assert "cannot take this input" in explain("poincare_dist", 17, aligned=False)
    assert dispatcher.select("poincare_dist", "float32", 256, True) == base


def test_policy_json_round_trip_and_validation(tmp_path):
    policy = KernelPolicy({"poincare_mobius_add": "generic", "poincare_dist": "auto"})
    path = tmp_path / "policy.json"
    policy.save(path)
    assert KernelPolicy.load(path) == policy
    assert json.loads(path.read_text())["format"] == KernelPolicy.FORMAT
    with pytest.raises(InvalidArgumentError, match="unknown op"):
        KernelPolicy({"poincare_nope": "generic"})
    with pytest.raises(InvalidArgumentError, match="no variant"):
        KernelPolicy({"poincare_dist": "fastest"})
    with pytest.raises(InvalidArgumentError, match="unknown KernelPolicy fields"):
        KernelPolicy.from_dict({"format": KernelPolicy.FORMAT, "variants": {}, "extra": 1})
    with pytest.raises(InvalidArgumentError, match="not a KernelPolicy"):
        KernelPolicy.from_dict({"variants": {}})


def test_tuned_table_plugs_in():
    class Table(dispatcher.TunedTable):
        def lookup(self, op, dtype, d, device):
            return "generic" if op == "poincare_lambda_x" else None

    dispatcher.set_tuned_table(Table())
    try:
        c = dispatcher.select("poincare_lambda_x", "float32", 64, True)
        assert (c.variant, c.reason) == ("generic", "table")
    finally:
        dispatcher.set_tuned_table(dispatcher.TunedTable())
    assert dispatcher.select("poincare_lambda_x", "float32", 64, True).reason == "heuristic"


def test_import_without_torch_and_clear_error():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import xpu_stone\n"
        "from xpu_stone import poincare\n"
        "try:\n"
        "    poincare.mobius_add([1.0], [2.0])\n"
        "except xpu_stone.UnsupportedOperationError as e:\n"
        "    print('OK', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.startswith("OK") and "needs PyTorch" in out.stdout


def test_main_job_without_torch_says_what_it_skipped():
    """python -m xpu_stone with no torch still compiles one kernel per op (when NVRTC is
    there) and names what it could not run, instead of claiming a CPU check."""
    code = (
        "import sys; sys.modules['torch'] = None\nfrom xpu_stone.__main__ import main\nsys.exit(main([]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "checking the CPU path" not in out.stdout
    assert "skipped: the self-check" in out.stdout and "pip install torch" in out.stdout
    assert "compiled one kernel of each" in out.stdout or "skipped: the kernel compile check" in out.stdout


@needs_nvrtc
def test_check_kernels_json_counts_the_failures(tmp_path, monkeypatch):
    """scripts/check_kernels.py --json: every kernel compiled is listed, and the number
    that failed is written too (a report that lists only successes cannot show one)."""
    from helpers import load_script

    monkeypatch.setenv("XPU_STONE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "build.json"
    script = load_script("check_kernels")
    rc = script.main(
        ["--arch", "sm_90", "--ops", "rbe_linear", "--dtypes", "float32", "--quiet", "--json", str(out)]
    )
    report = json.loads(out.read_text())
    expected = sum(1 for _ in REGISTRY.get("rbe_linear").all_kernels(["float32"]))
    assert rc == 0 and report["failed"] == 0 and len(report["kernels"]) == expected > 0


def test_launch_parameters_are_packed_at_their_c_alignment():
    """launch_kernel's packed parameters: each pointer cuLaunchKernel reads holds its
    argument's value at the alignment of its C type; a non-NumPy argument is left to CuPy."""
    import ctypes

    import numpy

    from xpu_stone.kernels import launch

    args = (numpy.uint64(2**40 + 5), numpy.int32(-3), numpy.float64(2.5), numpy.int32(7), numpy.float32(1.5),
            numpy.int64(-(2**40)), numpy.uint32(9))  # fmt: skip
    ptr = launch._params_ptr(args)
    pointers = (ctypes.c_void_p * len(args)).from_address(ptr)
    types = (ctypes.c_uint64, ctypes.c_int32, ctypes.c_double, ctypes.c_int32, ctypes.c_float, ctypes.c_int64,
             ctypes.c_uint32)  # fmt: skip
    for p, a, c in zip(pointers, args, types):
        assert p % ctypes.sizeof(c) == 0 and c.from_address(p).value == a
    assert launch._params_ptr((numpy.int32(1), object())) is None
    again = launch._params_ptr((numpy.uint64(1),) + args[1:])  # same signature: same memory, new values
    assert again == ptr and ctypes.c_uint64.from_address(pointers[0]).value == 1
