"""Hypothesis profiles of the property tests and the count of the examples they run.

Profiles (selected by ``XPU_STONE_HYPOTHESIS_PROFILE``, default ``ci``; importing
this module registers and loads them):

* ``ci``: ``CI_EXAMPLES`` examples per test case (one op, dtype and device),
  derandomized (the same examples every run as long as the test's source is
  unchanged), no deadline, no example database (Hypothesis still keeps a cache in
  ``.hypothesis/``, which it git-ignores itself), no shrinking (a failure prints
  its rows and values, and a ``@reproduce_failure`` blob that replays it).
* ``device``: ten times as many, otherwise the same (for the GPU machine).

Every example that reaches its checks is counted per (model, op, dtype, device)
with :func:`record`. The module-scoped autouse fixture :func:`example_report`
(a test module imports it) prints a summary after each module and, when
``XPU_STONE_TEST_REPORT_DIR`` is set, merges the counts into
``$XPU_STONE_TEST_REPORT_DIR/hypothesis-examples.json``. A count includes the
replay of a failing example (so a failing test may show one more than it drew).
"""

from __future__ import annotations

import collections
import datetime
import fcntl
import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

CI_EXAMPLES = 12
PROFILE_ENV = "XPU_STONE_HYPOTHESIS_PROFILE"
REPORT_ENV = "XPU_STONE_TEST_REPORT_DIR"
REPORT_FILE = "hypothesis-examples.json"

_COMMON = dict(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    report_multiple_bugs=False,
    # no shrinking: a failing op costs its examples, not minutes of shrinking; the
    # failure names the rows and values, and print_blob replays the example
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    # large D and many rows make big draws and slow examples on purpose
    suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large),
)
settings.register_profile("ci", max_examples=CI_EXAMPLES, **_COMMON)
settings.register_profile("device", max_examples=10 * CI_EXAMPLES, **_COMMON)
PROFILE = os.environ.get(PROFILE_ENV, "ci")
settings.load_profile(PROFILE)

COUNTS: collections.Counter = collections.Counter()  # (model, op, dtype, device) -> examples run


def record(model: str, op: str, dtype, device: str) -> None:
    """Counts one example of ``model.op`` that reached its checks."""
    COUNTS[(model, op, str(dtype).replace("torch.", ""), device)] += 1


def summary_lines(keys) -> list[str]:
    by_op = collections.defaultdict(list)
    for model, op, dtype, device in sorted(keys):
        by_op[(model, op, device)].append(f"{dtype} {COUNTS[(model, op, dtype, device)]}")
    return [f"  {m}.{o} [{dev}]: " + ", ".join(v) for (m, o, dev), v in sorted(by_op.items())]


def write_report(directory) -> Path:
    """Writes the counts to ``directory/REPORT_FILE``, merged with the counts already
    there (runs split over several pytest processes add up to one report; a count
    of this process replaces the file's for the same op, dtype and device)."""
    path = Path(directory) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:  # pytest-xdist workers write one report
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _merge_into(path)


def _merge_into(path: Path) -> Path:
    counts = {}
    if path.exists():
        for row in json.loads(path.read_text())["counts"]:
            counts[(row["model"], row["op"], row["dtype"], row["device"])] = row["examples"]
    counts.update(COUNTS)
    rows = [
        {"model": m, "op": o, "dtype": dt, "device": dev, "examples": n}
        for (m, o, dt, dev), n in sorted(counts.items())
    ]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report = {
        "profile": PROFILE,
        "max_examples": settings.get_profile(PROFILE).max_examples,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "gpu": gpu,
        "total_examples": sum(counts.values()),
        "counts": rows,
    }
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


@pytest.fixture(scope="module", autouse=True)
def example_report(request):
    """After a test module: the examples its tests ran, printed and (with the env var) written."""
    before = set(COUNTS)
    yield
    keys = set(COUNTS) - before
    if not keys:
        return
    lines = [f"hypothesis examples run (profile {PROFILE!r}), {request.module.__name__}:"]
    lines += summary_lines(keys)
    directory = os.environ.get(REPORT_ENV)
    if directory:
        lines.append(f"  written to {write_report(directory)}")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():  # shown with or without -s
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)
