"""Export a trained model folder: weights, ONNX graphs, an int8 edge encoder and the model card.

Files written into ``models/<model-id>/``:

    weights.pt               VQ-VAE and student state dicts, stored as float16 to keep the file small
    edge_encoder.onnx        chips (N,3,150,150) float32 on 0..255 -> indices (N,H',W') int64
    edge_encoder.int8.onnx   the same with int8 convolutions (static QDQ quantisation, optional)
    decoder.onnx             indices -> reconstructed chips (N,3,150,150) float32 on 0..255
    student.onnx             indices -> embeddings (N,128) float32 in the teacher's space
    training_people.txt      the people trained on, one per line, sorted
    card.json                the card: architecture, footprint, training data, metrics, SHA-256s

An edge-embed model has ``embedder.onnx`` and ``embedder.int8.onnx`` in place of the three
graphs. The files are written into a temporary sibling folder that then replaces the model
folder (``staged_model_folder``), so a failed export leaves the old folder as it was. Other
entries of the old folder, such as the ``train.yaml`` the user wrote, move into the new one.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import stat
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from vqbench.errors import ScenarioError
from vqbench.models.graph_stats import count_macs, count_params
from vqbench.models.vq_card import CARD_FILE, CARD_FORMAT, PEOPLE_FILE, sha256_of
from vqbench.models.vqvae import CloudDecoder, EdgeEncoder
from vqbench.pipelines.payload import HEADER_BYTES, PayloadFormat
from vqbench.training.config import TrainConfig, portable_settings
from vqbench.training.data import TrainingPeople
from vqbench.training.loop import EmbedModels, Models, Progress, training_recipe

if TYPE_CHECKING:
    from onnxruntime.quantization import CalibrationDataReader

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
WEIGHTS_FILE = "weights.pt"
CALIBRATION_CHIPS = 128
#: Every file an export writes. Other entries of a model folder are the user's and are kept.
MODEL_FILES = frozenset({
    WEIGHTS_FILE, PEOPLE_FILE, CARD_FILE, "edge_encoder.onnx", "edge_encoder.int8.onnx", "decoder.onnx",
    "student.onnx", "embedder.onnx", "embedder.int8.onnx",
})


def check_output_folder(folder: Path, overwrite: bool, config: TrainConfig) -> None:
    """Raise ScenarioError unless an export can later replace ``folder``.

    The folder must be a folder or not exist yet, its nearest existing parent must be a writable
    folder (the export writes a sibling folder there), and a folder that contains a model card
    is replaced only with ``overwrite``.
    """
    # A symbolic link to a model folder is followed, so that the export replaces the linked folder.
    folder = folder.resolve()
    if folder.exists() and not folder.is_dir():
        raise ScenarioError(f"output_dir {folder} is a file; set output_dir to a folder")
    parent = folder.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ScenarioError(f"output_dir {folder} cannot be created because {parent} is a file; set output_dir to a folder elsewhere")
    for needed in (parent, folder) if folder.is_dir() else (parent,):
        if not os.access(needed, os.W_OK | os.X_OK):
            raise ScenarioError(f"output_dir {folder} cannot be written because {needed} is not writable; set output_dir to a writable folder")
    card = folder / CARD_FILE
    if not card.exists():
        return
    if overwrite:
        logger.warning("the model in %s will be replaced when training ends (--overwrite)", folder)
        return
    elsewhere = "set output_dir to another folder" if config.output_dir else "change model_id or set output_dir"
    raise ScenarioError(
        f"{folder} already contains {_describe_card(card, config)}; to keep it, {elsewhere}, "
        "or pass --overwrite to replace it"
    )


def _describe_card(card_path: Path, config: TrainConfig) -> str:
    """Describe the model whose card is at ``card_path``, including whether this config's settings trained it."""
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"a model ({card_path.name})"
    if not isinstance(card, dict):
        return f"a model ({card_path.name})"
    name = f"model {card.get('model_id', '?')!r}"
    training = card.get("training")
    recorded = training.get("config") if isinstance(training, dict) else None
    if isinstance(recorded, dict) and training_recipe(recorded) == training_recipe(portable_settings(config)):
        # The same recipe again still retrains or re-exports, and the new card has no metrics yet.
        if card.get("metrics"):
            return f"{name}, trained with these settings, whose card would lose its recorded metrics"
        return f"{name}, trained with these settings"
    return name


@contextmanager
def staged_model_folder(folder: Path) -> Iterator[Path]:
    """Yield an empty sibling folder for the model files, and put it in place of ``folder`` when the block succeeds.

    Entries of the old folder that are not model files (``MODEL_FILES``) move into the new one.
    On an error, the old folder is restored and the new files are deleted.
    """
    folder = folder.resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".export"))
    try:
        # mkdtemp creates the folder readable by its owner only, but a model folder is meant to be shared.
        mode = stat.S_IMODE(folder.stat().st_mode) if folder.is_dir() else 0o755
        os.chmod(staging, mode)
        yield staging
        _swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, folder: Path) -> None:
    """Replace ``folder`` by ``staging``, carrying over the old folder's other entries."""
    if not folder.exists():
        os.replace(staging, folder)
        logger.info("wrote %s", folder)
        return
    # NOTE: two renames, not one atomic exchange. A process killed between them leaves no
    # ``folder``: the old files are then in the ``.old`` sibling and the new ones in ``staging``.
    previous = staging.with_name(staging.name + ".old")
    os.replace(folder, previous)
    carried: list[str] = []
    try:
        for entry in sorted(previous.iterdir()):
            if entry.name not in MODEL_FILES:
                os.replace(entry, staging / entry.name)
                carried.append(entry.name)
        os.replace(staging, folder)
    except BaseException:
        for name in carried:
            os.replace(staging / name, previous / name)
        os.replace(previous, folder)
        raise
    logger.info("replaced the model files in %s (kept %s)", folder, ", ".join(carried) or "no other files")
    try:
        shutil.rmtree(previous)
    except OSError as error:
        logger.warning("could not delete the replaced model files in %s (%s); delete that folder by hand", previous, error)


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> None:
    """Export ``module`` in eval mode with a dynamic batch axis."""
    module.eval()
    with warnings.catch_warnings():
        # The tracer warns that Python-side shape checks become constants. Only the batch axis is
        # dynamic and those checks read the fixed spatial sizes, so the warning does not apply.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # The TorchScript exporter (dynamo=False) is chosen on purpose: the committed models were
        # exported with it, and the index-graph check and int8 quantisation were verified on the
        # graphs it writes. PyTorch 2.9 and later warn that it is deprecated on every call.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    # torch.onnx.export restores the wrapper's own mode, which switches shared submodules to train.
    module.eval()


def quantize_edge_encoder(source: Path, target: Path, calibration_chips: np.ndarray) -> None:
    """Quantise the encoder's convolutions to int8 (static, QDQ, per channel) on calibration chips."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            batches = np.array_split(calibration_chips.astype(np.float32), max(1, len(calibration_chips) // 16))
            self._batches = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {"chips": batch}

    # onnxruntime's recommended preparation: shape inference and graph optimisation first.
    prepared = target.with_suffix(".prepared.onnx")
    quant_pre_process(str(source), str(prepared))
    try:
        _quantize(prepared, target, Reader())
    finally:
        prepared.unlink(missing_ok=True)


def _quantize(source: Path, target: Path, reader: "CalibrationDataReader") -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(source),
        str(target),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )


def footprint(models: Models, config: TrainConfig) -> dict[str, dict[str, int]]:
    """Parameters and MACs per face of each exported graph, counted by graph_stats."""
    grid = config.vq.grid
    edge = EdgeEncoder(models.vqvae).eval()
    decoder = CloudDecoder(models.vqvae).eval()
    return {
        "edge_encoder": {"params": count_params(edge), "macs": count_macs(edge, (1, 3, 150, 150))},
        "decoder": {"params": count_params(decoder), "macs": count_macs(decoder, (1, grid, grid), dtype=torch.long)},
        "student": {"params": count_params(models.student), "macs": count_macs(models.student.eval(), (1, grid, grid), dtype=torch.long)},
        "teacher": {"params": count_params(models.teacher), "macs": count_macs(models.teacher, (1, 3, 150, 150))},
    }


def export_model(
    config: TrainConfig,
    models: Models,
    output_dir: Path,
    progress: Progress,
    people: TrainingPeople,
    image_count: int,
    calibration_chips: np.ndarray,
    initial: dict | None = None,
) -> Path:
    """Write every file of the model folder and its card; return the card's path.

    ``initial`` describes the model whose weights started training (``init_from``), if any.
    """
    models.vqvae.eval()
    models.student.eval()
    models.student.set_codebook(models.vqvae.quantizer.codebook)

    with staged_model_folder(output_dir) as staging:
        _save_weights(models, staging / WEIGHTS_FILE)
        grid = config.vq.grid
        chips = torch.from_numpy(calibration_chips[:2]).permute(0, 3, 1, 2).float()
        indices = torch.zeros(2, grid, grid, dtype=torch.long)
        onnx_files = {"edge_encoder": "edge_encoder.onnx", "decoder": "decoder.onnx", "student": "student.onnx"}
        export_onnx(EdgeEncoder(models.vqvae), chips, staging / onnx_files["edge_encoder"], "chips", "indices")
        export_onnx(CloudDecoder(models.vqvae), indices, staging / onnx_files["decoder"], "indices", "chips")
        export_onnx(models.student, indices, staging / onnx_files["student"], "indices", "embeddings")
        if config.quantize_int8:
            onnx_files["edge_encoder_int8"] = "edge_encoder.int8.onnx"
            calibration = np.ascontiguousarray(calibration_chips.transpose(0, 3, 1, 2))
            quantize_edge_encoder(staging / onnx_files["edge_encoder"], staging / onnx_files["edge_encoder_int8"], calibration)

        (staging / PEOPLE_FILE).write_text("".join(f"{name}\n" for name in sorted(people.people)), encoding="utf-8")
        card = _card(config, models, progress, people, image_count, onnx_files)
        if initial is not None:
            card["training"]["init_from"] = initial
            source_s = initial["training_time_s"]
            # A source card without a training time leaves the total unknown rather than wrong.
            card["training"]["training_time_total_s"] = None if source_s is None else round(source_s + progress.elapsed_s, 1)
        _finish_card(staging, output_dir, card, onnx_files)
    return output_dir / CARD_FILE


def _save_weights(models: Models, path: Path) -> None:
    def half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.half() if value.is_floating_point() else value for key, value in state.items()}

    torch.save({"vqvae": half(models.vqvae.state_dict()), "student": half(models.student.state_dict())}, path)


def _card(config: TrainConfig, models: Models, progress: Progress, people: TrainingPeople, image_count: int, onnx_files: dict[str, str]) -> dict:
    payload = PayloadFormat(config.model_id, (config.vq.grid, config.vq.grid), config.vq.codebook_size)
    card = _card_common(config, progress, people, image_count, onnx_files)
    card["payload"] = {
        "grid": [config.vq.grid, config.vq.grid],
        "codebook_size": config.vq.codebook_size,
        "bits_per_index": payload.bits_per_index,
        "header_bytes": HEADER_BYTES,
        "max_payload_bytes": payload.max_bytes,
    }
    reused = config.student.tail_blocks
    card["architecture"] = {
        "vq": config.vq.model_dump(),
        "student": config.student.model_dump(),
        "teacher_tail": f"last {reused} residual block{'s' if reused > 1 else ''} + fc of dlib-resnet-v1",
    }
    card["footprint"] = footprint(models, config)
    return card


def _card_common(config: TrainConfig, progress: Progress, people: TrainingPeople, image_count: int, onnx_files: dict[str, str]) -> dict:
    return {
        "card_format": CARD_FORMAT,
        "model_id": config.model_id,
        "kind": config.kind,
        "onnx": onnx_files,
        "training": {
            "dataset": "LFW deep-funneled",
            "train_folds": list(people.train_folds),
            "include_unpaired_people": config.data.include_unpaired_people,
            "people": len(people.people),
            "people_sha256": people.sha256,
            "people_file": PEOPLE_FILE,
            "images": image_count,
            "seed": config.seed,
            "joint_epochs": config.stages.joint_epochs,
            "identity_epochs": config.stages.identity_epochs if config.kind == "vq" else 0,
            "training_time_s": round(progress.elapsed_s, 1),
            "threads": config.threads,
            "machine": platform.processor() or platform.machine(),
            "torch_version": torch.__version__,
            "history": progress.history,
            "config": portable_settings(config),
        },
        "metrics": {},
    }


def _finish_card(staging: Path, output_dir: Path, card: dict, onnx_files: dict[str, str]) -> None:
    """Add the SHA-256 of every model file to the card and write it into ``staging``.

    The model files are in ``staging``. The config ``train.yaml``, if the model folder
    ``output_dir`` has one, is hashed where it is, because it moves unchanged into the new folder.
    """
    paths = {name: staging / name for name in (WEIGHTS_FILE, PEOPLE_FILE, *onnx_files.values())}
    if (output_dir / "train.yaml").is_file():
        paths["train.yaml"] = output_dir / "train.yaml"
    card["files"] = {name: {"sha256": sha256_of(path), "bytes": path.stat().st_size} for name, path in paths.items()}
    write_card(staging, card)


def write_card(folder: Path, card: dict) -> None:
    """Write the card atomically."""
    handle, temporary = tempfile.mkstemp(dir=folder, suffix=".json.tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(card, stream, indent=2)
            stream.write("\n")
        # mkstemp creates the file readable by its owner only; a card is meant to be shared.
        os.chmod(temporary, 0o644)
        os.replace(temporary, folder / CARD_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("wrote %s", folder / CARD_FILE)


def export_embed_model(
    config: TrainConfig,
    models: EmbedModels,
    output_dir: Path,
    progress: Progress,
    people: TrainingPeople,
    image_count: int,
    calibration_chips: np.ndarray,
) -> Path:
    """Write the edge-embed model folder (weights, ONNX, int8 ONNX, card); return the card's path."""
    from vqbench.pipelines.edge_vq import EMBEDDING_DIM

    embedder = models.embedder.eval()
    with staged_model_folder(output_dir) as staging:
        torch.save({"embedder": {k: v.half() if v.is_floating_point() else v for k, v in embedder.state_dict().items()}}, staging / WEIGHTS_FILE)
        chips = torch.from_numpy(calibration_chips[:2]).permute(0, 3, 1, 2).float()
        onnx_files = {"embedder": "embedder.onnx"}
        export_onnx(embedder, chips, staging / onnx_files["embedder"], "chips", "embeddings")
        if config.quantize_int8:
            onnx_files["embedder_int8"] = "embedder.int8.onnx"
            calibration = np.ascontiguousarray(calibration_chips.transpose(0, 3, 1, 2))
            quantize_edge_encoder(staging / onnx_files["embedder"], staging / onnx_files["embedder_int8"], calibration)

        (staging / PEOPLE_FILE).write_text("".join(f"{name}\n" for name in sorted(people.people)), encoding="utf-8")
        card = _card_common(config, progress, people, image_count, onnx_files)
        card["kind"] = "edge-embed"
        card["payload"] = {"embedding_dim": EMBEDDING_DIM, "bytes": {"fp16": 1 + 2 * EMBEDDING_DIM, "int8": 1 + EMBEDDING_DIM}}
        card["architecture"] = {"encoder": config.vq.model_dump(include={"input_size_px", "widths", "extra_blocks", "grid", "code_dim"}), "head": config.student.model_dump()}
        card["footprint"] = {
            "embedder": {"params": count_params(embedder), "macs": count_macs(embedder, (1, 3, 150, 150))},
            "teacher": {"params": count_params(models.teacher), "macs": count_macs(models.teacher, (1, 3, 150, 150))},
        }
        _finish_card(staging, output_dir, card, onnx_files)
    return output_dir / CARD_FILE
