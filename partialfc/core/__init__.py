"""The Partial-FC classifier: the algorithm (:mod:`partialfc.core.partial_fc`, formulas in its
docstring), its margin families, the lazy optimizers of the class centres, and the buffers and
kernels its step runs on. Imports only :mod:`partialfc.common`."""
