"""Guards of `vqbench train`: config bounds, the output folder, non-finite values, checkpoints, interrupts."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from vqbench.cli import app
from vqbench.errors import ModelError, ScenarioError
from vqbench.models.cards import verify_model_dir
from vqbench.models.teacher_torch import load_torch_teacher
from vqbench.training import train_command
from vqbench.training.config import TrainConfig, load_train_config, portable_settings
from vqbench.training.data import PreparedSet, prepare_training_set, select_training_people, training_image_paths
from vqbench.training.loop import Trainer, TrainingDivergedError, build_models, config_fingerprint, legacy_config_fingerprint

REPO_DIR = Path(__file__).resolve().parents[1]
SAMPLE_ROOT = REPO_DIR / "data" / "lfw-sample"


def tiny_config(tmp_path: Path, model_id: str = "guard") -> dict:
    """A config that trains in seconds on 8 sample images; its output folder is ``tmp_path/model``."""
    return {
        "model_id": model_id,
        "threads": 1,
        "output_dir": str(tmp_path / "model"),
        "data": {"root": str(SAMPLE_ROOT), "train_folds": [9], "max_images": 8, "cache_dir": str(tmp_path / "cache")},
        "vq": {"input_size_px": 32, "widths": [8, 16], "extra_blocks": 1, "grid": 8, "codebook_size": 16, "code_dim": 8, "decoder_widths": [16, 8]},
        "student": {"width": 8, "blocks": 2},
        "stages": {"joint_epochs": 1, "identity_epochs": 0.0, "batch_size": 4, "checkpoint_every_steps": 1},
    }


def write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def siblings(folder: Path) -> list[str]:
    """Entries beside ``folder`` that an export leaves behind (staging or replaced folders)."""
    return sorted(entry.name for entry in folder.parent.iterdir() if entry.name.startswith(f".{folder.name}."))


# ----- config values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("stages", "learning_rate", math.inf),
        ("stages", "weight_decay", math.inf),
        ("stages", "identity_learning_rate", math.nan),
        ("loss", "student_cosine", math.inf),
        ("loss", "reconstruction", math.nan),
        ("vq", "commitment_weight", math.inf),
        ("augment", "max_shift_px", math.nan),
    ],
)
def test_config_rejects_non_finite_value(tmp_path: Path, section: str, key: str, value: float) -> None:
    raw = tiny_config(tmp_path)
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ScenarioError, match=rf"'{section}\.{key}': Input should be a finite number"):
        load_train_config(write_config(tmp_path, raw))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("vq.widths", [0, 16], "'vq.widths.0': Input should be greater than or equal to 1 (got 0)"),
        ("vq.widths", [2048, 16], "'vq.widths.0': Input should be less than or equal to 1024 (got 2048)"),
        ("vq.widths", [], "'vq.widths': List should have at least 1 item"),
        ("vq.decoder_widths", [-3, 8], "'vq.decoder_widths.0': Input should be greater than or equal to 1 (got -3)"),
        ("vq.decoder_widths", [], "'vq.decoder_widths': List should have at least 1 item"),
        ("vq.extra_blocks", True, "'vq.extra_blocks': Input should be a valid integer (got True)"),
        ("seed", -1, "'seed': Input should be greater than or equal to 0 (got -1)"),
        ("seed", 10**20, f"'seed': Input should be less than or equal to 4294967295 (got {10**20})"),
        ("seed", True, "'seed': Input should be a valid integer (got True)"),
        ("threads", 100000, "'threads': Input should be less than or equal to 256 (got 100000)"),
        ("threads", True, "'threads': Input should be a valid integer (got True)"),
        ("stages.batch_size", True, "'stages.batch_size': Input should be a valid integer (got True)"),
        ("stages.joint_epochs", True, "'stages.joint_epochs': Input should be a valid integer (got True)"),
        ("stages.checkpoint_every_steps", 2.5, "'stages.checkpoint_every_steps': Input should be a valid integer (got 2.5)"),
        ("student.blocks", "3", "'student.blocks': Input should be a valid integer (got '3')"),
        ("loss.identity", True, "'loss.identity': Input should be a valid number (got True)"),
        ("loss.identity", "0.5", "'loss.identity': Input should be a valid number (got '0.5')"),
        ("stages.identity_trains_encoder", 1, "'stages.identity_trains_encoder': Input should be a valid boolean (got 1)"),
        ("data.max_images", True, "'data.max_images': Input should be a valid integer (got True)"),
        ("data.train_folds", [True], "'data.train_folds.0': Input should be a valid integer (got True)"),
    ],
)
def test_config_rejects_invalid_integer(tmp_path: Path, key: str, value: object, message: str) -> None:
    raw = tiny_config(tmp_path)
    *sections, name = key.split(".")
    target = raw
    for section in sections:
        target = target.setdefault(section, {})
    target[name] = value
    with pytest.raises(ScenarioError, match=re.escape(message)):
        load_train_config(write_config(tmp_path, raw))


def test_train_zero_width_exits_2(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["vq"]["widths"] = [0, 16]
    result = CliRunner().invoke(app, ["train", str(write_config(tmp_path, raw))])
    assert result.exit_code == 2, result.output
    assert "'vq.widths.0': Input should be greater than or equal to 1 (got 0)" in " ".join(result.output.split())
    assert not (tmp_path / "cache" / "training").exists()


def test_config_reads_whole_float_as_integer(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["stages"]["checkpoint_every_steps"] = 2.0
    raw["vq"]["widths"] = [8.0, 16]
    config = load_train_config(write_config(tmp_path, raw))
    assert config.stages.checkpoint_every_steps == 2
    assert type(config.stages.checkpoint_every_steps) is int
    assert config.vq.widths[0] == 8
    assert type(config.vq.widths[0]) is int


def test_config_accepts_largest_seed_and_threads(tmp_path: Path) -> None:
    raw = dict(tiny_config(tmp_path), seed=2**32 - 1, threads=256)
    config = load_train_config(write_config(tmp_path, raw))
    assert config.seed == 2**32 - 1
    assert config.threads == 256


@pytest.mark.parametrize("path", sorted(REPO_DIR.glob("models/*/train.yaml")), ids=lambda path: path.parent.name)
def test_committed_configs_within_bounds(path: Path) -> None:
    assert load_train_config(path).model_id == path.parent.name


def test_config_rejects_vq_loss_weights_all_zero(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["loss"] = {"reconstruction": 0.0, "student_cosine": 0.0, "student_feature": 0.0, "student_relational": 0.0}
    with pytest.raises(ScenarioError, match="stage joint would train nothing"):
        load_train_config(write_config(tmp_path, raw))


def test_config_rejects_zero_reconstruction_fraction(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["loss"] = {"reconstruction_fraction": 0.0, "student_cosine": 0.0, "student_feature": 0.0, "student_relational": 0.0}
    with pytest.raises(ScenarioError, match="stage joint would train nothing"):
        load_train_config(write_config(tmp_path, raw))


def test_config_accepts_reconstruction_alone(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["loss"] = {"student_cosine": 0.0, "student_feature": 0.0, "student_relational": 0.0}
    assert load_train_config(write_config(tmp_path, raw)).loss.reconstruction == 1.0


def test_config_rejects_idle_identity_stage(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["stages"]["identity_epochs"] = 0.5
    raw["loss"] = {"reconstruction": 0.0, "identity": 0.0}
    with pytest.raises(ScenarioError, match="stage identity would train nothing"):
        load_train_config(write_config(tmp_path, raw))


def test_config_rejects_edge_embed_without_distillation(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["kind"] = "edge-embed"
    raw["loss"] = {"student_cosine": 0.0, "student_feature": 0.0, "student_relational": 0.0}
    with pytest.raises(ScenarioError, match="the edge embedder would learn nothing"):
        load_train_config(write_config(tmp_path, raw))


def test_train_names_folder_given_as_config(tmp_path: Path) -> None:
    config = write_config(tmp_path / "smoke", tiny_config(tmp_path))
    result = CliRunner().invoke(app, ["train", str(config.parent)])
    assert result.exit_code == 2, result.output
    assert "is a folder, not a file" in result.output
    assert f"pass {config}" in " ".join(result.output.split())


# ----- early checks, before the data preparation --------------------------------------------


def test_output_dir_file_fails_early(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    (tmp_path / "model").write_text("not a folder")
    with pytest.raises(ScenarioError, match=r"output_dir .*model is a file; set output_dir to a folder"):
        train_command(write_config(tmp_path, raw))
    assert not (tmp_path / "cache" / "training").exists()


def test_output_dir_named_other_model_fails_early(tmp_path: Path, monkeypatch) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    monkeypatch.setenv("VQBENCH_MODELS_DIR", str(models_dir))
    raw = tiny_config(tmp_path)
    raw["output_dir"] = str(models_dir / "other-name")
    with pytest.raises(ScenarioError, match=r"under the name 'other-name', but the model_id is 'guard'"):
        train_command(write_config(tmp_path, raw))
    assert not (tmp_path / "cache" / "training").exists()


def test_output_dir_below_file_fails_early(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    raw["output_dir"] = str(tmp_path / "afile" / "model")
    with pytest.raises(ScenarioError, match=r"cannot be created because .*afile is a file"):
        train_command(write_config(tmp_path, raw))
    assert not (tmp_path / "cache" / "training").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_output_dir_unwritable_parent_fails_early(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    raw["output_dir"] = str(locked / "model")
    try:
        with pytest.raises(ScenarioError, match=r"cannot be written because .*locked is not writable"):
            train_command(write_config(tmp_path, raw))
    finally:
        locked.chmod(0o755)
    assert not (tmp_path / "cache" / "training").exists()


def test_shape_mismatch_fails_early(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["vq"]["input_size_px"] = 40
    with pytest.raises(ModelError, match="input_size_px 40 does not fit grid 8"):
        train_command(write_config(tmp_path, raw))
    assert not (tmp_path / "cache" / "training").exists()


def test_existing_card_needs_overwrite(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    (tmp_path / "model").mkdir()
    card = tmp_path / "model" / "card.json"
    card.write_text(json.dumps({"model_id": "committed"}))
    result = CliRunner().invoke(app, ["train", str(write_config(tmp_path, raw))])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"{tmp_path / 'model'} already contains model 'committed'" in message
    assert "set output_dir to another folder, or pass --overwrite to replace it" in message
    assert not (tmp_path / "cache" / "training").exists()
    assert json.loads(card.read_text()) == {"model_id": "committed"}


@pytest.mark.parametrize(
    ("metrics", "warns"),
    [({}, False), ({"lfw_view2": {"pairs": 6000}}, True)],
    ids=["no-metrics", "metrics"],
)
def test_card_metrics_warning_needs_metrics(tmp_path: Path, metrics: dict, warns: bool) -> None:
    raw = tiny_config(tmp_path)
    (tmp_path / "model").mkdir()
    card = {"model_id": "guard", "training": {"config": portable_settings(TrainConfig.model_validate(raw))}, "metrics": metrics}
    (tmp_path / "model" / "card.json").write_text(json.dumps(card))
    result = CliRunner().invoke(app, ["train", str(write_config(tmp_path, raw))])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "already contains model 'guard', trained with these settings" in message
    assert ("would lose its recorded metrics" in message) == warns


def test_interrupt_during_data_preparation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("vqbench.training.data.prepare_training_set", interrupted)
    result = CliRunner().invoke(app, ["train", str(write_config(tmp_path, tiny_config(tmp_path)))])
    assert result.exit_code == 130, result.output
    assert "interrupted: data preparation stopped" in result.output


def test_second_run_of_a_model_id_is_refused(tmp_path: Path) -> None:
    from filelock import FileLock

    lock = FileLock(tmp_path / "cache" / "checkpoints" / "guard" / "train.lock")
    (tmp_path / "cache" / "checkpoints" / "guard").mkdir(parents=True)
    with lock.acquire(timeout=0):
        result = CliRunner().invoke(app, ["train", str(write_config(tmp_path, tiny_config(tmp_path)))])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "another `vqbench train` of model 'guard' is already running" in message
    assert "give this config another model_id" in message
    assert not (tmp_path / "cache" / "training").exists()
    assert not (tmp_path / "model").exists()


def test_second_run_into_an_output_folder_is_refused(tmp_path: Path) -> None:
    import hashlib

    from filelock import FileLock

    output_key = hashlib.sha256(str((tmp_path / "model").resolve()).encode()).hexdigest()[:16]
    (tmp_path / "cache" / "locks").mkdir(parents=True)
    with FileLock(tmp_path / "cache" / "locks" / f"output-{output_key}.lock").acquire(timeout=0):
        raw = tiny_config(tmp_path, model_id="other-id")
        result = CliRunner().invoke(app, ["train", str(write_config(tmp_path, raw))])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"another `vqbench train` is already writing {tmp_path / 'model'}" in message
    assert "set output_dir to another folder" in message
    assert not (tmp_path / "cache" / "training").exists()


# ----- training and export ------------------------------------------------------------------


@pytest.mark.slow
def test_training_releases_its_lock(tmp_path: Path) -> None:
    from filelock import FileLock

    train_command(write_config(tmp_path, tiny_config(tmp_path)))
    assert (tmp_path / "model" / "card.json").is_file()
    with FileLock(tmp_path / "cache" / "checkpoints" / "guard" / "train.lock").acquire(timeout=0):
        pass


@pytest.mark.slow
def test_failed_export_keeps_old_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The config sits in a folder named after the model id, so that folder is the output folder.
    folder = tmp_path / "guard"
    raw = tiny_config(tmp_path)
    del raw["output_dir"]
    config = write_config(folder, raw)
    old_files = {"card.json": b'{"model_id": "guard"}', "weights.pt": b"old weights", "embedder.onnx": b"old graph", "notes.txt": b"mine"}
    for name, content in old_files.items():
        (folder / name).write_bytes(content)

    from vqbench.training import export

    failing = {"on": True}
    original = export.quantize_edge_encoder

    def quantise_or_fail(*args: object) -> None:
        if failing["on"]:
            raise RuntimeError("quantisation failed")
        original(*args)

    monkeypatch.setattr(export, "quantize_edge_encoder", quantise_or_fail)
    with pytest.raises(RuntimeError, match="quantisation failed"):
        train_command(config, overwrite=True)
    assert sorted(entry.name for entry in folder.iterdir()) == sorted([*old_files, "train.yaml"])
    for name, content in old_files.items():
        assert (folder / name).read_bytes() == content, name
    assert siblings(folder) == []

    # The rerun resumes from the finished checkpoint and only exports.
    failing["on"] = False
    assert train_command(config, overwrite=True) == folder
    card = json.loads((folder / "card.json").read_text())
    assert card["model_id"] == "guard"
    assert "train.yaml" in card["files"]
    assert verify_model_dir(folder) == len(card["files"])
    assert (folder / "notes.txt").read_bytes() == b"mine"
    assert not (folder / "embedder.onnx").exists()
    assert (folder / "train.yaml").read_text(encoding="utf-8") == yaml.safe_dump(raw)
    assert siblings(folder) == []

    # A third run with the same config names the model and the --overwrite option.
    with pytest.raises(ScenarioError, match="already contains model 'guard', trained with these settings") as error:
        train_command(config)
    assert "change model_id or set output_dir, or pass --overwrite" in str(error.value)


@pytest.mark.slow
def test_nan_loss_stops_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqbench.training import loop

    calls = {"count": 0}
    original = loop.cosine_loss

    def cosine_then_nan(*args: torch.Tensor) -> torch.Tensor:
        calls["count"] += 1
        return original(*args) * (math.nan if calls["count"] >= 2 else 1.0)

    monkeypatch.setattr(loop, "cosine_loss", cosine_then_nan)
    raw = tiny_config(tmp_path)
    with pytest.raises(TrainingDivergedError) as error:
        train_command(write_config(tmp_path, raw))
    message = str(error.value)
    assert "training diverged at stage joint, epoch 1, step 2: the loss is nan" in message
    assert "stage joint, epoch 1, step 1), is kept" in message
    assert "lower stages.learning_rate (now 0.002)" in message
    assert not (tmp_path / "model").exists()
    assert siblings(tmp_path / "model") == []
    state = torch.load(tmp_path / "cache" / "checkpoints" / "guard" / "last.pt", weights_only=False)
    assert state["progress"]["step"] == 1


def interrupt_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> dict:
    """Make ``Trainer`` raise KeyboardInterrupt before training step ``step`` (counted from 1) while ``on`` is set."""
    original = Trainer._train_step
    state = {"on": True, "steps": 0}

    def train_step(self: Trainer, stage: str, rows: object) -> object:
        if state["on"] and state["steps"] + 1 == step:
            raise KeyboardInterrupt
        state["steps"] += 1
        return original(self, stage, rows)

    monkeypatch.setattr(Trainer, "_train_step", train_step)
    return state


def history_without_times(folder: Path) -> list[dict]:
    history = json.loads((folder / "card.json").read_text())["training"]["history"]
    return [{key: value for key, value in record.items() if key != "elapsed_s"} for record in history]


@pytest.mark.slow
def test_resumed_epoch_history_matches_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 images in batches of 2 give 4 steps per epoch, and the run stops after step 2 of joint epoch 2.
    raw = tiny_config(tmp_path)
    raw["stages"].update(joint_epochs=2, identity_epochs=0.5, batch_size=2)
    raw["quantize_int8"] = False
    straight = train_command(write_config(tmp_path / "straight", dict(raw, model_id="straight", output_dir=str(tmp_path / "straight" / "model"))))

    resumed_raw = dict(raw, model_id="resumed", output_dir=str(tmp_path / "resumed" / "model"))
    config = write_config(tmp_path / "resumed", resumed_raw)
    interrupt = interrupt_at_step(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        train_command(config)
    state = torch.load(tmp_path / "cache" / "checkpoints" / "resumed" / "last.pt", weights_only=False)
    assert (state["progress"]["epoch"], state["progress"]["step"]) == (1, 2)
    interrupt["on"] = False
    resumed = train_command(config)

    expected, actual = history_without_times(straight), history_without_times(resumed)
    assert [(record["stage"], record["epoch"]) for record in actual] == [("joint", 1), ("joint", 2), ("identity", 1)]
    assert [sorted(record) for record in actual] == [sorted(record) for record in expected]
    for before, after in zip(expected, actual):
        for key, value in before.items():
            where = (before["stage"], before["epoch"], key)
            if isinstance(value, float):
                assert after[key] == pytest.approx(value, rel=1e-6, abs=1e-9), where
            else:
                assert after[key] == value, where


@pytest.mark.slow
def test_sigterm_keeps_checkpoint_and_exits_143(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("SIGTERM already has a handler in this process, so train_command leaves it alone")
    raw = tiny_config(tmp_path)
    folder = tmp_path / "cache" / "checkpoints" / "guard"
    folder.mkdir(parents=True)
    # A write killed by SIGKILL leaves a file named like the first. The other two do not match the writer's names.
    for name in ("tmpab_cd123.tmp", "notes.tmp", "tmpab_cd123.txt"):
        (folder / name).write_text("left over")

    original_save = torch.save
    saves = {"count": 0}

    def save_then_terminate(obj: object, path: object, *args: object, **kwargs: object) -> None:
        original_save(obj, path, *args, **kwargs)
        if Path(path).parent != folder:
            return
        saves["count"] += 1
        if saves["count"] == 2:
            # Without a handler SIGTERM would end the test process, so check for one first.
            assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL, "train_command installed no SIGTERM handler"
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(torch, "save", save_then_terminate)
    result = CliRunner().invoke(app, ["train", str(write_config(tmp_path, raw))])

    assert result.exit_code == 143, result.output
    message = " ".join(result.output.split())
    assert "interrupted: the last checkpoint" in message
    assert "run the same command again to resume" in message
    # The second write was stopped after its temporary file was complete, and that file is gone.
    # The lock file stays; the lock itself ends with the run.
    assert sorted(entry.name for entry in folder.iterdir()) == ["last.pt", "notes.tmp", "tmpab_cd123.txt", "train.lock"]
    assert torch.load(folder / "last.pt", weights_only=False)["progress"]["step"] == 1
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert not (tmp_path / "model").exists()


@pytest.fixture
def prepared(tmp_path: Path) -> PreparedSet:
    people = select_training_people(SAMPLE_ROOT, [9])
    return prepare_training_set(training_image_paths(SAMPLE_ROOT, people.people)[:8], tmp_path / "cache")


def make_trainer(raw: dict, data: PreparedSet, checkpoint: Path) -> Trainer:
    config = TrainConfig.model_validate(raw)
    torch.manual_seed(config.seed)
    return Trainer(config, data, build_models(config, load_torch_teacher()), checkpoint)


@pytest.mark.slow
def test_non_finite_weights_stop_training(tmp_path: Path, prepared: PreparedSet, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    calls = {"count": 0}
    original = torch.nn.utils.clip_grad_norm_

    def clip_then_poison(parameters: list[torch.nn.Parameter], *args: object, **kwargs: object) -> torch.Tensor:
        calls["count"] += 1
        norm = original(parameters, *args, **kwargs)
        if calls["count"] == 2:
            parameters[0].grad.fill_(math.inf)
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_then_poison)
    checkpoint = tmp_path / "last.pt"
    with pytest.raises(TrainingDivergedError, match=r"at stage joint, epoch 1, step 2: this step's update made vqvae\.\S+ NaN or infinite"):
        make_trainer(tiny_config(tmp_path), prepared, checkpoint).run()
    state = torch.load(checkpoint, weights_only=False)
    assert state["progress"]["step"] == 1
    assert all(torch.isfinite(value).all() for value in state["vqvae"].values() if value.is_floating_point())


# ----- checkpoints of other settings -------------------------------------------------------


def test_fingerprint_ignores_untrained_settings(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    base = TrainConfig.model_validate(raw)
    changed = dict(raw, threads=2, quantize_int8=False, output_dir=str(tmp_path / "elsewhere"))
    changed["stages"] = dict(raw["stages"], checkpoint_every_steps=50)
    changed["data"] = dict(raw["data"], cache_dir=str(tmp_path / "other-cache"))
    assert config_fingerprint(TrainConfig.model_validate(changed)) == config_fingerprint(base)
    faster = dict(raw, stages=dict(raw["stages"], learning_rate=1e-3))
    assert config_fingerprint(TrainConfig.model_validate(faster)) != config_fingerprint(base)


@pytest.mark.slow
def test_checkpoint_interval_change_resumes(tmp_path: Path, prepared: PreparedSet) -> None:
    torch.set_num_threads(1)
    checkpoint = tmp_path / "last.pt"
    raw = tiny_config(tmp_path)
    make_trainer(raw, prepared, checkpoint).run()

    other = dict(raw, threads=2, stages=dict(raw["stages"], checkpoint_every_steps=5))
    resumed = make_trainer(other, prepared, checkpoint)
    resumed._resume()
    assert resumed.progress.epoch == 1
    assert list(tmp_path.glob("last.*.pt")) == []


@pytest.mark.slow
def test_other_settings_checkpoint_kept(tmp_path: Path, prepared: PreparedSet, caplog: pytest.LogCaptureFixture) -> None:
    torch.set_num_threads(1)
    checkpoint = tmp_path / "checkpoints" / "last.pt"
    raw = tiny_config(tmp_path)
    first = make_trainer(raw, prepared, checkpoint)
    first.run()
    first_weights = first.models.vqvae.state_dict()

    other = dict(raw, stages=dict(raw["stages"], learning_rate=1e-3))
    with caplog.at_level(logging.INFO, logger="vqbench.training.loop"):
        second = make_trainer(other, prepared, checkpoint)
        second.run()
    stashed = checkpoint.with_name(f"last.{first.fingerprint[:12]}.pt")
    assert stashed.is_file()
    assert "stages.learning_rate 0.002 there, 0.001 here" in caplog.text
    assert str(stashed) in caplog.text
    assert "starting afresh" in caplog.text
    assert torch.load(checkpoint, weights_only=False)["config_sha256"] == second.fingerprint

    # Back to the first settings: the first run's checkpoint comes back, and the second one is kept.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vqbench.training.loop"):
        again = make_trainer(raw, prepared, checkpoint)
        again._resume()
    assert "resuming from the checkpoint kept for these settings" in caplog.text
    assert "restored the checkpoint of these settings" in caplog.text
    assert again.progress.epoch == 1
    assert checkpoint.with_name(f"last.{second.fingerprint[:12]}.pt").is_file()
    for name, value in first_weights.items():
        assert torch.equal(again.models.vqvae.state_dict()[name], value), name


@pytest.mark.slow
def test_checkpoint_without_stored_settings(tmp_path: Path, prepared: PreparedSet, caplog: pytest.LogCaptureFixture) -> None:
    torch.set_num_threads(1)
    checkpoint = tmp_path / "last.pt"
    raw = tiny_config(tmp_path)
    make_trainer(raw, prepared, checkpoint).run()
    # Rewrite it as a checkpoint from before the settings were stored.
    state = torch.load(checkpoint, weights_only=False)
    del state["config_settings"]
    state["config_sha256"] = legacy_config_fingerprint(TrainConfig.model_validate(raw))
    torch.save(state, checkpoint)

    resumed = make_trainer(raw, prepared, checkpoint)
    resumed._resume()
    assert resumed.progress.epoch == 1

    other = dict(raw, stages=dict(raw["stages"], checkpoint_every_steps=5))
    with caplog.at_level(logging.WARNING, logger="vqbench.training.loop"):
        fresh = make_trainer(other, prepared, checkpoint)
        fresh._resume()
    assert fresh.progress.epoch == 0
    assert "it does not record its settings, so the keys that differ are unknown" in caplog.text
    assert checkpoint.with_name(f"last.{state['config_sha256'][:12]}.pt").is_file()


def test_rerun_warns_it_resumes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = tiny_config(tmp_path)
    config = write_config(tmp_path, raw)
    train_command(config)
    with caplog.at_level("WARNING", logger="vqbench.training.loop"):
        train_command(config, overwrite=True)
    assert any("resuming from checkpoint" in record.getMessage() for record in caplog.records)
