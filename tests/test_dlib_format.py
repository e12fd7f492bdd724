"""Tests of the reader of dlib's serialised ResNet, on the shipped file and damaged copies."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from vqbench.errors import ModelError
from vqbench.models.dlib_format import DlibNetwork, parse_dlib_network, read_dlib_resnet
from vqbench.models.files import RECOGNITION_MODEL, dlib_model_path


@pytest.fixture(scope="module")
def dat_path() -> Path:
    try:
        return dlib_model_path(RECOGNITION_MODEL)
    except ModelError as error:
        pytest.skip(f"dlib's recognition model is not installed: {error}")


@pytest.fixture(scope="module")
def dat_bytes(dat_path: Path) -> bytes:
    return dat_path.read_bytes()


@pytest.fixture(scope="module")
def network(dat_path: Path) -> DlibNetwork:
    return read_dlib_resnet(dat_path)


def _error_offset(error: pytest.ExceptionInfo) -> int:
    match = re.search(r"at byte offset (\d+)", str(error.value))
    assert match, f"error message names no byte offset: {error.value}"
    return int(match.group(1))


def test_reader_layer_counts(network: DlibNetwork) -> None:
    kinds = [layer.kind for layer in network.layers]
    assert kinds[0] == "input_rgb_image_sized"
    assert kinds[-1] == "loss_metric"
    assert kinds.count("con") == 29
    assert kinds.count("affine") == 29
    assert kinds.count("add_prev") == 14
    assert kinds.count("skip") == 4
    assert kinds.count("tag") == 18
    assert kinds.count("fc") == 1


def test_reader_input_normalisation(network: DlibNetwork) -> None:
    source = network.layers[0].config
    assert source["avg_red"] == pytest.approx(122.782, abs=1e-4)
    assert source["avg_green"] == pytest.approx(117.001, abs=1e-4)
    assert source["avg_blue"] == pytest.approx(104.298, abs=1e-4)
    assert (source["nr"], source["nc"]) == (150, 150)


def test_reader_stem_and_head(network: DlibNetwork) -> None:
    stem = network.layers[1]
    assert stem.params["filters"].shape == (32, 3, 7, 7)
    assert (stem.config["stride_y"], stem.config["padding_y"]) == (2, 0)
    pool = network.layers[4]
    assert pool.kind == "max_pool"
    assert (pool.config["nr"], pool.config["stride_y"], pool.config["padding_y"]) == (3, 2, 0)
    fc = network.layers[-2]
    assert fc.params["weights"].shape == (256, 128, 1, 1)
    assert fc.config["has_bias"] is False
    assert "biases" not in fc.params
    loss = network.layers[-1].config
    assert loss["margin"] == pytest.approx(0.04, rel=1e-6)
    assert loss["distance_threshold"] == pytest.approx(0.6, rel=1e-6)


def test_reader_params_finite_and_frozen(network: DlibNetwork) -> None:
    assert network.param_count == 5_614_592
    for layer in network.layers:
        for name, array in layer.params.items():
            assert array.dtype == np.float32, (layer.kind, name)
            assert np.isfinite(array).all(), (layer.kind, name)
            assert not array.flags.writeable, (layer.kind, name)


def test_reader_truncated_names_offset(tmp_path: Path, dat_bytes: bytes) -> None:
    cut_at = len(dat_bytes) // 2
    path = tmp_path / "truncated.dat"
    path.write_bytes(dat_bytes[:cut_at])
    with pytest.raises(ModelError, match="file ends after") as error:
        read_dlib_resnet(path)
    # The read that fails starts before the cut and would need bytes past it.
    assert 0 < _error_offset(error) <= cut_at
    assert str(path) in str(error.value)


def test_reader_header_only_names_offset(tmp_path: Path, dat_bytes: bytes) -> None:
    path = tmp_path / "header.dat"
    path.write_bytes(dat_bytes[:20])
    with pytest.raises(ModelError) as error:
        read_dlib_resnet(path)
    assert _error_offset(error) == 17


def test_reader_unknown_layer_names_offset(tmp_path: Path, dat_bytes: bytes, network: DlibNetwork) -> None:
    # Rename the first relu layer (same length) so its version string is unknown.
    relu = network.layers_of_kind("relu")[0]
    assert dat_bytes[relu.offset : relu.offset + 7] == b"\x01\x05relu_"
    damaged = bytearray(dat_bytes)
    damaged[relu.offset + 2 : relu.offset + 7] = b"gelu_"
    with pytest.raises(ModelError, match="unknown layer 'gelu_'") as error:
        parse_dlib_network(bytes(damaged), tmp_path / "renamed.dat")
    assert _error_offset(error) == relu.offset


def test_reader_bad_integer_names_offset(tmp_path: Path, dat_bytes: bytes, network: DlibNetwork) -> None:
    # Overwrite the header byte of the stem convolution's tensor version with 0x7f.
    stem = network.layers[1]
    tensor_version_at = stem.offset + 2 + len("con_4")
    damaged = bytearray(dat_bytes)
    damaged[tensor_version_at] = 0x7F
    with pytest.raises(ModelError, match="integer header byte") as error:
        parse_dlib_network(bytes(damaged), tmp_path / "corrupt.dat")
    assert _error_offset(error) == tensor_version_at


def test_reader_bad_loss_name_names_offset(tmp_path: Path, dat_bytes: bytes) -> None:
    damaged = bytearray(dat_bytes)
    damaged[4:15] = b"loss_multic"
    with pytest.raises(ModelError, match="loss_metric_2") as error:
        parse_dlib_network(bytes(damaged), tmp_path / "loss.dat")
    assert _error_offset(error) == 2


def test_reader_trailing_bytes_rejected(tmp_path: Path, dat_bytes: bytes) -> None:
    with pytest.raises(ModelError, match="expected the end of the file") as error:
        parse_dlib_network(dat_bytes + b"\x00\x00", tmp_path / "longer.dat")
    assert _error_offset(error) == len(dat_bytes)


def test_reader_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read dlib model"):
        read_dlib_resnet(tmp_path / "absent.dat")
