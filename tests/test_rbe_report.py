"""scripts/rbe_report.py: the README's RBE block is what the script writes from the
committed results, and the tables, means and recommendation are right on a small
hand-made result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
script = load_script("rbe_report")

ENV = {"torch": "2.13.0+cpu", "date": "2026-12-01"}


def _row(layer, codec, budget, err=None, bits=None, chosen=None):
    if err is None:
        return {"layer": layer, "codec": codec, "budget": budget, "error": "UnsupportedOperationError: no"}
    row = {"layer": layer, "codec": codec, "budget": budget, "rel_error": err, "bits_per_weight": bits,
           "setting": "s"}  # fmt: skip
    return row | ({"chosen": chosen} if chosen else {})


def _quality():
    rows = [
        # 2 bits: rbe 0.5 / 0.7 (mean 0.6), svd 0.8 / 0.6 (0.7), int4 does not fit
        _row("a", "rbe", 2.0, 0.5, 1.9), _row("b", "rbe", 2.0, 0.7, 1.8),
        _row("a", "svd", 2.0, 0.8, 2.0), _row("b", "svd", 2.0, 0.6, 1.9),
        _row("a", "int4", 2.0), _row("b", "int4", 2.0),
        _row("a", "residual_only", 2.0, 0.55, 1.2), _row("b", "residual_only", 2.0),
        _row("a", "auto", 2.0, 0.5, 1.9, "rbe"), _row("b", "auto", 2.0, 0.6, 1.9, "svd"),
        # 4.25 bits: int4 0.1 / 0.3 (0.2), rbe 0.15 / 0.35 (0.25), svd 0.4 / 0.4
        _row("a", "rbe", 4.25, 0.15, 4.2), _row("b", "rbe", 4.25, 0.35, 4.2),
        _row("a", "svd", 4.25, 0.4, 4.2), _row("b", "svd", 4.25, 0.4, 4.2),
        _row("a", "int4", 4.25, 0.1, 4.1), _row("b", "int4", 4.25, 0.3, 4.1),
        _row("a", "auto", 4.25, 0.1, 4.1, "int4"), _row("b", "auto", 4.25, 0.3, 4.1, "int4"),
    ]  # fmt: skip
    whole = [
        {"scope": "none", "codec": "dense fp32", "budget": 32, "mean_cosine": 1.0, "nn_agreement": 1.0,
         "nn_same_topic": 0.675},
        {"scope": "ffn", "codec": "rbe", "budget": 2.0, "mean_cosine": 0.4321, "nn_agreement": 0.5,
         "nn_same_topic": 0.6},
        {"scope": "ffn", "codec": "int4", "budget": 2.0, "error": "no"},
    ]  # fmt: skip
    return {"model": "tiny", "layers": rows, "whole_model": whole, "sentences": 40, "refine_steps": 0,
            "environment": ENV}  # fmt: skip


def _default():
    rows = [{"layer": n, "codec": "rbe:32x3x1", "budget": 1.7, "rel_error": e, "bits_per_weight": 1.5}
            for n, e in (("a", 0.6), ("b", 0.625))]  # fmt: skip
    return {"layers": rows, "environment": ENV}


def _digits():
    rows = [{"model": m, "seed": s, "stored_bytes": 17940.0, "bits_per_weight": 16.25, "lr": 5e-3,
             "test_accuracy_stored": a, "train_seconds": t, "moves_tried": n, "moves_accepted": k}
            for m, s, a, t, n, k in (("dense", 0, 0.96, 3.0, 0, 0), ("dense", 1, 0.98, 5.0, 0, 0),
                                     ("rbe", 0, 0.5, 9.0, 68, 1), ("rbe", 1, 0.7, 9.0, 68, 2))]  # fmt: skip
    args = {"epochs": 40, "batch": 64, "lrs": [2e-3, 5e-3], "moves": 4, "tau": 50, "seeds": [0, 1]}
    return {"sizes": [64, 64, 64, 10], "train": 1347, "test": 450, "rows": rows, "args": args,
            "environment": ENV}  # fmt: skip


def _write(tmp_path, quality=None):
    for name, data in ((script.QUALITY, quality or _quality()), (script.DEFAULT, _default()),
                       (script.DIGITS, _digits())):  # fmt: skip
        (tmp_path / name).write_text(json.dumps(data))
    return tmp_path


def test_readme_block_is_what_the_script_writes():
    """Fails when README.md's RBE section lacks the markers or drifts from the results:
    paste the output of ``python scripts/rbe_report.py`` between them."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## RBE compressed layers")
    end = readme.find("\n## ", start + 1)
    section = readme[start : end if end > 0 else len(readme)]
    assert script.block_in(section) == script.render()


def test_tables_and_recommendation_of_a_small_result():
    q = _quality()
    table = script.quality_table(q)
    # means written out by hand from _quality()
    assert (
        "| 2 | 0.600 (1.85 b) | 0.550 (1.20 b, 1 of 2 layers) | 0.700 (1.95 b) | — | 0.550 (1.90 b; RBE 1, SVD 1) |"
        in table
    )
    assert "| 4.25 | 0.250 (4.20 b) | — | 0.400 (4.20 b) | 0.200 (4.10 b) | 0.200 (4.10 b; int4 2) |" in table
    assert "on all 2 linear layers of tiny" in table
    assert script.winners(q) == {2.0: "rbe", 4.25: "int4"}
    rec = script.recommendation(q)
    assert "2 bits: **RBE** (auto: RBE 1, SVD 1); 4.25 bits: **int4** (auto: int4 2)." in rec
    assert "rises by" not in rec  # residual only met the budget on one layer of two
    q["layers"][7] = _row("b", "residual_only", 2.0, 0.75, 1.2)
    assert "RBE's mean error rises by 0.050 at 2 bits, with 0.65 fewer bits a weight stored." in (
        script.recommendation(q)
    )
    whole = script.whole_model_table(q)
    assert "| ffn | 2 | 0.432 / 0.500 | — |" in whole and "same topic for 0.675" in whole
    assert "| 32, 3, 1 | 1.521 | 9.5% | 0.6125 |" in script.default_table(_default())
    digits = script.digits_table(_digits())
    assert "| dense | 17,940 | 16.25 | 0.005 | 0.970 (0.960–0.980) | 4.0 s | — |" in digits
    assert "| rbe | 17,940 | 16.25 | 0.005 | 0.600 (0.500–0.700) | 9.0 s | 3 of 136 |" in digits
    assert "picked per model from 0.002, 0.005" in digits


def test_a_codec_missing_on_some_layers_wins_no_budget():
    q = _quality()
    q["layers"] = [r for r in q["layers"] if not (r["codec"] == "int4" and r["layer"] == "b")]
    assert script.winners(q)[4.25] == "rbe"  # int4's 0.1 on one layer does not count


def test_an_auto_pick_that_is_not_the_lowest_error_is_an_error():
    q = _quality()
    bad = next(r for r in q["layers"] if r["codec"] == "auto" and r["layer"] == "b" and r["budget"] == 2.0)
    bad["chosen"], bad["rel_error"] = "rbe", 0.7
    with pytest.raises(ValueError, match="b at 2.0 bits: auto chose rbe"):
        script.recommendation(q)


def test_markers_are_required_once_and_in_order():
    b, e = script.BEGIN, script.END
    assert script.block_in(f"x\n{b}\nbody\n{e}\ny") == f"{b}\nbody\n{e}"
    for text in ("no markers", f"{b} only", f"{e}\n{b}", f"{b}{e}{b}{e}"):
        with pytest.raises(ValueError, match="rbe-table"):
            script.block_in(text)


def test_check_passes_on_the_pasted_block_and_fails_on_drift(tmp_path, capsys):
    results = _write(tmp_path)
    block = script.render(results)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## RBE compressed layers\n\ntext\n\n{block}\n\nmore\n")
    assert script.main(["--results", str(results), "--check", str(readme)]) == 0
    readme.write_text(readme.read_text().replace("0.600", "0.601"))
    assert script.main(["--results", str(results), "--check", str(readme)]) == 1
    readme.write_text("## RBE compressed layers\n\nno markers\n")
    assert script.main(["--results", str(results), "--check", str(readme)]) == 1
    assert script.main(["--results", str(results)]) == 0
    assert capsys.readouterr().out == block + "\n"


# ------------------------------------------------------------------------- speed
def _speed(date="2026-12-01", bwd=(0.06, 0.05, 0.04), gen=0.1):
    """Rows as ``bench_rbe.py speed`` writes them, ``shape`` ``[out, in]``; ms chosen so the
    ratios are plain: at 768→3072, batch 1, RBE 0.02 / cuBLAS 0.01 = 2, generate 0.1 / 0.02 = 5."""
    rows = []
    for shape, f in (([3072, 768], 1.0), ([768, 3072], 2.0)):
        for batch, rbe, dense, svd in ((1, 0.02, 0.01, 0.015), (8, 0.03, 0.06, 0.02)):
            rows += [{"shape": shape, "batch": batch, "mode": "fwd", "impl": i, "ms": ms * f}
                     for i, ms in (("rbe_fused", rbe), ("dense_fp16_cublas", dense),
                                   ("generate_then_matmul", gen), ("svd_fp16_rank7", svd))]  # fmt: skip
        for batch, rbe in zip((1, 8, 16), bwd):
            rows += [{"shape": shape, "batch": batch, "mode": "fwd+bwd", "impl": i, "ms": ms * f}
                     for i, ms in (("rbe_fused", rbe), ("dense_fp16_cublas", 0.025))]  # fmt: skip
        rows.append({"shape": shape, "memory_bytes": {"rbe_fused": 100, "rbe_stored": 90,
                                                      "dense_fp16_cublas": 400, "svd_fp16_rank7": 50}})  # fmt: skip
    env = {"gpu": "NVIDIA H200", "date": date, "torch": "2.11.0+cu130", "cuda": "13.0"}
    return {"part": "speed", "rows": rows, "environment": env, "args": {"part": "speed"}}


def test_speed_table_of_a_small_result():
    table = script.speed_table(_speed(), "rbe-speed-x.json")
    # [3072, 768] is RBELinear(768, 3072): in → out; ratios RBE / cuBLAS by hand
    assert "| 768→3072 | fwd | 1 | 0.020 | 0.010 | 0.015 | 0.100 | 2.00 |" in table
    assert "| 768→3072 | fwd | 8 | 0.030 | 0.060 | 0.020 | 0.100 | 0.50 |" in table
    assert "| 768→3072 | fwd+bwd | 8 | 0.050 | 0.025 | — | — | 2.00 |" in table
    assert "| 3072→768 | fwd | 1 | 0.040 | 0.020 | 0.030 | 0.200 | 2.00 |" in table
    assert "| 768→3072 | 100 (25.0%) | 90 (22.5%) | 400 (100.0%) | 50 (12.5%) |" in table
    assert "on one NVIDIA H200, torch 2.11.0+cu130, CUDA 13.0, 2026-12-01" in table
    assert "(7 for 768→3072, 7 for 3072→768)" in table
    assert "that ran: RBE fused, dense fp16 (cuBLAS), SVD pair (fp16), generate then matmul." in table
    assert "torch's int4 kernel (`_weight_int4pack_mm`) has no row" in table


def test_speed_table_names_failed_and_int4_runs():
    data = _speed()
    for r in data["rows"]:
        if r.get("impl") == "svd_fp16_rank7":
            r["ms"] = "failed: RuntimeError: boom"
    data["rows"] += [{"shape": [3072, 768], "batch": 1, "mode": "fwd", "impl": "torch_int4", "ms": 0.5}]
    table = script.speed_table(data, "x.json")
    assert "| 768→3072 | fwd | 1 | 0.020 | 0.010 | failed | 0.100 | 0.500 | 2.00 |" in table
    assert "| 768→3072 | fwd | 8 | 0.030 | 0.060 | failed | 0.100 | — | 0.50 |" in table
    assert "that ran: RBE fused, dense fp16 (cuBLAS), generate then matmul, torch int4." in table
    assert "Failed: SVD pair (fp16) (RuntimeError: boom)." in table
    assert "int4 kernel" not in table


def test_speed_targets_of_a_small_result():
    t = script.speed_targets(_speed())
    assert "cuBLAS: 0.020 ms against 0.010 ms, ratio 2.00 — **missed**." in t
    assert "generate then matmul: 0.100 / 0.020 ms = 5.0× — **met**." in t
    # backward: fwd+bwd − fwd = 0.06 − 0.02 = 0.040 at batch 1, 0.05 − 0.03 = 0.020 at 8; none at 16
    assert "forward + backward 0.060, 0.050, 0.040 ms at batch 1, 8, 16 (an upper bound" in t
    assert "both were timed: 0.040, 0.020 ms at batch 1, 8 — **missed** (by the estimate)." in t
    assert "3.9× — **missed**." in script.speed_targets(_speed(gen=0.078))
    data = _speed()  # a fwd+bwd at batch 64 is outside the target's batch <= 32
    data["rows"].append(
        {"shape": [3072, 768], "batch": 64, "mode": "fwd+bwd", "impl": "rbe_fused", "ms": 9.0}
    )
    assert "9.000" not in script.speed_targets(data)
    # estimates within 30 µs but fwd+bwd is not: the file decides nothing
    assert "0.025, 0.020 ms at batch 1, 8 — not decided by this file." in (
        script.speed_targets(_speed(bwd=(0.045, 0.05, 0.04)))
    )
    assert "— **met** (forward + backward itself within it)." in (
        script.speed_targets(_speed(bwd=(0.03, 0.03, 0.025)))
    )
    # the 3072→768 rows (twice the ms) do not stand in for RBELinear(768, 3072)
    data = _speed()
    data["rows"] = [r for r in data["rows"] if r["shape"] == [768, 3072]]
    t = script.speed_targets(data)
    assert t.count("not measured") == 3 and "**" not in t


def test_the_newest_speed_file_is_read_and_none_says_not_measured(tmp_path):
    assert (
        script.speed_part(tmp_path) == "GPU speed: not measured (no `benchmarks/results/rbe-speed-*.json`).\n"
    )
    block = script.render(_write(tmp_path))
    assert "GPU speed: not measured" in block and "RBE / cuBLAS" not in block
    (tmp_path / "rbe-speed-NVIDIA_H200-2026-12-01.json").write_text(json.dumps(_speed()))
    (tmp_path / "rbe-speed-NVIDIA_H200-2026-11-01.json").write_text(json.dumps(_speed("2026-11-01", gen=9.0)))
    assert script.newest_speed(tmp_path)[0] == "rbe-speed-NVIDIA_H200-2026-12-01.json"
    block = script.render(tmp_path)
    assert "`benchmarks/results/rbe-speed-NVIDIA_H200-2026-12-01.json`" in block
    assert "| 768→3072 | fwd | 1 | 0.020 | 0.010 | 0.015 | 0.100 | 2.00 |" in block
    assert "5.0× — **met**" in block and "not measured" not in block


def test_device_timings_get_a_table_and_targets_of_their_own(tmp_path):
    """Rows with ``graph_ms`` (CUDA-graph replay): a second table and target list from
    those, the eager ones unchanged; an int4 that did not run is named with its reason."""
    data = _speed()
    for r in data["rows"]:
        if "ms" in r:
            r["graph_ms"] = r["ms"] / 4
    data["rows"].append(
        {"shape": [3072, 768], "impl": "torch_int4", "unavailable": "failed: RuntimeError: no"}
    )
    (tmp_path / "rbe-speed-NVIDIA_H200-2026-12-01.json").write_text(json.dumps(data))
    part = script.speed_part(tmp_path)
    assert "| 768→3072 | fwd | 1 | 0.020 | 0.010 | 0.015 | 0.100 | 2.00 |" in part  # eager
    assert "| 768→3072 | fwd | 1 | 0.005 | 0.003 | 0.004 | 0.025 | 2.00 |" in part  # device
    assert (
        "from this file's eager timings:" in part and "from this file's device (CUDA-graph) timings:" in part
    )
    assert "0.005 ms against 0.003 ms, ratio 2.00 — **missed**" in part
    assert "torch int4 did not run (RuntimeError: no)." in part and "has no row" not in part
    assert part.count("Bytes a layer keeps") == 1
