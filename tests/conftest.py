import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# Which launch configurations the suite runs, from XPU_STONE_TEST_TABLES:
#   heuristic (default): the dispatcher's heuristic; shipped tuned tables stay out
#             unless a test installs one (tests/test_tuning*.py do);
#   shipped:  the tuned tables shipped for this GPU (xpu_stone/kernels/tables/),
#             as every H100/H200 user gets them; run the GPU suite once each way.
TABLES_ENV = "XPU_STONE_TEST_TABLES"
TABLES = os.environ.get(TABLES_ENV, "heuristic")
if TABLES not in ("heuristic", "shipped"):
    raise pytest.UsageError(f"{TABLES_ENV}={TABLES!r}: expected 'heuristic' or 'shipped'")
if TABLES == "heuristic":
    os.environ.setdefault("XPU_STONE_TUNED_TABLE", "none")
elif os.environ.get("XPU_STONE_TUNED_TABLE", "").lower() in ("none", "off"):
    raise pytest.UsageError(f"{TABLES_ENV}=shipped, but XPU_STONE_TUNED_TABLE switches the tables off")


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


HAS_GPU = _has_gpu()


def pytest_report_header(config):
    return f"launch configurations: {TABLES} ({TABLES_ENV}); XPU_STONE_TUNED_TABLE={os.environ.get('XPU_STONE_TUNED_TABLE')}"


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def poisoned_outputs():
    """Kernel outputs are filled with NaN before each launch, so an element a
    kernel fails to write shows up in the comparison."""
    from xpu_stone import config

    config.poison_outputs = True
    yield
    config.poison_outputs = False


@pytest.fixture
def one_torch_thread():
    """torch on one CPU thread for the test (tiny matmuls: threads only contend on a
    2-core CI machine); the previous count afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
