"""A tiny training run on real chips of the bundled LFW sample: export, card, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from vqbench.cli import app
from vqbench.data.pairs import read_lfw_pairs
from vqbench.errors import ModelError, ScenarioError
from vqbench.models.cards import verify_model_dir
from vqbench.models.teacher_torch import load_torch_teacher
from vqbench.models.vq_card import allowed_folds, load_vq_card
from vqbench.training import train_command
from vqbench.training.config import TrainConfig, load_train_config, portable_settings
from vqbench.training.data import prepare_training_set, select_training_people, training_image_paths
from vqbench.training.loop import Trainer, build_models, config_fingerprint
from vqbench.pipelines.base import Components
from vqbench.pipelines.edge_vq import EdgeEmbedPipeline, EdgeVQReconPipeline, EdgeVQStudentPipeline
from vqbench.scenario import AlignmentConfig, TeacherConfig

SAMPLE_ROOT = Path(__file__).resolve().parents[1] / "data" / "lfw-sample"

pytestmark = pytest.mark.slow


def tiny_config(tmp_path: Path) -> dict:
    return {
        "model_id": "smoke",
        "threads": 1,
        "output_dir": str(tmp_path / "model"),
        "data": {"root": str(SAMPLE_ROOT), "train_folds": [9], "max_images": 8, "cache_dir": str(tmp_path / "cache")},
        "vq": {"input_size_px": 32, "widths": [8, 16], "extra_blocks": 1, "grid": 8, "codebook_size": 16, "code_dim": 8, "decoder_widths": [16, 8]},
        "student": {"width": 8, "blocks": 2},
        "stages": {"joint_epochs": 1, "identity_epochs": 0.5, "batch_size": 4, "checkpoint_every_steps": 1},
    }


def prepare_chip(tmp_path: Path) -> np.ndarray:
    people = select_training_people(SAMPLE_ROOT, [9])
    return prepare_training_set(training_image_paths(SAMPLE_ROOT, people.people)[:8], tmp_path / "cache").chips[0]


def held_out_root(tmp_path: Path) -> Path:
    """An LFW folder whose three folds hold the sample's fold-10 pairs (people unseen by fold-9 training)."""
    return three_fold_root(tmp_path / "held-out", sample_fold=10)


def three_fold_root(root: Path, sample_fold: int) -> Path:
    """An LFW folder whose three folds split the 150 pairs of one of the sample's folds."""
    lines = (SAMPLE_ROOT / "pairs.txt").read_text().splitlines()[1:]
    chosen = lines[150:] if sample_fold == 10 else lines[:150]
    matched, mismatched = chosen[:75], chosen[75:]
    root.mkdir()
    (root / "lfw-deepfunneled").symlink_to(SAMPLE_ROOT / "lfw-deepfunneled")
    body = [line for fold in range(3) for line in matched[25 * fold : 25 * fold + 25] + mismatched[25 * fold : 25 * fold + 25]]
    (root / "pairs.txt").write_text("\n".join(["3\t25", *body]) + "\n")
    (root / "vqbench-sample.json").write_text(json.dumps({"fold_numbers": [8, 9, 10]}))
    return root


def write_config(tmp_path: Path, config: dict) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def train_base_model(tmp_path: Path) -> Path:
    """Train the tiny config without stage identity in ``tmp_path/base`` and return its model folder."""
    config = tiny_config(tmp_path / "base")
    config["stages"]["identity_epochs"] = 0.0
    return train_command(write_config(tmp_path / "base", config))


def test_train_command_writes_verified_model(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["augment"] = {"extra_views": 1}
    folder = train_command(write_config(tmp_path, raw))

    card = load_vq_card(folder)
    assert card.model_id == "smoke"
    assert card.grid == (8, 8)
    assert card.train_folds == (9,)
    pairs = read_lfw_pairs(SAMPLE_ROOT / "pairs.txt", SAMPLE_ROOT / "lfw-deepfunneled", fold_numbers=[9, 10])
    assert allowed_folds(card, pairs) == [10]
    data = json.loads((folder / "card.json").read_text())
    assert data["payload"]["max_payload_bytes"] == 6 + 8 * 8 * 4 // 8
    assert [record["stage"] for record in data["training"]["history"]] == ["joint", "identity"]
    assert set(data["onnx"]) == {"edge_encoder", "edge_encoder_int8", "decoder", "student"}
    assert data["footprint"]["edge_encoder"]["macs"] > 0

    # The pipelines run the exported graphs on a real chip.
    chip = prepare_chip(tmp_path)
    components = Components(AlignmentConfig(), TeacherConfig())
    student = EdgeVQStudentPipeline(components, str(folder))
    payload = student.edge_from_chip(chip)
    assert len(payload) <= 6 + 32
    assert student.cloud([payload, payload]).shape == (2, 128)
    assert student.training_people == card.training_people
    assert student.info().extra_columns == {"codebook_size": 16, "code_grid": "8x8"}
    recon = EdgeVQReconPipeline(components, str(folder))
    assert recon.reconstruct([payload]).shape == (1, 150, 150, 3)
    edge, cloud = recon.footprint()
    assert edge.macs == data["footprint"]["edge_encoder"]["macs"]
    assert cloud.macs == data["footprint"]["decoder"]["macs"] + data["footprint"]["teacher"]["macs"]

    assert verify_model_dir(folder) == len(data["files"])

    # `vqbench models evaluate` scores the allowed folds and records the figures in the card.
    held_out = held_out_root(tmp_path)
    result = CliRunner().invoke(app, ["models", "evaluate", str(folder), "--lfw-root", str(held_out)], env={"VQBENCH_CACHE_DIR": str(tmp_path / "cache")})
    assert result.exit_code == 0, result.output
    assert "recon_teacher" in result.output
    recorded = json.loads((folder / "card.json").read_text())["metrics"]
    assert "lfw_view2" not in recorded
    metrics = recorded["lfw_view2_sample"]
    assert metrics["folds"] == [8, 9, 10]
    assert metrics["pairs"] == 150
    assert metrics["dataset"] == "LFW View 2 sample of folds [8, 9, 10]"
    assert metrics["alignment"]["face_choice"] == "center"
    assert metrics["alignment"]["upsample"] == 0
    assert metrics["edge_encoder"]["load_average_1min"] >= 0.0
    assert data["training"]["config"]["augment"]["extra_views"] == 1
    assert "root" not in data["training"]["config"]["data"]
    assert 0.0 <= metrics["edge_encoder"]["student"]["accuracy_mean"] <= 1.0
    assert metrics["edge_encoder"]["payload_bytes_max"] <= 6 + 32
    assert verify_model_dir(folder) == len(data["files"])
    rejected = CliRunner().invoke(app, ["models", "evaluate", str(folder), "--lfw-root", str(SAMPLE_ROOT), "--fold", "9"])
    assert rejected.exit_code == 2, rejected.output
    assert "allowed folds: [10]" in rejected.output
    single = CliRunner().invoke(app, ["models", "evaluate", str(folder), "--lfw-root", str(held_out), "--fold", "9", "--fold", "9"])
    assert single.exit_code == 2, single.output
    assert "pass two or more --fold options" in single.output
    unknown = CliRunner().invoke(app, ["models", "evaluate", str(folder), "--lfw-root", str(held_out), "--fold", "4"])
    assert unknown.exit_code == 2, unknown.output
    assert "folds [4] are not in" in unknown.output

    # A training-fit check scores the training people's folds, under a key of its own.
    seen = three_fold_root(tmp_path / "seen", sample_fold=9)
    fit = CliRunner().invoke(app, ["models", "evaluate", str(folder), "--lfw-root", str(seen), "--training-fit"], env={"VQBENCH_CACHE_DIR": str(tmp_path / "cache")})
    assert fit.exit_code == 0, fit.output
    assert "not held-out accuracy" in fit.output
    recorded = json.loads((folder / "card.json").read_text())["metrics"]
    assert recorded["lfw_view2_sample"] == metrics
    assert recorded["lfw_view2_sample_training_fit"]["held_out"] is False
    assert recorded["lfw_view2_sample_training_fit"]["pairs"] == 150
    no_training_people = CliRunner().invoke(app, ["models", "evaluate", str(folder), "--lfw-root", str(held_out), "--training-fit"])
    assert no_training_people.exit_code == 2, no_training_people.output
    assert "no fold of" in no_training_people.output
    assert "drop --training-fit" in no_training_people.output

    # A changed file no longer matches the card.
    (folder / "student.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="student.onnx has SHA-256"):
        load_vq_card(folder)


class InterruptedTrainer(Trainer):
    """A trainer that stops (as if killed) after a number of steps."""

    def __init__(self, *args: object, stop_after_steps: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.steps_left = stop_after_steps

    def _train_step(self, stage: str, rows: np.ndarray) -> tuple[dict[str, float], torch.Tensor]:
        if self.steps_left == 0:
            raise KeyboardInterrupt
        self.steps_left -= 1
        return super()._train_step(stage, rows)


def _trainer(config: TrainConfig, data: object, checkpoint: Path, stop_after_steps: int | None = None) -> Trainer:
    torch.manual_seed(config.seed)
    models = build_models(config, load_torch_teacher())
    if stop_after_steps is None:
        return Trainer(config, data, models, checkpoint)
    return InterruptedTrainer(config, data, models, checkpoint, stop_after_steps=stop_after_steps)


def test_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    raw = tiny_config(tmp_path)
    raw["stages"]["identity_epochs"] = 0.0
    config = TrainConfig.model_validate(raw)
    people = select_training_people(SAMPLE_ROOT, [9])
    data = prepare_training_set(training_image_paths(SAMPLE_ROOT, people.people)[:8], tmp_path / "cache")

    straight = _trainer(config, data, tmp_path / "a.pt")
    straight.run()

    with pytest.raises(KeyboardInterrupt):
        _trainer(config, data, tmp_path / "b.pt", stop_after_steps=1).run()
    resumed = _trainer(config, data, tmp_path / "b.pt")
    resumed.run()

    assert resumed.progress.history[-1]["epoch"] == 1
    for name, value in straight.models.vqvae.state_dict().items():
        assert torch.allclose(value.float(), resumed.models.vqvae.state_dict()[name].float(), atol=1e-5), name


def test_codes_without_reconstruction_leave_decoder_to_stage_identity(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    raw = tiny_config(tmp_path)
    raw["loss"] = {"reconstruction_fraction": 0.0}
    config = TrainConfig.model_validate(raw)
    people = select_training_people(SAMPLE_ROOT, [9])
    data = prepare_training_set(training_image_paths(SAMPLE_ROOT, people.people)[:8], tmp_path / "cache")
    trainer = _trainer(config, data, tmp_path / "a.pt")
    initial_decoder = {name: value.clone() for name, value in trainer.models.vqvae.decoder.state_dict().items()}
    initial_encoder = {name: value.clone() for name, value in trainer.models.vqvae.encoder.state_dict().items()}

    trainer._resume()
    trainer._run_epoch("joint", 0.0)
    joint = trainer.progress.history[-1]
    assert "recon" not in joint
    assert "cos" in joint
    decoder = trainer.models.vqvae.decoder.state_dict()
    assert all(torch.equal(decoder[name], value) for name, value in initial_decoder.items() if value.is_floating_point())
    encoder = trainer.models.vqvae.encoder.state_dict()
    assert any(not torch.equal(encoder[name], value) for name, value in initial_encoder.items() if value.is_floating_point())

    trainer._enter_stage("identity")
    trainer._run_epoch("identity", 0.0)
    assert "recon" in trainer.progress.history[-1]
    decoder = trainer.models.vqvae.decoder.state_dict()
    assert any(not torch.equal(decoder[name], value) for name, value in initial_decoder.items() if value.is_floating_point())


@pytest.mark.parametrize(
    "trains_encoder, updates_codebook",
    [(False, False), (True, False), (True, True)],
    ids=["decoder-only", "with-encoder", "with-encoder-and-codebook"],
)
def test_identity_stage_encoder_option(tmp_path: Path, trains_encoder: bool, updates_codebook: bool) -> None:
    torch.set_num_threads(1)
    raw = tiny_config(tmp_path)
    raw["stages"]["identity_trains_encoder"] = trains_encoder
    raw["stages"]["identity_updates_codebook"] = updates_codebook
    config = TrainConfig.model_validate(raw)
    people = select_training_people(SAMPLE_ROOT, [9])
    data = prepare_training_set(training_image_paths(SAMPLE_ROOT, people.people)[:8], tmp_path / "cache")
    trainer = _trainer(config, data, tmp_path / "a.pt")
    trainer._resume()
    trainer._run_epoch("joint", 0.0)
    encoder_before = {name: value.clone() for name, value in trainer.models.vqvae.encoder.state_dict().items()}
    codebook_before = trainer.models.vqvae.quantizer.codebook.clone()

    trainer._enter_stage("identity")
    trainer._run_epoch("identity", 0.0)

    encoder = trainer.models.vqvae.encoder.state_dict()
    changed = [name for name, value in encoder_before.items() if value.is_floating_point() and not torch.equal(encoder[name], value)]
    assert bool(changed) is trains_encoder, changed
    assert ("commit" in trainer.progress.history[-1]) is trains_encoder
    # The codebook stays frozen in stage identity unless stages.identity_updates_codebook is set.
    codebook = trainer.models.vqvae.quantizer.codebook
    assert torch.equal(codebook, codebook_before) is not updates_codebook
    settings = portable_settings(config)
    assert ("identity_trains_encoder" in settings["stages"]) is trains_encoder
    assert ("identity_updates_codebook" in settings["stages"]) is updates_codebook


def test_evaluate_names_missing_model_card(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["models", "evaluate", str(tmp_path / "no-such-model"), "--lfw-root", str(SAMPLE_ROOT)])
    assert result.exit_code == 2, result.output
    assert "model card not found" in result.output


def test_config_rejects_unknown_key(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["stages"]["epochs"] = 3
    with pytest.raises(ScenarioError, match="stages.epochs"):
        load_train_config(write_config(tmp_path, raw))


def test_training_people_exclude_held_out_folds() -> None:
    people = select_training_people(SAMPLE_ROOT, [9])
    pairs = read_lfw_pairs(SAMPLE_ROOT / "pairs.txt", SAMPLE_ROOT / "lfw-deepfunneled", fold_numbers=[9, 10])
    fold_10 = {name for pair in pairs if pair.fold == 10 for name in (pair.identity_a, pair.identity_b)}
    assert people.people
    assert not people.people & fold_10
    assert people.excluded_people == frozenset(fold_10)


def test_edge_embed_training_and_pipeline(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["kind"] = "edge-embed"
    raw["model_id"] = "smoke-embed"
    folder = train_command(write_config(tmp_path, raw))

    data = json.loads((folder / "card.json").read_text())
    assert data["kind"] == "edge-embed"
    assert set(data["onnx"]) == {"embedder", "embedder_int8"}
    assert [record["stage"] for record in data["training"]["history"]] == ["joint"]

    chip = prepare_chip(tmp_path)
    components = Components(AlignmentConfig(), TeacherConfig())
    for dtype, size in (("fp16", 257), ("int8", 129)):
        pipeline = EdgeEmbedPipeline(components, str(folder), dtype=dtype)
        payload = pipeline.edge_from_chip(chip)
        assert len(payload) == size
        assert pipeline.cloud([payload]).shape == (1, 128)


def test_student_reusing_two_teacher_blocks(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    config["student"]["tail_blocks"] = 2
    config["stages"]["identity_epochs"] = 0.0
    model_dir = train_command(write_config(tmp_path, config))

    card = load_vq_card(model_dir)
    assert card.data["architecture"]["teacher_tail"] == "last 2 residual blocks + fc of dlib-resnet-v1"
    # The reused 4x4 block alone costs about 18.9 M MACs, so the student's count shows it is there.
    assert card.data["footprint"]["student"]["macs"] > 20_000_000
    # The feature targets were taken at the earlier cut and cached beside the other labels.
    assert len(list((tmp_path / "cache" / "training").glob("tail-inputs-*.npz"))) == 1

    pipeline = EdgeVQStudentPipeline(Components(AlignmentConfig(upsample=0), TeacherConfig()), str(model_dir))
    chip = prepare_chip(tmp_path)
    embedding = pipeline.cloud([pipeline.edge_from_chip(chip)])[0]
    assert embedding.shape == (128,)
    assert np.isfinite(embedding).all()


def test_init_from_continues_a_trained_model(tmp_path: Path) -> None:
    base_dir = train_base_model(tmp_path)

    config = tiny_config(tmp_path / "next")
    config["model_id"] = "smoke-next"
    config["init_from"] = str(base_dir)
    config["stages"]["joint_epochs"] = 0
    model_dir = train_command(write_config(tmp_path / "next", config))

    training = load_vq_card(model_dir).data["training"]
    base_training = load_vq_card(base_dir).data["training"]
    assert training["init_from"]["model_id"] == "smoke"
    assert [record["stage"] for record in training["history"]] == ["identity"]
    assert training["training_time_total_s"] >= base_training["training_time_s"]
    # Stage identity trains the decoder only, so the encoder's weights are the base model's.
    base_state = torch.load(base_dir / "weights.pt", weights_only=True)["vqvae"]
    state = torch.load(model_dir / "weights.pt", weights_only=True)["vqvae"]
    encoder_keys = [key for key in state if key.startswith("encoder.")]
    assert encoder_keys
    for key in encoder_keys:
        assert torch.equal(state[key], base_state[key]), key


def test_init_from_new_decoder_widths(tmp_path: Path) -> None:
    base_dir = train_base_model(tmp_path)
    base_widths = load_vq_card(base_dir).data["architecture"]["vq"]["decoder_widths"]

    config = tiny_config(tmp_path / "wide")
    config["model_id"] = "smoke-wide"
    config["init_from"] = str(base_dir)
    config["vq"]["decoder_widths"] = [2 * width for width in base_widths]
    with pytest.raises(ModelError, match="set stages.joint_epochs to 0"):
        train_command(write_config(tmp_path / "wide", config))

    config["stages"]["joint_epochs"] = 0
    model_dir = train_command(write_config(tmp_path / "wide", config))
    card = load_vq_card(model_dir)
    assert card.data["architecture"]["vq"]["decoder_widths"] == [2 * width for width in base_widths]
    # The edge half is the base model's: the same encoder and codebook weights and the same ONNX graph.
    base_state = torch.load(base_dir / "weights.pt", weights_only=True)["vqvae"]
    state = torch.load(model_dir / "weights.pt", weights_only=True)["vqvae"]
    for key in state:
        if not key.startswith("decoder."):
            assert torch.equal(state[key], base_state[key]), key
    assert state["decoder.out.weight"].shape[1] == 2 * base_state["decoder.out.weight"].shape[1]
    import onnxruntime as ort

    outputs = []
    for folder in (base_dir, model_dir):
        session = ort.InferenceSession(str(folder / "edge_encoder.onnx"), providers=["CPUExecutionProvider"])
        model_input = session.get_inputs()[0]
        shape = [1 if not isinstance(size, int) else size for size in model_input.shape]
        chips = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
        outputs.append(session.run(None, {model_input.name: chips})[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_init_from_rejects_other_people(tmp_path: Path) -> None:
    base_dir = train_base_model(tmp_path)

    config = tiny_config(tmp_path / "next")
    config["data"]["train_folds"] = [10]
    config["init_from"] = str(base_dir)
    with pytest.raises(ModelError, match="trained on other people"):
        train_command(write_config(tmp_path / "next", config))


def test_init_from_rejects_other_shapes(tmp_path: Path) -> None:
    base_dir = train_base_model(tmp_path)

    config = tiny_config(tmp_path / "next")
    config["vq"]["codebook_size"] = 32
    config["init_from"] = str(base_dir)
    with pytest.raises(ModelError, match=r"weights do not fit this config \(vq.codebook_size is 16 there and 32 here\)"):
        train_command(write_config(tmp_path / "next", config))


def test_init_from_rejects_own_output_folder(tmp_path: Path) -> None:
    base_dir = train_base_model(tmp_path)

    config = tiny_config(tmp_path / "base")
    config["init_from"] = str(base_dir)
    config["stages"]["joint_epochs"] = 0
    with pytest.raises(ModelError, match="is the folder this run writes"):
        train_command(write_config(tmp_path / "again", config))


def test_init_from_rejects_edge_embed_model(tmp_path: Path) -> None:
    base_config = tiny_config(tmp_path / "base")
    base_config["kind"] = "edge-embed"
    base_dir = train_command(write_config(tmp_path / "base", base_config))

    config = tiny_config(tmp_path / "next")
    config["init_from"] = str(base_dir)
    with pytest.raises(ModelError, match="is an edge-embed model; start from a VQ model folder"):
        train_command(write_config(tmp_path / "next", config))


def test_zero_joint_epochs_need_init_from(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    config["stages"]["joint_epochs"] = 0
    with pytest.raises(ScenarioError, match="joint_epochs is 0, so the encoder would never train"):
        load_train_config(write_config(tmp_path, config))


def test_init_from_chain_adds_up_and_tracks_source(tmp_path: Path) -> None:
    base_dir = train_base_model(tmp_path)
    middle_config = tiny_config(tmp_path / "middle")
    middle_config.update(model_id="middle", init_from=str(base_dir))
    middle_config["stages"]["joint_epochs"] = 0
    middle_dir = train_command(write_config(tmp_path / "middle", middle_config))
    last_config = tiny_config(tmp_path / "last")
    last_config.update(model_id="last", init_from=str(middle_dir))
    last_config["stages"]["joint_epochs"] = 0
    last_dir = train_command(write_config(tmp_path / "last", last_config))

    middle = load_vq_card(middle_dir).data["training"]
    last = load_vq_card(last_dir).data["training"]
    assert last["training_time_total_s"] == pytest.approx(middle["training_time_total_s"] + last["training_time_s"], abs=0.2)
    assert "init_from" not in last["config"]

    # The checkpoint belongs to the source weights it started from, not to the path's spelling.
    loaded = load_train_config(write_config(tmp_path / "last", last_config))
    initial = {"weights_sha256": last["init_from"]["weights_sha256"]}
    assert config_fingerprint(loaded, initial) != config_fingerprint(loaded, {"weights_sha256": "0" * 64})
    respelled = loaded.model_copy(update={"init_from": str(middle_dir / ".." / middle_dir.name)})
    assert config_fingerprint(respelled, initial) == config_fingerprint(loaded, initial)


def test_init_from_source_without_training_time(tmp_path: Path) -> None:
    base_dir = train_base_model(tmp_path)
    card = json.loads((base_dir / "card.json").read_text())
    del card["training"]["training_time_s"]
    (base_dir / "card.json").write_text(json.dumps(card))

    config = tiny_config(tmp_path / "next")
    config.update(model_id="next", init_from=str(base_dir))
    config["stages"]["joint_epochs"] = 0
    training = load_vq_card(train_command(write_config(tmp_path / "next", config))).data["training"]

    assert training["init_from"]["training_time_s"] is None
    assert training["training_time_total_s"] is None


@pytest.mark.parametrize("change, message", [
    ({"kind": "edge-embed"}, "kind 'edge-embed' has no stage identity"),
    ({"stages": {"identity_epochs": 0.0}}, "stages.identity_epochs is 0"),
], ids=["edge-embed", "no-identity-epochs"])
def test_encoder_option_rejected_without_effect(tmp_path: Path, change: dict, message: str) -> None:
    raw = tiny_config(tmp_path)
    raw["stages"]["identity_trains_encoder"] = True
    for key, value in change.items():
        if isinstance(value, dict):
            raw[key].update(value)
        else:
            raw[key] = value
    with pytest.raises(ValueError, match=message):
        TrainConfig.model_validate(raw)


def test_codebook_option_needs_encoder_option(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["stages"]["identity_updates_codebook"] = True
    with pytest.raises(ValueError, match="stages.identity_trains_encoder is not"):
        TrainConfig.model_validate(raw)


def test_encoder_option_needs_boolean(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["stages"]["identity_trains_encoder"] = "yes"
    with pytest.raises(ValueError, match="identity_trains_encoder"):
        TrainConfig.model_validate(raw)
