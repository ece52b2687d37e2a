"""Old import path of the tuned tables and the tuner (kept for one release):
use :mod:`xpu_stone.kernels.tuned_table`, :mod:`~xpu_stone.kernels.auto_table`
and :mod:`~xpu_stone.kernels.tuner`."""

from .auto_table import *  # noqa: F403
from .auto_table import __all__ as _auto_names
from .dispatcher import use_table
from .tuned_table import *  # noqa: F403
from .tuned_table import __all__ as _table_names
from .tuner import *  # noqa: F403
from .tuner import __all__ as _tuner_names

__all__ = [*_table_names, *_auto_names, *_tuner_names, "use_table"]
