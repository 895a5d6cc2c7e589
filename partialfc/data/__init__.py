"""Face-recognition data: RecordIO datasets, training loaders, synthetic data, verification pairs.

``python -m partialfc.data --help`` lists the command-line tools (pack, inspect, verify, index, synth).
The RecordIO format itself (readers, writers, record headers) is in :mod:`partialfc.data.recordio`;
the DALI loader, which needs ``nvidia.dali``, in :mod:`partialfc.data.loaders.dali`.
"""

import importlib
import warnings

from partialfc.data.dataset import RecordDataset, RecordDecodeError
from partialfc.data.integrity import IntegrityReport, verify_dataset
from partialfc.data.layout import DatasetError
from partialfc.data.loaders import LoaderParams, PlannedLoader, TorchLoader, build_loader, dali_available
from partialfc.data.pack import pack_dataset
from partialfc.data.synth import generate_synthetic_dataset
from partialfc.data.verification import VerificationError, VerificationSet, load_verification_sets

__all__ = [
    "DatasetError",
    "IntegrityReport",
    "LoaderParams",
    "PlannedLoader",
    "RecordDataset",
    "RecordDecodeError",
    "TorchLoader",
    "VerificationError",
    "VerificationSet",
    "build_loader",
    "dali_available",
    "generate_synthetic_dataset",
    "load_verification_sets",
    "pack_dataset",
    "verify_dataset",
]

# Names that moved out of this package, with where they live now; each still resolves here, with a
# DeprecationWarning, until the next release.
_MOVED = {
    "prepare_dataset": "partialfc.training.prepare",
    "resolve_val_targets": "partialfc.training.prepare",
}


def __getattr__(name: str) -> object:
    if name not in _MOVED:
        raise AttributeError(f"module 'partialfc.data' has no attribute {name!r}")
    warnings.warn(
        f"partialfc.data.{name} moved to {_MOVED[name]}.{name} (it reads the training config); "
        "the old name goes in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(_MOVED[name]), name)
