import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# The dispatcher's choices under test are the heuristic's: shipped tuned tables
# stay out unless a test installs one (tests/test_tuning*.py do).
os.environ.setdefault("XPU_STONE_TUNED_TABLE", "none")


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


HAS_GPU = _has_gpu()


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
