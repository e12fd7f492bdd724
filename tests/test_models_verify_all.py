"""`vqbench models verify` over a models folder with several broken model folders: every problem
is listed, file sizes and folder names are checked, and missing card fields are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_model_cards_guards import EMBED_MODEL, VQ_MODEL, cli, copy_model, one_line, read_card, write_card
from vqbench.cli import app
from vqbench.errors import ModelError
from vqbench.models.cards import verify_model_dir
from vqbench.models.vq_card import MODELS_DIR_ENV, load_vq_card, resolve_model_folder, verify_model_folder

OTHER_VQ_MODEL = "vq-g14-k256-aug"


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ----- every folder and every file -----------------------------------------------------------


@pytest.fixture()
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A models folder of four models: one intact, two with damaged files and one renamed."""
    root = tmp_path / "models"
    copy_model(EMBED_MODEL, root / EMBED_MODEL)
    damaged = copy_model(VQ_MODEL, root / VQ_MODEL)
    flip_byte(damaged / "student.onnx")
    flip_byte(damaged / "decoder.onnx")
    resized = copy_model(OTHER_VQ_MODEL, root / OTHER_VQ_MODEL)
    card = read_card(resized)
    card["files"]["edge_encoder.onnx"]["bytes"] += 1
    write_card(resized, card)
    copy_model("vq-g28-k256", root / "vq-g28-renamed")
    monkeypatch.setenv(MODELS_DIR_ENV, str(root))
    return root


def test_verify_lists_every_broken_folder(models_dir: Path) -> None:
    result = cli.invoke(app, ["models", "verify", "--images", "1"])
    output = one_line(result.output)
    assert result.exit_code == 2, result.output
    assert str(models_dir / VQ_MODEL / "student.onnx") in output
    assert str(models_dir / VQ_MODEL / "decoder.onnx") in output
    assert str(models_dir / OTHER_VQ_MODEL / "edge_encoder.onnx") in output
    assert "model folder " + str(models_dir / "vq-g28-renamed") + " is named 'vq-g28-renamed'" in output
    assert f"{models_dir / EMBED_MODEL} does not match" not in output
    assert f"3 of 4 model folders under {models_dir} do not match their cards" in output


def test_verify_skips_port_after_failure(models_dir: Path) -> None:
    result = cli.invoke(app, ["models", "verify", "--images", "1"])
    assert "the teacher port was not checked" in one_line(result.output)
    assert "port vs dlib" not in result.output


def test_verify_folder_lists_each_file(tmp_path: Path) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    flip_byte(folder / "student.onnx")
    flip_byte(folder / "decoder.onnx")
    files, problems = verify_model_folder(folder)
    assert files == len(read_card(folder)["files"])
    assert len(problems) == 2
    assert any("student.onnx has SHA-256" in problem for problem in problems)
    assert any("decoder.onnx has SHA-256" in problem for problem in problems)


def test_verify_folder_intact_has_no_problems(tmp_path: Path) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    assert verify_model_folder(folder) == (len(read_card(folder)["files"]), [])


def test_load_names_count_of_other_problems(tmp_path: Path) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    flip_byte(folder / "student.onnx")
    flip_byte(folder / "decoder.onnx")
    with pytest.raises(ModelError) as caught:
        load_vq_card(folder)
    assert f"(and 1 more; `vqbench models verify {folder}` lists them all)" in str(caught.value)


# ----- file sizes ----------------------------------------------------------------------------


def test_verify_rejects_wrong_bytes(tmp_path: Path) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    card = read_card(folder)
    size = card["files"]["student.onnx"]["bytes"]
    card["files"]["student.onnx"]["bytes"] = size + 1
    write_card(folder, card)
    _, problems = verify_model_folder(folder)
    assert problems == [f"model file {folder / 'student.onnx'} is {size} bytes, but {folder / 'card.json'} lists "
                        f"{size + 1} bytes; restore the file or the card from the repository, or retrain"]


def test_cli_verify_rejects_wrong_bytes(tmp_path: Path) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    card = read_card(folder)
    card["files"]["student.onnx"]["bytes"] = 7
    write_card(folder, card)
    result = cli.invoke(app, ["models", "verify", str(folder), "--images", "1"])
    assert result.exit_code == 2, result.output
    assert "but " + str(folder / "card.json") + " lists 7 bytes" in one_line(result.output)


@pytest.mark.parametrize(("value", "expected"), [("123", "a string"), (True, "a boolean"), (1.5, "a number")])
def test_verify_rejects_bytes_of_wrong_type(tmp_path: Path, value: object, expected: str) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    card = read_card(folder)
    card["files"]["student.onnx"]["bytes"] = value
    write_card(folder, card)
    _, problems = verify_model_folder(folder)
    assert len(problems) == 1
    assert f"has files['student.onnx'].bytes as {expected}, expected an integer" in problems[0]


def test_verify_rejects_missing_bytes(tmp_path: Path) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    card = read_card(folder)
    del card["files"]["student.onnx"]["bytes"]
    write_card(folder, card)
    _, problems = verify_model_folder(folder)
    assert len(problems) == 1
    assert "is missing the field 'bytes' of files['student.onnx']" in problems[0]


def test_verify_model_dir_rejects_wrong_bytes(tmp_path: Path) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    card = read_card(folder)
    size = card["files"]["student.onnx"]["bytes"]
    card["files"]["student.onnx"]["bytes"] = size - 1
    write_card(folder, card)
    with pytest.raises(ModelError, match=rf"student.onnx does not match its card: {size} bytes, expected {size - 1}"):
        verify_model_dir(folder)


# ----- folder name against model_id ----------------------------------------------------------


@pytest.fixture()
def renamed_in_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = copy_model(VQ_MODEL, tmp_path / "models" / "vq-renamed")
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "models"))
    return folder


def test_load_rejects_renamed_folder(renamed_in_models_dir: Path) -> None:
    with pytest.raises(ModelError) as caught:
        load_vq_card(resolve_model_folder("vq-renamed"))
    message = str(caught.value)
    assert "is named 'vq-renamed'" in message
    assert f"has model_id '{VQ_MODEL}'" in message
    assert f"rename the folder to '{VQ_MODEL}'" in message


def test_load_rejects_renamed_folder_by_path(renamed_in_models_dir: Path) -> None:
    with pytest.raises(ModelError, match="is named 'vq-renamed'"):
        load_vq_card(renamed_in_models_dir)


def test_verify_reports_renamed_folder(renamed_in_models_dir: Path) -> None:
    _, problems = verify_model_folder(renamed_in_models_dir)
    assert len(problems) == 1
    assert f"is named 'vq-renamed', but its card {renamed_in_models_dir / 'card.json'} has model_id '{VQ_MODEL}'" in problems[0]


def test_copy_outside_models_dir_keeps_card_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A training output_dir or a renamed copy elsewhere is not looked up by name.
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "models"))
    folder = copy_model(VQ_MODEL, tmp_path / "experiments" / "my-copy")
    assert load_vq_card(folder).model_id == VQ_MODEL


# ----- missing and invalid card fields -------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("payload",), "is missing the field 'payload'"),
        (("kind",), "is missing the field 'kind'"),
        (("model_id",), "is missing the field 'model_id'"),
        (("training", "train_folds"), "is missing the field 'training.train_folds'"),
        (("architecture", "vq"), "is missing the field 'architecture.vq'"),
        (("architecture", "vq", "grid"), "is missing the field 'architecture.vq.grid'"),
        (("files",), "is missing the field 'files'"),
        (("files", "student.onnx", "sha256"), "is missing the field 'sha256' of files['student.onnx']"),
    ],
)
def test_missing_field_named_plainly(tmp_path: Path, path: tuple[str, ...], expected: str) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    card = read_card(folder)
    parent = card
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    write_card(folder, card)
    with pytest.raises(ModelError) as caught:
        load_vq_card(folder)
    message = str(caught.value)
    assert expected in message
    assert "KeyError" not in message


def test_field_of_wrong_type_named(tmp_path: Path) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    card = read_card(folder)
    card["payload"] = [1, 2]
    write_card(folder, card)
    with pytest.raises(ModelError, match="has the field 'payload' as a list, expected an object"):
        load_vq_card(folder)


def test_cli_verify_names_missing_field(tmp_path: Path) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    card = read_card(folder)
    del card["payload"]
    write_card(folder, card)
    result = cli.invoke(app, ["models", "verify", str(folder), "--images", "1"])
    assert result.exit_code == 2, result.output
    assert f"model card {folder / 'card.json'} is missing the field 'payload'" in one_line(result.output)


# ----- graphs the card names ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda card, folder: card["onnx"].update(decoder=str(folder.parent / "elsewhere.onnx")),
         "names the decoder graph '/.*elsewhere.onnx', which is not a plain file name"),
        (lambda card, folder: card["onnx"].update(decoder="../other/decoder.onnx"),
         "names the decoder graph '../other/decoder.onnx', which is not a plain file name"),
        (lambda card, folder: card["files"].pop("student.onnx"),
         "names the student graph 'student.onnx', but its files list does not"),
        (lambda card, folder: card.update(files={}),
         "names the edge_encoder graph 'edge_encoder.onnx', but its files list does not"),
    ],
    ids=["absolute path", "parent folder", "graph not listed", "no files"],
)
def test_card_graph_outside_files_rejected(tmp_path, edit, message):
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    card = read_card(folder)
    edit(card, folder)
    write_card(folder, card)
    with pytest.raises(ModelError, match=message):
        load_vq_card(folder)
    _, problems = verify_model_folder(folder)
    assert any(re.search(message, problem) for problem in problems)


def test_verify_missing_folder_named(tmp_path):
    result = cli.invoke(app, ["models", "verify", str(tmp_path / "absent")])
    assert result.exit_code == 2
    assert "not found" in one_line(result.output)
    assert "does not match" not in result.output


def test_invalid_card_sha256_named(tmp_path):
    folder = copy_model(VQ_MODEL, tmp_path / VQ_MODEL)
    card = read_card(folder)
    card["files"]["decoder.onnx"]["sha256"] = "zz"
    write_card(folder, card)
    _, problems = verify_model_folder(folder)
    assert any("'zz', which is not a SHA-256" in problem for problem in problems)
