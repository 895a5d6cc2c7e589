"""Five-point face alignment to the 112x112 ArcFace template, as insightface aligns IJB-B/C loose crops.

insightface (``recognition/arcface_torch/eval_ijbc.py``, ``Embedding.get``; ``insightface/utils/face_align.py``,
``norm_crop``) estimates the least-squares similarity transform (rotation, uniform scale,
translation: skimage's ``SimilarityTransform``, Umeyama's method) from the five detected landmarks
to the template below, then warps with OpenCV's ``warpAffine`` (bilinear, border 0). The transform
here is the closed-form least-squares solution of the same problem; the warp is OpenCV's, so the
pixels are those insightface feeds its model. OpenCV also decodes the JPEGs (``cv2.imdecode``, as
its ``cv2.imread``), so the same libjpeg path produces the same pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ALIGNED_SIZE", "ARCFACE_TEMPLATE", "align_face", "decode_bgr", "similarity_transform"]

ALIGNED_SIZE = 112
# Left eye, right eye, nose tip, left and right mouth corner, in the 112x112 crop (insightface's arcface_src).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise ImportError(
            "aligning IJB loose crops needs OpenCV: pip install 'partialfc[eval]' (opencv-python-headless)"
        ) from None
    return cv2


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 matrix ``[[a, -b, tx], [b, a, ty]]`` minimising ``sum |M [x; 1] - y|^2`` over point pairs."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2:
        raise ValueError(f"need two equal [N, 2] point sets, got {source.shape} and {target.shape}")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    x, y = source - source_mean, target - target_mean
    spread = float((x**2).sum())
    if spread == 0:
        raise ValueError("the source points coincide: no similarity transform is defined")
    a = float((x * y).sum()) / spread
    b = float((x[:, 0] * y[:, 1] - x[:, 1] * y[:, 0]).sum()) / spread
    linear = np.array([[a, -b], [b, a]])
    return np.hstack([linear, (target_mean - linear @ source_mean)[:, None]])


def decode_bgr(data: bytes, origin: str) -> np.ndarray:
    """An encoded image as OpenCV reads it (uint8 BGR ``[H, W, 3]``); ``origin`` names it in the error."""
    cv2 = _cv2()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{origin}: OpenCV cannot decode this image")
    return image


def align_face(image_bgr: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The ``size`` x ``size`` RGB crop whose five landmarks land on the ArcFace template."""
    cv2 = _cv2()
    template = ARCFACE_TEMPLATE * (size / ALIGNED_SIZE)
    matrix = similarity_transform(np.asarray(landmarks).reshape(5, 2), template)
    warped = cv2.warpAffine(image_bgr, matrix, (size, size), borderValue=0.0)
    return cv2.cvtColor(warped, cv2.COLOR_BGR2RGB)
