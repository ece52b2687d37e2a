"""Runnable examples: ``python -m xpu_stone.examples.<name>``."""
