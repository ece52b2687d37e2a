"""The kernel layer: CUDA sources compiled by NVRTC and cached (``compiler``), the
registry of ops and their variants (``registry``), the dispatcher that picks a
variant per call (``dispatcher``, reading ``tuned_table``), loading and launching
(``launch``), ahead-of-time builds (``build``) and the tuner's bookkeeping
(``tuner``). It knows nothing of torch, ops or the runtime above it.
"""

from .build import build
from .dispatcher import explain, select, set_tuned_table, use_table
from .registry import REGISTRY

__all__ = ["REGISTRY", "build", "explain", "select", "set_tuned_table", "use_table"]
