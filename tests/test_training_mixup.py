"""Mixed views labelled by the teacher during training (``augment.mixup_fraction``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from test_training_hint import prepared  # noqa: F401 - the eight prepared sample images, a fixture
from test_training_smoke import _trainer
from test_training_smoke import tiny_config as smoke_config
from vqbench.models.student import TeacherTail, teacher_trunk
from vqbench.models.teacher_torch import load_torch_teacher
from vqbench.training.config import TrainConfig, portable_settings
from vqbench.training.data import PreparedSet


def tiny_config(tmp_path: Path, mixup_fraction: float = 0.5) -> dict:
    """Return the smoke tests' config with mixed views and no stage identity."""
    config = smoke_config(tmp_path)
    config["model_id"] = "mixup"
    config["augment"] = {"mixup_fraction": mixup_fraction}
    config["stages"]["identity_epochs"] = 0.0
    return config


def test_mixup_off_keeps_old_fingerprints(tmp_path: Path) -> None:
    off = portable_settings(TrainConfig.model_validate(tiny_config(tmp_path, mixup_fraction=0.0)))
    on = portable_settings(TrainConfig.model_validate(tiny_config(tmp_path, mixup_fraction=0.25)))
    assert "mixup_fraction" not in off["augment"]
    assert on["augment"]["mixup_fraction"] == 0.25


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "0.5"])
def test_mixup_fraction_rejects_invalid_values(tmp_path: Path, value: object) -> None:
    with pytest.raises(ValidationError, match="mixup_fraction"):
        TrainConfig.model_validate(tiny_config(tmp_path, mixup_fraction=value))


def test_mixup_excludes_encoder_hint(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["loss"] = {"encoder_hint": 1.0}
    with pytest.raises(ValidationError, match="mixed views have no hint maps"):
        TrainConfig.model_validate(raw)


def test_mixed_views_carry_the_teachers_labels(tmp_path: Path, prepared: PreparedSet) -> None:
    torch.set_num_threads(1)
    config = TrainConfig.model_validate(tiny_config(tmp_path))
    trainer = _trainer(config, prepared, tmp_path / "last.pt")
    # The student's copy of the teacher's tail drifts in training. The labels must not follow it.
    with torch.no_grad():
        for parameter in trainer.models.student.tail.parameters():
            parameter.add_(1.0)
    inputs, _, embeddings, features, _ = trainer._batch_tensors(torch.arange(4).numpy())
    mixed, mixed_embeddings, mixed_features = trainer._mix_views(inputs, embeddings, features)

    # Half the batch is mixed. The other half keeps its views and their stored labels.
    assert torch.equal(mixed[2:], inputs[2:])
    assert torch.equal(mixed_embeddings[2:], embeddings[2:])
    assert torch.equal(mixed_features[2:], features[2:])
    assert not torch.equal(mixed[:2], inputs[:2])
    # Each mix lies between two of the batch's views, pixel by pixel.
    low, high = inputs.min(dim=0).values, inputs.max(dim=0).values
    assert bool(((mixed[:2] >= low - 1e-4) & (mixed[:2] <= high + 1e-4)).all())

    teacher = load_torch_teacher()
    with torch.no_grad():
        trunk = teacher_trunk(teacher, mixed[:2])
        expected = TeacherTail(teacher)(trunk)
    torch.testing.assert_close(mixed_features[:2], trunk)
    torch.testing.assert_close(mixed_embeddings[:2], expected)


def test_training_with_mixed_views_runs(tmp_path: Path, prepared: PreparedSet) -> None:
    torch.set_num_threads(1)
    config = TrainConfig.model_validate(tiny_config(tmp_path))
    progress = _trainer(config, prepared, tmp_path / "last.pt").run()
    (epoch,) = progress.history
    assert epoch["stage"] == "joint"
    assert all(torch.isfinite(torch.tensor(value)) for key, value in epoch.items() if key not in ("stage",))
