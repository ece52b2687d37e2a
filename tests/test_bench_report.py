"""The README's performance section is what ``scripts/bench_report.py --readme`` writes
from the committed result files, so that every figure in it has a file behind it.

To update the README after committing new result files::

    python scripts/bench_report.py                                   # plots and the combined JSON
    python scripts/bench_report.py --readme-into README.md           # the text between the markers
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
report = load_script("bench_report")


@pytest.fixture
def results(tmp_path):
    """A copy of the committed result files (JSON only) to change."""
    for path in RESULTS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_readme_performance_section_is_what_the_script_writes():
    readme = (ROOT / "README.md").read_text()
    assert report.between_markers(readme) == report.readme_section(RESULTS), (
        "README.md's performance section differs from `python scripts/bench_report.py --readme`: "
        "run `python scripts/bench_report.py --readme-into README.md`"
    )


@pytest.mark.parametrize(
    "text",
    ["## Performance\nno markers\n", "<!-- perf:end -->\n<!-- perf:begin -->\n", "<!-- perf:begin --> x\n"],
)
def test_missing_or_misplaced_markers_are_an_error(text):
    with pytest.raises(ValueError, match="perf:begin"):
        report.between_markers(text)


def test_readme_into_replaces_only_the_text_between_the_markers(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- perf:begin -->\nold figures\n<!-- perf:end -->\n\n## Next\n")
    assert report.main(["--readme-into", str(readme)]) == 0
    text = readme.read_text()
    section = report.readme_section(RESULTS)
    assert text == f"# x\n\n<!-- perf:begin -->\n{section}<!-- perf:end -->\n\n## Next\n"
    assert report.main(["--readme-into", str(readme)]) == 0
    assert readme.read_text() == text  # a second run changes nothing
    assert "unchanged" in capsys.readouterr().err
    readme.write_text("# no markers\n")
    assert report.main(["--readme-into", str(readme)]) == 2
    assert readme.read_text() == "# no markers\n"


def test_the_figures_the_issue_found_without_a_file_are_taken_from_the_files():
    """Issue 15: the README's MLP session row (75 µs / 836 µs / 11.1x), import time, and a
    bf16 floor of "20 %" had no file behind them; the section quotes the files."""
    text = report.readme_section(RESULTS)
    session = json.loads((RESULTS / "session-NVIDIA_H200-2026-11-22.json").read_text())["session"]
    graph, eager = session["cuda_graph_latency_us"], session["eager_latency_us"]
    row = next(line for line in text.splitlines() if "InferenceSession" in line)
    assert (
        f"| {graph:.1f} µs (InferenceSession, cuda_graph engine) | the same model eager {eager:.1f} µs | "
        in row
    )
    assert f"| {eager / graph:.1f}× (outputs bit-identical) |" in row
    assert "75 µs" not in text and "836" not in text and "11.1×" not in row
    assert "import" not in text.lower() and "digits" not in text.lower()
    # the lowest bf16 forward share of copy, straight from the files
    bf16 = [
        r["pct_copy"]
        for bench in ("poincare", "models")
        for path in RESULTS.glob(f"{bench}-NVIDIA_H200-*.json")
        for r in json.loads(path.read_text())["rows"]
        if r["impl"] == "xpu_stone" and r["mode"] == "fwd" and r["dtype"] == "bfloat16"
        and not r["op"].startswith("convert.")
    ]  # fmt: skip
    assert round(min(bf16)) == 13
    bullet = next(line for line in text.splitlines() if line.startswith("- Row-wise forward"))
    assert "bf16: 0 of" in bullet and ", 13–91 %" in bullet
    # the embedding example's speed-up says what each side ran with
    emb = next(line for line in text.splitlines() if "batch 512 |" in line and "embeddings epoch" in line)
    assert "CUDA-graph epoch vs geoopt eager" in emb and "eager, no graph" in emb


def test_every_figure_follows_its_file(results):
    """Change a file, and the section's figure changes with it; take a file away, and
    its figures go."""
    path = results / "session-NVIDIA_H200-2026-11-22.json"
    doc = json.loads(path.read_text())
    doc["session"].update(cuda_graph_latency_us=61.25, eager_latency_us=735.0, speedup=12.0)
    path.write_text(json.dumps(doc))
    path = results / "poincare-NVIDIA_H200-2026-11-21-full.json"
    doc = json.loads(path.read_text())
    row = next(
        r
        for r in doc["rows"]
        if (r["op"], r["impl"], r["mode"], r["dtype"], r["shape"][-1])
        == ("geodesic", "xpu_stone", "fwd", "bfloat16", 1024)
    )
    row["pct_copy"] = 7.4
    path.write_text(json.dumps(doc))
    text = report.readme_section(results)
    assert "61.2 µs (InferenceSession" in text and "eager 735.0 µs | 12.0×" in text and "79.6" not in text
    assert ", 7–91 %" in text and "| geodesic | 55 | 52 | 73 | 41 | 82 | 19 | 35 | 35 | 7 |" in text
    (results / "session-NVIDIA_H200-2026-11-22.json").unlink()
    (results / "optim-NVIDIA_H200-2026-11-22.json").unlink()
    text = report.readme_section(results)
    assert "InferenceSession" not in text and "Profiler open" not in text and "RiemannianAdam" not in text
    assert "HypLinear fwd+bwd" in text  # the other files still speak


def test_a_gpu_without_results_is_refused(results):
    with pytest.raises(SystemExit, match="no results for GPU"):
        report.readme_section(results, gpu="Fake_GPU")
