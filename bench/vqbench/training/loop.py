"""The training loop: stage ``joint``, then stage ``identity``, with resumable checkpoints.

Per step of stage ``joint``: draw a batch of prepared chips, pick one view per sample (the
chip, its flip or an augmented view, each labelled by the teacher), apply the unlabelled
``color_jitter`` if configured, encode and quantise, then add up

    reconstruction (decoder output vs input)   + commitment (encoder output vs its code)
    + student cosine to the teacher embedding  + student feature MSE to the teacher's 4x4x256 map
    + relational term between the batch's similarity matrices
    + encoder hint, if ``loss.encoder_hint`` > 0: MSE between a 1x1 convolution of the encoder
      output before quantisation and the teacher's 128-channel map at the code grid.

The reconstruction term covers the first ``reconstruction_fraction`` of the batch. With a
fraction of 0 it is left out, the decoder rests until stage identity, and the codes carry only
what the student needs. The student reads the straight-through quantised vectors, so its
gradient also trains the encoder to keep identity in the codes. Every ``RESTART_EVERY_STEPS`` steps, codes with low EMA
usage are restarted. Stage ``identity`` freezes the codebook and trains the decoder on
reconstruction + (1 - cos(teacher(reconstruction), teacher embedding of the original)), with
the gradient passing through the frozen PyTorch teacher. The encoder stays frozen too, unless
``stages.identity_trains_encoder`` is set: then the same gradient reaches it through the
straight-through quantiser, with the commitment term keeping its outputs near the frozen codes.
With ``stages.identity_updates_codebook`` as well, the codebook is not frozen: it follows the
encoder's moving outputs by EMA, and dead codes are restarted, as in stage joint.

A checkpoint (models, optimiser, schedule, stage, epoch, step, RNG state, the running loss sums
and code counts of the current epoch, and the settings it was trained with) is written every
``checkpoint_every_steps`` steps and at the end of every epoch. A new run with the same settings
continues from it. The checkpoint contains the hint head, but the export leaves it out, so the
head adds nothing to the edge encoder. The batch order of each epoch depends only on (seed,
stage, epoch), so a resumed epoch skips exactly the batches already done, and its history
record has the losses and codebook figures of an uninterrupted run. Temporary checkpoint files that a killed run left
behind are deleted when a run starts. A checkpoint of other settings is renamed ``last.<fingerprint prefix>.pt`` instead of being overwritten, and a
later run with those settings resumes from it again.

A non-finite loss, or non-finite weights after a step, stops training with
``TrainingDivergedError`` before the next checkpoint, so the checkpoint on disk keeps finite weights.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vqbench.errors import ModelError, VqbenchError
from vqbench.models.edge_embed import EdgeEmbedder
from vqbench.models.student import Student, TeacherTail, teacher_trunk
from vqbench.models.teacher_torch import DlibResNet
from vqbench.models.vqvae import VQVAE, VQVAEShape, codebook_usage
from vqbench.training.augment import chip_and_flip_params, render_views
from vqbench.training.config import TrainConfig, portable_settings
from vqbench.training.data import HINT_CHANNELS, PreparedSet, channel_mean_std
from vqbench.training.losses import cosine_loss, feature_loss, hint_loss, reconstruction_loss, relational_loss
from vqbench.training.progress import progress_bar

if TYPE_CHECKING:
    from vqbench.models.vq_card import VQModelCard

logger = logging.getLogger(__name__)

RESTART_EVERY_STEPS = 25
STAGES = ("joint", "identity")
#: Hex digits of the old fingerprint in the name a replaced checkpoint is kept under.
STASH_PREFIX_CHARS = 12
#: Differing settings named in the message about a checkpoint of other settings.
MAX_REPORTED_DIFFERENCES = 6
#: Prefix and suffix of the temporary file a checkpoint is written to before it replaces the last one.
#: The prefix is tempfile's default, so files left by earlier versions match too.
TEMPORARY_PREFIX, TEMPORARY_SUFFIX = "tmp", ".tmp"
#: Names that ``tempfile.mkstemp`` gives with that prefix and suffix (CPython 3 puts eight characters from [a-z0-9_] between them).
_TEMPORARY_NAME = re.compile(rf"{re.escape(TEMPORARY_PREFIX)}[a-z0-9_]{{8}}{re.escape(TEMPORARY_SUFFIX)}")


class TrainingDivergedError(VqbenchError):
    """A NaN or infinite loss or weight, which stops training before anything is exported."""

    exit_code = 1


def vq_shape(config: TrainConfig) -> VQVAEShape:
    """Build the VQ-VAE shape from a training config."""
    vq = config.vq
    return VQVAEShape(
        input_size_px=vq.input_size_px,
        widths=tuple(vq.widths),
        extra_blocks=vq.extra_blocks,
        grid=vq.grid,
        codebook_size=vq.codebook_size,
        code_dim=vq.code_dim,
        decoder_widths=tuple(vq.decoder_widths),
    )


@dataclass
class Models:
    """Everything that training updates, plus the frozen teacher."""

    vqvae: VQVAE
    student: Student
    teacher: DlibResNet
    #: 1x1 convolution from the encoder output to the teacher's hint map; training only, never exported.
    hint_head: torch.nn.Conv2d | None = None


def build_models(config: TrainConfig, teacher: DlibResNet) -> Models:
    """Create freshly initialised models (seeded by the caller).

    The hint head is created last, and only with ``loss.encoder_hint`` > 0, so the VQ-VAE and
    student start from the same weights with and without it.
    """
    vqvae = VQVAE(vq_shape(config), ema_decay=config.vq.ema_decay)
    student = Student(
        vqvae.quantizer.codebook,
        teacher,
        width=config.student.width,
        blocks=config.student.blocks,
        tune_tail=config.student.tune_tail,
        tail_blocks=config.student.tail_blocks,
    )
    teacher.requires_grad_(False)
    hint_head = torch.nn.Conv2d(config.vq.code_dim, HINT_CHANNELS, 1) if config.loss.encoder_hint > 0 else None
    return Models(vqvae, student, teacher.eval(), hint_head)


@dataclass
class Progress:
    """Training position: the stage, the epoch and the step within the epoch."""

    stage: str = "joint"
    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0


@dataclass
class EpochTotals:
    """Running sums of the current epoch, from its first step, for its history record."""

    loss_sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    #: Number of times each code was chosen, shape (codebook_size,), or None before the first step.
    code_counts: torch.Tensor | None = None

    def add(self, losses: dict[str, float], indices: torch.Tensor, codebook_size: int) -> None:
        """Add one step's losses and chosen code indices."""
        for name, value in losses.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + value
        counts = torch.bincount(indices.flatten().cpu(), minlength=codebook_size)
        self.code_counts = counts if self.code_counts is None else self.code_counts + counts
        self.steps += 1


class Trainer:
    """Run both stages over a prepared training set, checkpointing into ``checkpoint_path``."""

    def __init__(
        self, config: TrainConfig, data: PreparedSet, models: Models, checkpoint_path: Path, initial: dict | None = None
    ) -> None:
        self.config = config
        self.data = data
        self.models = models
        self.checkpoint_path = checkpoint_path
        self.settings = fingerprint_settings(config, initial, data)
        self.fingerprint = settings_fingerprint(self.settings)
        self.legacy_fingerprint = legacy_config_fingerprint(config, initial)
        self.saved_at: str | None = None  # position of the last checkpoint written or resumed from
        self.progress = Progress()
        self.totals = EpochTotals()
        self.generator = torch.Generator().manual_seed(config.seed)
        self.embedding_mean, self.feature_mean = self._target_means()
        self.hint_mean, self.hint_std = self._hint_statistics()
        # The teacher's own tail labels mixed views, because the student's copy of it may be fine-tuned.
        self.label_tail = None
        if config.augment.mixup_fraction > 0:
            self.label_tail = TeacherTail(models.teacher, config.student.tail_blocks).eval().requires_grad_(False)
        self.optimizer = self._make_optimizer("joint")
        self.scheduler = self._make_scheduler("joint")

    # ----- setup -------------------------------------------------------------------------

    def _target_means(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean teacher embedding (128,) and feature map (256,4,4) over all views, or zeros."""
        if not self.config.loss.center_embeddings:
            return torch.zeros(self.data.embeddings.shape[-1]), None
        embedding_mean = torch.from_numpy(self.data.embeddings.mean(axis=(0, 1)).astype(np.float32))
        feature_mean = torch.from_numpy(self.data.features.astype(np.float32).mean(axis=(0, 1)))
        return embedding_mean, feature_mean

    def _hint_statistics(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return the per-channel mean and standard deviation (HINT_CHANNELS, 1, 1) of the hint maps over all views.

        Both are None without the encoder hint.
        """
        if self.config.loss.encoder_hint == 0:
            return None, None
        if self.data.hint_maps is None or self.models.hint_head is None:
            raise ValueError(
                "loss.encoder_hint is positive, but the prepared set has no hint maps or the models no hint head; "
                "prepare the data with add_hint_maps and build the models with build_models"
            )
        mean, std = channel_mean_std(self.data.hint_maps)
        # A channel that is 0 on every view gets std 1 instead of 0, so its standardised target stays 0.
        std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        logger.info("hint maps: per-channel std from %.3g to %.3g", float(std.min()), float(std.max()))
        return torch.from_numpy(mean).view(-1, 1, 1), torch.from_numpy(std).view(-1, 1, 1)

    def _distillation_losses(self, trunk: torch.Tensor, embeddings: torch.Tensor, target_embeddings: torch.Tensor, target_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cosine, feature and relational terms of a student output against the teacher's."""
        weights = self.config.loss
        centered = embeddings - self.embedding_mean
        target_centered = target_embeddings - self.embedding_mean
        return {
            "cos": weights.student_cosine * cosine_loss(centered, target_centered),
            "feat": weights.student_feature * feature_loss(trunk, target_features, self.feature_mean),
            "rel": weights.student_relational * relational_loss(centered, target_centered),
        }

    def _trainable(self, stage: str) -> list[torch.nn.Parameter]:
        decoder = list(self.models.vqvae.decoder.parameters())
        if stage == "identity":
            encoder = list(self.models.vqvae.encoder.parameters()) if self.config.stages.identity_trains_encoder else []
            return decoder + encoder
        params = list(self.models.vqvae.encoder.parameters())
        if self.config.loss.reconstruction_fraction > 0:
            params += decoder
        if self.models.hint_head is not None:
            params += list(self.models.hint_head.parameters())
        return params + [p for p in self.models.student.parameters() if p.requires_grad]

    def _make_optimizer(self, stage: str) -> torch.optim.Optimizer:
        stages = self.config.stages
        rate = stages.learning_rate if stage == "joint" else stages.identity_learning_rate
        return torch.optim.AdamW(self._trainable(stage), lr=rate, weight_decay=stages.weight_decay)

    def _make_scheduler(self, stage: str) -> torch.optim.lr_scheduler.LambdaLR:
        total = max(1, self.steps_per_epoch * math.ceil(self._stage_epochs(stage)))
        warmup = min(100, total // 10 + 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    @property
    def steps_per_epoch(self) -> int:
        steps = math.ceil(len(self.data) / self.config.stages.batch_size)
        cap = self.config.stages.max_steps_per_epoch
        return min(steps, cap) if cap else steps

    def _stage_epochs(self, stage: str) -> float:
        stages = self.config.stages
        return float(stages.joint_epochs) if stage == "joint" else stages.identity_epochs

    def _stage_steps(self, stage: str, epoch: int) -> int:
        """Steps in ``epoch`` of ``stage``; the last epoch of a fractional count is cut short."""
        remaining = self._stage_epochs(stage) - epoch
        return max(0, min(self.steps_per_epoch, math.ceil(remaining * self.steps_per_epoch)))

    # ----- running -----------------------------------------------------------------------

    def run(self) -> Progress:
        """Train from the checkpoint (if any) to the end of stage ``identity``."""
        self._remove_stale_temporaries()
        self._resume()
        started = time.perf_counter() - self.progress.elapsed_s
        for stage in STAGES[STAGES.index(self.progress.stage) :]:
            if stage != self.progress.stage:
                self._enter_stage(stage)
            while self._stage_steps(stage, self.progress.epoch) > 0:
                self._run_epoch(stage, started)
                self.progress.epoch += 1
                self.progress.step = 0
                self.totals = EpochTotals()
                self.progress.elapsed_s = time.perf_counter() - started
                self._save_checkpoint()
        self.progress.elapsed_s = time.perf_counter() - started
        self._finish()
        return self.progress

    def _finish(self) -> None:
        self.models.student.set_codebook(self.models.vqvae.quantizer.codebook)

    def _module_states(self) -> dict:
        states = {"vqvae": self.models.vqvae.state_dict(), "student": self.models.student.state_dict()}
        if self.models.hint_head is not None:
            states["hint_head"] = self.models.hint_head.state_dict()
        return states

    def _load_module_states(self, state: dict) -> None:
        self.models.vqvae.load_state_dict(state["vqvae"])
        self.models.student.load_state_dict(state["student"])
        if self.models.hint_head is not None:
            # The fingerprint covers loss.encoder_hint, so a checkpoint that matches this run has the head.
            self.models.hint_head.load_state_dict(state["hint_head"])

    def _enter_stage(self, stage: str) -> None:
        self.progress.stage, self.progress.epoch, self.progress.step = stage, 0, 0
        self.totals = EpochTotals()
        self.optimizer = self._make_optimizer(stage)
        self.scheduler = self._make_scheduler(stage)

    def _batches(self, stage: str, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.config.seed, STAGES.index(stage), epoch]).permutation(len(self.data))
        batch = self.config.stages.batch_size
        return [order[i * batch : (i + 1) * batch] for i in range(self._stage_steps(stage, epoch))]

    def _run_epoch(self, stage: str, started: float) -> None:
        batches = self._batches(stage, self.progress.epoch)
        if self.progress.step == 0:
            self.totals = EpochTotals()
        self._set_modes(stage)
        with progress_bar() as bar:
            task = bar.add_task(f"{stage} epoch {self.progress.epoch + 1}", total=len(batches), completed=self.progress.step, status="")
            for step in range(self.progress.step, len(batches)):
                losses, indices = self._train_step(stage, batches[step])
                self.totals.add(losses, indices, self.config.vq.codebook_size)
                self.progress.step = step + 1
                status = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
                bar.update(task, advance=1, status=status)
                if self.progress.step % 20 == 0:
                    logger.debug("%s epoch %d step %d/%d: %s", stage, self.progress.epoch + 1, self.progress.step, len(batches), status)
                if self.progress.step % self.config.stages.checkpoint_every_steps == 0:
                    self.progress.elapsed_s = time.perf_counter() - started
                    self._save_checkpoint()
        self._log_epoch(stage, started)

    def _set_modes(self, stage: str) -> None:
        vqvae = self.models.vqvae
        vqvae.train(stage == "joint")
        self.models.student.train(stage == "joint")
        self.models.student.tail.train(False)
        vqvae.decoder.train(True)
        if stage == "identity" and self.config.stages.identity_trains_encoder:
            vqvae.encoder.train(True)
            vqvae.quantizer.train(self.config.stages.identity_updates_codebook)

    def _log_epoch(self, stage: str, started: float) -> None:
        steps = max(1, self.totals.steps)
        means = {name: total / steps for name, total in self.totals.loss_sums.items()}
        usage = self._usage(self.totals.code_counts)
        elapsed_s = time.perf_counter() - started
        record = {"stage": stage, "epoch": self.progress.epoch + 1, **means, **usage, "elapsed_s": round(elapsed_s, 1)}
        self.progress.history.append(record)
        logger.info(
            "%s epoch %d: %s elapsed=%.0fs",
            stage, self.progress.epoch + 1, " ".join(f"{k}={v:.4f}" for k, v in {**means, **usage}.items()), elapsed_s,
        )

    def _usage(self, code_counts: torch.Tensor | None) -> dict[str, float]:
        """Codebook perplexity and the number of codes unused during the epoch."""
        if code_counts is None:
            return {}
        # codebook_usage takes indices, so the counts are expanded back into a sorted index list.
        indices = torch.repeat_interleave(torch.arange(len(code_counts)), code_counts)
        perplexity, unused = codebook_usage(indices, self.config.vq.codebook_size)
        return {"perplexity": perplexity, "unused_codes": unused}

    # ----- one step ----------------------------------------------------------------------

    def _batch_tensors(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Return encoder input, reconstruction target, teacher embeddings, teacher features and standardised hint maps.

        The hint maps are None without the encoder hint.
        """
        rows = np.sort(rows)
        views = self._pick_views(len(rows)).numpy()
        params = self.data.view_params
        if params is None:
            params = chip_and_flip_params(len(self.data))
        chips = render_views(self.data.chips[rows], params[rows, views])
        embeddings = torch.from_numpy(self.data.embeddings[rows, views])
        features = torch.from_numpy(self.data.features[rows, views].astype(np.float32))
        hints = None
        if self.hint_mean is not None:
            raw = torch.from_numpy(self.data.hint_maps[rows, views].astype(np.float32))
            hints = (raw - self.hint_mean) / self.hint_std
        return self._jitter(chips), chips, embeddings, features, hints

    def _pick_views(self, n: int) -> torch.Tensor:
        """Draw one labelled view per sample: the chip, its flip (``flip_augment``) or an augmented view."""
        choices = [0] + ([1] if self.config.flip_augment else []) + list(range(2, self.data.n_views))
        picks = torch.randint(0, len(choices), (n,), generator=self.generator)
        return torch.tensor(choices)[picks]

    def _jitter(self, chips: torch.Tensor) -> torch.Tensor:
        # NOTE: this jitter is applied after labelling, so a jittered input keeps the label of the
        # unjittered view. New configs set color_jitter to 0 and jitter through labelled views (augment).
        strength = self.config.color_jitter
        if strength == 0:
            return chips
        n = chips.shape[0]
        brightness = 1.0 + (torch.rand(n, 1, 1, 1, generator=self.generator) * 2 - 1) * strength
        contrast = 1.0 + (torch.rand(n, 1, 1, 1, generator=self.generator) * 2 - 1) * strength
        mean = chips.mean(dim=(1, 2, 3), keepdim=True)
        return ((chips - mean) * contrast + mean * brightness).clamp(0.0, 255.0)

    def _train_step(self, stage: str, rows: np.ndarray) -> tuple[dict[str, float], torch.Tensor]:
        inputs, originals, target_embeddings, target_features, target_hints = self._batch_tensors(rows)
        if stage == "joint":
            if self.label_tail is not None:
                inputs, target_embeddings, target_features = self._mix_views(inputs, target_embeddings, target_features)
            losses, indices = self._joint_losses(inputs, target_embeddings, target_features, target_hints)
        else:
            losses, indices = self._identity_losses(originals, target_embeddings)
        total = sum(losses.values())
        if not torch.isfinite(total):
            terms = " ".join(f"{name}={float(value.detach()):.4g}" for name, value in losses.items())
            raise self._diverged(stage, f"the loss is {float(total.detach())} ({terms})")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self._trainable(stage), 5.0)
        self.optimizer.step()
        self.scheduler.step()
        # A finite loss can still come with an infinite gradient. Checking the weights after every
        # step keeps NaN weights out of the next checkpoint, which every resumed run would start from.
        bad = self._non_finite_tensor()
        if bad is not None:
            raise self._diverged(stage, f"this step's update made {bad} NaN or infinite")
        return {name: float(value.detach()) for name, value in losses.items()}, indices

    def _mix_views(
        self, inputs: torch.Tensor, target_embeddings: torch.Tensor, target_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Replace the first ``augment.mixup_fraction`` of the batch with mixes of two of its views, labelled now."""
        n_mixed = round(len(inputs) * self.config.augment.mixup_fraction)
        if n_mixed == 0:
            return inputs, target_embeddings, target_features
        partners = torch.randint(0, len(inputs), (n_mixed,), generator=self.generator)
        weights = torch.rand(n_mixed, 1, 1, 1, generator=self.generator)
        mixed = weights * inputs[:n_mixed] + (1 - weights) * inputs[partners]
        with torch.no_grad():
            trunk = teacher_trunk(self.models.teacher, mixed, self.config.student.tail_blocks)
            embeddings = self.label_tail(trunk)
        return (
            torch.cat([mixed, inputs[n_mixed:]]),
            torch.cat([embeddings, target_embeddings[n_mixed:]]),
            torch.cat([trunk, target_features[n_mixed:]]),
        )

    def _joint_losses(
        self, inputs: torch.Tensor, target_embeddings: torch.Tensor, target_features: torch.Tensor, target_hints: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        weights = self.config.loss
        vqvae, student = self.models.vqvae, self.models.student
        z = vqvae.encoder(inputs)
        quantized = vqvae.quantizer(z)
        trunk = student.trunk_features(quantized.indices, code_vectors=quantized.quantized)
        embeddings = student.tail(trunk)
        losses = {
            "commit": self.config.vq.commitment_weight * quantized.commitment_loss,
            **self._distillation_losses(trunk, embeddings, target_embeddings, target_features),
        }
        if weights.reconstruction_fraction > 0:
            decoded = max(1, round(len(inputs) * weights.reconstruction_fraction))
            reconstruction = vqvae.decoder(quantized.quantized[:decoded])
            losses = {"recon": weights.reconstruction * reconstruction_loss(reconstruction, inputs[:decoded]), **losses}
        if self.models.hint_head is not None and target_hints is not None:
            losses["hint"] = weights.encoder_hint * hint_loss(self.models.hint_head(z), target_hints)
        self._restart_dead_codes(z)
        return losses, quantized.indices.detach()

    def _restart_dead_codes(self, z: torch.Tensor) -> None:
        """Restart rarely used codes on encoder outputs, once every ``RESTART_EVERY_STEPS`` steps of the stage."""
        if (self.scheduler.last_epoch + 1) % RESTART_EVERY_STEPS == 0:
            restarted = self.models.vqvae.quantizer.restart_dead_codes(z, self.config.vq.dead_code_threshold, self.generator)
            if restarted:
                logger.debug("restarted %d dead codes", restarted)

    def _identity_losses(self, originals: torch.Tensor, target_embeddings: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        weights = self.config.loss
        vqvae = self.models.vqvae
        trains_encoder = self.config.stages.identity_trains_encoder
        # The quantiser is in eval mode in this stage, so the codebook keeps its vectors, unless
        # stages.identity_updates_codebook put it in train mode (EMA updates).
        with torch.set_grad_enabled(trains_encoder):
            z = vqvae.encoder(originals)
            quantized = vqvae.quantizer(z)
        reconstruction = vqvae.decoder(quantized.quantized)
        identity = cosine_loss(self.models.teacher(reconstruction) - self.embedding_mean, target_embeddings - self.embedding_mean)
        losses = {
            "recon": weights.reconstruction * reconstruction_loss(reconstruction, originals),
            "identity": weights.identity * identity,
        }
        if trains_encoder:
            losses["commit"] = self.config.vq.commitment_weight * quantized.commitment_loss
        if self.config.stages.identity_updates_codebook:
            self._restart_dead_codes(z)
        return losses, quantized.indices.detach()

    # ----- checkpoints -------------------------------------------------------------------

    def _diverged(self, stage: str, cause: str) -> TrainingDivergedError:
        """Build the error for a non-finite value met at the current step of ``stage``."""
        rate_key = "learning_rate" if stage == "joint" else "identity_learning_rate"
        rate = getattr(self.config.stages, rate_key)
        checkpoint_note = (
            f"the last checkpoint, {self.checkpoint_path} ({self.saved_at}), is kept"
            if self.saved_at
            else "no checkpoint was written yet"
        )
        return TrainingDivergedError(
            f"training diverged at stage {stage}, epoch {self.progress.epoch + 1}, step {self.progress.step + 1}: "
            f"{cause}; nothing was exported and {checkpoint_note}; lower stages.{rate_key} (now {rate:g}) and run again"
        )

    def _non_finite_tensor(self) -> str | None:
        """Return the name of the first module state tensor with NaN or infinite values, or None."""
        for module, state in self._module_states().items():
            for name, value in state.items():
                if value.is_floating_point() and not torch.isfinite(value).all():
                    return f"{module}.{name}"
        return None

    def _state(self) -> dict:
        return {
            "config_sha256": self.fingerprint,
            "config_settings": self.settings,
            **self._module_states(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": vars(self.progress),
            "epoch_totals": vars(self.totals),
            "generator": self.generator.get_state(),
        }

    def _position(self) -> str:
        return f"stage {self.progress.stage}, epoch {self.progress.epoch + 1}, step {self.progress.step}"

    def _save_checkpoint(self) -> None:
        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX, suffix=TEMPORARY_SUFFIX)
        os.close(handle)
        try:
            torch.save(self._state(), temporary)
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)
        self.saved_at = self._position()

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary files that a checkpoint write killed midway (SIGKILL, a crash) left behind."""
        # No other run writes here meanwhile: train_command holds the model id's lock.
        folder = self.checkpoint_path.parent
        if not folder.is_dir():
            return
        for entry in sorted(folder.iterdir()):
            if _TEMPORARY_NAME.fullmatch(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)
                logger.info("deleted %s, left by a checkpoint write that did not finish", entry)

    def _read_checkpoint(self) -> dict | None:
        """Return the checkpoint's state, or None when there is none or it cannot be used (logged)."""
        path = self.checkpoint_path
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            logger.warning("checkpoint %s is damaged (%s); starting afresh", path, error)
            return None
        if not isinstance(state, dict) or "config_sha256" not in state:
            logger.warning("checkpoint %s is not a vqbench training checkpoint; starting afresh", path)
            return None
        return state

    def _matches(self, state: dict) -> bool:
        """Tell whether a checkpoint was made with this run's settings."""
        if state["config_sha256"] == self.fingerprint:
            return True
        # Checkpoints written before the settings were stored used the older fingerprint.
        return "config_settings" not in state and state["config_sha256"] == self.legacy_fingerprint

    def _stash_path(self, fingerprint: str) -> Path:
        return self.checkpoint_path.with_name(f"last.{fingerprint[:STASH_PREFIX_CHARS]}.pt")

    def _stash(self, state: dict) -> None:
        """Rename a checkpoint of other settings out of the way, so that it is not overwritten."""
        stash_path = self._stash_path(state["config_sha256"])
        restorable = any(self._stash_path(fingerprint).is_file() for fingerprint in (self.fingerprint, self.legacy_fingerprint))
        os.replace(self.checkpoint_path, stash_path)
        logger.warning(
            "checkpoint %s was made with other settings (%s); kept it as %s, which a run with those settings "
            "resumes from, and %s",
            self.checkpoint_path, self._setting_differences(state), stash_path,
            "resuming from the checkpoint kept for these settings" if restorable else "starting afresh",
        )

    def _unstash(self) -> dict | None:
        """Move back a checkpoint of this run's settings that an earlier run had renamed, and return its state."""
        for fingerprint in (self.fingerprint, self.legacy_fingerprint):
            stash_path = self._stash_path(fingerprint)
            if not stash_path.is_file():
                continue
            os.replace(stash_path, self.checkpoint_path)
            state = self._read_checkpoint()
            if state is not None and self._matches(state):
                logger.info("restored the checkpoint of these settings from %s", stash_path)
                return state
            if state is not None:
                self._stash(state)
        return None

    def _setting_differences(self, state: dict) -> str:
        recorded = state.get("config_settings")
        if not isinstance(recorded, dict):
            return "it does not record its settings, so the keys that differ are unknown"
        before, now = _flatten(recorded), _flatten(self.settings)
        keys = sorted(key for key in before.keys() | now.keys() if before.get(key, "unset") != now.get(key, "unset"))
        if not keys:
            return "no setting differs, but the fingerprint does"
        listed = [f"{key} {before.get(key, 'unset')!r} there, {now.get(key, 'unset')!r} here" for key in keys[:MAX_REPORTED_DIFFERENCES]]
        more = len(keys) - len(listed)
        return "; ".join(listed) + (f"; and {more} more" if more > 0 else "")

    def _resume(self) -> None:
        state = self._read_checkpoint()
        if state is not None and not self._matches(state):
            self._stash(state)
            state = None
        if state is None:
            state = self._unstash()
        if state is None:
            return
        self._load_module_states(state)
        self.progress = Progress(**state["progress"])
        self._restore_totals(state.get("epoch_totals"))
        self.optimizer = self._make_optimizer(self.progress.stage)
        self.scheduler = self._make_scheduler(self.progress.stage)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.saved_at = self._position()
        # A warning, so that it shows without -v: a rerun, even with --overwrite, continues this
        # checkpoint, and one that finished only exports its weights again.
        logger.warning("resuming from checkpoint %s at %s; delete that file to train from new weights",
                       self.checkpoint_path, self.saved_at)

    def _restore_totals(self, saved: dict | None) -> None:
        """Restore the running sums of the epoch the checkpoint stopped in."""
        self.totals = EpochTotals(**saved) if saved is not None else EpochTotals()
        if self.progress.step > 0 and self.totals.steps != self.progress.step:
            # Checkpoints written before the sums were stored lack them, so the record covers only the remaining steps.
            logger.warning(
                "checkpoint %s has no running loss sums for %s, so that epoch's history record covers only the "
                "steps after the resume",
                self.checkpoint_path, self._position(),
            )
            self.totals = EpochTotals()


@dataclass
class EmbedModels:
    """The edge-embed baseline and the frozen teacher."""

    embedder: EdgeEmbedder
    teacher: DlibResNet


def build_embed_models(config: TrainConfig, teacher: DlibResNet) -> EmbedModels:
    """Create a freshly initialised edge embedder (seeded by the caller)."""
    student = config.student
    embedder = EdgeEmbedder(
        vq_shape(config), teacher, width=student.width, blocks=student.blocks, tune_tail=student.tune_tail,
        tail_blocks=student.tail_blocks,
    )
    teacher.requires_grad_(False)
    return EmbedModels(embedder, teacher.eval())


class EmbedTrainer(Trainer):
    """Stage ``joint`` only, with the distillation losses; there are no codes and no decoder."""

    models: EmbedModels  # type: ignore[assignment]

    def _trainable(self, stage: str) -> list[torch.nn.Parameter]:
        return [p for p in self.models.embedder.parameters() if p.requires_grad]

    def _stage_epochs(self, stage: str) -> float:
        return float(self.config.stages.joint_epochs) if stage == "joint" else 0.0

    def _set_modes(self, stage: str) -> None:
        self.models.embedder.train(True)
        self.models.embedder.head.tail.train(False)

    def _joint_losses(
        self, inputs: torch.Tensor, target_embeddings: torch.Tensor, target_features: torch.Tensor, target_hints: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        # The config rejects loss.encoder_hint for kind edge-embed, so target_hints is always None here.
        trunk = self.models.embedder.trunk_features(inputs)
        embeddings = self.models.embedder.head.tail(trunk)
        return self._distillation_losses(trunk, embeddings, target_embeddings, target_features), torch.zeros(1, dtype=torch.long)

    def _finish(self) -> None:
        pass

    def _usage(self, code_counts: torch.Tensor | None) -> dict[str, float]:
        return {}

    def _module_states(self) -> dict:
        return {"embedder": self.models.embedder.state_dict()}

    def _load_module_states(self, state: dict) -> None:
        self.models.embedder.load_state_dict(state["embedder"])


def check_initial_model(folder: Path, people: frozenset[str], output_dir: Path) -> "VQModelCard":
    """Verify that ``init_from`` names a usable VQ model folder and return its card.

    The folder must hold a VQ model trained on exactly ``people``, so that the new card's
    training people, and with them the folds the runner allows, stay true. It must not be the
    folder this run writes, which would overwrite the weights it starts from.
    """
    from vqbench.models.vq_card import load_vq_card

    if folder.resolve() == output_dir.resolve():
        raise ModelError(f"init_from {folder} is the folder this run writes; start from another model folder")
    card = load_vq_card(folder)
    if card.kind != "vq":
        raise ModelError(f"init_from {folder} is an {card.kind} model; start from a VQ model folder")
    if card.training_people != people:
        raise ModelError(
            f"init_from {folder} was trained on other people than this config selects; "
            "use a model trained with the same data settings"
        )
    return card


def load_initial_weights(models: Models, card: "VQModelCard", config: TrainConfig) -> dict:
    """Load a checked model folder's VQ-VAE and student weights into ``models``; return what the card records.

    When ``vq.decoder_widths`` differs from the source's, the decoder keeps its new weights and
    everything else is loaded, so that stage identity can train a decoder of another size on
    the source's codes. The decoder runs in the cloud, so its size leaves the edge unchanged.
    """
    from vqbench.models.files import sha256_file
    from vqbench.training.export import WEIGHTS_FILE

    weights = card.folder / WEIGHTS_FILE
    state = torch.load(weights, map_location="cpu", weights_only=True)
    architecture = card.data.get("architecture", {})
    source_vq = architecture.get("vq", {}) if isinstance(architecture, dict) else {}
    source_widths = source_vq.get("decoder_widths") if isinstance(source_vq, dict) else None
    new_decoder = source_widths is not None and list(source_widths) != list(config.vq.decoder_widths)
    try:
        if new_decoder:
            if config.stages.joint_epochs > 0:
                raise ModelError(
                    f"init_from {card.folder}: vq.decoder_widths is {source_widths} there and "
                    f"{list(config.vq.decoder_widths)} here, which trains a new decoder on the source's codes; "
                    "set stages.joint_epochs to 0 so that the codes stay as they are, or use the same decoder_widths"
                )
            without_decoder = {key: value for key, value in state["vqvae"].items() if not key.startswith("decoder.")}
            missing, unexpected = models.vqvae.load_state_dict(without_decoder, strict=False)
            if unexpected or any(not key.startswith("decoder.") for key in missing):
                raise RuntimeError(f"missing keys {missing}, unexpected keys {unexpected}")
            logger.info("the decoder starts from new weights: decoder_widths %s there, %s here",
                        list(source_widths), list(config.vq.decoder_widths))
        else:
            models.vqvae.load_state_dict(state["vqvae"])
        models.student.load_state_dict(state["student"])
    except (KeyError, RuntimeError) as error:
        raise ModelError(
            f"init_from {card.folder}: its weights do not fit this config ({_shape_differences(card, config, error)}); "
            "use the same vq and student settings"
        ) from error
    models.student.set_codebook(models.vqvae.quantizer.codebook)
    logger.info("starting from the weights of %s (%s)", card.model_id, weights)
    training = card.data.get("training", {})
    # A chain of init_from runs adds up: the source's own total already includes its sources.
    source_time_s = training.get("training_time_total_s", training.get("training_time_s"))
    return {"model_id": card.model_id, "weights_sha256": sha256_file(weights), "training_time_s": source_time_s}


def _shape_differences(card: "VQModelCard", config: TrainConfig, error: Exception) -> str:
    """Name the vq and student settings in which the source card's recipe differs from ``config``."""
    recorded = card.data.get("training", {}).get("config")
    if not isinstance(recorded, dict):
        return str(error).splitlines()[0]
    current = portable_settings(config)
    differences = [
        f"{section}.{key} is {recorded[section].get(key)!r} there and {value!r} here"
        for section in ("vq", "student")
        for key, value in current[section].items()
        if isinstance(recorded.get(section), dict) and recorded[section].get(key, value) != value
    ]
    return "; ".join(differences) if differences else str(error).splitlines()[0]


#: Top-level settings that do not change the trained weights: the thread count and the int8 export.
_UNTRAINED_SETTINGS = {"threads", "quantize_int8"}


def training_recipe(settings: dict) -> dict:
    """Return ``portable_settings`` output without the settings that do not change the trained weights.

    Those are the thread count, the int8 export and ``stages.checkpoint_every_steps``.
    """
    recipe = {key: value for key, value in settings.items() if key not in _UNTRAINED_SETTINGS}
    if isinstance(recipe.get("stages"), dict):
        recipe["stages"] = {key: value for key, value in recipe["stages"].items() if key != "checkpoint_every_steps"}
    return recipe


def fingerprint_settings(config: TrainConfig, initial: dict | None = None, data: PreparedSet | None = None) -> dict:
    """Return the settings that shape the trained weights, as plain data.

    Left out: paths (output, data, cache and ``init_from`` folders), the thread count, the int8
    export and ``stages.checkpoint_every_steps``. A run that starts from another model depends on
    that model's weights, so their SHA-256 counts, while the spelling of the ``init_from`` path
    does not. With ``data``, the SHA-256 of its per-image people takes the place of the data folder's path.
    """
    settings = training_recipe(portable_settings(config))
    if initial is not None:
        settings["init_from_weights_sha256"] = initial["weights_sha256"]
    if data is not None:
        names = "".join(f"{name}\n" for name in data.identities.tolist())
        settings["training_images"] = {"count": len(data), "people_sha256": hashlib.sha256(names.encode()).hexdigest()}
    return settings


def settings_fingerprint(settings: dict) -> str:
    """Return the SHA-256 of ``fingerprint_settings``' result."""
    return hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()


def config_fingerprint(config: TrainConfig, initial: dict | None = None, data: PreparedSet | None = None) -> str:
    """Return the SHA-256 of the settings that shape training (see ``fingerprint_settings``)."""
    return settings_fingerprint(fingerprint_settings(config, initial, data))


def legacy_config_fingerprint(config: TrainConfig, initial: dict | None = None) -> str:
    """Return the fingerprint that checkpoints without stored settings carry.

    It covered ``stages.checkpoint_every_steps`` and not the training images, so such a
    checkpoint resumes only when that value is unchanged.
    """
    relevant = portable_settings(config, exclude=_UNTRAINED_SETTINGS)
    if initial is not None:
        relevant["init_from_weights_sha256"] = initial["weights_sha256"]
    return hashlib.sha256(repr(sorted(relevant.items())).encode()).hexdigest()


def _flatten(settings: dict, prefix: str = "") -> dict[str, object]:
    """Flatten nested settings to dotted keys, such as ``stages.learning_rate``."""
    flat: dict[str, object] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
