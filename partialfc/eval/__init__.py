"""Offline evaluation of trained models: ``python -m partialfc.eval {verify,pairs,identify}``.

- :mod:`partialfc.eval.protocol`: folds, thresholds (exact, or insightface's grid), both TAR@FAR read-outs, ROC.
- :mod:`partialfc.eval.ijb`: the IJB-B/C release layout (landmarks, template, pair and 1:N lists).
- :mod:`partialfc.data.align`: five-point similarity alignment to the ArcFace template (OpenCV warp).
- :mod:`partialfc.eval.templates`: F/N/D image features, media-then-template aggregation, pair scores.
- :mod:`partialfc.eval.identification`: 1:N open-set CMC and TPIR@FPIR; insightface's closed-set read-out.
- :mod:`partialfc.eval.verification`: ``.bin`` verification, across all ranks during training and offline.
- :mod:`partialfc.eval.embedder`: a ``model.pt`` or ``.onnx`` as an embedder; :mod:`partialfc.eval.sources`: the images.

Every protocol and read-out with its insightface counterpart: ``docs/evaluation.md``.
"""
