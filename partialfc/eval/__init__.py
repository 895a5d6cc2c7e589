"""Offline evaluation of trained models: ``python -m partialfc.eval {verify,pairs,identify}``.

- :mod:`partialfc.eval.protocol`: folds, thresholds (exact, or insightface's grid), both TAR@FAR read-outs, ROC.
- :mod:`partialfc.eval.ijb`: the IJB-B/C release layout (landmarks, template, pair and 1:N lists).
- :mod:`partialfc.eval.align`: five-point similarity alignment to the ArcFace template (OpenCV warp).
- :mod:`partialfc.eval.templates`: F/N/D image features, media-then-template aggregation, pair scores.
- :mod:`partialfc.eval.identification`: 1:N open-set CMC and TPIR@FPIR; insightface's closed-set read-out.
- :mod:`partialfc.evaluation` (outside this package, used by the trainer too): ``.bin`` verification.

Every protocol and read-out with its insightface counterpart: ``docs/evaluation.md``.
"""
