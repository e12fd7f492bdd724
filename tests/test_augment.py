"""Teacher-labelled augmented views: parameters, rendering and the labels' cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vqbench.training import data as training_data
from vqbench.training.augment import FLIP_VIEW, IDENTITY_VIEW, draw_view_params, render_views
from vqbench.training.config import AugmentConfig, TrainConfig
from vqbench.training.data import PreparedSet, add_teacher_views, prepare_training_set, select_training_people, training_image_paths
from vqbench.training.loop import Trainer

SAMPLE_ROOT = Path(__file__).resolve().parents[1] / "data" / "lfw-sample"


def random_chips(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 150, 150, 3), dtype=np.uint8)


def view(**changes: float) -> np.ndarray:
    columns = dict(zip(("flip", "shift_x_px", "shift_y_px", "scale", "rotation_deg", "brightness", "contrast"), IDENTITY_VIEW))
    columns.update(changes)
    return np.array([list(columns.values())], dtype=np.float32)


def test_chip_and_flip_render_exactly() -> None:
    chips = random_chips(2)
    params = np.array([IDENTITY_VIEW, FLIP_VIEW], dtype=np.float32)
    images = render_views(chips, params).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(images[0], chips[0].astype(np.float32))
    assert np.array_equal(images[1], chips[1, :, ::-1].astype(np.float32))


def test_shift_moves_content_right_down() -> None:
    chips = random_chips(1)
    shifted = render_views(chips, view(shift_x_px=3.0, shift_y_px=2.0))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(shifted[2:, 3:], chips[0, :-2, :-3].astype(np.float32), atol=0.01)


def test_flip_mirrors_after_shift() -> None:
    chips = random_chips(1)
    mirrored = render_views(chips, view(flip=1.0, shift_x_px=2.0))[0].permute(1, 2, 0).numpy()
    shifted = np.zeros_like(chips[0], dtype=np.float32)
    shifted[:, 2:] = chips[0, :, :-2]
    np.testing.assert_allclose(mirrored[:, :-2], shifted[:, ::-1][:, :-2], atol=0.01)


def test_colour_change_keeps_pixel_range() -> None:
    chips = random_chips(1)
    brighter = render_views(chips, view(brightness=1.4, contrast=1.4))
    assert brighter.min() >= 0.0
    assert brighter.max() <= 255.0
    assert brighter.mean() > chips.mean()


def test_drawn_views_stay_in_range() -> None:
    augment = AugmentConfig(extra_views=5, max_shift_px=4.0, max_scale=0.05, max_rotation_deg=6.0, max_brightness=0.2, max_contrast=0.1)
    params = draw_view_params(50, augment, seed=3)
    assert params.shape == (50, 7, 7)
    assert (params[:, 0] == IDENTITY_VIEW).all()
    assert (params[:, 1] == FLIP_VIEW).all()
    extra = params[:, 2:]
    assert set(np.unique(extra[..., 0])) == {0.0, 1.0}
    assert np.abs(extra[..., 1:3]).max() <= 4.0
    assert np.abs(extra[..., 3] - 1).max() <= 0.05
    assert np.abs(extra[..., 4]).max() <= 6.0
    assert np.abs(extra[..., 5] - 1).max() <= 0.2
    assert np.abs(extra[..., 6] - 1).max() <= 0.1
    assert np.array_equal(params, draw_view_params(50, augment, seed=3))
    assert not np.array_equal(params, draw_view_params(50, augment, seed=4))


@pytest.mark.slow
def test_view_labels_computed_once_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    people = select_training_people(SAMPLE_ROOT, [9])
    prepared = prepare_training_set(training_image_paths(SAMPLE_ROOT, people.people)[:3], tmp_path)
    augment = AugmentConfig(extra_views=2)

    extended = add_teacher_views(prepared, augment, seed=0, cache_dir=tmp_path)
    assert extended.n_views == 4
    assert extended.view_params is not None
    assert np.array_equal(extended.embeddings[:, :2], prepared.embeddings)
    # Each extra view's label is the teacher's output for that rendered view, not for the chip.
    relabelled, _ = training_data.label_views(prepared.chips, extended.view_params[:, 2:])
    np.testing.assert_allclose(extended.embeddings[:, 2:], relabelled, atol=1e-5)
    assert not np.allclose(extended.embeddings[:, 2], prepared.embeddings[:, 0], atol=0.01)

    def must_not_label(*args: object, **kwargs: object) -> None:
        raise AssertionError("labels should come from the cache")

    monkeypatch.setattr(training_data, "label_views", must_not_label)
    again = add_teacher_views(prepared, augment, seed=0, cache_dir=tmp_path)
    assert np.array_equal(again.embeddings, extended.embeddings)
    assert add_teacher_views(prepared, AugmentConfig(extra_views=0), seed=0, cache_dir=tmp_path) is prepared


@pytest.mark.parametrize(("flip_augment", "expected"), [(True, {0, 1, 2, 3}), (False, {0, 2, 3})])
def test_trainer_draws_every_labelled_view(flip_augment: bool, expected: set[int]) -> None:
    n = 4
    data = PreparedSet(
        chips=random_chips(n),
        identities=np.array(["a"] * n),
        detected=np.ones(n, dtype=bool),
        embeddings=np.zeros((n, 4, 128), dtype=np.float32),
        features=np.zeros((n, 4, 256, 4, 4), dtype=np.float16),
    )
    trainer = Trainer.__new__(Trainer)
    trainer.config = TrainConfig(model_id="views", flip_augment=flip_augment)
    trainer.data = data
    trainer.generator = torch.Generator().manual_seed(0)
    assert set(trainer._pick_views(400).tolist()) == expected


@pytest.mark.parametrize("bad", [{"extra_views": True}, {"max_shift_px": "3"}, {"extra_views": 33}, {"max_scale": -0.1}, {"views": 2}])
def test_augment_rejects_loose_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        AugmentConfig.model_validate(bad)
