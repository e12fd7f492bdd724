"""The encoder hint (``loss.encoder_hint``): config, hint maps and their cache, the training-only head."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import ValidationError

import vqbench.training.data as training_data
from test_training_smoke import SAMPLE_ROOT, _trainer
from test_training_smoke import tiny_config as smoke_config
from vqbench.models.teacher_torch import load_torch_teacher
from vqbench.training import train_command
from vqbench.training.augment import chip_and_flip_params, render_views
from vqbench.training.config import TrainConfig, portable_settings
from vqbench.training.data import (
    HINT_CHANNELS, PreparedSet, add_hint_maps, channel_mean_std, prepare_training_set, select_training_people,
    training_image_paths,
)
from vqbench.training.export import footprint
from vqbench.training.loop import build_models, config_fingerprint

def tiny_config(tmp_path: Path, encoder_hint: float = 1.0) -> dict:
    """Return the smoke tests' config (8 sample images, an 8x8 code grid) with the encoder hint and no stage identity."""
    config = smoke_config(tmp_path)
    config["model_id"] = "hint"
    config["loss"] = {"encoder_hint": encoder_hint}
    config["stages"]["identity_epochs"] = 0.0
    return config


@pytest.fixture
def prepared(tmp_path: Path) -> PreparedSet:
    people = select_training_people(SAMPLE_ROOT, [9])
    return prepare_training_set(training_image_paths(SAMPLE_ROOT, people.people)[:8], tmp_path / "cache")


# ----- config ----------------------------------------------------------------------------------


def test_encoder_hint_defaults_to_zero(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    del raw["loss"]
    config = TrainConfig.model_validate(raw)
    assert config.loss.encoder_hint == 0.0
    assert build_models(config, load_torch_teacher()).hint_head is None


@pytest.mark.parametrize("value", [-0.1, math.inf, math.nan])
def test_encoder_hint_rejects_invalid_weight(tmp_path: Path, value: float) -> None:
    with pytest.raises(ValidationError, match="encoder_hint"):
        TrainConfig.model_validate(tiny_config(tmp_path, encoder_hint=value))


def test_encoder_hint_rejects_edge_embed(tmp_path: Path) -> None:
    raw = dict(tiny_config(tmp_path), kind="edge-embed")
    with pytest.raises(ValidationError, match="loss.encoder_hint is 1, but the encoder hint needs the code grid of kind vq"):
        TrainConfig.model_validate(raw)


def test_zero_hint_keeps_settings_and_fingerprint(tmp_path: Path) -> None:
    without = tiny_config(tmp_path)
    del without["loss"]
    zero = tiny_config(tmp_path, encoder_hint=0.0)
    settings = portable_settings(TrainConfig.model_validate(zero))
    assert "encoder_hint" not in settings["loss"]
    assert config_fingerprint(TrainConfig.model_validate(zero)) == config_fingerprint(TrainConfig.model_validate(without))

    hinted = TrainConfig.model_validate(tiny_config(tmp_path, encoder_hint=0.5))
    assert portable_settings(hinted)["loss"]["encoder_hint"] == 0.5
    assert config_fingerprint(hinted) != config_fingerprint(TrainConfig.model_validate(without))


def test_committed_hint_config_loads() -> None:
    path = Path(__file__).resolve().parents[1] / "models" / "vq-g10-k256-e11-hint" / "train.yaml"
    config = TrainConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert config.model_id == "vq-g10-k256-e11-hint"
    assert config.loss.encoder_hint > 0
    base = yaml.safe_load((path.parents[1] / "vq-g10-k256-e11" / "train.yaml").read_text(encoding="utf-8"))
    copied = yaml.safe_load(path.read_text(encoding="utf-8"))
    # Apart from its name and the hint weight, the config is the baseline's.
    assert copied.pop("loss").pop("encoder_hint") == config.loss.encoder_hint
    assert copied.pop("model_id") != base.pop("model_id")
    assert {**copied, "loss": base["loss"]} == base


# ----- hint maps -------------------------------------------------------------------------------


def test_channel_mean_std_matches_numpy() -> None:
    maps = np.random.default_rng(0).normal(3.0, 2.0, size=(10, 3, 4, 2, 2)).astype(np.float16)
    mean, std = channel_mean_std(maps, chunk_rows=3)
    reference = maps.astype(np.float64).transpose(2, 0, 1, 3, 4).reshape(4, -1)
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean, reference.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(std, reference.std(axis=1), rtol=1e-5)


@pytest.mark.slow
def test_hint_maps_match_teacher_and_are_cached(tmp_path: Path, prepared: PreparedSet, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    labelled = add_hint_maps(prepared, grid=8, cache_dir=tmp_path / "cache")
    assert labelled.hint_maps is not None
    assert labelled.hint_maps.shape == (8, 2, HINT_CHANNELS, 8, 8)
    assert labelled.hint_maps.dtype == np.float16
    assert len(list((tmp_path / "cache").glob("hint-maps-*.npz"))) == 1

    # The teacher's 128-channel map is 8x8, so pooling to an 8x8 grid keeps it as it is.
    flipped = render_views(prepared.chips[:1], chip_and_flip_params(1)[:, 1])
    with torch.no_grad():
        expected = load_torch_teacher().stage_output(flipped, HINT_CHANNELS)[0].numpy()
    np.testing.assert_allclose(labelled.hint_maps[0, 1].astype(np.float32), expected, rtol=1e-2, atol=1e-2)

    # A second call reads the cache, and another grid gets a file of its own.
    def fail(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("the hint maps were labelled again")

    monkeypatch.setattr(training_data, "label_hint_maps", fail)
    again = add_hint_maps(prepared, grid=8, cache_dir=tmp_path / "cache")
    assert np.array_equal(again.hint_maps, labelled.hint_maps)
    monkeypatch.undo()
    pooled = add_hint_maps(prepared, grid=4, cache_dir=tmp_path / "cache")
    assert pooled.hint_maps.shape == (8, 2, HINT_CHANNELS, 4, 4)
    np.testing.assert_allclose(
        pooled.hint_maps[0, 1].astype(np.float32),
        F.adaptive_avg_pool2d(torch.from_numpy(expected), 4).numpy(),
        rtol=1e-2,
        atol=1e-2,
    )
    assert len(list((tmp_path / "cache").glob("hint-maps-*.npz"))) == 2


# ----- training --------------------------------------------------------------------------------


@pytest.mark.slow
def test_zero_hint_trains_without_hint_term(tmp_path: Path, prepared: PreparedSet) -> None:
    torch.set_num_threads(1)
    trainer = _trainer(TrainConfig.model_validate(tiny_config(tmp_path, encoder_hint=0.0)), prepared, tmp_path / "last.pt")
    trainer.run()
    assert "hint" not in trainer.progress.history[-1]
    assert "cos" in trainer.progress.history[-1]
    assert "hint_head" not in torch.load(tmp_path / "last.pt", weights_only=False)


@pytest.mark.slow
def test_trainer_rejects_missing_hint_maps(tmp_path: Path, prepared: PreparedSet) -> None:
    with pytest.raises(ValueError, match="the prepared set has no hint maps"):
        _trainer(TrainConfig.model_validate(tiny_config(tmp_path)), prepared, tmp_path / "last.pt")


@pytest.mark.slow
def test_hint_head_resumes_like_uninterrupted_run(tmp_path: Path, prepared: PreparedSet) -> None:
    torch.set_num_threads(1)
    config = TrainConfig.model_validate(tiny_config(tmp_path))
    data = add_hint_maps(prepared, config.vq.grid, tmp_path / "cache")

    straight = _trainer(config, data, tmp_path / "a.pt")
    initial_head = {name: value.clone() for name, value in straight.models.hint_head.state_dict().items()}
    straight.run()
    record = straight.progress.history[-1]
    assert record["hint"] > 0
    assert all(not torch.equal(straight.models.hint_head.state_dict()[name], value) for name, value in initial_head.items())

    with pytest.raises(KeyboardInterrupt):
        _trainer(config, data, tmp_path / "b.pt", stop_after_steps=1).run()
    assert "hint_head" in torch.load(tmp_path / "b.pt", weights_only=False)
    resumed = _trainer(config, data, tmp_path / "b.pt")
    resumed.run()
    for name, value in straight.models.hint_head.state_dict().items():
        assert torch.allclose(value, resumed.models.hint_head.state_dict()[name], atol=1e-5), name
    assert resumed.progress.history[-1]["hint"] == pytest.approx(record["hint"], rel=1e-4)


@pytest.mark.slow
def test_train_command_exports_without_hint_head(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["augment"] = {"extra_views": 1}
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    folder = train_command(config_path)

    card = json.loads((folder / "card.json").read_text())
    history = card["training"]["history"]
    assert [record["stage"] for record in history] == ["joint"]
    assert history[0]["hint"] > 0
    assert card["training"]["config"]["loss"]["encoder_hint"] == 1.0
    weights = torch.load(folder / "weights.pt", weights_only=True)
    assert set(weights) == {"vqvae", "student"}

    # The edge encoder's MACs are those of the same model without the head.
    plain = TrainConfig.model_validate(tiny_config(tmp_path, encoder_hint=0.0))
    assert card["footprint"]["edge_encoder"] == footprint(build_models(plain, load_torch_teacher()), plain)["edge_encoder"]

    # Every view, the extra one included, has a hint map in the cache.
    cached = list((tmp_path / "cache" / "training").glob("hint-maps-*.npz"))
    assert len(cached) == 1
    with np.load(cached[0]) as arrays:
        assert arrays["hint_maps"].shape == (8, 3, HINT_CHANNELS, 8, 8)
