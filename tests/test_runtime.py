"""CPU tests of the runtime layer: devices, policies (JSON, torch-side settings,
execution), profiler, memory routing switch, errors, sessions and engines
(eager, compile, onnxruntime)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from conftest import HAS_GPU

import xpu_stone
from xpu_stone import errors
from xpu_stone import poincare as P
from xpu_stone.errors import InvalidArgumentError, UnsupportedOperationError, XpuStoneError
from xpu_stone.runtime import (
    ENGINES,
    Engine,
    InferenceSession,
    devices,
    policies,
    profile,
    profiler,
    register_engine,
    use_torch_allocator,
)
from xpu_stone.runtime import memory as M
from xpu_stone.runtime import torch_flags as flags_module
from xpu_stone.runtime.devices import tensor_core_flags
from xpu_stone.runtime.policies import (
    ExecutionPolicy,
    KernelPolicy,
    active_execution_policy,
)

cpu_only = pytest.mark.skipif(HAS_GPU, reason="checks the behaviour without a GPU")
MATMUL = torch.backends.cuda.matmul
SDP = torch.backends.cuda


# ------------------------------------------------------------------ devices
@cpu_only
def test_no_gpu_gives_an_empty_device_list_and_typed_errors():
    assert devices() == []
    with pytest.raises(UnsupportedOperationError):
        M.memory_stats()
    with pytest.raises(UnsupportedOperationError):
        xpu_stone.runtime.Stream()
    with pytest.raises(UnsupportedOperationError):
        M.pinned_empty((4,), torch.float32)


@pytest.mark.parametrize(
    "cc, flags",
    [
        ((7, 0), (False, False, False)),
        ((7, 5), (False, False, True)),
        ((8, 0), (True, False, True)),
        ((8, 9), (True, True, True)),
        ((9, 0), (True, True, False)),
        ((10, 0), (True, True, False)),
    ],
)
def test_tensor_core_flags_by_compute_capability(cc, flags):
    f = tensor_core_flags(*cc)
    assert (f["bf16"], f["fp8"], f["int4"]) == flags


# --------------------------------------------------- KernelPolicy, torch side
def _sdp_flags():
    return (
        SDP.flash_sdp_enabled(),
        SDP.mem_efficient_sdp_enabled(),
        SDP.cudnn_sdp_enabled(),
        SDP.math_sdp_enabled(),
    )


def _rpr():
    return (MATMUL.allow_fp16_reduced_precision_reduction, MATMUL.allow_bf16_reduced_precision_reduction)


@pytest.fixture
def torch_flags():
    """Puts torch's global flags back as they were, whatever the test did (through
    whichever TF32 API the process was using)."""
    saved = flags_module.save(torch)
    yield
    flags_module.restore(torch, saved)


def test_kernel_policy_applies_torch_settings_and_restores_them(torch_flags):
    MATMUL.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    before_sdp, before_rpr = _sdp_flags(), _rpr()
    with KernelPolicy(matmul="ieee", attention="math") as p:
        assert not MATMUL.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert _rpr() == (False, False)
        assert _sdp_flags() == (False, False, False, True)
        assert policies.active_policy() is p
        with KernelPolicy(matmul={"tf32": True}, attention=["flash", "efficient"]):
            assert MATMUL.allow_tf32 and _rpr() == (False, False)  # the inner policy leaves rpr alone
            assert _sdp_flags() == (True, True, False, False)
        assert not MATMUL.allow_tf32 and _sdp_flags() == (False, False, False, True)
    assert MATMUL.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert _sdp_flags() == before_sdp and _rpr() == before_rpr


def test_kernel_policy_restores_on_error_and_with_the_new_tf32_api(torch_flags):
    MATMUL.fp32_precision = "ieee"  # the new API: torch then refuses legacy reads
    with pytest.raises(ValueError, match="boom"):
        with KernelPolicy(matmul="fast"):
            assert MATMUL.fp32_precision == "tf32" and _rpr() == (True, True)
            raise ValueError("boom")
    assert MATMUL.fp32_precision == "ieee"


def test_kernel_policy_attention_setting_reaches_sdpa(torch_flags):
    q = torch.randn(1, 2, 8, 16)
    ref = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    with KernelPolicy(attention="math"):
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    torch.testing.assert_close(out, ref)
    with KernelPolicy(attention="cudnn"):  # no cuDNN attention on CPU: torch must refuse
        with pytest.raises(RuntimeError):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)


def test_kernel_policy_json_with_torch_settings(tmp_path):
    p = KernelPolicy({"poincare_dist": "generic"}, matmul={"tf32": False}, attention=["cudnn", "math"])
    path = tmp_path / "k.json"
    p.save(path)
    back = KernelPolicy.load(path)
    assert back == p and back.torch_settings == {"tf32": False, "sdp_backends": ["cudnn", "math"]}
    assert back != KernelPolicy({"poincare_dist": "generic"})
    old = {"format": KernelPolicy.FORMAT, "variants": {"poincare_dist": "generic"}}  # written before matmul=
    assert KernelPolicy.from_dict(old) == KernelPolicy({"poincare_dist": "generic"})
    for kwargs, match in (
        ({"matmul": "fastest"}, "matmul must be"),
        ({"matmul": {"tf64": True}}, "unknown matmul setting"),
        ({"matmul": {"tf32": 1}}, "true or false"),
        ({"attention": "flash2"}, "unknown attention backend"),
        ({"attention": []}, "attention must be"),
    ):
        with pytest.raises(InvalidArgumentError, match=match):
            KernelPolicy(**kwargs)
    path.write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        KernelPolicy.load(path)


# ---------------------------------------------------------- ExecutionPolicy
def test_execution_policy_json_round_trip_and_validation(tmp_path):
    p = ExecutionPolicy(deterministic=True, cuda_graphs=False, max_graph_shapes=3, notes={"mlp": "fp32"})
    path = tmp_path / "e.json"
    p.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == ExecutionPolicy.FORMAT and data["notes"] == {"mlp": "fp32"}
    assert ExecutionPolicy.load(path) == p and ExecutionPolicy.load(path) != ExecutionPolicy()
    with pytest.raises(InvalidArgumentError, match="unknown ExecutionPolicy fields"):
        ExecutionPolicy.from_dict({**data, "graphs": True})
    with pytest.raises(InvalidArgumentError, match="not a ExecutionPolicy"):
        ExecutionPolicy.from_dict({**data, "format": KernelPolicy.FORMAT})
    with pytest.raises(InvalidArgumentError, match="deterministic"):
        ExecutionPolicy.from_dict({**data, "deterministic": "yes"})
    with pytest.raises(InvalidArgumentError, match="max_graph_shapes"):
        ExecutionPolicy(max_graph_shapes=0)
    with pytest.raises(InvalidArgumentError, match="notes"):
        ExecutionPolicy(notes={"a": 1})


def test_execution_policy_nests_and_sets_deterministic_mode(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert active_execution_policy() == ExecutionPolicy()
    strict = ExecutionPolicy(deterministic=True)
    with strict:
        assert active_execution_policy() is strict
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        with ExecutionPolicy() as loose:
            assert active_execution_policy() is loose
            assert torch.are_deterministic_algorithms_enabled()  # a non-deterministic policy leaves it
        assert active_execution_policy() is strict
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert active_execution_policy() == ExecutionPolicy()


# ----------------------------------------------------------------- profiler
def test_profiler_records_each_launch_once_and_nests():
    calls = []
    assert not profiler.ACTIVE
    with profile() as outer:
        profiler.record_launch("op_a.fwd", "warp_per_row", (4, 8), "float32", 0, 7, lambda: calls.append("a"))
        with profile() as inner:
            profiler.record_launch("op_b.bwd", "generic", (3, 5), "float16", 1, 0, lambda: calls.append("b"))
        profiler.record_launch("op_a.fwd", "warp_per_row", (6, 8), "float32", 0, 7, lambda: calls.append("a"))
    assert calls == ["a", "b", "a"] and not profiler.ACTIVE
    assert [r.op for r in outer.records] == ["op_a.fwd", "op_b.bwd", "op_a.fwd"]
    (rec,) = inner.records
    assert (rec.op, rec.variant, rec.shape, rec.dtype, rec.device, rec.stream) == (
        "op_b.bwd",
        "generic",
        (3, 5),
        "float16",
        1,
        0,
    )
    assert rec.host_ns >= 0 and rec.gpu_ns is None
    assert outer.start_ns <= outer.records[0].host_start_ns <= outer.records[-1].host_start_ns <= outer.end_ns
    rows = {r["op"]: r for r in outer.summary()}
    assert rows["op_a.fwd"]["calls"] == 2 and rows["op_a.fwd"]["shapes"] == [(4, 8), (6, 8)]
    table = outer.table()
    assert "op_a.fwd" in table and "warp_per_row" in table and "4x8, 6x8" in table


def test_profiler_launch_error_propagates_and_is_not_recorded():
    def boom():
        raise RuntimeError("launch failed")

    with profile() as p:
        with pytest.raises(RuntimeError, match="launch failed"):
            profiler.record_launch("op.fwd", "v", (1, 1), "float32", 0, 0, boom)
    assert p.records == [] and not profiler.ACTIVE
    with pytest.raises(XpuStoneError, match="still open"):
        with profile() as q:
            q.records  # noqa: B018


class _FakeNvtx:
    def __init__(self):
        self.events = []

    def push(self, arg):
        self.events.append(("push", arg))

    def pop(self):
        self.events.append(("pop",))

    def argument(self, op, variant):
        return f"{op}[{variant}]"


def test_profiler_nvtx_ranges_balanced_and_only_when_asked(monkeypatch):
    fake = _FakeNvtx()
    monkeypatch.setattr(profiler, "_NVTX", [fake])
    monkeypatch.setattr(profiler, "_nvtx_args", {})
    with profile(nvtx=False):
        profiler.record_launch("op.fwd", "v", (1, 1), "float32", 0, 0, lambda: None)
    assert fake.events == []
    with profile():
        profiler.record_launch("op.fwd", "v", (1, 1), "float32", 0, 0, lambda: None)
        with pytest.raises(ValueError):
            profiler.record_launch("op.bwd", "w", (1, 1), "float32", 0, 0, lambda: int("x"))
    assert fake.events == [("push", "op.fwd[v]"), ("pop",), ("push", "op.bwd[w]"), ("pop",)]
    assert profiler._nvtx_push is None  # off again once no profile is open


def test_profiler_chrome_trace_and_session_records(tmp_path):
    model = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    session = InferenceSession(model, (x,), engine="eager")
    with profile() as p:
        session.run(x)
        profiler.record_launch("poincare_dist.fwd", "rows_per_warp", (2, 8), "float32", 0, 0, lambda: None)
    path = p.export_chrome_trace(tmp_path / "trace.json")
    trace = json.loads(path.read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert [e["name"] for e in spans] == ["session.run[eager]", "poincare_dist.fwd[rows_per_warp]"]
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
    assert spans[1]["args"] == {"variant": "rows_per_warp", "shape": [2, 8], "dtype": "float32", "device": 0}


def test_profile_is_available_at_top_level():
    assert xpu_stone.runtime.profile is profiler.profile
    if hasattr(xpu_stone, "profile"):
        assert xpu_stone.profile is profiler.profile


# ------------------------------------------------------------ memory, errors
def test_cupy_allocator_switch_and_restore():
    cupy = pytest.importorskip("cupy")
    original = cupy.cuda.get_allocator()
    with use_torch_allocator():
        assert M.torch_allocator_enabled() and cupy.cuda.get_allocator() is M.torch_backed_alloc
        with use_torch_allocator(False):
            assert not M.torch_allocator_enabled()
        assert M.torch_allocator_enabled()
    assert cupy.cuda.get_allocator() is original


def test_out_of_memory_error_names_size_and_free():
    e = M.out_of_memory(123456, 0)
    assert isinstance(e, errors.OutOfMemoryError) and isinstance(e, MemoryError)
    assert e.requested == 123456 and e.name == "cudaErrorMemoryAllocation" and "123456 bytes" in str(e)


def test_runtime_errors_are_one_hierarchy_and_carry_cuda_names():
    assert errors.XpuRuntimeError is XpuStoneError
    cupy = pytest.importorskip("cupy")
    oom = errors.cuda_error(cupy.cuda.runtime.CUDARuntimeError(2), "cudaMalloc")
    assert isinstance(oom, errors.OutOfMemoryError) and oom.name == "cudaErrorMemoryAllocation"
    assert str(oom).startswith("cudaErrorMemoryAllocation: cudaMalloc: ")
    illegal = errors.cuda_error(cupy.cuda.runtime.CUDARuntimeError(700))
    assert type(illegal) is errors.CudaError and illegal.name == "cudaErrorIllegalAddress"
    drv = errors.cuda_error(RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: out of memory"))  # a driver error's text
    assert isinstance(drv, errors.OutOfMemoryError) and drv.name == "CUDA_ERROR_OUT_OF_MEMORY"

    class TorchLike(RuntimeError):  # torch.AcceleratorError carries the code, not the name
        error_code = 700

    assert (
        errors.cuda_error(TorchLike("CUDA error: an illegal memory access")).name == "cudaErrorIllegalAddress"
    )
    assert errors.cuda_error(RuntimeError("something else")).name is None


# ---------------------------------------------------------------- sessions
def _hyperbolic_mlp(width=16, depth=2):
    from benchmarks.bench_session import mlp_and_input

    return mlp_and_input(width=width, depth=depth, batch=3, device="cpu")


def test_session_auto_on_cpu_is_eager_and_matches_the_model(caplog):
    model, x = _hyperbolic_mlp()
    policy = KernelPolicy({"poincare_mobius_add": "generic"})
    with caplog.at_level(logging.INFO, logger="xpu_stone.runtime"):
        session = InferenceSession(model, (x,), policy=[policy, ExecutionPolicy(notes={"why": "test"})])
    assert session.engine_name == "eager" and session.reason.startswith("auto:")
    assert "engine 'eager'" in caplog.text and "poincare_mobius_add" in caplog.text and "why" in caplog.text
    d = session.describe()
    assert d["kernel_policy"] == policy.to_dict() and d["execution_policy"]["notes"] == {"why": "test"}
    for batch in (3, 5):  # another shape just runs
        xb = P.expmap0(torch.randn(batch, 16) * 0.1)
        out = session.run(xb)
        with torch.no_grad():
            assert torch.equal(out, model(xb))
        assert not out.requires_grad


def test_session_applies_its_policies_on_every_run(torch_flags):
    seen = []

    def model(x):
        seen.append((_sdp_flags(), active_execution_policy().max_graph_shapes))
        return x * 2

    session = InferenceSession(
        model,
        (torch.ones(2),),
        engine="eager",
        policy=(KernelPolicy(attention="math"), ExecutionPolicy(max_graph_shapes=5)),
    )
    before = _sdp_flags()
    assert torch.equal(session(torch.ones(2)), torch.full((2,), 2.0))
    assert seen[-1] == ((False, False, False, True), 5) and _sdp_flags() == before


def test_session_errors_are_typed():
    model = torch.nn.Linear(4, 4)
    x = torch.randn(1, 4)
    with pytest.raises(InvalidArgumentError, match="no engine named 'tensorrt'"):
        InferenceSession(model, (x,), engine="tensorrt")
    with pytest.raises(InvalidArgumentError, match="policy must be"):
        InferenceSession(model, (x,), policy="fast")
    with pytest.raises(InvalidArgumentError, match="cuda_graphs is off"):
        InferenceSession(model, (x,), engine="cuda_graph", policy=ExecutionPolicy(cuda_graphs=False))
    with pytest.raises(UnsupportedOperationError, match="CUDA"):
        InferenceSession(model, (x,), engine="cuda_graph")


def test_engines_are_pluggable_and_auto_takes_the_highest_that_fits():
    class Doubler(Engine):
        auto_priority = 100

        @classmethod
        def fits(cls, model, example_inputs, execution):
            return "the model is tagged" if getattr(model, "tagged", False) else None

        def run(self, *inputs):
            return self.model(*inputs) * 2

    register_engine("doubler", Doubler)
    try:
        with pytest.raises(InvalidArgumentError, match="registered already"):
            register_engine("doubler", Doubler)
        with pytest.raises(InvalidArgumentError, match="subclass of Engine"):
            register_engine("bad", object)

        def model(x):
            return x + 1

        assert InferenceSession(model, (torch.zeros(1),)).engine_name == "eager"
        model.tagged = True
        s = InferenceSession(model, (torch.zeros(1),))
        assert (s.engine_name, s.reason) == ("doubler", "auto: the model is tagged")
        assert torch.equal(s.run(torch.ones(1)), torch.full((1,), 4.0))
    finally:
        ENGINES.unregister("doubler")
    assert "doubler" not in ENGINES


def test_compile_engine_on_cpu():
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh())
    x = torch.randn(2, 6)
    s = InferenceSession(model, (x,), engine="compile", options={"backend": "eager"})
    with torch.no_grad():
        torch.testing.assert_close(s.run(x), model(x), rtol=0, atol=0)


# ----------------------------------------------------------- onnxruntime
def _onnx_mlp(path, w, b):
    """y = tanh(x @ w + b), with a dynamic batch dim, written with onnx.helper."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["z"]),
            helper.make_node("Tanh", ["z"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model


def test_onnx_model_through_the_onnxruntime_engine_on_cpu(tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 5), dtype=np.float32)
    b = rng.standard_normal(5, dtype=np.float32)
    path = tmp_path / "mlp.onnx"
    onnx_model = _onnx_mlp(path, w, b)
    x = torch.randn(3, 8)
    with caplog.at_level(logging.INFO, logger="xpu_stone.runtime"):
        s = InferenceSession(path, (x,), policy=ExecutionPolicy(deterministic=True))
    assert s.engine_name == "onnxruntime" and "ONNX" in s.reason
    assert s.describe()["providers"] == ["CPUExecutionProvider"] and "deterministic=True" in caplog.text
    ref = torch.tanh(x @ torch.from_numpy(w) + torch.from_numpy(b))
    for xb in (x, torch.randn(7, 8)):  # the batch dim is dynamic
        out = s.run(xb)
        ref = torch.tanh(xb @ torch.from_numpy(w) + torch.from_numpy(b))
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    from_bytes = InferenceSession(onnx_model.SerializeToString(), engine="onnxruntime")
    out = from_bytes.run(x.numpy())
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, s.run(x).numpy(), rtol=0, atol=0)
    with pytest.raises(InvalidArgumentError, match="takes 1 inputs"):
        s.run(x, x)
    with pytest.raises(InvalidArgumentError, match="takes a path"):
        InferenceSession(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), engine="onnxruntime")


def test_gpu_timing_skips_host_work():
    pytest.importorskip("cupy")
    with profile(gpu_time=True) as p:
        profiler.record_launch("session.run", "eager", (2,), "float32", -1, 0, lambda: None)
    assert p.records[0].gpu_ns is None and profiler._gpu_events is None


def test_table_of_an_empty_profile():
    with xpu_stone.profile() as p:
        pass
    lines = p.table().splitlines()
    assert len(lines) == 2 and lines[0].split()[:2] == ["op", "variant"]


def test_profile_installs_the_recorder_every_launch_path_reads(monkeypatch):
    """While a profile is open the kernel layer's RECORDER is the profiler's, so row
    launches (engine.launch.launch_rows) and other launches (launch_kernel) are recorded;
    closed, it is None again."""
    from xpu_stone.engine import launch as engine_launch
    from xpu_stone.kernels import launch as kernel_launch

    calls = []
    monkeypatch.setattr(engine_launch, "launch_row", lambda *a: calls.append("row"))
    monkeypatch.setattr(kernel_launch, "_launch_kernel", lambda *a: calls.append("kernel"))
    assert kernel_launch.RECORDER[0] is None
    with profiler.profile(nvtx=False) as p:
        assert kernel_launch.RECORDER[0] is profiler.record_launch
        engine_launch.launch_rows("op.fwd", "warp_per_row", None, 1, 256, (5, 8), 8, "float32", 0, 0)
        kernel_launch.launch_kernel(None, 1, 256, (), 0, 0, op="gemm.fwd", shape=(5, 8), dtype="float32")
    assert calls == ["row", "kernel"] and kernel_launch.RECORDER[0] is None
    assert [(r.op, r.variant, r.shape) for r in p.records] == [
        ("op.fwd", "warp_per_row", (5, 8)),
        ("gemm.fwd", "", (5, 8)),
    ]
    engine_launch.launch_rows("op.fwd", "warp_per_row", None, 1, 256, (5, 8), 8, "float32", 0, 0)
    assert calls == ["row", "kernel", "row"]  # launched, not recorded
