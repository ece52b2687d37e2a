"""The row-wise benchmarks' machinery, on the CPU: every reference formula they compare
compiles as one graph forward and backward (``fullgraph=True``: a break would be a
failed cell, not a silently eager one), a compile that captures no graph is marked
invalid, and the parallel precompile warms every cell once per mode before anything is
timed."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
import torch

from benchmarks import bench_models, bench_poincare, harness

CPU = torch.Generator().manual_seed(0)


def _compile_eager(fn):  # dynamo's capture only: what fullgraph checks, without codegen
    return torch.compile(fn, dynamic=False, fullgraph=True, backend="eager")


def _inputs(bench, op):
    gen = torch.Generator().manual_seed(1)
    if bench is bench_poincare:
        return bench_poincare._with_scalars(op, bench_poincare._vectors(op, 5, 6, torch.float64, gen))
    family, name = op.split(".")
    return bench_models._args(family, name, 5, 6, torch.float64, gen)


def _references(bench):
    if bench is bench_poincare:
        return [(op, getattr(bench_poincare.R, op)) for op in bench_poincare.ALL_OPS]
    return [
        (op, getattr(bench_models.MODULES[op.split(".")[0]][1], op.split(".")[1]))
        for op in bench_models.ALL_OPS
    ]


@pytest.mark.parametrize("bench", [bench_poincare, bench_models], ids=["poincare", "models"])
def test_every_reference_compiles_to_one_graph_forward_and_backward(bench):
    harness.configure_dynamo()
    broken = []
    for op, ref in _references(bench):
        args = _inputs(bench, op)
        grad_args = tuple(a.detach().requires_grad_() if torch.is_tensor(a) else a for a in args)
        f = _compile_eager(lambda *a, ref=ref: ref(*a, c=1.0))
        try:
            with torch.no_grad():
                out = f(*args)
            assert torch.allclose(out, ref(*args, c=1.0))
            harness.fwd_bwd(f)(*grad_args)
        except Exception as e:  # a graph break raises under fullgraph=True
            broken.append(f"{op}: {type(e).__name__}: {str(e)[:200]}")
    assert not broken, "\n".join(broken)


def test_a_compiled_impl_that_captures_no_graph_is_marked_invalid(monkeypatch):
    harness.configure_dynamo()
    monkeypatch.setattr(
        harness, "time_calls", lambda f, args, warmup, reps, **kw: [f(*a) for a in args] and 1.0
    )
    report = harness.Report("t")
    x = torch.rand(4, 3, generator=CPU, dtype=torch.float64)
    impls = {
        "torch_compile": lambda a: a * 2,  # not compiled: no graph
        "xpu_stone": _compile_eager(lambda a: a.sin() * 3),
    }
    harness.bench_impls(report, "op", impls, [(x,)], 1, 1, "float64", (4, 3))
    notes = {(r.impl, r.mode): r.note for r in report.rows}
    assert notes[("torch_compile", "fwd")].startswith("invalid") and notes[
        ("torch_compile", "fwd+bwd")
    ].startswith("invalid")
    assert notes[("xpu_stone", "fwd")] == ""  # only torch_compile rows are checked
    report = harness.Report("t")
    harness.bench_impls(
        report, "op", {"torch_compile": _compile_eager(lambda a: a.cos() + 1)}, [(x,)], 1, 1, "f", ()
    )
    assert [r.note for r in report.rows] == ["", ""]  # a fresh compile captures its graphs


def test_warm_only_calls_each_impl_once_per_mode_and_records_nothing():
    calls = []
    x = torch.rand(4, 3, generator=CPU)

    def impl(a):
        calls.append((torch.is_grad_enabled(), a.requires_grad))
        return a * 2

    report = harness.Report("t")
    harness.bench_impls(report, "op", {"a": impl, "b": impl}, [(x,), (x,)], 1, 1, "f", (), warm_only=True)
    assert report.rows == [] and calls == [(False, False), (True, True)] * 2


def test_precompile_warms_every_cell_in_worker_processes(tmp_path, monkeypatch):
    """A stand-in benchmark module whose bench_op writes one file per warmed cell; a cell
    that fails is logged and the others are warmed."""
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    (tmp_path / "fake_bench.py").write_text(
        textwrap.dedent(
            f"""
            import os, torch
            def bench_op(report, op, dtype, d, target_bytes, compare, warm_only=False):
                assert report is None and compare and warm_only and dtype is torch.float32
                assert torch._dynamo.config.cache_size_limit >= 1024  # the worker was configured
                assert os.environ["TORCHINDUCTOR_COMPILE_THREADS"] == "1"  # the workers fill the CPUs
                if (op, d) == ("b", 64):
                    raise RuntimeError("a cell that fails to warm")  # logged; the others go on
                open(os.path.join({str(tmp_path)!r}, f"{{op}}-{{d}}-{{os.getpid()}}"), "w").close()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cells = [(op, "float32", d) for op in ("a", "b", "c") for d in (16, 64)]
    secs = harness.precompile("fake_bench", cells, 2, 1e6)
    warmed = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.iterdir() if p.name != "fake_bench.py")
    assert warmed == sorted(f"{op}-{d}" for op, _, d in cells if (op, d) != ("b", 64)) and secs > 0
    assert "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ  # restored
    pids = {p.name.rsplit("-", 1)[1] for p in tmp_path.iterdir() if p.name != "fake_bench.py"}
    assert str(os.getpid()) not in pids  # not in this process
    assert "fake_bench" not in sys.modules


def test_sweep_runs_each_cell_once_and_checkpoints_after_each_cell():
    seen, marks = [], []
    report = harness.Report("t")
    harness.sweep(report, ["a", "b", "a"], ["float32", "float32"], [16, 64, 16], ["a"], [64], 1e-9,
                  lambda r, op, dt, d, nbytes, compare: seen.append((op, d, compare)),
                  checkpoint=lambda: marks.append(len(seen)))  # fmt: skip
    assert seen == [("a", 16, False), ("a", 64, True), ("b", 16, False), ("b", 64, False)] and marks == [
        1,
        2,
        3,
        4,
    ]


def test_a_write_killed_midway_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    report = harness.Report("t", copy_gbps=1.0, meta={"gpu": "G", "date": "2026-12-01"})
    report.add(harness.Row("a", "xpu_stone", "fwd", "float32", (1, 16), 64, 1.0))
    js, _ = report.write(tmp_path)
    before = js.read_text()
    report.add(harness.Row("b", "xpu_stone", "fwd", "float32", (1, 16), 64, 1.0))

    def killed(src, dst):
        raise KeyboardInterrupt  # the time limit's signal, mid-write

    monkeypatch.setattr(harness.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        report.write(tmp_path)
    assert js.read_text() == before and json.loads(before)["rows"][0]["op"] == "a"


def test_markdown_states_no_bandwidth_where_none_was_measured():
    # a host-time row moves no counted bytes, and a run without a copy figure has no % copy:
    # both read as a dash, not as 0 GB/s
    report = harness.Report("t", copy_gbps=0.0, meta={"gpu": "G", "date": "2026-12-02"})
    report.add(harness.Row("a", "xpu_stone", "fwd", "float32", (64, 64), 0, 0.01))
    report.add(harness.Row("b", "xpu_stone", "fwd", "float32", (64, 64), 2e6, 0.001))
    md = report.markdown()
    assert "copy bandwidth not measured" in md and "0 GB/s" not in md
    assert "| 0.0100 | — | — |" in md and "| 0.0010 | 2000 | — |" in md
    report.copy_gbps = 4000.0
    report.add(harness.Row("c", "xpu_stone", "fwd", "float32", (64, 64), 2e6, 0.001))
    assert "copy 4000 GB/s (read + write)" in report.markdown()
    assert report.markdown().splitlines()[-1].endswith("| 0.0010 | 2000 | 50.0 |  |")


def test_full_preset_is_the_whole_table():
    args = harness.rowwise_args(["--full"], ("x", "y"), ["float32"], [16])
    assert args.dims == [16, 64, 256, 1024, 4096] and args.dtypes == ["float32", "bfloat16", "float16"]
    assert args.compare_dims == args.dims and args.compare_all and args.precompile >= 1
    assert args.target_gb == 0.8  # the other runs' size: at 0.25 GB forward+backward timed the host path
    args = harness.rowwise_args(["--dims", "64"], ("x",), ["float32"], [16], quick=([1], ["float64"], [1]))
    assert args.dims == [64] and not args.compare_all and args.precompile == 0


def test_a_table_cut_short_is_resumed_where_it_stopped(tmp_path):
    """A sweep stopped after its first op (its file written by the checkpoint) continues
    with --resume: the cells in the file are kept as measured and not run again, the
    file keeps its name and date, and meta["parts"] records both calls. A file of
    another GPU, torch or suffix is refused."""
    meta = {
        "gpu": "GPU X",
        "torch": "2.x",
        "suffix": "full",
        "date": "2026-12-01",
        "args": {"target_gb": 0.25},
    }
    ran = []

    def bench_op(report, op, dtype, d, target_bytes, compare):
        ran.append((op, str(dtype).removeprefix("torch."), d))
        report.add(harness.Row(op, "xpu_stone", "fwd", ran[-1][1], (8, d), 8 * d * 4, 1.0))

    def sweep(report, ops, stop_after=None):
        done = set(ran)
        for op in ops:
            harness.sweep(report, [op], ["float32"], [16, 64], [], [], 0.1, bench_op, done=frozenset(done))
            report.write(tmp_path)
            if op == stop_after:
                return

    first = harness.Report("poincare", copy_gbps=100.0, meta=dict(meta))
    sweep(first, ["mobius_add", "dist"], stop_after="mobius_add")
    path, _ = first.write(tmp_path)
    assert path.name.endswith("-2026-12-01-full.json")
    assert ran == [("mobius_add", "float32", 16), ("mobius_add", "float32", 64)]

    second = harness.Report("poincare", copy_gbps=200.0, meta={**meta, "date": "2026-12-02"})
    done = harness.resume(second, str(path))
    assert done == {("mobius_add", "float32", 16), ("mobius_add", "float32", 64)}
    ran.clear()
    harness.sweep(
        second, ["mobius_add", "dist"], ["float32"], [16, 64], [], [], 0.1, bench_op, done=frozenset(done)
    )
    assert ran == [("dist", "float32", 16), ("dist", "float32", 64)]  # the kept cells are not run again
    js, _ = second.write(tmp_path)
    assert js == path  # the same file, under the first call's date
    doc = json.loads(path.read_text())
    assert [r["op"] for r in doc["rows"]] == ["mobius_add"] * 2 + ["dist"] * 2
    pct = {(r["op"], r["shape"][1]): r["pct_copy"] for r in doc["rows"]}
    for d in (16, 64):  # each row keeps the copy bandwidth of its own call (100, then 200 GB/s)
        assert pct[("dist", d)] == pytest.approx(pct[("mobius_add", d)] / 2)
    assert [p["date"] for p in doc["meta"]["parts"]] == ["2026-12-01", "2026-12-02"]
    assert set(doc["meta"]["cell_seconds"]) == {"mobius_add float32 16", "mobius_add float32 64",
                                                "dist float32 16", "dist float32 64"}  # fmt: skip

    for key, value in (("gpu", "GPU Y"), ("torch", "2.y"), ("suffix", "other"), ("args", {"target_gb": 0.8})):
        other = harness.Report("poincare", meta={**meta, key: value})
        with pytest.raises(SystemExit, match="target_gb" if key == "args" else key):
            harness.resume(other, str(path))
    with pytest.raises(SystemExit, match="not a result file"):
        harness.resume(harness.Report("models", meta=dict(meta)), str(path))
