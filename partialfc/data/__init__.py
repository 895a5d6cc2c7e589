"""Face-recognition data: RecordIO datasets, synthetic data, verification pairs.

``python -m partialfc.data --help`` lists the command-line tools (pack, inspect, verify, index, synth).
"""

from partialfc.data.dataset import DatasetError, RecordDataset, Shard
from partialfc.data.recordio import (
    MAGIC,
    IRHeader,
    RecordIOError,
    RecordReader,
    RecordWriter,
    pack_record,
    unpack_record,
)

__all__ = [
    "MAGIC",
    "DatasetError",
    "IRHeader",
    "RecordDataset",
    "RecordIOError",
    "RecordReader",
    "RecordWriter",
    "Shard",
    "pack_record",
    "unpack_record",
]
