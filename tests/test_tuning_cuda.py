"""GPU smoke run of the tuner (skipped without a CUDA GPU): one op, one dtype,
two buckets; the table it writes serves the dispatcher, and a second run
resumes from the cache without measuring again."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import load_script

from xpu_stone import poincare
from xpu_stone.kernels import dispatcher, tuned_table
from xpu_stone.reference import poincare as R

pytestmark = pytest.mark.gpu
OP = "poincare_dist"


def test_tuner_smoke_run_writes_a_table_the_dispatcher_uses(tmp_path):
    tuner = load_script("tune_kernels")
    out = tmp_path / "table.json"
    args = ["--ops", OP, "--dtypes", "float32", "--buckets", "64", "1024", "--target-mb", "32",
            "--warmup", "2", "--reps", "5", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
            "--report", str(tmp_path / "report.json")]  # fmt: skip
    try:
        assert tuner.main(args) == 0
        table = tuned_table.TableFile.load(out)
        identity = tuned_table.device_identity(0)
        assert table.problems(identity) == []
        assert sorted(table.entries) == [(OP, "float32", 64), (OP, "float32", 1024)]
        for e in table.entries.values():
            assert e.fwd_ms > 0 and e.bwd_ms > 0 and e.margin is not None and e.margin >= 0
            assert not e.changed or e.verified_margin > 0  # timed again, still faster
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["copy_gbps"] > 100 and len(report["cells"]) == 2
        assert all(0.05 < c["heuristic_fwd_of_copy"] < 1.5 for c in report["cells"])
        assert not [f for f in table.failed if f["status"] == "wrong"], table.failed
        cache_files = list((tmp_path / "cache").glob("*.jsonl"))
        lines = cache_files[0].read_text().count("\n")
        assert tuner.main(args) == 0  # resumed: nothing measured again
        assert cache_files[0].read_text().count("\n") == lines
        assert tuned_table.TableFile.load(out).entries == table.entries  # and the same decisions

        dispatcher.use_table(out)
        for d in (64, 1024):
            choice = dispatcher.select(OP, "float32", d, True, 0)
            e = table.entries[(OP, "float32", d)]
            assert (choice.variant, choice.config, choice.reason) == (e.variant, e.config, "table")
            gen = torch.Generator(device="cuda").manual_seed(d)
            x, y = (torch.rand(1001, d, device="cuda", generator=gen) * 0.8 / d**0.5 for _ in range(2))
            ref = R.dist(x.double(), y.double())
            assert torch.allclose(poincare.dist(x, y).double(), ref, rtol=1e-5, atol=1e-6)
    finally:
        dispatcher.set_tuned_table(None)


@pytest.mark.parametrize(
    "op, dtype, bucket", [("lorentz_expmap", "float16", 16), ("lorentz_dist", "float32", 64)]
)
def test_tuner_checks_against_the_reference_and_tunes_lorentz_cells(tmp_path, op, dtype, bucket):
    """The check compares with the independent float64 reference (tuner.reference_outputs),
    so a correct configuration passes it. lorentz_expmap / float16 / D = 16 had no
    winner: exact gradients of its check data reach 1.1e5, beyond fp16's range, and
    were compared unsaturated; lorentz_dist's reference must be the op's function
    off the hyperboloid too. Each cell gets a winner and no configuration is wrong."""
    tuner = load_script("tune_kernels")
    out = tmp_path / "table.json"
    args = ["--ops", op, "--dtypes", dtype, "--buckets", str(bucket), "--target-mb", "16", "--warmup", "2",
            "--reps", "5", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
            "--report", str(tmp_path / "report.json")]  # fmt: skip
    try:
        assert tuner.main(args) == 0
        table = tuned_table.TableFile.load(out)
        assert not [f for f in table.failed if f["status"] == "wrong"], table.failed
        assert (op, dtype, bucket) in table.entries
    finally:
        dispatcher.set_tuned_table(None)
