"""Damaged model folders, caches and checkpoints: clear errors, or a rebuild where one is possible."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vqbench.errors import ModelError
from vqbench.models.vq_card import load_vq_card
from vqbench.pipelines.edge_vq import load_onnx_session
from vqbench.training.config import TrainConfig
from vqbench.training.data import load_cached_arrays, save_cached_arrays
from vqbench.training.loop import Trainer

MODEL = Path(__file__).resolve().parents[1] / "models" / "vq-g10-k256-aug"


@pytest.fixture()
def model_copy(tmp_path: Path) -> Path:
    folder = tmp_path / MODEL.name
    shutil.copytree(MODEL, folder)
    return folder


def write_card(folder: Path, card: object) -> None:
    (folder / "card.json").write_text(json.dumps(card), encoding="utf-8")


def test_card_not_object_rejected(model_copy: Path) -> None:
    write_card(model_copy, [])
    with pytest.raises(ModelError, match="must contain a JSON object"):
        load_vq_card(model_copy)


def test_card_without_files_rejected(model_copy: Path) -> None:
    card = json.loads((model_copy / "card.json").read_text())
    del card["files"]
    write_card(model_copy, card)
    with pytest.raises(ModelError, match="is missing the field 'files'"):
        load_vq_card(model_copy)


@pytest.mark.parametrize("model_id", ["/tmp/elsewhere/model", "../../etc", "Upper", "", 7])
def test_card_model_id_must_be_plain_name(model_copy: Path, model_id: object) -> None:
    card = json.loads((model_copy / "card.json").read_text())
    card["model_id"] = model_id
    write_card(model_copy, card)
    with pytest.raises(ModelError, match="not a plain name"):
        load_vq_card(model_copy)


def test_card_file_names_must_be_plain(model_copy: Path) -> None:
    card = json.loads((model_copy / "card.json").read_text())
    card["files"]["../card.json"] = card["files"].pop("student.onnx")
    write_card(model_copy, card)
    with pytest.raises(ModelError, match="not a plain file name"):
        load_vq_card(model_copy)


def test_truncated_onnx_raises_model_error(model_copy: Path) -> None:
    student = model_copy / "student.onnx"
    student.write_bytes(student.read_bytes()[:1000])
    card = json.loads((model_copy / "card.json").read_text())
    card["files"]["student.onnx"]["sha256"] = hashlib.sha256(student.read_bytes()).hexdigest()
    write_card(model_copy, card)
    loaded = load_vq_card(model_copy)
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        load_onnx_session(loaded.file("student"), None)


def test_damaged_cache_file_reads_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "views.npz"
    save_cached_arrays(path, {"embeddings": np.ones((2, 3), dtype=np.float32)})
    assert load_cached_arrays(path, ("embeddings",)) is not None
    path.write_bytes(path.read_bytes()[:40])
    assert load_cached_arrays(path, ("embeddings",)) is None


def write_truncated_pickle(path: Path) -> None:
    path.write_bytes(b"\x80\x04truncated")


def write_text(path: Path) -> None:
    path.write_bytes(b"not a checkpoint at all")


def write_foreign_object(path: Path) -> None:
    torch.save([1, 2, 3], path)


@pytest.mark.parametrize("write", [write_truncated_pickle, write_text, write_foreign_object])
def test_unusable_checkpoint_starts_afresh(tmp_path: Path, write: object) -> None:
    checkpoint = tmp_path / "last.pt"
    write(checkpoint)  # type: ignore[operator]
    trainer = Trainer.__new__(Trainer)
    trainer.checkpoint_path = checkpoint
    trainer.config = TrainConfig(model_id="unusable")
    trainer.settings = {}
    trainer.fingerprint = "0" * 64
    trainer.legacy_fingerprint = "1" * 64
    trainer.progress = None
    trainer._resume()
    assert trainer.progress is None
