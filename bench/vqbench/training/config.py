"""The training config schema (``models/<model-id>/train.yaml``), validated with pydantic.

One file describes one operating point: which people the model may see, the VQ-VAE and student
architecture, and the two training stages. Stage ``joint`` trains encoder, codebook, decoder
and student together. Stage ``identity`` then freezes the encoder and codebook, so that the
codes and the student stay valid, and fine-tunes the decoder. Its loss keeps the teacher's
embedding of the reconstruction close to the teacher's embedding of the original.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vqbench.errors import ScenarioError
from vqbench.scenario import FormatVersion, WholeNumber


TRAIN_CONFIG_VERSION = 1
#: Largest seed that both numpy (``np.random.seed``) and torch accept.
MAX_SEED = 2**32 - 1
#: Largest torch thread count a config may request (see ``TrainConfig.threads``).
MAX_THREADS = 256

#: Channels of one encoder or decoder stage, capped at 1024 like the student width.
ChannelCount = Annotated[WholeNumber, Field(ge=1, le=1024)]


class _Strict(BaseModel):
    # Strict types, so that a YAML `true` is not read as 1 block or "3" as a shift of 3 pixels
    # (`2.0` is still 2: see WholeNumber). A bound such as gt=0 lets `.inf` through, and an
    # infinite learning rate or loss weight turns every weight into NaN, so allow_inf_nan is off.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TrainDataConfig(_Strict):
    """Training images: every image of the people in ``train_folds`` and of people in no pair."""

    root: Optional[str] = Field(
        None, description="Folder holding lfw-deepfunneled/ and pairs.txt; default ${VQBENCH_DATA_DIR}/lfw."
    )
    train_folds: list[WholeNumber] = Field(default_factory=lambda: [1, 2, 3, 4, 5], description="View 2 folds whose people are trained on.")
    include_unpaired_people: bool = Field(True, description="Also train on people who appear in no View 2 pair.")
    max_images: Optional[WholeNumber] = Field(None, ge=1, description="Keep only the first N training images (smoke tests).")
    cache_dir: Optional[str] = Field(None, description="Where prepared chips and teacher targets go; default the vqbench cache.")

    @field_validator("train_folds")
    @classmethod
    def _check_folds(cls, folds: list[int]) -> list[int]:
        if not folds or any(not 1 <= fold <= 10 for fold in folds) or len(set(folds)) != len(folds):
            raise ValueError(f"train_folds must be distinct View 2 folds in 1..10, got {folds}")
        return sorted(folds)


class VQConfig(_Strict):
    """Edge encoder, codebook and decoder."""

    input_size_px: WholeNumber = Field(112, ge=32, le=150, description="Side the 150x150 chip is resized to before encoding.")
    widths: list[ChannelCount] = Field(
        default_factory=lambda: [24, 48, 96], min_length=1, description="Channels after each stride-2 stage, 1 to 1024 each."
    )
    extra_blocks: WholeNumber = Field(2, ge=0, le=8, description="Stride-1 depthwise-separable blocks at the grid resolution.")
    grid: WholeNumber = Field(14, ge=2, le=64, description="Side of the code grid H' = W'.")
    codebook_size: WholeNumber = Field(256, ge=2, le=65536, description="K, the number of code vectors.")
    code_dim: WholeNumber = Field(32, ge=2, le=512, description="Dimension of each code vector.")
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0)
    commitment_weight: float = Field(0.25, ge=0.0)
    dead_code_threshold: float = Field(0.5, ge=0.0, description="EMA usage below which a code is restarted.")
    decoder_widths: list[ChannelCount] = Field(
        default_factory=lambda: [96, 48, 24],
        min_length=1,
        description="Channels of the decoder's stages, one per entry of widths, 1 to 1024 each.",
    )


class StudentConfig(_Strict):
    """Student: code vectors -> small network -> the teacher's last blocks and fc."""

    width: WholeNumber = Field(128, ge=8, le=1024)
    blocks: WholeNumber = Field(4, ge=1, le=16, description="Depthwise-separable blocks before the teacher's tail.")
    tune_tail: bool = Field(False, description="Fine-tune the reused teacher blocks and fc instead of freezing them.")
    tail_blocks: WholeNumber = Field(
        1, ge=1, le=3,
        description="The teacher's last residual blocks the student reuses: 1 costs 1.2 M MACs, 2 cost 20.1 M, 3 cost 38.9 M.",
    )


class LossConfig(_Strict):
    """Weights of the loss terms."""

    reconstruction: float = Field(1.0, ge=0.0)
    reconstruction_fraction: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Share of each batch decoded in stage joint (the decoder dominates step time). With 0 the codes "
        "learn from the student's losses alone and the decoder learns in stage identity, on the frozen codes.",
    )
    student_cosine: float = Field(1.0, ge=0.0)
    student_feature: float = Field(1.0, ge=0.0, description="MSE to the teacher's 4x4x256 map that enters the reused blocks.")
    student_relational: float = Field(1.0, ge=0.0, description="MSE between the batch's cosine-similarity matrices.")
    identity: float = Field(1.0, ge=0.0, description="1 - cos(teacher(recon), teacher(original)) in stage identity.")
    encoder_hint: float = Field(
        0.0,
        ge=0.0,
        description="Weight of the encoder hint in stage joint: the MSE between a 1x1 convolution of the encoder's "
        "output before quantisation and the teacher's last 128-channel map (8x8), average-pooled to the code grid "
        "and standardised per channel. The convolution is used only in training and is not exported. With 0 the "
        "hint maps are neither computed nor cached.",
    )
    center_embeddings: bool = Field(
        True,
        description="Subtract the mean teacher embedding and feature map of the training set before the "
        "cosine, relational, identity and feature terms.",
    )


class StagesConfig(_Strict):
    """Epochs per stage and the optimiser."""

    joint_epochs: WholeNumber = Field(10, ge=0)
    identity_epochs: float = Field(1.0, ge=0.0, description="Epochs (fractions allowed) of identity fine-tuning.")
    batch_size: WholeNumber = Field(64, ge=1)
    learning_rate: float = Field(2e-3, gt=0.0)
    identity_learning_rate: float = Field(3e-4, gt=0.0)
    identity_trains_encoder: bool = Field(
        False, description="Also train the edge encoder in stage identity, through the frozen codebook and the "
        "teacher, so that the codes keep what the teacher needs; the student then reads codes it was not trained on."
    )
    identity_updates_codebook: bool = Field(
        False, description="With identity_trains_encoder, let the codebook follow the encoder's outputs in stage identity "
        "(EMA updates and restarts of dead codes, as in stage joint) instead of keeping it frozen."
    )
    weight_decay: float = Field(1e-4, ge=0.0)
    max_steps_per_epoch: Optional[WholeNumber] = Field(None, ge=1, description="Cut epochs short (smoke tests).")
    checkpoint_every_steps: WholeNumber = Field(200, ge=1)


class AugmentConfig(_Strict):
    """Random views drawn once per image and labelled by the teacher before training."""

    extra_views: WholeNumber = Field(
        0, ge=0, le=32, description="Views per image beyond the chip and its flip; each one costs a teacher pass once, before training."
    )
    max_shift_px: float = Field(6.0, ge=0.0, le=30.0, description="Largest shift along x and y, in pixels of the 150x150 chip.")
    max_scale: float = Field(0.08, ge=0.0, le=0.5, description="Largest relative change of scale.")
    max_rotation_deg: float = Field(8.0, ge=0.0, le=45.0, description="Largest rotation about the chip centre.")
    max_brightness: float = Field(0.1, ge=0.0, le=0.5, description="Largest relative change of brightness.")
    max_contrast: float = Field(0.1, ge=0.0, le=0.5, description="Largest relative change of contrast.")
    mixup_fraction: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Share of each stage-joint batch replaced by mixes of two of its views, pixel by pixel with a "
        "uniform random weight, each labelled by the teacher during training (one teacher pass per mix). A mix "
        "is a face no training image shows, so the student learns the teacher's function beyond the training people.",
    )


class TrainConfig(_Strict):
    """A complete training config."""

    version: FormatVersion = TRAIN_CONFIG_VERSION
    model_id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    kind: Literal["vq", "edge-embed"] = Field(
        "vq", description="vq: VQ-VAE + student; edge-embed: the encoder without quantiser + student head, on the edge."
    )
    seed: WholeNumber = Field(
        0, ge=0, le=MAX_SEED, description=f"Seed of torch and numpy, 0 to {MAX_SEED} (the range numpy accepts)."
    )
    threads: WholeNumber = Field(
        2,
        ge=1,
        le=MAX_THREADS,
        description=f"torch.set_num_threads during training, 1 to {MAX_THREADS}. The cap is there because 100000 threads "
        "end the process with a segmentation fault at the first matrix product (torch 2.13, CPU), and threads beyond "
        "the CPU cores only slow training.",
    )
    output_dir: Optional[str] = Field(None, description="Model folder to write; default models/<model_id> beside the config's folder parent.")
    init_from: Optional[str] = Field(
        None,
        min_length=1,
        description="Trained model folder whose VQ-VAE and student weights start this run (same shapes and training "
        "people). With stages.joint_epochs 0 only stage identity runs.",
    )
    data: TrainDataConfig = Field(default_factory=TrainDataConfig)
    vq: VQConfig = Field(default_factory=VQConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    flip_augment: bool = Field(True, description="Train on horizontal flips too, each labelled by the teacher.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    color_jitter: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="Max relative brightness and contrast change of the encoder input, applied after labelling "
        "(the label stays the unjittered view's); prefer augment.max_brightness and max_contrast.",
    )
    quantize_int8: bool = Field(True, description="Also export an int8 (dynamic) edge encoder.")

    @model_validator(mode="after")
    def _check_init_from(self) -> "TrainConfig":
        if self.init_from and self.kind != "vq":
            raise ValueError(f"init_from is supported for kind vq only, not {self.kind!r}; remove init_from")
        if self.stages.joint_epochs == 0 and not self.init_from:
            raise ValueError("stages.joint_epochs is 0, so the encoder would never train; set init_from to a trained model folder or train joint epochs")
        return self

    @model_validator(mode="after")
    def _check_loss_weights(self) -> "TrainConfig":
        loss = self.loss
        if self.stages.identity_trains_encoder and (self.kind != "vq" or self.stages.identity_epochs == 0):
            where = f"kind {self.kind!r} has no stage identity" if self.kind != "vq" else "stages.identity_epochs is 0"
            raise ValueError(
                f"stages.identity_trains_encoder is true, but {where}, so it would change nothing; remove it, "
                "or train stage identity (kind vq with stages.identity_epochs above 0)"
            )
        if self.stages.identity_updates_codebook and not self.stages.identity_trains_encoder:
            raise ValueError(
                "stages.identity_updates_codebook is true, but stages.identity_trains_encoder is not, so the encoder's "
                "outputs would not move and the codebook would follow nothing new; set both, or remove identity_updates_codebook"
            )
        if self.augment.mixup_fraction > 0 and loss.encoder_hint > 0:
            raise ValueError(
                f"augment.mixup_fraction is {self.augment.mixup_fraction:g} and loss.encoder_hint "
                f"{loss.encoder_hint:g}, but mixed views have no hint maps; set one of them to 0"
            )
        if self.kind != "vq" and loss.encoder_hint > 0:
            raise ValueError(
                f"loss.encoder_hint is {loss.encoder_hint:g}, but the encoder hint needs the code grid of kind vq, "
                f"not {self.kind!r}; set loss.encoder_hint to 0"
            )
        distillation = loss.student_cosine + loss.student_feature + loss.student_relational
        if self.kind == "edge-embed" and distillation == 0:
            raise ValueError(
                "loss.student_cosine, loss.student_feature and loss.student_relational are all 0, so the edge embedder "
                "would learn nothing; give at least one of them a positive weight"
            )
        if self.kind != "vq":
            return self
        decoded = loss.reconstruction > 0 and loss.reconstruction_fraction > 0
        if self.stages.joint_epochs > 0 and distillation == 0 and not decoded:
            raise ValueError(
                "loss.student_cosine, loss.student_feature, loss.student_relational and loss.reconstruction (or "
                "loss.reconstruction_fraction) are all 0, so stage joint would train nothing but the commitment term; "
                "give the student terms or loss.reconstruction a positive weight"
            )
        # With zero gradients AdamW still applies weight decay, so such a stage would shrink the decoder.
        if self.stages.identity_epochs > 0 and loss.reconstruction == 0 and loss.identity == 0:
            raise ValueError(
                "loss.reconstruction and loss.identity are both 0, so stage identity would train nothing; "
                "give one of them a positive weight or set stages.identity_epochs to 0"
            )
        return self


def portable_settings(config: TrainConfig, exclude: set[str] | None = None) -> dict:
    """Return the config as plain data without machine-specific paths (output, data, cache and init_from folders).

    ``loss.encoder_hint``, ``augment.mixup_fraction``, ``stages.identity_trains_encoder`` and
    ``stages.identity_updates_codebook`` are left out while they are off, so that configs written
    before they existed keep their checkpoint fingerprints and the recipes recorded in their cards.
    """
    settings = config.model_dump(mode="json", exclude={"output_dir", "init_from", *(exclude or set())})
    settings["data"].pop("root", None)
    settings["data"].pop("cache_dir", None)
    if "loss" in settings and settings["loss"]["encoder_hint"] == 0:
        del settings["loss"]["encoder_hint"]
    if "augment" in settings and settings["augment"]["mixup_fraction"] == 0:
        del settings["augment"]["mixup_fraction"]
    for switch in ("identity_trains_encoder", "identity_updates_codebook"):
        if "stages" in settings and not settings["stages"][switch]:
            del settings["stages"][switch]
    return settings


def load_train_config(path: Path) -> TrainConfig:
    """Read and validate a training config, raising ScenarioError naming the bad key."""
    from vqbench.scenario import load_yaml_model

    if path.is_dir():
        inside = path / "train.yaml"
        fix = f"pass {inside}" if inside.is_file() else "pass a train.yaml file (see models/*/train.yaml)"
        raise ScenarioError(f"training config {path} is a folder, not a file; {fix}")
    return load_yaml_model(
        path,
        TrainConfig,
        noun="training config",
        missing_hint="pass a train.yaml (see models/*/train.yaml)",
        required_keys="'model_id'",
        schema_hint="see the TrainConfig fields in vqbench.training.config",
    )
