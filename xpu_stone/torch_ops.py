"""Old import path (kept for one release): the torch custom ops of the row-wise ops
are :data:`xpu_stone.engine.OPS` (made by :mod:`xpu_stone.engine.custom_op`)."""

from .engine.rowwise import OPS

__all__ = ["OPS"]
