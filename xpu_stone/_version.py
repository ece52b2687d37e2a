"""The package version, in one place (read by pyproject's build, the tuned tables and reports)."""

__version__ = "0.1.0"
