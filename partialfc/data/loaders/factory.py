"""The training loader for one rank: DALI where it is installed (or asked for), else PyTorch."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from partialfc.data.dataset import RecordDataset
from partialfc.data.loaders.plan import LoaderParams, PlannedLoader
from partialfc.data.loaders.pytorch import TorchLoader

Backend = Literal["dali", "torch", "auto"]


def dali_available() -> bool:
    """True when ``nvidia.dali`` can be imported (it is an optional dependency)."""
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


def build_loader(
    dataset: RecordDataset,
    params: LoaderParams,
    *,
    backend: Backend = "auto",
    device_id: int | None = None,
    num_workers: int = 2,
    **options: Any,
) -> PlannedLoader:
    """DALI when chosen or (``auto``) importable, else the PyTorch DataLoader pipeline.

    ``num_workers`` is DALI's thread count or the DataLoader's process count; ``device_id`` (the
    local GPU) makes DALI decode on that GPU and is ignored by the PyTorch loader, whose batches
    stay on CPU. Extra ``options`` go to the chosen loader's constructor.
    """
    if backend not in ("dali", "torch", "auto"):
        raise ValueError(f"data backend must be 'dali', 'torch' or 'auto', got {backend!r}")
    if backend == "dali" or (backend == "auto" and dali_available()):
        from partialfc.data.loaders.dali import DaliLoader

        return DaliLoader(dataset, params, device_id=device_id, num_threads=max(num_workers, 1), **options)
    return TorchLoader(dataset, params, num_workers=num_workers, **options)
