"""The library raises no warnings of its own making: a DeprecationWarning attributed
to an xpu_stone module fails the test suites (pyproject's filterwarnings), and the
deprecated CuPy stream wrapper is not used anywhere."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

import xpu_stone

PACKAGE = Path(xpu_stone.__file__).parent


def test_deprecation_warning_from_the_library_is_an_error():
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit(
            "old API", DeprecationWarning, "launch.py", 1, module="xpu_stone.kernels.launch"
        )


def test_deprecation_warning_from_elsewhere_is_not_an_error():
    with pytest.warns(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, "other.py", 1, module="numpy.core")


def test_no_deprecated_cupy_external_stream_is_created():
    """CuPy 14 deprecates ``cupy.cuda.ExternalStream(ptr)``; every launch path uses
    ``kernels.launch.cupy_stream`` (``Stream.from_external``) instead."""
    made = re.compile(r"cupy\.cuda\.ExternalStream\(|cp\.cuda\.ExternalStream\(")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in PACKAGE.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if made.search(line)
    ]
    assert not offenders, offenders
