"""Tests of the PyTorch and ONNX ports of dlib's ResNet against dlib itself, on real LFW chips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vqbench.errors import ModelError
from vqbench.models.files import MODELS_DIR_ENV, RECOGNITION_MODEL
from vqbench.models.graph_stats import count_macs, count_params
from vqbench.models.teacher_onnx import OnnxTeacher, TorchTeacher, onnx_cache_path
from vqbench.models.teacher_torch import add_zero_extended, load_torch_teacher, teacher_cache_path
from vqbench.models.verify import align_images, list_lfw_images, row_cosines, select_evenly

MIN_COSINE = 0.9999
N_CHIPS = 8


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lfw_chips(full_lfw: Path) -> np.ndarray:
    chips, _ = align_images(select_evenly(list_lfw_images(full_lfw), N_CHIPS))
    return chips


@pytest.fixture(scope="module")
def dlib_descriptors(lfw_chips: np.ndarray) -> np.ndarray:
    from vqbench.models.teacher import DlibTeacher

    return DlibTeacher().embed(lfw_chips)


@pytest.fixture(scope="module")
def torch_teacher(tmp_path_factory: pytest.TempPathFactory) -> TorchTeacher:
    return TorchTeacher(cache_dir=tmp_path_factory.mktemp("models"))


def test_torch_port_matches_dlib(
    torch_teacher: TorchTeacher, lfw_chips: np.ndarray, dlib_descriptors: np.ndarray
) -> None:
    ported = torch_teacher.embed(lfw_chips)
    assert ported.shape == (N_CHIPS, 128)
    assert ported.dtype == np.float32
    assert row_cosines(dlib_descriptors, ported).min() >= MIN_COSINE
    # Descriptors have norms near 1.5, so float32 rounding alone stays far below this.
    assert np.abs(ported - dlib_descriptors).max() < 1e-4


@pytest.mark.slow
def test_onnx_port_matches_dlib(tmp_path: Path, lfw_chips: np.ndarray, dlib_descriptors: np.ndarray) -> None:
    # A damaged cached export must be replaced, not trusted.
    damaged = onnx_cache_path(tmp_path)
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_bytes(b"not an onnx file")

    teacher = OnnxTeacher(cache_dir=tmp_path, threads=1)
    ported = teacher.embed(lfw_chips)
    assert teacher.model_bytes > 20_000_000
    assert ported.shape == (N_CHIPS, 128)
    assert row_cosines(dlib_descriptors, ported).min() >= MIN_COSINE
    assert np.abs(ported - dlib_descriptors).max() < 1e-4
    # A batch size that does not divide N exercises the dynamic batch axis.
    teacher.batch_size = 3
    np.testing.assert_allclose(teacher.embed(lfw_chips), ported, atol=1e-5)


def test_teacher_graph_stats(torch_teacher: TorchTeacher) -> None:
    # 5,614,592 values are stored in the .dat file: conv filters and biases, affine, fc.
    assert torch_teacher.params == 5_614_592
    # Hand count over the conv and fc layers gives about 2.71e8 MACs per 150x150 chip.
    assert 2.6e8 < torch_teacher.macs < 2.8e8
    assert torch_teacher.model_bytes == 4 * (5_614_592 + 3)


def test_graph_stats_small_module() -> None:
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 5))
    assert count_params(module) == (8 * 3 * 9 + 8) + (512 * 5 + 5)
    assert count_macs(module, (1, 3, 10, 10)) == 8 * 3 * 9 * 8 * 8 + 512 * 5
    assert count_macs(module, (4, 3, 10, 10)) == 4 * (8 * 3 * 9 * 8 * 8 + 512 * 5)


def test_add_zero_extended_shapes() -> None:
    main = torch.ones(1, 4, 3, 3)
    shortcut = torch.full((1, 2, 4, 4), 10.0)
    total = add_zero_extended(main, shortcut)
    assert total.shape == (1, 4, 4, 4)
    assert total[0, 0, 0, 0] == 11.0
    assert total[0, 3, 0, 0] == 1.0
    assert total[0, 0, 3, 3] == 10.0
    assert total[0, 3, 3, 3] == 0.0


def test_cache_damaged_is_rebuilt(tmp_path: Path) -> None:
    cache = teacher_cache_path(tmp_path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"\x00" * 100)
    model = load_torch_teacher(tmp_path)
    assert cache.stat().st_size > 20_000_000

    written_ns = cache.stat().st_mtime_ns
    again = load_torch_teacher(tmp_path)
    assert cache.stat().st_mtime_ns == written_ns
    sample = torch.rand(2, 3, 150, 150) * 255
    with torch.inference_mode():
        np.testing.assert_array_equal(model(sample).numpy(), again(sample).numpy())


def test_load_rejects_wrong_sha(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / RECOGNITION_MODEL).write_bytes(b"some other network")
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path))
    with pytest.raises(ModelError, match="SHA-256"):
        load_torch_teacher(tmp_path / "cache")


def test_embed_rejects_bad_chips(torch_teacher: TorchTeacher) -> None:
    with pytest.raises(ValueError, match="uint8 chips"):
        torch_teacher.embed(np.zeros((2, 150, 150, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8 chips"):
        torch_teacher.embed(np.zeros((2, 112, 112, 3), dtype=np.uint8))
