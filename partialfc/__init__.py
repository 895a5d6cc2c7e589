"""partialfc: distributed Partial-FC training for face recognition at millions of identities."""

from partialfc.centre_optim import LazyAdamW, LazySGD
from partialfc.margins import CombinedMargin, Softmax
from partialfc.partial_fc import LabelRangeError, PartialFC, shard_range

__version__ = "0.1.0"

__all__ = ["PartialFC", "CombinedMargin", "Softmax", "LazySGD", "LazyAdamW", "LabelRangeError", "shard_range"]
