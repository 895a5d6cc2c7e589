"""partialfc: distributed Partial-FC training for face recognition at millions of identities."""

from partialfc.centre_optim import CentreOptimizer, LazyAdamW, LazySGD
from partialfc.distributed import shard_range
from partialfc.margins import AdaFace, CombinedMargin, CurricularFace, ElasticFace, MagFace, Margin, Softmax
from partialfc.partial_fc import LabelRangeError, PartialFC

__version__ = "0.1.0"

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
