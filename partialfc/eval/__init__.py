"""Offline evaluation of trained models: ``python -m partialfc.eval {verify,pairs,identify}``.

- :mod:`partialfc.eval.protocol`: folds, best threshold, TAR@FAR, ROC grid (score level).
- :mod:`partialfc.eval.templates`: IJB-style lists, media-then-template aggregation, pair scores.
- :mod:`partialfc.eval.identification`: 1:N open-set CMC and TPIR@FPIR.
- :mod:`partialfc.evaluation` (outside this package, used by the trainer too): ``.bin`` verification.
"""
