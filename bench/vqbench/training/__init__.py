"""Training of VQ-VAE operating points: ``train_command(config_path)`` is ``vqbench train CONFIG``.

Modules: ``config`` (the YAML schema), ``data`` (training people, prepared chips and teacher
targets), ``losses``, ``loop`` (the two stages, checkpoints) and ``export`` (ONNX, card).
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from vqbench.errors import VqbenchError

if TYPE_CHECKING:
    from vqbench.training.config import TrainConfig
    from vqbench.training.data import PreparedSet

logger = logging.getLogger(__name__)

#: Exit status after SIGTERM: 128 + the signal number, the status a shell reports for a process that SIGTERM killed.
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


class TrainingTerminated(KeyboardInterrupt):
    """SIGTERM during ``train_command``, raised like Ctrl-C so that the same cleanup and message apply."""


def train_command(config_path: Path, overwrite: bool = False) -> Path:
    """Train the model described by ``config_path`` and write its folder; return the folder.

    The model folder is ``output_dir`` from the config, else the config file's own folder when
    it is named after the model id, else ``models/<model_id>``. A folder that already contains a
    model card is replaced only with ``overwrite``. The output folder, the shapes and an
    ``init_from`` model are checked before the data preparation, which takes minutes on a first
    run. Checkpoints go to ``<cache>/checkpoints/<model_id>/last.pt``, and running the command
    again with the same settings resumes from there (and only re-exports when training had finished).
    While a run trains, a second run with the same cache fails at once when it has the same
    model id or the same output folder.

    Ctrl-C raises KeyboardInterrupt, which ``vqbench train`` turns into exit status 130. SIGTERM
    prints the same message about the kept checkpoint and then raises ``SystemExit(143)``, so a
    supervisor gets the exit status of a process ended by SIGTERM. SIGTERM is handled this way only
    when the call runs in the main thread and no other SIGTERM handler is installed.
    """
    with _sigterm_as_interrupt():
        try:
            return _train(config_path, overwrite)
        except TrainingTerminated:
            raise SystemExit(SIGTERM_EXIT_CODE) from None


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Raise ``TrainingTerminated`` on SIGTERM inside the block, unless SIGTERM already has a handler."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        # A second SIGTERM, while the first one unwinds, ends the process at once.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise TrainingTerminated

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _train(config_path: Path, overwrite: bool) -> Path:
    """Run ``train_command`` without its SIGTERM handling."""
    import numpy as np
    import torch

    from vqbench.console import console
    from vqbench.data.cache import default_cache_dir
    from vqbench.models.teacher_torch import load_torch_teacher
    from vqbench.scenario import default_data_dir, expand_path
    from vqbench.training.config import load_train_config
    from vqbench.training.data import select_training_people, training_image_paths
    from vqbench.training.export import CALIBRATION_CHIPS, check_output_folder, export_embed_model, export_model
    from vqbench.training.loop import (
        EmbedTrainer, Trainer, build_embed_models, build_models, check_initial_model, load_initial_weights,
    )

    config_path = Path(config_path).resolve()
    config = load_train_config(config_path)
    base = config_path.parent
    root = expand_path(config.data.root, base) if config.data.root else default_data_dir() / "lfw"
    cache_dir = expand_path(config.data.cache_dir, base) if config.data.cache_dir else default_cache_dir()
    output_dir = _output_dir(config, base)

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)

    people = select_training_people(root, config.data.train_folds, config.data.include_unpaired_people)
    paths = training_image_paths(root, people.people)
    if config.data.max_images:
        paths = paths[: config.data.max_images]
    logger.info("training %s on %d images of %d eligible people (folds %s)", config.model_id, len(paths), len(people.people), people.train_folds)
    # Everything that can fail without the data is checked before the long data preparation.
    source = check_initial_model(expand_path(config.init_from, base), people.people, output_dir) if config.init_from else None
    check_output_folder(output_dir, overwrite, config)
    # The models are built right after seeding, so their initial weights depend on the seed alone,
    # and a config whose shapes do not fit fails here.
    initial = None
    if config.kind == "edge-embed":
        embed_models = build_embed_models(config, load_torch_teacher())
    else:
        models = build_models(config, load_torch_teacher())
        initial = load_initial_weights(models, source, config) if source else None
    checkpoint = cache_dir / "checkpoints" / config.model_id / "last.pt"
    output_key = hashlib.sha256(str(output_dir.resolve()).encode()).hexdigest()[:16]
    with (
        _exclusive(checkpoint.parent / "train.lock", f"another `vqbench train` of model {config.model_id!r} is already "
                   "running", "give this config another model_id"),
        _exclusive(cache_dir / "locks" / f"output-{output_key}.lock", f"another `vqbench train` is already writing "
                   f"{output_dir}", "set output_dir to another folder"),
    ):
        data = _prepare_data(config, paths, cache_dir / "training")
        calibration = data.chips[np.random.default_rng(config.seed).permutation(len(data))[:CALIBRATION_CHIPS]]
        try:
            if config.kind == "edge-embed":
                progress = EmbedTrainer(config, data, embed_models, checkpoint).run()  # type: ignore[arg-type]
                export_embed_model(config, embed_models, output_dir, progress, people, len(data), calibration)
            else:
                progress = Trainer(config, data, models, checkpoint, initial).run()
                export_model(config, models, output_dir, progress, people, len(data), calibration, initial)
        except KeyboardInterrupt:
            console.print(
                f"[yellow]interrupted:[/] the last checkpoint ({checkpoint}, written every "
                f"{config.stages.checkpoint_every_steps} steps and after every epoch) is kept and {output_dir} is "
                "unchanged; run the same command again to resume",
                highlight=False,
            )
            raise
    logger.info("trained %s in %.0f s and wrote %s", config.model_id, progress.elapsed_s, output_dir)
    return output_dir


@contextmanager
def _exclusive(lock_path: Path, busy: str, alternative: str) -> Iterator[None]:
    """Hold the file lock ``lock_path`` for the block; raise VqbenchError at once when another process holds it.

    Two runs of one model id would overwrite each other's checkpoints, and two runs with one
    output folder each other's model. The operating system releases a lock when its process
    ends, even when it is killed.
    """
    from filelock import FileLock, Timeout

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise VqbenchError(f"{busy} (lock file {lock_path}); wait for it to finish, or {alternative}") from None
    try:
        yield
    finally:
        lock.release()


def _output_dir(config: "TrainConfig", base: Path) -> Path:
    """Return the model folder to write (see ``train_command``)."""
    from vqbench.errors import ScenarioError
    from vqbench.models.cards import MODELS_DIR
    from vqbench.models.vq_card import default_models_dir
    from vqbench.scenario import expand_path

    if config.output_dir:
        output_dir = expand_path(config.output_dir, base)
        models_dirs = {MODELS_DIR.resolve(), default_models_dir().resolve()}
        if output_dir.resolve().parent in models_dirs and output_dir.name != config.model_id:
            # Runs look a model up by its folder name, so the card would be rejected when loaded.
            raise ScenarioError(
                f"output_dir {output_dir} is in the models folder under the name {output_dir.name!r}, but the model_id "
                f"is {config.model_id!r}; set output_dir to {output_dir.parent / config.model_id}, or leave it out"
            )
        return output_dir
    if base.name == config.model_id:
        return base
    return default_models_dir() / config.model_id


def _prepare_data(config: "TrainConfig", paths: list[Path], cache_dir: Path) -> "PreparedSet":
    """Align and label the training images, with augmented views, tail inputs and hint maps, from or into ``cache_dir``."""
    from vqbench.console import console
    from vqbench.training.data import add_hint_maps, add_teacher_views, prepare_training_set, relabel_tail_inputs

    try:
        data = prepare_training_set(paths, cache_dir)
        data = add_teacher_views(data, config.augment, config.seed, cache_dir)
        data = relabel_tail_inputs(data, config.student.tail_blocks, cache_dir)
        if config.loss.encoder_hint > 0:
            data = add_hint_maps(data, config.vq.grid, cache_dir)
        return data
    except KeyboardInterrupt:
        # Each cache file is written whole or not at all, so only the unfinished step is lost.
        console.print(
            f"[yellow]interrupted:[/] data preparation stopped; the steps it finished are cached in {cache_dir}, "
            "and running the same command again repeats only the unfinished one",
            highlight=False,
        )
        raise
