"""Face-recognition backbones behind a name registry.

Every model maps ``[B, 3, 112, 112]`` float images normalised to [-1, 1] to ``[B, E]`` float32
embeddings (not L2-normalised; the margin loss normalises). Mixed precision: wrap the forward
in ``torch.autocast`` or pass ``fp16=True`` (body under float16 autocast, as arcface_torch).
"""

from partialfc.models.registry import create_model, list_models, register_model

# Imported for their @register_model side effect.
from partialfc.models import face_resnet, iresnet, mobilefacenet, tiny  # noqa: E402,F401  isort: skip

__all__ = ["create_model", "list_models", "register_model"]
