"""Face-recognition data: RecordIO datasets, training loaders, synthetic data, verification pairs.

``python -m partialfc.data --help`` lists the command-line tools (pack, inspect, verify, index, synth).
The RecordIO format itself (readers, writers, record headers) is in :mod:`partialfc.data.recordio`;
the DALI loader, which needs ``nvidia.dali``, in :mod:`partialfc.data.loaders.dali`.
"""

from partialfc.data.dataset import RecordDataset, RecordDecodeError
from partialfc.data.integrity import IntegrityReport, verify_dataset
from partialfc.data.layout import DatasetError
from partialfc.data.loaders import LoaderParams, PlannedLoader, TorchLoader, build_loader, dali_available
from partialfc.data.pack import pack_dataset
from partialfc.data.prepare import prepare_dataset, resolve_val_targets
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
    "prepare_dataset",
    "resolve_val_targets",
    "verify_dataset",
]
