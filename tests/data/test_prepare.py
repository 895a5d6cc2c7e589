"""The training job's data from its config: synthetic generation only at its own path, .bin resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from partialfc.config import ConfigError, DataConfig, SyntheticConfig, load_config
from partialfc.training.prepare import prepare_dataset, resolve_val_targets


def synthetic_config(data_path: Path, synthetic_path: Path, **data: object) -> DataConfig:
    synthetic = SyntheticConfig(
        identities=4, path=str(synthetic_path), images_per_identity=2, holdout_identities=2, pairs=4, shards=1
    )
    return DataConfig(path=str(data_path), synthetic=synthetic, **data)


def test_mistyped_path_is_an_error_naming_it_not_a_new_dataset(tmp_path):
    typo = tmp_path / "synthtic"
    with pytest.raises(ConfigError, match=f"data.path='{typo}'.*generated only at data.synthetic.path"):
        prepare_dataset(synthetic_config(typo, tmp_path / "synthetic"), seed=0, is_main=True)
    assert list(tmp_path.iterdir()) == [], "something was generated"


def test_generated_at_its_path_once_then_reused(tmp_path, monkeypatch):
    target = tmp_path / "synthetic"
    (tmp_path / "synthetic.partial").mkdir()  # left over by an interrupted run
    (tmp_path / "synthetic.partial" / "train.rec").write_bytes(b"half")
    monkeypatch.chdir(tmp_path)  # a relative data.path names the same target
    dataset = prepare_dataset(synthetic_config(Path("synthetic"), target), seed=0, is_main=True)
    assert (dataset.num_classes, dataset.num_images) == (4, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]
    assert (target / "synth_val.bin").is_file()

    def must_not_generate(*args: object, **kwargs: object) -> None:
        raise AssertionError("an existing synthetic dataset was generated again")

    monkeypatch.setattr("partialfc.training.prepare.generate_synthetic_dataset", must_not_generate)
    assert prepare_dataset(synthetic_config(target, target), seed=0, is_main=True).num_images == 8


def test_only_rank_zero_generates(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path"):
        prepare_dataset(synthetic_config(tmp_path / "synthetic", tmp_path / "synthetic"), seed=0, is_main=False)
    assert not (tmp_path / "synthetic").exists()


def test_num_classes_must_agree(tiny_synth):
    with pytest.raises(ConfigError, match=r"data\.num_classes=5 but dataset .* has 12 classes"):
        prepare_dataset(DataConfig(path=str(tiny_synth), num_classes=5), seed=0, is_main=True)
    assert prepare_dataset(DataConfig(path=str(tiny_synth), num_classes=12), seed=0, is_main=True).num_classes == 12


def test_missing_dataset_is_a_config_error_naming_the_path(tmp_path):
    with pytest.raises(ConfigError, match=f"data.path='{tmp_path / 'nope'}'"):
        prepare_dataset(DataConfig(path=str(tmp_path / "nope")), seed=0, is_main=True)
    with pytest.raises(ConfigError, match=r"data\.path is empty"):
        prepare_dataset(DataConfig(), seed=0, is_main=True)


def test_synthetic_needs_its_path(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.synthetic\.path=''"):
        load_config(overrides={"data.path": str(tmp_path), "data.synthetic.identities": "10"})


def test_val_targets_resolve_against_the_dataset_directory(tiny_synth):
    rec = tiny_synth / "train.rec"
    expected = tiny_synth / "synth_val.bin"
    for path in (tiny_synth, rec):
        data = DataConfig(path=str(path), val_targets=["synth_val", "synth_val.bin", str(expected)])
        assert resolve_val_targets(data) == [expected] * 3
    with pytest.raises(ConfigError, match=r"data.val_targets: 'lfw' not found \(looked at lfw, .*lfw.bin\)"):
        resolve_val_targets(DataConfig(path=str(tiny_synth), val_targets=["lfw"]))


def test_the_names_that_moved_to_training_still_import_from_data_with_a_warning():
    """``prepare_dataset`` and ``resolve_val_targets`` read the training config, so they live in
    partialfc.training now; the documented ``from partialfc.data import ...`` keeps working one release."""
    import partialfc.data
    from partialfc.training import prepare

    for name in ("prepare_dataset", "resolve_val_targets"):
        with pytest.warns(DeprecationWarning, match=f"partialfc.training.prepare.{name}"):
            assert getattr(partialfc.data, name) is getattr(prepare, name)
    with pytest.raises(AttributeError, match="no attribute 'prepare'"):
        partialfc.data.prepare  # noqa: B018
