"""Face-recognition backbones behind a name registry.

Every model maps ``[B, 3, 112, 112]`` float images, normalised as its ``model.input_config``
(:class:`InputConfig`) says (``[-1, 1]`` for all of them), to ``[B, E]`` float32 embeddings (not
L2-normalised; the margin loss normalises). Mixed precision: wrap the forward in
``torch.autocast`` or pass ``fp16=True`` (body under float16 autocast, as arcface_torch).
"""

# The model modules are imported for their @register_model side effect.
from partialfc.models import face_resnet, iresnet, mobilefacenet, tiny, vit  # noqa: F401
from partialfc.models.input_config import InputConfig, input_config_of
from partialfc.models.registry import create_model, list_models, register_model

__all__ = ["InputConfig", "create_model", "input_config_of", "list_models", "register_model"]
