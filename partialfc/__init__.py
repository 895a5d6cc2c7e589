"""partialfc: distributed Partial-FC training for face recognition at millions of identities.

The names below load on first use (PEP 562): ``python -m partialfc.train`` imports this package before
its own first line runs, and that line must come before numpy and torch start threads (partialfc/train.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from partialfc.centre_optim import CentreOptimizer, LazyAdamW, LazySGD
    from partialfc.distributed import shard_range
    from partialfc.margins import AdaFace, CombinedMargin, CurricularFace, ElasticFace, MagFace, Margin, Softmax
    from partialfc.partial_fc import LabelRangeError, PartialFC

__version__ = "0.1.0"

_MODULE_OF = {
    "CentreOptimizer": "partialfc.centre_optim",
    "LazyAdamW": "partialfc.centre_optim",
    "LazySGD": "partialfc.centre_optim",
    "shard_range": "partialfc.distributed",
    "AdaFace": "partialfc.margins",
    "CombinedMargin": "partialfc.margins",
    "CurricularFace": "partialfc.margins",
    "ElasticFace": "partialfc.margins",
    "MagFace": "partialfc.margins",
    "Margin": "partialfc.margins",
    "Softmax": "partialfc.margins",
    "LabelRangeError": "partialfc.partial_fc",
    "PartialFC": "partialfc.partial_fc",
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
