"""The IJB-B / IJB-C release layout, as insightface's evaluation scripts read it: folder and file names.

The synthetic hold-out (:mod:`partialfc.data.ijb_holdout`) writes this layout and the IJB protocols
(:mod:`partialfc.eval.ijb`) read it, so the names live here, below both.

A release folder (``IJBC/``, ``IJBB/``, or the synthetic ``holdout/``) holds::

    loose_crop/ (or images/)           the face crops as detected, not aligned
    meta/<set>_name_5pts_score.txt     IMAGE x1 y1 ... x5 y5 DETECTOR_SCORE   (five landmarks per image)
    meta/<set>_face_tid_mid.txt        IMAGE TEMPLATE_ID MEDIA_ID
    meta/<set>_template_pair_label.txt TEMPLATE_ID TEMPLATE_ID LABEL         (1:1 verification)
    meta/<set>_1N_gallery_G1.csv ...   TEMPLATE_ID,SUBJECT_ID,...  with a header, one row per image
    meta/<set>_1N_probe_mixed.csv      the same, probe templates                (1:N identification)

``<set>`` is the lower-case set name (``ijbc``, ``ijbb``, ``synth``). IJB-C's galleries are ``G1`` and
``G2``, IJB-B's ``S1`` and ``S2`` (insightface's ``ijb_1n.py``).
"""

from __future__ import annotations

IMAGE_FOLDERS = ("loose_crop", "images")
META = "meta"
LANDMARKS_SUFFIX = "_name_5pts_score.txt"


def landmark_list_name(set_name: str) -> str:
    return f"{set_name.lower()}{LANDMARKS_SUFFIX}"


def image_list_name(set_name: str) -> str:
    return f"{set_name.lower()}_face_tid_mid.txt"


def pair_list_name(set_name: str) -> str:
    return f"{set_name.lower()}_template_pair_label.txt"


def gallery_name(set_name: str, gallery: str) -> str:
    return f"{set_name.lower()}_1N_gallery_{gallery}.csv"


def probe_name(set_name: str) -> str:
    return f"{set_name.lower()}_1N_probe_mixed.csv"
