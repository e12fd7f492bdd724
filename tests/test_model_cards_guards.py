"""Guards around model cards: fields checked against each other, the model kind a pipeline
runs, failed variants in results.json, `models verify` and `models evaluate` card keys."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vqbench.cli import app
from vqbench.errors import ModelError, RunError, ScenarioError
from vqbench.models.vq_card import check_index_graphs, load_vq_card, sha256_of
from vqbench.pipelines.base import Components
from vqbench.pipelines.edge_vq import EdgeEmbedPipeline, EdgeVQReconPipeline, EdgeVQStudentPipeline
from vqbench.scenario import AlignmentConfig, Scenario, TeacherConfig
from vqbench.training.evaluate import metrics_key

MODELS = Path(__file__).resolve().parents[1] / "models"
VQ_MODEL = "vq-g10-k256-aug"
EMBED_MODEL = "edge-embed-s"

cli = CliRunner()


def copy_model(name: str, destination: Path) -> Path:
    shutil.copytree(MODELS / name, destination)
    return destination


def read_card(folder: Path) -> dict:
    return json.loads((folder / "card.json").read_text(encoding="utf-8"))


def write_card(folder: Path, card: dict) -> None:
    (folder / "card.json").write_text(json.dumps(card), encoding="utf-8")


def one_line(text: str) -> str:
    """Join the lines that rich wraps at the terminal width."""
    return " ".join(text.split())


@pytest.fixture()
def vq_copy(tmp_path: Path) -> Path:
    return copy_model(VQ_MODEL, tmp_path / VQ_MODEL)


# ----- payload block against architecture block ----------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("codebook_size", 512, "256"),
        ("bits_per_index", 9, "8"),
        ("grid", [11, 11], "[10, 10]"),
    ],
)
def test_payload_must_match_architecture(vq_copy: Path, key: str, value: object, expected: str) -> None:
    card = read_card(vq_copy)
    card["payload"][key] = value
    write_card(vq_copy, card)
    with pytest.raises(ModelError) as caught:
        load_vq_card(vq_copy)
    message = str(caught.value)
    assert f"payload.{key} {value!r}" in message
    assert f"architecture.vq gives {expected}" in message


def test_tampered_payload_pair_rejected(vq_copy: Path) -> None:
    # codebook_size and bits_per_index changed together agree with each other, but not with the architecture.
    card = read_card(vq_copy)
    card["payload"]["codebook_size"] = 512
    card["payload"]["bits_per_index"] = 9
    write_card(vq_copy, card)
    with pytest.raises(ModelError, match="payload.codebook_size 512"):
        load_vq_card(vq_copy)


def test_unknown_card_kind_rejected(vq_copy: Path) -> None:
    card = read_card(vq_copy)
    card["kind"] = "vq2"
    write_card(vq_copy, card)
    with pytest.raises(ModelError, match="kind 'vq2', expected one of"):
        load_vq_card(vq_copy)


# ----- people file without its files entry ---------------------------------------------------


def drop_people_entry(folder: Path) -> None:
    card = read_card(folder)
    del card["files"]["training_people.txt"]
    write_card(folder, card)


def test_people_file_intact_without_entry_loads(vq_copy: Path) -> None:
    drop_people_entry(vq_copy)
    card = load_vq_card(vq_copy)
    assert len(card.training_people) == read_card(vq_copy)["training"]["people"]


def test_emptied_people_file_without_entry_rejected(vq_copy: Path) -> None:
    drop_people_entry(vq_copy)
    (vq_copy / "training_people.txt").write_text("", encoding="utf-8")
    with pytest.raises(ModelError, match="lists 0 people, but training.people .* is 3554"):
        load_vq_card(vq_copy)


def test_swapped_person_without_entry_rejected(vq_copy: Path) -> None:
    drop_people_entry(vq_copy)
    people = (vq_copy / "training_people.txt").read_text(encoding="utf-8").splitlines()
    people[0] = "Someone_Else"
    (vq_copy / "training_people.txt").write_text("".join(f"{name}\n" for name in people), encoding="utf-8")
    with pytest.raises(ModelError, match="training.people_sha256"):
        load_vq_card(vq_copy)


def test_missing_people_file_rejected(vq_copy: Path) -> None:
    drop_people_entry(vq_copy)
    (vq_copy / "training_people.txt").unlink()
    with pytest.raises(ModelError, match="cannot be read .* fold guard"):
        load_vq_card(vq_copy)


def test_people_file_not_utf8_rejected(vq_copy: Path) -> None:
    drop_people_entry(vq_copy)
    (vq_copy / "training_people.txt").write_bytes(b"Jane\xff_Doe\n")
    with pytest.raises(ModelError, match="cannot be read .it is not UTF-8 text."):
        load_vq_card(vq_copy)


# ----- the model kind a pipeline runs --------------------------------------------------------


def components() -> Components:
    return Components(AlignmentConfig(), TeacherConfig())


@pytest.mark.parametrize("pipeline", [EdgeVQStudentPipeline, EdgeVQReconPipeline])
def test_vq_pipeline_rejects_embed_model(pipeline: type) -> None:
    with pytest.raises(ScenarioError, match=f"{EMBED_MODEL} is an edge-embed model, .* use kind: edge-embed for it"):
        pipeline(components(), EMBED_MODEL)


def test_embed_pipeline_rejects_vq_model() -> None:
    with pytest.raises(ScenarioError, match=f"{VQ_MODEL} is a VQ-VAE model, .* use kind: edge-vq-student or edge-vq-recon"):
        EdgeEmbedPipeline(components(), VQ_MODEL)


def scenario_with(sample_lfw: Path, pipelines: list[dict]) -> Scenario:
    return Scenario.model_validate({
        "name": "guards",
        "dataset": {"kind": "lfw", "root": str(sample_lfw), "folds": [9, 10], "max_pairs": 12},
        "pipelines": pipelines,
        "measurement": {"latency_samples": 5, "warmup": 1, "repeats": 2, "min_window_s": 0.2, "idle_s": 0.2,
                        "memory": False},
        "meters": {"host": []},
        "outputs": {"html": False, "pdf": False},
    })


def test_run_rejects_model_kind_before_any_work(sample_lfw: Path, tmp_path: Path) -> None:
    from vqbench.runner import run_scenario

    scenario = scenario_with(sample_lfw, [{"kind": "edge-embed", "model": VQ_MODEL}])
    out_dir = tmp_path / "out"
    with pytest.raises(ScenarioError, match="use kind: edge-vq-student"):
        run_scenario(scenario, tmp_path / "s.yaml", out_dir)
    assert not out_dir.exists()


def test_cli_run_model_kind_exits_2(tmp_path: Path, sample_lfw: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        f"name: s\ndataset: {{root: {sample_lfw}, folds: [9, 10]}}\n"
        f"pipelines: [{{kind: edge-vq-student, model: {EMBED_MODEL}}}]\n",
        encoding="utf-8",
    )
    result = cli.invoke(app, ["run", str(scenario), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"{EMBED_MODEL} is an edge-embed model" in one_line(result.output)
    assert "grid (0, 0)" not in result.output


# ----- failed variants in results.json -------------------------------------------------------


def fail_variants(monkeypatch: pytest.MonkeyPatch, failing: set[str]) -> None:
    from vqbench import runner

    measure = runner._run_variant

    def run_or_fail(pipeline, *args, **kwargs):
        if pipeline.variant in failing:
            raise RunError(f"{pipeline.variant} failed on purpose")
        return measure(pipeline, *args, **kwargs)

    monkeypatch.setattr(runner, "_run_variant", run_or_fail)


@pytest.mark.slow
def test_failed_variant_marks_run_incomplete(sample_lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqbench.runner import run_scenario

    fail_variants(monkeypatch, {"jpeg-q50"})
    scenario = scenario_with(sample_lfw, [{"kind": "cloud-codec", "codec": "jpeg", "qualities": [30, 50]}])
    outcome = run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["variant"] for row in results["rows"]] == ["jpeg-q30"]
    assert results["complete"] is False
    assert results["variants_failed"] == ["cloud-codec/jpeg-q50"]
    assert results["variants_missing"] == ["cloud-codec/jpeg-q50"]
    assert outcome.failures == ["cloud-codec/jpeg-q50: jpeg-q50 failed on purpose"]


@pytest.mark.slow
def test_all_variants_failed_is_incomplete(sample_lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqbench.runner import run_scenario

    fail_variants(monkeypatch, {"jpeg-q30", "jpeg-q50"})
    scenario = scenario_with(sample_lfw, [{"kind": "cloud-codec", "codec": "jpeg", "qualities": [30, 50]}])
    with pytest.raises(RunError, match="every pipeline variant failed"):
        run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["rows"] == []
    assert results["complete"] is False
    assert results["variants_failed"] == ["cloud-codec/jpeg-q30", "cloud-codec/jpeg-q50"]


# ----- vqbench models verify -----------------------------------------------------------------


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_honours_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / "models" / VQ_MODEL)
    flip_byte(folder / "student.onnx")
    monkeypatch.setenv("VQBENCH_MODELS_DIR", str(tmp_path / "models"))
    result = cli.invoke(app, ["models", "verify", "--images", "1"])
    assert result.exit_code == 2, result.output
    assert str(folder / "student.onnx") in one_line(result.output)


def test_verify_missing_models_dir_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQBENCH_MODELS_DIR", str(tmp_path / "absent"))
    result = cli.invoke(app, ["models", "verify", "--images", "1"])
    assert result.exit_code == 2, result.output
    assert "does not exist or is not a folder" in one_line(result.output)


def test_verify_checks_folder_argument(tmp_path: Path) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / "elsewhere")
    card = read_card(folder)
    card["payload"]["codebook_size"] = 512
    write_card(folder, card)
    result = cli.invoke(app, ["models", "verify", str(folder), "--images", "1"])
    assert result.exit_code == 2, result.output
    assert "payload.codebook_size 512" in one_line(result.output)


@pytest.mark.slow
def test_verify_good_folder_argument_passes(tmp_path: Path, sample_lfw: Path) -> None:
    folder = copy_model(EMBED_MODEL, tmp_path / "elsewhere")
    result = cli.invoke(app, ["models", "verify", str(folder), "--images", "2", "--lfw-root", str(sample_lfw)])
    assert result.exit_code == 0, result.output
    files = len(read_card(folder)["files"])
    assert f"{files} files of 1 model folder {folder} match their cards" in one_line(result.output)


# ----- vqbench models evaluate: card keys and title -------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "folds", "choices", "held_out", "expected"),
    [
        ("LFW View 2", [6, 7, 8, 9, 10], [6, 7, 8, 9, 10], True, "lfw_view2"),
        ("LFW View 2", [9, 10], [6, 7, 8, 9, 10], True, "lfw_view2_folds_9_10"),
        ("LFW View 2", [10, 6], [6, 7, 8, 9, 10], True, "lfw_view2_folds_6_10"),
        ("LFW View 2", [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], False, "lfw_view2_training_fit"),
        ("LFW View 2", [1, 2], [1, 2, 3, 4, 5], False, "lfw_view2_training_fit_folds_1_2"),
        ("LFW View 2 sample of folds [9, 10]", [9, 10], [9, 10], True, "lfw_view2_sample"),
        ("LFW View 2 sample of folds [8, 9, 10]", [9, 10], [8, 9, 10], True, "lfw_view2_sample_folds_9_10"),
        ("LFW View 2 sample of folds [9, 10]", [9, 10], [9, 10], False, "lfw_view2_sample_training_fit"),
    ],
)
def test_metrics_key_names_subset(dataset: str, folds: list[int], choices: list[int], held_out: bool, expected: str) -> None:
    assert metrics_key(dataset, folds, choices, held_out) == expected


def ten_fold_copy(sample_lfw: Path, destination: Path, per_fold: int = 3) -> Path:
    """Lay the sample's pairs out as a 10-fold pairs.txt without the sample manifest, so it reads as full View 2."""
    lines = (sample_lfw / "pairs.txt").read_text(encoding="utf-8").splitlines()[1:]
    matched = [line for line in lines if len(line.split()) == 3]
    mismatched = [line for line in lines if len(line.split()) == 4]
    body = [f"10\t{per_fold}"]
    for fold in range(10):
        body += matched[fold * per_fold : (fold + 1) * per_fold]
        body += mismatched[fold * per_fold : (fold + 1) * per_fold]
    destination.mkdir(parents=True)
    (destination / "pairs.txt").write_text("\n".join(body) + "\n", encoding="utf-8")
    (destination / "lfw-deepfunneled").symlink_to(sample_lfw / "lfw-deepfunneled")
    return destination


@pytest.mark.slow
def test_evaluate_subset_keeps_full_record(sample_lfw: Path, tmp_path: Path) -> None:
    folder = copy_model(VQ_MODEL, tmp_path / "renamed-copy")
    before = read_card(folder)["metrics"]["lfw_view2"]
    assert before["folds"] == [6, 7, 8, 9, 10]
    lfw = ten_fold_copy(sample_lfw, tmp_path / "lfw")

    result = cli.invoke(app, ["models", "evaluate", str(folder), "--fold", "9", "--fold", "10", "--lfw-root", str(lfw)])
    assert result.exit_code == 0, result.output

    recorded = read_card(folder)["metrics"]
    assert recorded["lfw_view2"] == before
    assert recorded["lfw_view2_folds_9_10"]["folds"] == [9, 10]
    assert recorded["lfw_view2_folds_9_10"]["pairs"] == 12
    output = one_line(result.output)
    assert f"{VQ_MODEL} on folds [9, 10]" in output
    assert "renamed-copy on folds" not in output
    assert "under metrics.lfw_view2_folds_9_10" in output
    load_vq_card(folder)


# ----- graphs that read the indices against the payload block --------------------------------


def swap_file(folder: Path, name: str, source: Path) -> None:
    """Replace a model file and update its SHA-256 in the card, so only the graph check can notice."""
    shutil.copyfile(source, folder / name)
    card = read_card(folder)
    card["files"][name]["sha256"] = sha256_of(folder / name)
    write_card(folder, card)


@pytest.mark.parametrize("name", ["student.onnx", "decoder.onnx"])
def test_graph_of_other_grid_rejected(vq_copy: Path, name: str) -> None:
    swap_file(vq_copy, name, MODELS / "vq-g14-k256-aug" / name)
    card = load_vq_card(vq_copy)  # the edge half's checks pass; the graphs are the cloud half's
    with pytest.raises(ModelError) as caught:
        check_index_graphs(card)
    message = one_line(str(caught.value))
    assert f"{name} takes indices of shape ['?', 14, 14]" in message
    assert "payload.grid" in message
    assert "[10, 10]" in message


def test_graph_of_other_codebook_rejected(vq_copy: Path) -> None:
    # The card and the graphs agree on a 9x9 grid, but the graphs look up 1,024 codes where the
    # card's payload sends 8-bit indices.
    card = read_card(vq_copy)
    card["payload"]["grid"] = [9, 9]
    card["architecture"]["vq"]["grid"] = 9
    write_card(vq_copy, card)
    for name in ("student.onnx", "decoder.onnx"):
        swap_file(vq_copy, name, MODELS / "vq-g9-k1024-long" / name)
    with pytest.raises(ModelError, match=r"codebook of 1024 rows, but the payload.codebook_size .* is 256"):
        check_index_graphs(load_vq_card(vq_copy))


def test_corrupt_graph_rejected(vq_copy: Path) -> None:
    student = vq_copy / "student.onnx"
    student.write_bytes(student.read_bytes()[:5000])
    card = read_card(vq_copy)
    card["files"]["student.onnx"]["sha256"] = sha256_of(student)
    write_card(vq_copy, card)
    with pytest.raises(ModelError, match="cannot read ONNX graph .*student.onnx"):
        check_index_graphs(load_vq_card(vq_copy))


def test_student_pipeline_checks_graph_before_opening_it(vq_copy: Path) -> None:
    swap_file(vq_copy, "student.onnx", MODELS / "vq-g14-k256-aug" / "student.onnx")
    pipeline = EdgeVQStudentPipeline(components(), str(vq_copy))
    with pytest.raises(ModelError, match=r"takes indices of shape \['\?', 14, 14\]"):
        pipeline.cloud([b""])


def test_verify_checks_index_graphs(vq_copy: Path) -> None:
    swap_file(vq_copy, "decoder.onnx", MODELS / "vq-g14-k256-aug" / "decoder.onnx")
    result = cli.invoke(app, ["models", "verify", str(vq_copy)])
    assert result.exit_code == 2
    assert "decoder.onnx takes indices" in one_line(result.output)


def test_student_and_decoder_swapped_rejected(vq_copy: Path) -> None:
    student, decoder = (vq_copy / "student.onnx").read_bytes(), (vq_copy / "decoder.onnx").read_bytes()
    (vq_copy / "student.onnx").write_bytes(decoder)
    (vq_copy / "decoder.onnx").write_bytes(student)
    card = read_card(vq_copy)
    for name in ("student.onnx", "decoder.onnx"):
        card["files"][name]["sha256"] = sha256_of(vq_copy / name)
    write_card(vq_copy, card)
    with pytest.raises(ModelError) as caught:
        check_index_graphs(load_vq_card(vq_copy))
    message = one_line(str(caught.value))
    assert "student.onnx, the model's student, returns shape ['?', '?', '?', '?']" in message
    assert "a student returns ['?', 128]" in message
    assert "swapped" in message


def test_evaluate_checks_graphs_before_scoring(vq_copy: Path, tmp_path: Path) -> None:
    swap_file(vq_copy, "student.onnx", MODELS / "vq-g14-k256-aug" / "student.onnx")
    before = (vq_copy / "card.json").read_bytes()
    result = cli.invoke(app, ["models", "evaluate", str(vq_copy), "--lfw-root", str(tmp_path / "no-data")])
    assert result.exit_code == 2
    assert "student.onnx takes indices of shape" in one_line(result.output)
    assert (vq_copy / "card.json").read_bytes() == before


def test_edge_half_does_not_import_onnx() -> None:
    # The graph check needs the onnx package; the edge half's peak RSS must not pay for it.
    code = (
        "import sys; from vqbench.pipelines.base import Components; "
        "from vqbench.scenario import AlignmentConfig, TeacherConfig; "
        "from vqbench.pipelines.edge_vq import EdgeVQStudentPipeline; "
        f"EdgeVQStudentPipeline(Components(AlignmentConfig(), TeacherConfig()), {VQ_MODEL!r}); "
        "print('onnx' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"
