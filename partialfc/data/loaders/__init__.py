"""Training loaders: one epoch plan (:mod:`.plan`), two backends, one factory.

* :class:`LoaderParams` - what a loader is built from (batch size, rank, seed, input config ...).
* :class:`TorchLoader` (:mod:`.pytorch`) - DataLoader over the project's RecordIO reader.
* ``DaliLoader`` (:mod:`.dali`, needs ``nvidia.dali``) - DALI over the original ``.rec`` files,
  with the index files of :mod:`.dali_index`; imported from there so that DALI stays optional.
* :func:`build_loader` - picks the backend.
"""

from partialfc.data.loaders.factory import Backend, build_loader, dali_available
from partialfc.data.loaders.plan import LoaderParams, PlannedLoader
from partialfc.data.loaders.pytorch import TorchLoader

__all__ = ["Backend", "LoaderParams", "PlannedLoader", "TorchLoader", "build_loader", "dali_available"]
