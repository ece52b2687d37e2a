"""Summarises a GPU test run (pytest's JUnit XML) as a result JSON for benchmarks/results/.

    python scripts/gpu_test_report.py $OUT/junit.xml --out benchmarks/results

Writes ``gpu-tests-<GPU>-<date>[-<suffix>].json``: the device, the date, torch/CuPy
versions, the test files that ran, the counts (passed, failed, errors, skipped), the
wall time, and the id and message of every test that did not pass. The README's test figures quote this file; the
raw log stays out of git.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import result_stem  # noqa: E402


def summarise(junit: Path) -> dict:
    """Counts and the tests that did not pass, from a JUnit XML file."""
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "seconds": 0.0, "not_passed": []}
    files = set()
    for suite in suites:
        out["seconds"] += float(suite.get("time", 0.0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            module = case.get("classname", "").split("::")[0]
            files.add(module.replace(".", "/") + ".py" if module else "?")
            kinds = [c for c in case if c.tag in ("failure", "error", "skipped")]
            if not kinds:
                out["passed"] += 1
                continue
            kind = kinds[0].tag
            out[{"failure": "failed", "error": "errors", "skipped": "skipped"}[kind]] += 1
            message = (kinds[0].get("message") or "").splitlines()[0][:300] if kinds[0].get("message") else ""
            out["not_passed"].append({"test": name, "outcome": kind, "message": message})
    out["seconds"] = round(out["seconds"], 1)
    return {"files": sorted(files), **out}


def device() -> dict:
    try:
        import cupy
        import torch

        p = torch.cuda.get_device_properties(0)
        return {
            "gpu": p.name,
            "torch": torch.__version__,
            "cupy": cupy.__version__,
            "cuda": torch.version.cuda,
        }
    except Exception as e:  # noqa: BLE001 - a report: say why there is no device
        return {"gpu": "none", "error": f"{type(e).__name__}: {e}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("junit", type=Path)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--date", default=dt.date.today().isoformat())
    p.add_argument("--suffix", default="", help="appended to the file name, e.g. 'rerun'")
    args = p.parse_args(argv)
    info = device()
    report = {**info, "date": args.date, **summarise(args.junit)}
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.suffix}" if args.suffix else ""
    path = args.out / f"{result_stem('gpu-tests', info['gpu'], args.date)}{suffix}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"{report['passed']} passed, {report['failed']} failed, {report['errors']} errors, "
        f"{report['skipped']} skipped in {report['seconds']} s on {info['gpu']} ({args.date}) -> {path}"
    )
    return 0 if report["failed"] == report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
