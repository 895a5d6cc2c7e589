"""partialfc: distributed Partial-FC training for face recognition at millions of identities.

The names below load on first use (PEP 562): ``python -m partialfc.train`` imports this package before
its own first line runs, and that line must come before numpy and torch start threads (partialfc/train.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from partialfc.common.distributed import shard_range
    from partialfc.core.centre_optim import CentreOptimizer, LazyAdamW, LazySGD
    from partialfc.core.margins import AdaFace, CombinedMargin, CurricularFace, ElasticFace, MagFace, Margin, Softmax
    from partialfc.core.partial_fc import LabelRangeError, PartialFC

__version__ = "0.1.0"

_MODULE_OF = {
    "CentreOptimizer": "partialfc.core.centre_optim",
    "LazyAdamW": "partialfc.core.centre_optim",
    "LazySGD": "partialfc.core.centre_optim",
    "shard_range": "partialfc.common.distributed",
    "AdaFace": "partialfc.core.margins",
    "CombinedMargin": "partialfc.core.margins",
    "CurricularFace": "partialfc.core.margins",
    "ElasticFace": "partialfc.core.margins",
    "MagFace": "partialfc.core.margins",
    "Margin": "partialfc.core.margins",
    "Softmax": "partialfc.core.margins",
    "LabelRangeError": "partialfc.core.partial_fc",
    "PartialFC": "partialfc.core.partial_fc",
}

__all__ = [
    "AdaFace",
    "CentreOptimizer",
    "CombinedMargin",
    "CurricularFace",
    "ElasticFace",
    "LabelRangeError",
    "LazyAdamW",
    "LazySGD",
    "MagFace",
    "Margin",
    "PartialFC",
    "Softmax",
    "shard_range",
]


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'partialfc' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
