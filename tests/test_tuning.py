"""Tuned tables and the tuner's bookkeeping, on CPU: selection replayed from a
recorded cache, table validation and fallback, explain, and the benchmark report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from helpers import load_script

import xpu_stone  # noqa: F401  (registers the ops)
from xpu_stone import ops
from xpu_stone.constants import BOUNDARY_EPS
from xpu_stone.engine.launch import TORCH_OF
from xpu_stone.engine.rowwise_cpu import cpu_backward, cpu_forward
from xpu_stone.errors import InvalidArgumentError
from xpu_stone.kernels import auto_table, dispatcher, explain, tuned_table, tuner
from xpu_stone.kernels.registry import DTYPES, LaunchConfig
from xpu_stone.reference import lorentz as RL

ROOT = Path(__file__).resolve().parent.parent
GPU = {"gpu_name": "NVIDIA Test GPU", "compute_capability": "9.0", "driver": 13000}
PROBLEM = {"target_bytes": 1000, "warmup": 1, "reps": 2}
OP = "poincare_dist"


@pytest.fixture(autouse=True)
def _restore_table():
    yield
    dispatcher.set_tuned_table(None)


def _cells():
    return tuner.plan([OP], ["float32"], [16, 1024])


def _header():
    return {"gpu_name": GPU["gpu_name"], "problem": PROBLEM}


def _record(cell, variant, cfg, status="ok", fwd=1.0, bwd=2.0):
    rec = {"cell": cell.key, "variant": variant, "config": [cfg.threads, cfg.iters, cfg.vec, cfg.block]}
    if status == "ok":
        return {**rec, "status": "ok", "fwd_ms": fwd, "bwd_ms": bwd}
    return {**rec, "status": status, "error": "max error fwd 0.5, bwd 0.5"}


def _write_cache(path, cells):
    """A recorded run: in the D=16 cell a non-heuristic configuration is 20 %
    faster, and a wrong one faster still; in the D=1024 cell the best beats the
    heuristic by 1 % only. The last line was cut by an interruption."""
    small, large = cells
    lines = [json.dumps({"format": tuner.CACHE_FORMAT, **_header()})]
    for cell, win_factor in ((small, 0.8), (large, 0.99)):
        others = [c for c in cell.candidates if c != cell.heuristic]
        lines.append(json.dumps(_record(cell, *cell.heuristic, fwd=1.0, bwd=2.0)))
        lines.append(json.dumps(_record(cell, *others[0], fwd=win_factor, bwd=2 * win_factor)))
        lines.append(json.dumps(_record(cell, *others[1], status="wrong")))
        for c in others[2:]:
            lines.append(json.dumps(_record(cell, *c, fwd=5.0, bwd=5.0)))
    lines[-1] = lines[-1][: len(lines[-1]) // 2]  # interrupted mid-write
    path.write_text("\n".join(lines) + "\n")
    return others


def test_replayed_cache_picks_checked_winners_and_resumes(tmp_path):
    cells = _cells()
    small, large = cells
    path = tmp_path / "cache.jsonl"
    others_large = _write_cache(path, cells)
    cache = tuner.TuneCache(path, _header())
    # the cut line is not a record: that configuration is measured again on resume
    missing = [c for cell in cells for c in cell.candidates if cache.get(cell, *c) is None]
    assert missing == [others_large[-1]]
    table = tuner.build_table(cells, cache, GPU, PROBLEM, min_margin=0.03, date="2026-01-01")
    e_small = table.entries[(OP, "float32", 16)]
    others_small = [c for c in small.candidates if c != small.heuristic]
    assert (e_small.variant, e_small.config) == others_small[0]  # 20 % faster, checked
    assert e_small.margin == pytest.approx(3.0 / 2.4 - 1)
    e_large = table.entries[(OP, "float32", 1024)]
    assert (e_large.variant, e_large.config) == large.heuristic  # 1 % is noise: heuristic kept
    assert e_large.margin == 0
    wrong = [f for f in table.failed if f["status"] == "wrong"]
    assert {f["bucket"] for f in wrong} == {16, 1024}
    assert all(
        (f["variant"], LaunchConfig(*f["config"])) != (e.variant, e.config)
        for f in wrong
        for e in (e_small, e_large)
    )
    assert "2 cells, 1 differ from the heuristic" in tuner.summary(table)
    lines = load_script("tune_kernels").summary_lines(table).splitlines()  # the tuner's closing report
    assert len(lines) == 2 and "+25.0%" in lines[0] and "+0.0%" in lines[1]
    # appending resumes the file; a cache of another problem is moved aside
    cache.add(large, *missing[0], status="ok", fwd_ms=9.0, bwd_ms=9.0)
    assert tuner.TuneCache(path, _header()).get(large, *missing[0])["fwd_ms"] == 9.0
    other = tuner.TuneCache(path, {**_header(), "problem": {"target_bytes": 1}})
    assert other.records == {} and path.with_suffix(".jsonl.old").exists()


class _FakeBench:
    """Stands in for the tuner's CellBench: the verification timings of a cell."""

    def __init__(self, win_ms, heur_ms):
        self.times = (win_ms, heur_ms)

    def verify(self, entry, warmup, reps):
        return self.times


def test_verification_keeps_confirmed_winners_and_reverts_the_others(tmp_path):
    script = load_script("tune_kernels")
    cells = tuner.plan([OP], ["float32"], [16, 64])
    lines = [json.dumps({"format": tuner.CACHE_FORMAT, **_header()})]
    for cell in cells:  # in both cells the sweep saw a configuration 25 % faster
        other = next(c for c in cell.candidates if c != cell.heuristic)
        lines += [
            json.dumps(_record(cell, *cell.heuristic)),
            json.dumps(_record(cell, *other, fwd=0.8, bwd=1.6)),
        ]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    cache = tuner.TuneCache(tmp_path / "c.jsonl", _header())
    table = tuner.build_table(cells, cache, GPU, PROBLEM, date="2026-01-01")
    assert all(e.changed and e.verified_margin is None for e in table.entries.values())
    # timed again: the D=16 winner holds (10 % faster), the D=64 one does not
    again = {16: _FakeBench(2.0, 2.2), 64: _FakeBench(2.0, 1.9)}
    reverted = script.verify_table(table, cells, cache, lambda cell: again[cell.bucket], 1, 1)
    assert reverted == [f"{OP}|float32|64 (-5.0%)"]
    kept, back = table.entries[(OP, "float32", 16)], table.entries[(OP, "float32", 64)]
    assert kept.changed and kept.verified_margin == pytest.approx(0.1)
    assert not back.changed and back.verified_margin == 0 and (back.fwd_ms, back.bwd_ms) == (1.0, 2.0)
    assert "verification pass over 2 cells: +4.9%, worst cell +0.0%" in tuner.summary(table)
    # a resumed run reuses the verification timings: same decisions, nothing timed
    resumed = tuner.build_table(cells, tuner.TuneCache(tmp_path / "c.jsonl", _header()), GPU, PROBLEM,
                                 date="2026-01-01")  # fmt: skip
    assert script.verify_table(
        resumed, cells, tuner.TuneCache(tmp_path / "c.jsonl", _header()), None, 1, 1
    ) == [f"{OP}|float32|64 (-5.0%)"]
    assert resumed.to_dict() == table.to_dict()
    table.save(tmp_path / "t.json")
    assert tuned_table.TableFile.load(tmp_path / "t.json").to_dict() == table.to_dict()
    ops = script.row_ops()
    rep = script.report(table, cells, cache, ops, 1e6, copy_gbps=2000.0)
    row = rep["cells"][0]
    per_row = (2 * 16 + 1) * 4  # two float32 vectors in, one distance out
    assert row["heuristic_fwd_gbps"] == pytest.approx((int(1e6) // per_row) * per_row / 1e-3 / 1e9)
    assert row["heuristic_fwd_of_copy"] == pytest.approx(row["heuristic_fwd_gbps"] / 2000.0)
    assert rep["per_dtype"]["float32"]["changed"] == 1
    assert rep["per_dtype"]["float32"]["verified_geomean"] == pytest.approx(1.1**0.5 - 1)


def test_candidates_are_valid_and_include_the_heuristic():
    for cell in tuner.plan(
        [OP, "convert_poincare_to_lorentz"], ["float32", "float16", "float64"], [16, 4096]
    ):
        assert cell.heuristic in cell.candidates
        kernels = xpu_stone.kernels.REGISTRY.get(cell.op)
        for name, cfg in cell.candidates:
            assert dispatcher.fits(kernels.variant(name), cfg, cell.dtype, cell.width, cell.aligned)
    with pytest.raises(InvalidArgumentError, match="not a row-wise op"):
        tuner.plan(["pairwise_cdist"], ["float32"], [16])


def test_bucket_of_is_nearest_in_log2():
    b = tuned_table.DEFAULT_BUCKETS
    assert [tuned_table.bucket_of(d, b) for d in (1, 16, 31, 32, 33, 100, 5000, 10**6)] == [
        16, 16, 16, 64, 64, 64, 4096, 4096,
    ]  # fmt: skip


def _table(**overrides) -> tuned_table.TableFile:
    cells = _cells()
    small = cells[0]
    winner = next(c for c in small.candidates if c != small.heuristic and c[0] == "generic")
    entry = tuned_table.Entry(OP, "float32", 16, *winner, 0.5, 1.0, *small.heuristic, 3.0)
    fields = dict(
        gpu_name=GPU["gpu_name"],
        compute_capability=GPU["compute_capability"],
        driver=GPU["driver"],
        library_version=tuned_table.library_version(),
        date="2026-01-01",
        buckets=(16, 1024),
        variants={OP: [v.name for v in xpu_stone.kernels.REGISTRY.get(OP).variants]},
        entries={(OP, "float32", 16): entry},
        problem=PROBLEM,
    )
    fields.update(overrides)
    return tuned_table.TableFile(**fields)


def _auto(tmp_path, table=None, shipped=(), identity=GPU, env=False):
    paths = []
    if table is not None:
        paths.append(tmp_path / "user.json")
        table.save(paths[0])
    ship = tmp_path / "shipped"
    ship.mkdir(exist_ok=True)
    for i, t in enumerate(shipped):
        t.save(ship / f"t{i}.json")
    return auto_table.AutoTable(paths, env=env, tables_dir=ship, identify=lambda device: identity)


def test_table_round_trip_and_explain_says_table(tmp_path):
    table = _table()
    table.save(tmp_path / "t.json")
    loaded = tuned_table.TableFile.load(tmp_path / "t.json")
    assert loaded.to_dict() == table.to_dict()
    entry = table.entries[(OP, "float32", 16)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dispatcher.set_tuned_table(_auto(tmp_path, shipped=[table]))
        c = dispatcher.select(OP, "float32", 16, True)
    assert (c.variant, c.config, c.reason) == (entry.variant, entry.config, "table")
    text = explain(OP, 16)
    assert "chosen by table" in text and "bucket D=16" in text and "+100.0% vs heuristic" in text
    # D=20 is in the same bucket; no entry for float64 or D=1024: the heuristic decides
    assert dispatcher.select(OP, "float32", 20, True).reason == "table"
    assert dispatcher.select(OP, "float64", 16, True).reason == "heuristic"
    assert dispatcher.select(OP, "float32", 1024, True).reason == "heuristic"


def test_explain_takes_a_shape_and_any_dtype_spelling(tmp_path):
    dispatcher.set_tuned_table(_auto(tmp_path, shipped=[_table()]))
    # a tensor's shape: the table cell of its last dimension (the row length) decides
    text = explain(OP, (8192, 3, 16), torch.float32)
    assert "[float32, D=16, aligned]" in text and "chosen by table" in text
    assert explain(OP, torch.Size([4, 16]), "float32") == text
    assert "[float64, D=16" in explain(OP, [16], torch.float64)
    with pytest.raises(InvalidArgumentError, match="sequence of ints"):
        explain(OP, (8, 1.5))
    with pytest.raises(InvalidArgumentError, match=">= 1"):
        explain(OP, (8, 0))
    with pytest.raises(InvalidArgumentError, match="dtype must be"):
        explain(OP, 16, torch.int32)


def test_explain_quotes_the_verified_margin(tmp_path):
    cfg, heur = LaunchConfig(4, 1, 4, 256), LaunchConfig(32, 1, 4, 256)
    entry = tuned_table.Entry(OP, "float32", 16, "rows_per_warp", cfg, 0.5, 0.5, "warp_per_row", heur, 3.0,
                         verified_ms=1.0, verified_heuristic_ms=1.5)  # fmt: skip
    dispatcher.set_tuned_table(_auto(tmp_path, shipped=[_table(entries={(OP, "float32", 16): entry})]))
    assert "+50.0% vs heuristic (verified)" in explain(OP, (3, 16))


def test_table_config_that_does_not_fit_falls_back(tmp_path):
    cfg = LaunchConfig(4, 1, 4, 256)  # rows_per_warp: aligned rows of at most 16 only
    entry = tuned_table.Entry(OP, "float32", 16, "rows_per_warp", cfg, 0.5, 1.0, None, None, None)
    dispatcher.set_tuned_table(_auto(tmp_path, shipped=[_table(entries={(OP, "float32", 16): entry})]))
    assert dispatcher.select(OP, "float32", 16, True).config == cfg
    wider = dispatcher.select(OP, "float32", 24, True)  # same bucket, row too long for cfg
    assert (wider.variant, wider.reason) == ("rows_per_warp", "table") and wider.config.covers(24)
    unaligned = dispatcher.select(OP, "float32", 15, False)  # a vectorized variant cannot take it
    assert unaligned.reason == "heuristic" and unaligned.variant == "generic"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"gpu_name": "NVIDIA Other"}, "made on 'NVIDIA Other'"),
        ({"compute_capability": "8.0"}, "compute capability 8.0"),
        ({"library_version": "0.0.1"}, "made by xpu_stone 0.0.1"),
        ({"variants": {OP: ["rows_per_warp", "generic"]}}, "was tuned over variants"),
        ({"variants": {"poincare_nope": ["generic"]}}, "not a registered row-wise op"),
    ],
)
def test_mismatched_user_table_is_ignored_with_a_warning(tmp_path, change, message):
    dispatcher.set_tuned_table(_auto(tmp_path, _table(**change)))
    with pytest.warns(tuned_table.TunedTableWarning, match=message):
        c = dispatcher.select(OP, "float32", 16, True)
    assert c.reason == "heuristic"


def test_unknown_variant_or_config_in_entries_is_rejected(tmp_path):
    bad_variant = tuned_table.Entry(OP, "float32", 16, "fastest", LaunchConfig(4, 1, 4, 256), 1, 1)
    bad_config = tuned_table.Entry(OP, "float32", 16, "generic", LaunchConfig(64, 0, 1, 256), 1, 1)
    for entry, message in ((bad_variant, "unknown variant"), (bad_config, "no configuration")):
        dispatcher.set_tuned_table(_auto(tmp_path, _table(entries={(OP, "float32", 16): entry})))
        with pytest.warns(tuned_table.TunedTableWarning, match=message):
            assert dispatcher.select(OP, "float32", 16, True).reason == "heuristic"


def test_shipped_tables_of_other_gpus_are_skipped_silently_stale_ones_warn(tmp_path):
    other = _table(gpu_name="NVIDIA Other")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dispatcher.set_tuned_table(_auto(tmp_path, shipped=[other]))
        assert dispatcher.select(OP, "float32", 16, True).reason == "heuristic"
    dispatcher.set_tuned_table(_auto(tmp_path, shipped=[_table(library_version="0.0.1")]))
    with pytest.warns(tuned_table.TunedTableWarning, match="shipped tuned table t0.json ignored"):
        assert dispatcher.select(OP, "float32", 16, True).reason == "heuristic"


def test_malformed_table_and_no_gpu_warn(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    dispatcher.set_tuned_table(auto_table.AutoTable([bad], env=False, shipped=False, identify=lambda d: GPU))
    with pytest.warns(tuned_table.TunedTableWarning, match="cannot read tuned table"):
        assert dispatcher.select(OP, "float32", 16, True).reason == "heuristic"
    dispatcher.set_tuned_table(_auto(tmp_path, _table(), identity=None))
    with pytest.warns(tuned_table.TunedTableWarning, match="no CUDA GPU"):
        assert dispatcher.select(OP, "float32", 16, True).reason == "heuristic"
    with pytest.raises(InvalidArgumentError, match="not a tuned table"):
        tuned_table.TableFile.from_dict({"format": "other"})


def test_env_var_names_a_table_or_switches_tables_off(tmp_path, monkeypatch):
    table = _table()
    table.save(tmp_path / "env.json")
    monkeypatch.setenv(tuned_table.ENV_VAR, str(tmp_path / "env.json"))
    auto = auto_table.AutoTable(shipped=False, identify=lambda d: GPU)
    assert auto.lookup(OP, "float32", 16, 0).variant == table.entries[(OP, "float32", 16)].variant
    monkeypatch.setenv(tuned_table.ENV_VAR, "none")
    ship = tmp_path / "ship"
    ship.mkdir()
    table.save(ship / "gpu.json")
    auto = auto_table.AutoTable(tables_dir=ship, identify=lambda d: pytest.fail("tables are off"))
    assert auto.lookup(OP, "float32", 16, 0) is None
    # a table named in code still serves (use_table): only the automatic ones are off
    auto = auto_table.AutoTable([tmp_path / "env.json"], tables_dir=ship, identify=lambda d: GPU)
    assert auto.lookup(OP, "float32", 16, 0).variant == table.entries[(OP, "float32", 16)].variant


def test_tables_load_lazily_not_at_import(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "import xpu_stone\n"
        "from xpu_stone.kernels import auto_table, dispatcher, tuned_table\n"
        "assert dispatcher._table is None\n"
        "auto_table.device_identity = lambda d: {'gpu_name': 'x', 'compute_capability': '9.0', 'driver': 1}\n"
        "try:\n"
        "    dispatcher.select('poincare_dist', 'float32', 16, True)\n"
        "except tuned_table.TunedTableWarning as e:\n"
        "    print('WARNED', e)\n"
    )
    env = {**os.environ, tuned_table.ENV_VAR: str(bad), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("WARNED") and "not a tuned table" in out.stdout


def test_tuner_dry_run_prints_plan_and_estimate(capsys):
    tuner = load_script("tune_kernels")
    assert tuner.main(["--dry-run", "--ops", OP, "--dtypes", "float32", "--buckets", "16", "64"]) == 0
    out = capsys.readouterr().out
    assert "2 cells" in out and "estimate" in out
    # every op has inputs of its own arity
    for op in tuner.row_ops().values():
        assert len(tuner.arg_kinds(op)) == len(op.vectors)


def test_tuner_check_rejects_a_missing_element():
    torch = pytest.importorskip("torch")
    tuner = load_script("tune_kernels")
    ref = torch.rand(8, 64, dtype=torch.float64) + 0.5
    good = ref.to(torch.bfloat16)
    assert tuner.elementwise_error(good, ref, "bfloat16", torch) <= tuner.FWD_TOL["bfloat16"]
    bad = good.clone()
    bad[3, 17] = 0
    assert tuner.elementwise_error(bad, ref, "bfloat16", torch) > tuner.FWD_TOL["bfloat16"]
    bad[3, 17] = float("nan")
    assert tuner.elementwise_error(bad, ref, "bfloat16", torch) == float("inf")


@pytest.fixture(scope="module")
def script():
    return load_script("tune_kernels")


def _check_data(script, op, dtype, d, rows):
    """The tuner's check inputs of one cell, seeded as CellBench seeds them, and an
    output gradient of the dtype."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{op.qualname}|{dtype}|{d}".encode()))
    vecs = [v.to(TORCH_OF[dtype]) for v in script.op_inputs(op, rows, d, torch, gen, "cpu", torch.float64)]
    shape = (rows,) if op.scalar_out else (rows, op.out_width(d))
    return vecs, torch.randn(shape, generator=gen, dtype=torch.float64).to(TORCH_OF[dtype])


def _errors(script, op, dtype, vecs, grad, want_out, want_grads):
    """The tuner's check errors of the CPU path of ``op`` (the kernels' maths, the
    stand-in for a correct configuration) against the expected results."""
    eps = BOUNDARY_EPS[dtype] if op.uses_eps else 0.0
    out = cpu_forward(op, vecs, None, script.C_VAL, None, script.T_VAL, eps)
    needs = [True] * len(vecs) + [False, False]
    grads = cpu_backward(op, grad, vecs, None, script.C_VAL, None, script.T_VAL, eps, needs)[: len(vecs)]
    fwd = script.elementwise_error(out, want_out, dtype, torch)
    bwd = max(script.elementwise_error(g, w, dtype, torch) for g, w in zip(grads, want_grads))
    return fwd, bwd, out, grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ops.row_ops(), ids=lambda op: op.qualname)
def test_tuner_check_accepts_the_ops_and_rejects_a_wrong_element(script, op, dtype):
    """The tuner's expected results (tuner.reference_outputs: xpu_stone.reference in
    float64 with autograd) pass the ops' own maths within the check's tolerances on
    the check data, and one wrong output element or gradient element fails."""
    vecs, grad = _check_data(script, op, dtype, 16, 3 + 256)
    eps = BOUNDARY_EPS[dtype] if op.uses_eps else 0.0
    want_out, want_grads = tuner.reference_outputs(op, vecs, grad, script.C_VAL, script.T_VAL, eps)
    fwd, bwd, out, grads = _errors(script, op, dtype, vecs, grad, want_out, want_grads)
    assert fwd <= script.FWD_TOL[dtype] and bwd <= script.BWD_TOL[dtype], (fwd, bwd)
    for bad, want in ((out, want_out), (grads[-1], want_grads[-1])):
        bad = bad.double().reshape(want.shape[0], -1).clone()
        ref = want.reshape(want.shape[0], -1)
        bad[7, -1] += 0.5 * (ref[7, -1].abs() + ref[7].pow(2).mean().sqrt() + 1e-3)
        assert script.elementwise_error(bad.reshape(want.shape), want, dtype, torch) > script.BWD_TOL[dtype]


def test_tuner_check_of_the_fp16_lorentz_expmap_cell_compares_overflow_as_saturated(script):
    """The cell lorentz_expmap / float16 / D = 16 failed the check in every
    configuration (README: backward error 0.30 against 0.03): on its check data
    five exact gradient elements exceed fp16's largest value 65504 (up to 1.1e5),
    which the kernels store saturated. Compared with the reference clamped to
    +-65504 (the correctly rounded overflow, saturated), the ops' maths passes;
    against the unclamped values it fails by the overflow alone."""
    op = next(o for o in ops.row_ops() if o.qualname == "lorentz_expmap")
    vecs, grad = _check_data(script, op, "float16", 16, 3 + max(64, script.CHECK_ELEMS // 16))
    want_out, want_grads = tuner.reference_outputs(op, vecs, grad, script.C_VAL, script.T_VAL, 0.0)
    fwd, bwd, _, grads = _errors(script, op, "float16", vecs, grad, want_out, want_grads)
    assert fwd <= script.FWD_TOL["float16"] and bwd <= script.BWD_TOL["float16"], (fwd, bwd)
    exact = [v.double().requires_grad_() for v in vecs]
    raw = torch.autograd.grad(RL.expmap(*exact, c=script.C_VAL), exact, grad.double())
    assert 65504 < max(float(g.abs().max()) for g in raw) < 2e5
    representable = [torch.where(r.abs() > 65504, r, g.double()) for g, r in zip(grads, raw)]
    assert max(script.elementwise_error(g, r, "float16", torch) for g, r in zip(representable, raw)) < 1e-3
    assert max(script.elementwise_error(g, r, "float16", torch) for g, r in zip(grads, raw)) > 0.2


def _bench_json(path, name, rows, copy=3000.0):
    meta = {
        "gpu": "Fake GPU",
        "date": path.name.split("-", 2)[2][:10],
        "torch": "x",
        "cupy": "y",
        "cuda": "z",
    }
    path.write_text(json.dumps({"meta": meta, "copy_gbps": copy, "rows": rows}))


def _row(op, impl, mode, d, ms, gbps, dtype="float32"):
    return {"op": op, "impl": impl, "mode": mode, "dtype": dtype, "shape": [1000, d], "bytes": 1, "ms": ms,
            "gbps": gbps, "pct_copy": gbps / 30, "note": ""}  # fmt: skip


def test_bench_report_plots_a_tiny_synthetic_run(tmp_path):
    pytest.importorskip("matplotlib")
    report = load_script("bench_report")
    rows = [
        _row("host_overhead_64x64", impl, "fwd", 64, us / 1000, 0)
        for impl, us in (("torch.add", 7), ("xpu_stone", 15))
    ]
    for d in (16, 256, 4096):
        for mode in ("fwd", "fwd+bwd"):
            rows += [
                _row("mobius_add", "xpu_stone", mode, d, 1.0, 2500),
                _row("mobius_add", "torch_eager", mode, d, 4.0, 600),
            ]
    _bench_json(tmp_path / "poincare-Fake_GPU-2026-01-01.json", "poincare", rows)
    newer = [_row("mobius_add", "xpu_stone", "fwd+bwd", 4096, 0.5, 2900)]
    _bench_json(tmp_path / "poincare-Fake_GPU-2026-01-02.json", "poincare", newer)
    session = {
        "meta": {"gpu": "Fake GPU", "date": "2026-01-02"},
        "session": {"speedup": 10.0, "eager_host_us": 900.0},
    }
    (tmp_path / "session-Fake_GPU-2026-01-02.json").write_text(json.dumps(session))
    cells = [{"dtype": "float16", "bucket": d, "verified_margin": m} for d, m in ((16, 0.0), (1024, 0.21))]
    tuned = {"gpu_name": "Fake GPU", "date": "2026-01-02", "copy_gbps": 3000.0, "cells": cells,
             "per_dtype": {"float16": {"cells": 2, "changed": 1, "verified_geomean": 0.1, "verified_worst": 0.0,
                                       "heuristic_fwd_of_copy_geomean": 0.5, "heuristic_fwd_at_95pct_copy": 0}}}  # fmt: skip
    (tmp_path / "tuning-Fake_GPU-2026-01-02.json").write_text(json.dumps(tuned))
    md = tmp_path / "snippet.md"
    assert report.main(["--results", str(tmp_path), "--markdown", str(md)]) == 0
    combined = json.loads((tmp_path / "Fake_GPU-2026-01-02.json").read_text())
    merged = combined["benches"]["poincare"]["rows"]
    assert len(merged) == len(rows)  # the newer file's row replaced the older one
    assert [
        r["ms"]
        for r in merged
        if r["mode"] == "fwd+bwd" and r["shape"][-1] == 4096 and r["impl"] == "xpu_stone"
    ] == [0.5]
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "speedup-rowwise.png" in pngs and "host-overhead.png" in pngs and "speedup-end-to-end.png" in pngs
    assert "bandwidth-poincare-fwd_bwd-float32.png" in pngs
    assert all((tmp_path / "plots" / p).stat().st_size < 150_000 for p in pngs)
    text = md.read_text()
    # the speed-up pairs the rows of one file: the older one (xpu_stone 1.0 ms, eager 4.0 ms);
    # the newer file timed xpu_stone alone
    assert "![speedup-rowwise]" in text and "| mobius_add | 4096 | 2500 |" in text and "4.0x" in text
    assert "2900" not in text and "8.0x" not in text
    assert (
        "tuning-speedup.png" in pngs
        and "| Fake GPU | 2026-01-02 | float16 | 2 | 1 | +10.0% | +0.0% | 50% | 0 |" in text
    )
    assert "| Fake GPU | | all | 2 | | +10.0% |" in text


def test_merge_completes_a_table_with_the_dtypes_tuned_now(tmp_path):
    """A run over fp16/bf16 merged into a table tuned over fp32: fp32's entries and failures
    stay, the new run's dtypes take the new entries (old ones of those dtypes go), the header
    is the new run's; tables of another GPU or problem refuse to merge."""
    e = _table().entries[(OP, "float32", 16)]
    old_bf16 = tuned_table.Entry(OP, "bfloat16", 16, e.variant, e.config, 9.0, 9.0, None, None, None)
    failed32 = {"op": OP, "dtype": "float32", "bucket": 1024, "variant": "generic", "config": [4, 0, 1, 256],
                "status": "wrong", "error": "x"}  # fmt: skip
    old = _table(entries={(OP, "float32", 16): e, (OP, "bfloat16", 16): old_bf16}, failed=[failed32])
    new_bf16 = tuned_table.Entry(OP, "bfloat16", 16, e.variant, e.config, 0.1, 0.2, None, None, None)
    new16 = tuned_table.Entry(OP, "float16", 1024, e.variant, e.config, 0.3, 0.4, None, None, None)
    new = _table(date="2026-02-02", entries={(OP, "bfloat16", 16): new_bf16, (OP, "float16", 1024): new16})
    merged = tuner.merge(old, new)
    assert merged.entries == {
        (OP, "float32", 16): e,
        (OP, "bfloat16", 16): new_bf16,
        (OP, "float16", 1024): new16,
    }
    assert merged.failed == [failed32] and merged.date == "2026-02-02"
    merged.save(tmp_path / "m.json")
    assert tuned_table.TableFile.load(tmp_path / "m.json").entries == merged.entries
    for change in ({"gpu_name": "NVIDIA Other"}, {"problem": {**PROBLEM, "reps": 1}}, {"buckets": (16,)},
                   {"library_version": "0.0.1"}):  # fmt: skip
        with pytest.raises(InvalidArgumentError, match="cannot merge"):
            tuner.merge(old, _table(**change))
