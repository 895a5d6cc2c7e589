"""Evaluation protocols, offline (``python -m partialfc.eval {verify,pairs,identify}``) and during training.

- :mod:`partialfc.eval.protocols`: ``EvalProtocol.run(embedder, source) -> EvalResult`` (summary, table, artifacts).
- :mod:`partialfc.eval.registry`: the protocols by name, for the command and for ``eval.protocols``.
- :mod:`partialfc.eval.verification`: ``verify``, ``.bin`` verification across all ranks.
- :mod:`partialfc.eval.ijb_protocols`: ``pairs`` (IJB 1:1) and ``identify`` (IJB 1:N) on template features.
- :mod:`partialfc.eval.scores`: folds, thresholds (exact, or insightface's grid), both TAR@FAR read-outs, ROC.
- :mod:`partialfc.eval.ijb`: the IJB-B/C release's lists (landmarks, template, pair and 1:N lists).
- :mod:`partialfc.eval.templates`: F/N/D image features, media-then-template aggregation, pair scores.
- :mod:`partialfc.eval.identification`: 1:N open-set CMC and TPIR@FPIR; insightface's closed-set read-out.
- :mod:`partialfc.eval.embedder`: a ``model.pt`` or ``.onnx`` as an embedder; :mod:`partialfc.eval.sources`: the images.

Every protocol and read-out with its insightface counterpart: ``docs/evaluation.md``.
"""
