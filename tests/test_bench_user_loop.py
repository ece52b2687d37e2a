"""benchmarks/bench_user_loop.py, run tiny on the CPU: the JSON it writes (what each
variant ran with, times, ratios, losses, reconstruction, dynamo's graph breaks), that
every loop learns, and that the README section quotes the file when it exists."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["xpu_stone:eager", "geoopt:eager", "euclid:eager", "xpu_stone:compile", "xpu_stone:capture"]
EPOCHS, WARMUP, TIMED = 6, 0, 2
# lr 1.0 without burn-in: at this size (6 batches of 128 edges an epoch) the loss falls every
# epoch; at the paper's lr 0.15 it first rises for dozens of epochs as the points leave the origin
TINY = ["--device", "cpu", "--epochs", str(EPOCHS), "--burnin", "0", "--lr", "1.0", "--max-steps", "6",
        "--batch", "128", "--negatives", "10", "--time-epochs", str(TIMED), "--warmup-epochs", str(WARMUP),
        "--compile-backend", "aot_eager", "--variants", *VARIANTS]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("geoopt")
    out = tmp_path_factory.mktemp("userloop")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_user_loop", *TINY, "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("userloop-cpu-*.json")
    assert path.with_suffix(".md").exists()
    return path, json.loads(path.read_text())


def test_the_json_says_what_ran_and_how(run):
    _, doc = run
    assert doc["meta"]["gpu"] == "cpu" and doc["meta"]["bench"] == "userloop" and doc["meta"]["torch"]
    cfg = doc["config"]
    assert (cfg["batch"], cfg["negatives"], cfg["epochs"], cfg["steps_per_epoch"]) == (128, 10, EPOCHS, 6)
    assert (cfg["nodes"], cfg["edges"]) == (1182, 6542) and cfg["compile_backend"] == "aot_eager"
    v = {r["variant"]: r for r in doc["variants"]}
    assert list(v) == VARIANTS
    assert v["xpu_stone:eager"]["ran_with"].startswith("eager; xpu_stone.poincare.dist")
    assert v["geoopt:eager"]["ran_with"].startswith("eager; geoopt.PoincareBall.dist")
    assert v["euclid:eager"]["ran_with"].startswith(
        "eager; torch.linalg.vector_norm(x - y) + torch.optim.SGD"
    )
    assert v["xpu_stone:compile"]["ran_with"].startswith("torch.compile(step, backend='aot_eager')")
    assert v["xpu_stone:capture"]["ran_with"].startswith("CUDA graph: the step captured by xpu_stone.runtime")
    assert v["xpu_stone:capture"]["skipped"] == "CUDA graphs need a CUDA device"
    assert "ms_per_epoch" not in v["xpu_stone:capture"]
    for name in VARIANTS[:4]:
        r = v[name]
        assert "error" not in r, r.get("error")
        assert (
            len(r["epoch_ms"]) == TIMED
            and r["ms_per_epoch_min"] <= r["ms_per_epoch"] <= r["ms_per_epoch_max"]
        )
        assert r["ms_per_epoch"] > 0 and r["train_seconds"] > 0
        assert math.isclose(r["ratio_to_euclid_eager"], r["ms_per_epoch"] / v["euclid:eager"]["ms_per_epoch"])
        assert math.isclose(
            r["speedup_vs_geoopt_eager"], v["geoopt:eager"]["ms_per_epoch"] / r["ms_per_epoch"]
        )
    assert (
        v["euclid:eager"]["ratio_to_euclid_eager"] == 1.0
        and v["geoopt:eager"]["speedup_vs_geoopt_eager"] == 1.0
    )


def test_every_loop_learns_and_the_hyperbolic_ones_are_evaluated(run):
    _, doc = run
    v = {r["variant"]: r for r in doc["variants"]}
    for name in VARIANTS[:4]:
        losses = v[name]["losses"]
        assert len(losses) == EPOCHS + WARMUP + TIMED and all(math.isfinite(x) for x in losses)
        assert losses[-1] < 0.8 * losses[0], (name, losses)
    for name in ("xpu_stone:eager", "geoopt:eager", "xpu_stone:compile"):
        assert v[name]["mean_rank"] >= 1 and 0 < v[name]["map"] <= 1
    assert "map" not in v["euclid:eager"]
    # the same loop compiled trains the same table
    assert v["xpu_stone:compile"]["losses"] == pytest.approx(v["xpu_stone:eager"]["losses"], rel=1e-4)


def test_the_compiled_step_reports_its_graph_breaks(run):
    _, doc = run
    r = next(r for r in doc["variants"] if r["variant"] == "xpu_stone:compile")
    dyn = r["dynamo"]
    assert dyn["graph_breaks"] == sum(dyn["graph_break_reasons"].values())
    assert dyn["stats"]["unique_graphs"] >= 1
    assert any("backward" in reason for reason in dyn["graph_break_reasons"])  # loss.backward() in the step
    ex = r["explain"]
    assert ex["graph_count"] >= 1 and ex["graph_break_count"] >= 1
    assert any("bench_user_loop.py" in b["at"] for b in ex["breaks"])


def test_the_readme_section_quotes_the_user_loop_file(run, tmp_path):
    path, doc = run
    report = load_script("bench_report")
    for p in (ROOT / "benchmarks" / "results").glob("*.json"):
        if not p.name.startswith("userloop-"):  # the committed results, without a user-loop file
            shutil.copy(p, tmp_path / p.name)
    assert "A user's own training loop" not in report.readme_section(tmp_path)
    shutil.copy(path, tmp_path / "userloop-NVIDIA_H200-2099-01-01.json")
    text = report.readme_section(tmp_path)
    assert "### A user's own training loop" in text and "`userloop-NVIDIA_H200-2099-01-01.json`" in text
    v = {r["variant"]: r for r in doc["variants"]}
    row = next(line for line in text.splitlines() if line.startswith("| xpu_stone:eager |"))
    assert (
        f"| {v['xpu_stone:eager']['ran_with']} | {report._ms(v['xpu_stone:eager']['ms_per_epoch'])} (" in row
    )
    assert f"| {v['xpu_stone:eager']['mean_rank']:.2f} / {v['xpu_stone:eager']['map']:.3f} |" in row
    row = next(line for line in text.splitlines() if line.startswith("| xpu_stone:compile |"))
    assert row.endswith(f"| {v['xpu_stone:compile']['dynamo']['graph_breaks']} |")
    assert "| xpu_stone:capture |" in text and "CUDA graphs need a CUDA device" in text
    bullet = next(line for line in text.splitlines() if line.startswith("- The user's loop"))
    ratio = v["xpu_stone:eager"]["ratio_to_euclid_eager"]
    assert (
        f"eager at most 1.15× its Euclidean floor: {report._x(ratio)}, {'met' if ratio <= 1.15 else 'missed'}"
        in bullet
    )
