"""The commands end to end on the tiny synthetic dataset with a randomly initialised tiny model."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from insightface_reference import (
    calculate_roc_accuracy,
    eval_ijbc_tar_at_far,
    image2template_feature,
    insightface_image_inputs,
    umeyama_similarity,
    verification_scores,
)

from partialfc import embed, export
from partialfc.data import RecordDataset, VerificationSet
from partialfc.data.align import ARCFACE_TEMPLATE, align_face, decode_bgr
from partialfc.data.synth import HOLDOUT_DIR
from partialfc.eval import __main__ as eval_cli
from partialfc.eval.ijb import open_release, read_release_images, read_subject_csv
from partialfc.eval.scores import verification_accuracy
from partialfc.eval.templates import read_template_pairs
from partialfc.models import create_model
from partialfc.models.model_file import ModelFileError, load_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny", embedding_size=32)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save({"backbone": "tiny", "embedding_size": 32, "state_dict": model.state_dict()}, path)
    return path


def _run_json(capsys, main, argv: list[str]) -> dict:
    assert main([*argv, "--json", "-"]) == 0
    return json.loads(capsys.readouterr().out)


def _only_result(payload: dict) -> dict:
    """The one result of an ``eval`` JSON object (one source), its summary merged in."""
    (result,) = payload["results"].values()
    return {**result, **result["summary"]}


def test_holdout_release_is_consistent(tiny_dataset):
    release = open_release(tiny_dataset / HOLDOUT_DIR)
    assert (release.name, release.images.name, sorted(release.galleries)) == ("synth", "loose_crop", ["G1", "G2"])
    images = read_release_images(release)
    assert len(images.names) == 40 * 8  # every image of the 40 held-out identities
    assert (
        images.landmarks.shape == (320, 5, 2) and ((images.detector_scores > 0.5) & (images.detector_scores <= 1)).all()
    )
    subject_of = dict(zip(*(a.tolist() for a in read_subject_csv(release.probes))))
    gallery = {
        label: dict(zip(*(a.tolist() for a in read_subject_csv(path)))) for label, path in release.galleries.items()
    }
    for members in gallery.values():
        subject_of.update(members)
    assert set(subject_of) == set(images.template_ids.tolist())
    assert set(subject_of.values()) == set(range(120, 160))  # identities after the 120 training ones
    first, second, labels = read_template_pairs(release.pairs)
    same = np.array([subject_of[a] == subject_of[b] for a, b in zip(first, second)])
    assert (same == labels).all() and labels.sum() == 40 * 6  # 4 templates a subject: 6 genuine pairs each
    assert (~labels).sum() == 10 * labels.sum()
    g1, g2 = (set(members.values()) for members in gallery.values())
    assert len(g1) == len(gallery["G1"]) == 20 and len(g2) == 20 and not g1 & g2  # IJB-C: disjoint galleries
    assert not set(gallery["G1"]) & set(read_subject_csv(release.probes)[0].tolist())
    loose = decode_bgr((release.images / images.names[0]).read_bytes(), images.names[0])
    assert loose.shape[0] > 112 and align_face(loose, images.landmarks[0]).shape == (112, 112, 3)


def test_embed_release_aligns_like_insightface(tiny_dataset, model_file, tmp_path, capsys):
    out = tmp_path / "holdout"
    assert (
        embed.main(
            [
                str(tiny_dataset / HOLDOUT_DIR),
                "--model",
                str(model_file),
                "--out",
                str(out),
                "--batch-size",
                "50",
                "--quiet",
                "--raw",
            ]
        )
        == 0
    )
    assert "images/s" in capsys.readouterr().out
    vectors, names = np.load(f"{out}.npy"), Path(f"{out}.txt").read_text().splitlines()
    assert vectors.shape == (320, 32) and names[:2] == ["1.jpg", "2.jpg"]
    # Row k is model(x) + model(mirrored x), x aligned as eval_ijbc.py's Embedding.get does it.
    cv2 = pytest.importorskip("cv2")
    release = open_release(tiny_dataset / HOLDOUT_DIR)
    landmarks = read_release_images(release).landmarks[7]
    matrix = umeyama_similarity(landmarks.astype(np.float64), ARCFACE_TEMPLATE.astype(np.float64))
    aligned = cv2.cvtColor(
        cv2.warpAffine(cv2.imread(str(release.images / names[7])), matrix, (112, 112), borderValue=0.0),
        cv2.COLOR_BGR2RGB,
    )
    trained = load_model(model_file)
    x = trained.backbone.input_config.normalize(torch.from_numpy(aligned)[None])
    with torch.no_grad():
        expected = trained.backbone(x) + trained.backbone(x.flip(3))
    np.testing.assert_allclose(vectors[7], expected[0].numpy(), atol=1e-4)


def test_embed_rec_and_bin(tiny_dataset, model_file, tmp_path):
    assert (
        embed.main(
            [str(tiny_dataset), "--model", str(model_file), "--out", str(tmp_path / "train"), "--no-flip", "--quiet"]
        )
        == 0
    )
    dataset = RecordDataset(tiny_dataset)
    assert np.load(tmp_path / "train.npy").shape == (len(dataset), 32)
    np.testing.assert_array_equal(np.load(tmp_path / "train.labels.npy"), dataset.labels)
    # Two shards whose record keys each start at 1: every name is unique and leads back to its record.
    names = (tmp_path / "train.txt").read_text().splitlines()
    assert len(dataset.shards) == 2 and len(set(names)) == len(names) == len(dataset)
    shard, key = names[-1].split(":")
    assert (shard, int(key)) == (dataset.shards[-1].rec_path.name, int(dataset.image_key[-1]))
    assert (
        embed.main(
            [str(tiny_dataset / "synth_val.bin"), "--model", str(model_file), "--out", str(tmp_path / "val"), "--quiet"]
        )
        == 0
    )
    assert Path(tmp_path / "val.txt").read_text().splitlines()[:2] == ["pair000000.a", "pair000000.b"]


def test_pairs_and_identify_from_model_or_embeddings(tiny_dataset, model_file, tmp_path, capsys):
    holdout = str(tiny_dataset / HOLDOUT_DIR)
    prefix = tmp_path / "holdout"
    assert embed.main([holdout, "--model", str(model_file), "--out", str(prefix), "--quiet", "--raw"]) == 0
    capsys.readouterr()
    by_model = _only_result(
        _run_json(
            capsys,
            eval_cli.main,
            ["pairs", "--model", str(model_file), "--data", holdout, "--out", str(tmp_path / "a"), "--quiet"],
        )
    )
    by_file = _only_result(
        _run_json(
            capsys,
            eval_cli.main,
            ["pairs", "--embeddings", str(prefix), "--data", holdout, "--out", str(tmp_path / "b")],
        )
    )
    assert (by_model["genuine_pairs"], by_model["impostor_pairs"], by_model["templates"]) == (240, 2400, 160)
    assert by_model["mode_name"] == "F1 N1 D1" and by_model["set"] == "synth"
    assert by_model["summary"] == pytest.approx(by_file["summary"], abs=1e-6)
    fars = ("1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1")
    assert set(by_model["summary"]) == {f"TAR@FAR={far}" for far in fars} and set(by_model["tar_at_far_strict"]) == {
        *fars
    }
    assert by_model["artifacts"] == {
        "roc_csv": str(tmp_path / "a" / "roc.csv"),
        "roc_png": str(tmp_path / "a" / "roc.png"),
    }
    roc = np.loadtxt(tmp_path / "a" / "roc.csv", delimiter=",", skiprows=1)
    assert (np.diff(roc[:, 2]) >= 0).all() and roc[-1, 1] == 1.0  # TAR rises with FAR up to accept-all
    assert (tmp_path / "a" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = _only_result(
        _run_json(
            capsys,
            eval_cli.main,
            ["identify", "--embeddings", str(prefix), "--data", holdout, "--out", str(tmp_path / "c")],
        )
    )
    assert set(result["galleries"]) == {"G1", "G2"}
    for gallery in result["galleries"].values():
        assert (gallery["subjects"], gallery["mated_probes"], gallery["non_mated_probes"]) == (20, 60, 60)
        assert (
            0 <= gallery["rank1"] <= gallery["rank5"] <= gallery["rank10"] <= 1
            and gallery["cmc"][0] == gallery["rank1"]
        )
        assert set(gallery["tpir_at_fpir"]) == {"0.01", "0.1"}
    assert result["rank-1"] == pytest.approx(np.mean([g["rank1"] for g in result["galleries"].values()]))
    assert result["insightface_1n"]["probes"] == 120
    assert (tmp_path / "c" / "cmc.png").stat().st_size > 1000

    assert eval_cli.main(["identify", "--embeddings", str(prefix), "--data", str(tmp_path), "--quiet"]) == 2
    assert "no meta/ folder" in capsys.readouterr().err
    assert eval_cli.main(["pairs", "--embeddings", str(prefix), "--quiet"]) == 2  # the default release is a guess
    assert f"--embeddings {prefix} needs --data RELEASE" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [[], ["--no-flip", "--no-norm-score", "--no-detector-score"]])
def test_pairs_match_insightface_eval_ijbc(tiny_dataset, model_file, tmp_path, capsys, mode):
    """The whole of eval_ijbc.py restated (insightface_reference): cv2 decode, Umeyama + warpAffine,
    image and mirror through the model, F/N/D inputs, its template loop, its pair scores, its read-out."""
    cv2 = pytest.importorskip("cv2")
    release = open_release(tiny_dataset / HOLDOUT_DIR)
    images = read_release_images(release)
    trained = load_model(model_file)
    crops = []
    for name, landmarks in zip(images.names, images.landmarks):
        matrix = umeyama_similarity(landmarks.astype(np.float64), ARCFACE_TEMPLATE.astype(np.float64))
        warped = cv2.warpAffine(cv2.imread(str(release.images / name)), matrix, (112, 112), borderValue=0.0)
        crops.append(cv2.cvtColor(warped, cv2.COLOR_BGR2RGB))
    x = trained.backbone.input_config.normalize(torch.from_numpy(np.stack(crops)))
    with torch.no_grad():
        features = torch.cat([trained.backbone(x), trained.backbone(x.flip(3))], dim=1).numpy()
    flags = [not mode] * 3
    inputs = insightface_image_inputs(features, images.detector_scores, *flags)
    template_features, unique = image2template_feature(inputs, images.template_ids, images.media_ids)
    first, second, labels = read_template_pairs(release.pairs)
    scores = verification_scores(template_features, unique, first, second)
    fars = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    ours = _only_result(
        _run_json(
            capsys,
            eval_cli.main,
            [
                "pairs",
                "--model",
                str(model_file),
                "--data",
                str(release.root),
                "--out",
                str(tmp_path),
                "--quiet",
                *mode,
            ],
        )
    )
    assert [ours[f"TAR@FAR={far:g}"] for far in fars] == eval_ijbc_tar_at_far(labels, scores, fars)
    assert ours["mode_name"] == ("F1 N1 D1" if not mode else "F0 N0 D0")


def test_verify_table_and_json(tiny_dataset, model_file, tmp_path, capsys):
    bin_path = str(tiny_dataset / "synth_val.bin")
    assert eval_cli.main(["verify", bin_path, "--model", str(model_file), "--json", str(tmp_path / "v.json")]) == 0
    table = capsys.readouterr().out
    assert "synth_val" in table and "TAR@FAR=0.0001" in table
    result = _only_result(json.loads((tmp_path / "v.json").read_text()))
    assert result["pairs"] == 200 and 0.5 <= result["accuracy"] <= 1 and result["mean_norm"] > 0
    assert {"TAR@FAR=0.0001", "TAR@FAR=0.001", "TAR@FAR=0.01"} <= set(result["summary"])
    assert eval_cli.main(["verify", bin_path, "--model", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such model file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # argparse's type function names stay internal
        eval_cli.main(["verify", bin_path, "--batch-size", "1e3"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "invalid value '1e3'" in err and "_positive_int" not in err and "usage:" not in err


@pytest.fixture(scope="module")
def onnx_export(model_file, tmp_path_factory) -> tuple[Path, export.ExportResult]:
    """The model file exported once for the module (the export dominates these tests' time)."""
    pytest.importorskip("onnx")
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return out, export.export_onnx(model_file, out)


def test_onnx_export_parity_and_verify_with_onnx(tiny_dataset, model_file, onnx_export, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    out, result = onnx_export
    assert result.opset == export.DEFAULT_OPSET and set(result.max_abs_difference) == {1, 7}
    assert max(result.max_abs_difference.values()) <= export.PARITY_TOLERANCE
    proto = onnx.load(out)
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["input_size"] == "112,112" and metadata["mean"] == "127.5,127.5,127.5"
    assert metadata["embedding_size"] == "32" and proto.opset_import[0].version == export.DEFAULT_OPSET
    assert metadata["backbone"] == "tiny"  # the registry name create_model takes, not the class (FaceResNet)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis

    bin_path = str(tiny_dataset / "synth_val.bin")
    torch_result = _run_json(capsys, eval_cli.main, ["verify", bin_path, "--model", str(model_file)])
    onnx_result = _run_json(capsys, eval_cli.main, ["verify", bin_path, "--model", str(out)])
    assert "onnxruntime" in onnx_result["source"]
    a, b = _only_result(torch_result), _only_result(onnx_result)
    assert a["accuracy"] == b["accuracy"] and a["mean_norm"] == pytest.approx(b["mean_norm"], rel=1e-5)

    del proto.metadata_props[:]  # an ONNX from elsewhere: how to normalise is unknown
    onnx.save(proto, tmp_path / "bare.onnx")
    assert eval_cli.main(["verify", bin_path, "--model", str(tmp_path / "bare.onnx")]) == 2
    assert "bare.onnx: ONNX metadata lacks ['input_size', 'channel_order', 'mean', 'std']" in capsys.readouterr().err


def test_onnx_parity_gate_judges_the_worst_batch(model_file, onnx_export, tmp_path, monkeypatch):
    """Planted bug: the export parity gate judging the best batch instead of the worst."""
    onnx, ort = pytest.importorskip("onnx"), pytest.importorskip("onnxruntime")
    graph = onnx.load(onnx_export[0])
    monkeypatch.setattr(
        torch.onnx, "export", lambda *args, **kwargs: SimpleNamespace(model_proto=graph)
    )  # no re-export

    class OffAtBatch7(ort.InferenceSession):  # onnxruntime drifting at one batch size only
        def run(self, output_names, feeds, *args, **kwargs):
            outputs = super().run(output_names, feeds, *args, **kwargs)
            if next(iter(feeds.values())).shape[0] == 7:
                outputs[0] = outputs[0] + 10 * export.PARITY_TOLERANCE
            return outputs

    monkeypatch.setattr(ort, "InferenceSession", OffAtBatch7)
    out = tmp_path / "model.onnx"
    with pytest.raises(export.ParityError, match=r"differs from PyTorch by 0\.001 at batch 7 "):
        export.export_onnx(model_file, out)
    assert not out.exists() and out.with_name("model.onnx.tmp").is_file()


def _documented(parser: argparse.ArgumentParser) -> list[str]:
    """Option strings of ``parser`` and its sub-commands that have no help text."""
    undocumented = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                undocumented += _documented(sub)
        elif not (action.help or "").strip():
            undocumented.append(action.dest)
    return undocumented


def test_every_command_documents_every_option():
    for module in (eval_cli, embed, export):
        assert _documented(module.build_parser()) == [], module.__name__
    modules = ("partialfc.eval", "partialfc.embed", "partialfc.export")  # the `python -m` entry points, in parallel
    runs = [
        subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for m in modules
    ]
    for module, run in zip(modules, runs):
        stdout, _ = run.communicate(timeout=120)
        assert run.returncode == 0 and "usage: python -m " + module in stdout


def test_model_file_errors_name_the_problem(model_file, tmp_path):
    saved = torch.load(model_file, weights_only=True)
    state = dict(saved["state_dict"])
    dropped = next(iter(state))
    del state[dropped]
    state["extra.weight"] = torch.zeros(1)
    torch.save({**saved, "state_dict": state}, tmp_path / "keys.pt")
    with pytest.raises(
        ModelFileError, match=rf"keys.pt: .*1 missing keys \['{dropped}'\], 1 unexpected keys \['extra.weight'\]"
    ):
        load_model(tmp_path / "keys.pt")
    torch.save({**saved, "embedding_size": 64}, tmp_path / "size.pt")
    with pytest.raises(
        ModelFileError,
        match=r"size.pt: weights do not fit backbone 'tiny' with embedding size 64: .*"
        r"size mismatch for head.fc.weight",
    ):
        load_model(tmp_path / "size.pt")
    torch.save({"weights": state}, tmp_path / "other.pt")
    with pytest.raises(
        ModelFileError,
        match=r"other.pt: not a model.pt written by partialfc.train \(keys "
        r"\['backbone', 'embedding_size', 'state_dict'\]\); found keys \['weights'\]",
    ):
        load_model(tmp_path / "other.pt")
    # A bare state dict (arcface_torch's backbone.pth) that fits no registered backbone: the nearest one and how.
    torch.save(state, tmp_path / "backbone.pth")
    with pytest.raises(ModelFileError) as raised:
        load_model(tmp_path / "backbone.pth")
    message = str(raised.value)
    assert message == (
        f"{tmp_path / 'backbone.pth'}: a bare state dict: {len(state)} tensors that fit no registered backbone; "
        f"nearest 'tiny': 1 missing keys {dropped}; 1 unexpected keys extra.weight"
    )
    # A run directory where its model.pt was meant, and a relative default path, are named as such.
    (tmp_path / "run").mkdir()
    torch.save(saved, tmp_path / "run" / "model.pt")
    with pytest.raises(
        ModelFileError,
        match=rf"run: a directory, not a model file; its model is "
        rf"{tmp_path / 'run' / 'model.pt'}",
    ):
        load_model(tmp_path / "run")
    with pytest.raises(ModelFileError, match=r"runs/none/model.pt: no such model file \(relative to /"):
        load_model("runs/none/model.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ModelFileError, match=r"text.pt: not a model.pt"):
        load_model(tmp_path / "text.pt")


def test_verify_on_insightface_grid_matches_its_evaluate(tiny_dataset, model_file, capsys):
    """verification.py's test() + evaluate(): image and mirror embeddings summed, sklearn-normalised,
    squared L2 distances of consecutive rows, calculate_roc's 10 folds on the 0.01 grid."""
    bin_path = tiny_dataset / "synth_val.bin"
    vset = VerificationSet(bin_path)
    trained = load_model(model_file)
    x = trained.backbone.input_config.normalize(torch.from_numpy(vset.images()))
    with torch.no_grad():
        summed = (trained.backbone(x) + trained.backbone(x.flip(3))).double().numpy()
    embeddings = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    distances = np.sum(np.square(embeddings[0::2] - embeddings[1::2]), 1)
    reference = float(np.mean(calculate_roc_accuracy(distances, vset.issame)))
    ours = _only_result(_run_json(capsys, eval_cli.main, ["verify", str(bin_path), "--model", str(model_file)]))
    assert ours["accuracy"] == reference  # the published read-out is the accuracy, by default
    cosines = np.sum(embeddings[0::2] * embeddings[1::2], 1)
    assert ours["best_cut_accuracy"] == verification_accuracy(cosines, vset.issame).mean  # the exact one, beside it


def test_embed_names_a_missing_source_before_the_model(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    argv = [str(missing), "--model", str(tmp_path / "no-model.pt"), "--out", str(tmp_path / "out")]
    assert embed.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {missing}: no images there") and "no-model.pt" not in err, err
