"""IJB release layout: alignment against the generator's crops and skimage's estimator, template
features and pair scores against insightface's loops, file errors naming file and line."""

from __future__ import annotations

import numpy as np
import pytest
from insightface_reference import (
    image2template_feature,
    insightface_image_inputs,
    umeyama_similarity,
    verification_scores,
)

from partialfc.data.align import ARCFACE_TEMPLATE, align_face, decode_bgr, similarity_transform
from partialfc.data.synth import HOLDOUT_DIR, VARIATIONS, SyntheticImage
from partialfc.eval.ijb import open_release, read_release_images, read_subject_csv
from partialfc.eval.templates import TemplateListError, aggregate_templates, image_features, template_pair_scores

pytest.importorskip("cv2")


def test_similarity_transform_matches_umeyama():
    rng = np.random.default_rng(0)
    for _ in range(20):
        landmarks = ARCFACE_TEMPLATE * rng.uniform(0.5, 3) + rng.uniform(-40, 200, 2) + rng.normal(0, 4, (5, 2))
        np.testing.assert_allclose(
            similarity_transform(landmarks, ARCFACE_TEMPLATE),
            umeyama_similarity(landmarks.astype(np.float64), ARCFACE_TEMPLATE.astype(np.float64)),
            atol=1e-9,
        )


def test_alignment_recovers_the_generators_aligned_crops(tiny_dataset):
    release = open_release(tiny_dataset / HOLDOUT_DIR)
    images = read_release_images(release)
    generator = SyntheticImage(3, VARIATIONS["standard"])  # the fixture's seed
    subject_of = {}
    for template, subject in zip(*read_subject_csv(release.probes)):
        subject_of[int(template)] = int(subject)
    for label in release.galleries:
        subject_of.update(zip(*(a.tolist() for a in read_subject_csv(release.galleries[label]))))
    errors, shifted_errors, other_errors = [], [], []
    for k in range(0, len(images.names), 23):
        subject = subject_of[int(images.template_ids[k])]
        index = k % 8  # the fixture's 8 images per identity, written in order
        loose = decode_bgr((release.images / images.names[k]).read_bytes(), images.names[k])
        expected = generator.pixels((subject, index)).astype(np.float64)
        errors.append(np.abs(align_face(loose, images.landmarks[k]) - expected).mean())
        shifted_errors.append(np.abs(align_face(loose, images.landmarks[k] + 2.0) - expected).mean())
        other_errors.append(np.abs(generator.pixels((subject, (index + 1) % 8)) - expected).mean())
    # Two bilinear resamplings and JPEG leave about 5 grey levels (the generator's noise is ~6 std);
    # landmarks off by 2 pixels, or another image of the subject, are far worse.
    assert max(errors) < 7
    assert min(s - e for s, e in zip(shifted_errors, errors)) > 3
    assert min(other_errors) > 2 * max(errors)


@pytest.mark.parametrize(
    "flip,norm_score,detector_score,spacing",  # spacing: compact ids (a lookup table) or not
    [(True, True, True, 7), (True, False, True, 7), (False, True, False, 7), (False, False, False, 10**12)],
)
def test_template_features_and_scores_match_insightface(flip, norm_score, detector_score, spacing):
    rng = np.random.default_rng(1)
    count, dim = 300, 16
    views = rng.normal(size=(count, 2, dim)).astype(np.float32) * rng.uniform(0.2, 3, (count, 1, 1)).astype(np.float32)
    scores = rng.uniform(0.3, 1, count).astype(np.float32)
    templates = rng.integers(1, 40, count) * spacing  # unsorted rows
    media = rng.integers(0, 4, count)  # the same media ids in several templates: grouped per template
    ours = aggregate_templates(
        image_features(views.sum(axis=1) if flip else views[:, 0], scores if detector_score else None, norm_score),
        templates,
        media,
        block_rows=17,
    )  # many blocks, templates larger than a block
    inputs = insightface_image_inputs(views.reshape(count, 2 * dim), scores, flip, norm_score, detector_score)
    reference, unique = image2template_feature(inputs, templates, media)
    assert ours.template_ids.tolist() == unique.tolist()
    np.testing.assert_allclose(ours.features, reference, atol=2e-6)
    first, second = rng.choice(unique, 500), rng.choice(unique, 500)
    np.testing.assert_allclose(
        template_pair_scores(ours, first, second, "pairs", block=5),
        # insightface's table is indexed by id (memory ~ largest id): give it the ranks
        verification_scores(
            reference,
            np.arange(len(unique)),
            np.searchsorted(unique, first),
            np.searchsorted(unique, second),
            batch=100,
        ),
        atol=5e-6,
    )
    for absent in (unique[0] - 1, unique[-1] + 1, unique[0] + 1):
        with pytest.raises(TemplateListError, match=rf"pairs: 1 template ids have no image .*\[{absent}\]"):
            template_pair_scores(ours, np.array([unique[0], absent]), np.array([unique[1], unique[0]]), "pairs")


def test_release_errors_name_file_and_line(tiny_dataset, tmp_path):
    with pytest.raises(TemplateListError, match=r"no meta/ folder"):
        open_release(tmp_path)
    (tmp_path / "meta").mkdir()
    with pytest.raises(TemplateListError, match=r"no \*_name_5pts_score.txt .*name the set with --set"):
        open_release(tmp_path)
    source = open_release(tiny_dataset / HOLDOUT_DIR)
    (tmp_path / "loose_crop").mkdir()
    lines = source.landmarks.read_text().splitlines()
    (tmp_path / "meta" / "synth_name_5pts_score.txt").write_text(
        "\n".join([lines[0], lines[1].rsplit(" ", 1)[0]]) + "\n"
    )
    (tmp_path / "meta" / "synth_face_tid_mid.txt").write_text(source.image_list.read_text())
    release = open_release(tmp_path)
    with pytest.raises(TemplateListError, match=r"synth_name_5pts_score.txt:2: expected 12 fields"):
        read_release_images(release)
    (tmp_path / "meta" / "synth_name_5pts_score.txt").write_text(lines[0] + "\n")
    with pytest.raises(
        TemplateListError, match=r"no landmarks for 319 images of .*synth_face_tid_mid.txt \(first: \['2.jpg'"
    ):
        read_release_images(release)
    (tmp_path / "meta" / "g.csv").write_text("TEMPLATE_ID,SUBJECT_ID\n1,5\n1,6\n")
    with pytest.raises(TemplateListError, match=r"g.csv: template 1 is listed with several subjects"):
        read_subject_csv(tmp_path / "meta" / "g.csv")
    (tmp_path / "meta" / "g.csv").write_text("SUBJECT_ID,TEMPLATE_ID\n1,5\n")
    with pytest.raises(TemplateListError, match=r"g.csv:1: header must start TEMPLATE_ID,SUBJECT_ID"):
        read_subject_csv(tmp_path / "meta" / "g.csv")
