"""scripts/gpu_test_report.py counts a JUnit file's outcomes and fails on failures."""

from __future__ import annotations

import json

from helpers import load_script

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" time="12.5">
<testcase classname="tests.test_a" name="test_ok" time="0.1"/>
<testcase classname="tests.test_a" name="test_ok2" time="0.1"/>
<testcase classname="tests.test_a" name="test_skip" time="0"><skipped message="no GPU"/></testcase>
<testcase classname="tests.test_b" name="test_bad" time="0.2"><failure message="assert 1 == 2">tb</failure></testcase>
</testsuite></testsuites>
"""


def test_counts_and_failure_exit(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    script = load_script("gpu_test_report")
    summary = script.summarise(junit)
    assert (summary["passed"], summary["failed"], summary["skipped"], summary["errors"]) == (2, 1, 1, 0)
    assert summary["seconds"] == 12.5
    assert summary["files"] == ["tests/test_a.py", "tests/test_b.py"]
    assert {"test": "tests.test_b::test_bad", "outcome": "failure", "message": "assert 1 == 2"} in summary[
        "not_passed"
    ]
    assert script.main([str(junit), "--out", str(tmp_path), "--date", "2026-12-01"]) == 1  # a failure fails
    (written,) = tmp_path.glob("gpu-tests-*-2026-12-01.json")
    assert json.loads(written.read_text())["failed"] == 1
    junit.write_text(JUNIT.replace('<failure message="assert 1 == 2">tb</failure>', ""))
    assert script.main([str(junit), "--out", str(tmp_path), "--date", "2026-12-01"]) == 0


def test_suffix_names_a_partial_run(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT.replace('<failure message="assert 1 == 2">tb</failure>', ""))
    script = load_script("gpu_test_report")
    assert script.main([str(junit), "--out", str(tmp_path), "--date", "2026-12-01", "--suffix", "rerun"]) == 0
    (written,) = tmp_path.glob("gpu-tests-*-2026-12-01-rerun.json")
    assert json.loads(written.read_text())["files"] == ["tests/test_a.py", "tests/test_b.py"]
