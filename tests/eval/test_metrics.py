"""Known answers on hand-built embeddings: template aggregation, 1:N identification, .bin verification."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from insightface_reference import ijb_1n_evaluation
from torch import nn

from partialfc.data.image import encode_jpeg
from partialfc.data.verification import VerificationSet, write_verification_bin
from partialfc.eval.identification import identification_metrics, pooled_closed_set_readout
from partialfc.eval.templates import (
    TemplateListError,
    aggregate_templates,
    read_image_list,
    read_template_pairs,
    template_pair_scores,
)
from partialfc.eval.verification import evaluate
from partialfc.models.input_config import InputConfig


def _unit(*degrees: float) -> np.ndarray:
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_media_are_averaged_before_templates_are_summed():
    # Template 7: media 1 holds three frames at 0 degrees, media 2 one still at 90 degrees.
    # Media first gives 45 degrees; averaging the four images would give about 18 degrees.
    embeddings = _unit(0, 0, 0, 90, 30)
    templates = aggregate_templates(embeddings, np.array([7, 7, 7, 7, 3]), np.array([1, 1, 1, 2, 5]))
    assert templates.template_ids.tolist() == [3, 7]
    np.testing.assert_allclose(templates.features, _unit(30, 45), atol=1e-6)
    scores = template_pair_scores(templates, np.array([7]), np.array([3]), "pairs.txt")
    assert scores[0] == pytest.approx(math.cos(math.radians(15)), abs=1e-6)
    with pytest.raises(TemplateListError, match=r"pairs.txt: 1 template ids have no image.*\[4\]"):
        template_pair_scores(templates, np.array([7]), np.array([4]), "pairs.txt")


@pytest.mark.parametrize(
    ("reader", "text", "message"),
    [
        (read_image_list, "a.jpg 1 1\nb.jpg 1\n", r"list.txt:2: expected 3 fields"),
        (read_image_list, "a.jpg 1 x\n", r"list.txt:1: MEDIA_ID .x. is not an integer"),
        # Comments and blank lines are not records: the error names the line a reader opens the file at.
        (read_template_pairs, "# pairs\n1 2 1\n\n3 4 0\n5 6 2\n", r"list.txt:5: LABEL 2 is neither 0 nor 1"),
        (read_template_pairs, "# pairs\n1 2 1\n\n3 x 0\n", r"list.txt:4: TEMPLATE_ID 'x' is not an integer"),
    ],
)
def test_list_errors_name_file_and_line(tmp_path, reader, text, message):
    path = tmp_path / "list.txt"
    path.write_text(text)
    with pytest.raises(TemplateListError, match=message):
        reader(path)


def test_open_set_identification_known_answer():
    # Gallery: subject 10 at 0 deg, subject 20 at 90 and 70 deg (two templates), subject 30 at 180 deg.
    gallery = _unit(0, 90, 70, 180)
    gallery_subjects = np.array([10, 20, 20, 30])
    # Mated probes: 10 at 25 (rank 1, score cos 25), 30 at 100 (subject 20 is closer: rank 2),
    # 20 at 60 (rank 1 through its 70-degree template, cos 10). Non-mated: 40 deg (best cos 30 with
    # subject 20) and 200 deg (best cos 20 with subject 30).
    probes = _unit(25, 100, 60, 40, 200)
    probe_subjects = np.array([10, 30, 20, 99, 98])
    result = identification_metrics(probes, probe_subjects, gallery, gallery_subjects, fpirs=(0.1, 0.5))
    assert (result.num_mated, result.num_non_mated, result.num_gallery_subjects) == (3, 2, 3)
    np.testing.assert_allclose(result.cmc, [2 / 3, 1, 1])
    assert result.rank(1) == pytest.approx(2 / 3) and result.rank(5) == 1.0
    # FPIR 0.5: one non-mated probe may pass -> threshold cos 30; probes at cos 25 and cos 10 pass.
    # FPIR 0.1: none may pass -> threshold cos 20; only the probe at cos 10 passes.
    assert result.thresholds[0.5] == pytest.approx(math.cos(math.radians(30)))
    assert result.tpir_at_fpir == pytest.approx({0.5: 2 / 3, 0.1: 1 / 3})


def test_tpir_needs_the_mate_ranked_first():
    # Gallery: subject 1 at 0 deg, subject 2 at 20 deg. Mated probe of subject 1 at 15 deg: its mate
    # scores cos 15 (0.966), above the FPIR threshold set by the non-mated probe at 90 deg (best
    # cos 70, 0.342), but subject 2 scores higher (cos 5): rank 2, so it is not a true positive.
    gallery, gallery_subjects = _unit(0, 20), np.array([1, 2])
    probes, probe_subjects = _unit(15, 90), np.array([1, 9])
    result = identification_metrics(probes, probe_subjects, gallery, gallery_subjects, fpirs=(0.5,))
    assert result.thresholds[0.5] == pytest.approx(math.cos(math.radians(70)))
    assert result.rank(1) == 0.0 and result.rank(2) == 1.0
    assert result.tpir_at_fpir == {0.5: 0.0}


def test_insightface_closed_set_read_out_matches_ijb_1n():
    rng = np.random.default_rng(4)
    gallery = rng.normal(size=(30, 8))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    gallery_subjects = rng.permutation(30) + 100
    probe_subjects = rng.choice(gallery_subjects, 200)
    mask = [int(np.flatnonzero(gallery_subjects == s)[0]) for s in probe_subjects]
    probes = gallery[mask] + rng.normal(0, 0.6, (200, 8))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    ours = pooled_closed_set_readout(probes, probe_subjects, gallery, gallery_subjects, (0.01, 0.1), chunk=37)
    top_k, tpir = ijb_1n_evaluation(probes, gallery, mask)
    assert 0 < ours.top_k[1] < ours.top_k[5] < 1  # a case where ranks and thresholds matter
    assert ours.top_k == pytest.approx(top_k) and ours.tpir_at_far == pytest.approx(tpir)
    with pytest.raises(ValueError, match=r"gallery subject .* has 2 templates"):
        pooled_closed_set_readout(probes, probe_subjects, gallery[:2], np.array([5, 5]))


def test_identification_ties_count_against_the_probe():
    probe = np.array([[0.6, 0.6]])  # exactly as close to subject 1 (its mate) as to subject 2
    result = identification_metrics(probe, np.array([1]), np.eye(2), np.array([1, 2]))
    assert result.rank(1) == 0.0 and result.rank(2) == 1.0


class _ChannelMeans(nn.Module):
    """Embedding = per-channel mean of the normalised image: flip-invariant on constant images."""

    input_config = InputConfig()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def test_bin_verification_compares_directions_not_lengths(tmp_path):
    # Genuine pairs: one direction, very different lengths. Impostor pairs: long vectors 40 degrees
    # apart. Only L2-normalised embeddings separate them (raw dot products rank impostors first).
    def image(offset: tuple[float, float, float]) -> bytes:
        pixels = np.empty((112, 112, 3), np.uint8)
        pixels[:] = np.round(127.5 + np.array(offset)).astype(np.uint8)
        return encode_jpeg(pixels, quality=100)

    images, issame = [], []
    for k in range(10):
        short, long = 8 + k, 100 + k
        images += [image((short, 0, 0)), image((long, 0, 0))] if k % 2 else [image((0, short, 0)), image((0, long, 0))]
        issame.append(True)
        images += [image((120, 0, 0)), image((120, 100, 0))]
        issame.append(False)
    vset = VerificationSet(write_verification_bin(tmp_path / "norms.bin", images, issame))
    result = evaluate(_ChannelMeans(), vset, 3, torch.device("cpu"), batch_size=6)
    # The exact best cut separates every pair; insightface's grid keeps its first best threshold (0.01), which a
    # short genuine vector's JPEG noise can pass in a held-out fold.
    assert result.best_cut_accuracy == 1.0 and result.best_cut_accuracy_std == 0.0
    assert result.tar_at_fars[1e-4] == 1.0
    raw_norms = [
        np.linalg.norm(np.round(127.5 + np.array(o)) - 127.5) / 127.5
        for o in [o for k in range(10) for o in [(8 + k, 0, 0), (100 + k, 0, 0), (120, 0, 0), (120, 100, 0)]]
    ]
    assert result.mean_norm == pytest.approx(np.mean(raw_norms), rel=0.02)  # JPEG moves a pixel by at most ~1
