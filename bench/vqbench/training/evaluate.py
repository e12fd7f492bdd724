"""Offline accuracy check of a trained model folder on LFW View 2 (without the runner).

``evaluate_model`` (``vqbench models evaluate``) aligns every image of the selected folds once (cached as one ``.npz``),
runs the exported ONNX graphs exactly as the pipelines do, and scores the pairs with the
standard cross-fold protocol of ``vqbench.metrics.verification``. For the fp32 and the int8
edge encoder it reports the student, the reconstruction + teacher path (the PyTorch teacher
port, batched), payload bytes and the edge half's latency per face. That latency covers
alignment, encoder and packing on one thread. The teacher on the unmodified chips is the
reference. Folds that contain any of the model's training people are rejected, except in a
training-fit check, which scores exactly those folds. The figures are written into the card's
``metrics``, under a key that names the data and, for a subset of the eligible folds, those
folds (``metrics_key``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vqbench.data.dataset import sample_fold_numbers
from vqbench.data.pairs import Pair, read_lfw_pairs
from vqbench.environment import HostLoadMonitor
from vqbench.errors import ScenarioError
from vqbench.metrics.verification import cosine_similarity, evaluate_verification
from vqbench.models.vq_card import CARD_FILE, VQModelCard, allowed_folds, check_index_graphs, load_vq_card
from vqbench.pipelines.edge_vq import chips_to_input, load_onnx_session
from vqbench.pipelines.payload import PayloadFormat
from vqbench.training.data import load_cached_arrays, save_cached_arrays

if TYPE_CHECKING:
    from vqbench.data.align import DlibAligner

logger = logging.getLogger(__name__)

LATENCY_SAMPLES = 50

#: Alignment of the scored images: no upsampling, as in training and cheap on the edge, and the
#: face nearest the image centre, which on LFW is the person the pair names.
EVALUATION_ALIGNMENT = {"chip_size_px": 150, "padding": 0.25, "upsample": 0, "face_choice": "center"}


def evaluation_aligner() -> "DlibAligner":
    """Create the aligner of ``EVALUATION_ALIGNMENT``."""
    from vqbench.data.align import DlibAligner

    return DlibAligner(**EVALUATION_ALIGNMENT)


def _aligned_chips(paths: list[Path], cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    aligner = evaluation_aligner()
    digest = hashlib.sha256(aligner.fingerprint.encode())
    for path in paths:
        digest.update(f"{path}\n".encode())
    cache_file = cache_dir / f"eval-{digest.hexdigest()[:20]}.npz"
    cached = load_cached_arrays(cache_file, ("chips", "detected"))
    if cached is not None:
        return cached["chips"], cached["detected"]
    chips = np.empty((len(paths), 150, 150, 3), dtype=np.uint8)
    detected = np.empty(len(paths), dtype=bool)
    for index, path in enumerate(paths):
        aligned = aligner.align_bytes(path.read_bytes(), str(path))
        chips[index], detected[index] = aligned.chip, aligned.detected
    save_cached_arrays(cache_file, {"chips": chips, "detected": detected})
    return chips, detected


def _session(path: Path) -> object:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return load_onnx_session(path, options)


def _run_batched(session: object, name: str, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    outputs = [session.run(None, {name: inputs[i : i + batch_size]})[0] for i in range(0, len(inputs), batch_size)]  # type: ignore[attr-defined]
    return np.concatenate(outputs)


def _teacher_embed(chips: np.ndarray) -> np.ndarray:
    import torch

    from vqbench.models.teacher_torch import load_torch_teacher

    teacher = load_torch_teacher()
    with torch.no_grad():
        return np.concatenate(
            [teacher(torch.from_numpy(chips_to_input(chips[i : i + 64]))).numpy() for i in range(0, len(chips), 64)]
        )


def _score(pairs: list[Pair], index: dict[Path, int], embeddings: np.ndarray) -> dict[str, float]:
    a = embeddings[[index[pair.path_a] for pair in pairs]]
    b = embeddings[[index[pair.path_b] for pair in pairs]]
    result = evaluate_verification(
        cosine_similarity(a, b), np.array([pair.same for pair in pairs]), np.array([pair.fold for pair in pairs])
    )
    return {
        "accuracy_mean": round(result.accuracy_mean, 4),
        "accuracy_std": round(result.accuracy_std, 4),
        "tar_at_far_1e_3": round(result.tar_at_far_1e_3, 4),
        "roc_auc": round(result.roc_auc, 4),
        "eer": round(result.eer, 4),
    }


def _edge_latency_ms(card: VQModelCard, paths: list[Path], role: str) -> float:
    aligner = evaluation_aligner()
    session = _session(card.file(role))
    fmt = PayloadFormat(card.model_id, card.grid, card.codebook_size)
    times_ms = []
    for path in paths[:LATENCY_SAMPLES]:
        data = path.read_bytes()
        start = time.perf_counter_ns()
        chip = aligner.align_bytes(data).chip
        indices = session.run(None, {"chips": chips_to_input(chip[None])})[0]  # type: ignore[attr-defined]
        fmt.encode(indices[0])
        times_ms.append((time.perf_counter_ns() - start) / 1e6)
    return round(float(np.median(times_ms)), 2)


def _select_folds(
    card: VQModelCard, pairs: list[Pair], requested: list[int] | None, pairs_file: Path, training_fit: bool
) -> tuple[list[int], list[int]]:
    """Check the requested folds against the model's training people; return the folds to score and the choices.

    Held-out scoring takes folds without any training person. A training-fit check takes the
    opposite: folds whose people the model was trained on, to compare against held-out figures.
    The choices are every fold of that kind in ``pairs``, the default when no fold is requested.
    """
    present = sorted({pair.fold for pair in pairs})
    permitted = allowed_folds(card, pairs)
    trained = [fold for fold in present if fold not in permitted]
    if training_fit:
        choices, kind = trained, "training folds"
        if not trained:
            raise ScenarioError(f"no fold of {pairs_file} contains people that {card.model_id} was trained on; drop --training-fit, or use the LFW folder it was trained on")
    else:
        choices, kind = permitted, "allowed folds"
        if not permitted:
            raise ScenarioError(f"no fold of {pairs_file} is allowed: each contains people that {card.model_id} was trained on; use another LFW folder")
    folds = sorted(set(requested)) if requested else choices
    unknown = sorted(set(folds) - set(present))
    if unknown:
        raise ScenarioError(f"folds {unknown} are not in {pairs_file}, which contains folds {present}; {kind}: {choices}")
    if training_fit and not set(folds) <= set(trained):
        raise ScenarioError(f"folds {sorted(set(folds) - set(trained))} contain none of {card.model_id}'s training people; training folds: {trained}")
    if not training_fit and not set(folds) <= set(permitted):
        raise ScenarioError(f"model {card.model_id} was trained on people in folds {sorted(set(folds) - set(permitted))}; allowed folds: {permitted}")
    if len(folds) < 2:
        raise ScenarioError(
            f"folds {folds}: the verification protocol needs at least 2 folds to choose thresholds; "
            f"pass two or more --fold options from the {kind} {choices}"
        )
    return folds, choices


@dataclass(frozen=True)
class RecordedEvaluation:
    """The figures of one evaluation, the model they belong to and their key in the card's ``metrics``."""

    model_id: str
    metrics_key: str
    metrics: dict


def evaluate_model(model_dir: Path, data_root: Path, folds: list[int] | None, cache_dir: Path, training_fit: bool = False) -> dict:
    """Score a model folder on View 2 folds, record the figures in its card and return them.

    See ``evaluate_and_record`` for the folds and the card key.
    """
    return evaluate_and_record(model_dir, data_root, folds, cache_dir, training_fit).metrics


def evaluate_and_record(
    model_dir: Path, data_root: Path, folds: list[int] | None, cache_dir: Path, training_fit: bool = False
) -> RecordedEvaluation:
    """Score a model folder on View 2 folds (default: every allowed fold) and record the figures in its card.

    With ``training_fit`` the folds are those of its training people (default: all of them),
    and the figures measure how well the model fits its own training images. They go under
    their own key of the card, never beside the held-out figures. ``metrics_key`` gives the
    card key, so that figures on a subset of the folds never replace those on all of them.
    """
    card = load_vq_card(model_dir)
    # The graphs must fit the card before anything is scored or written into it, as in a run.
    check_index_graphs(card)
    if not (data_root / "pairs.txt").is_file() or not (data_root / "lfw-deepfunneled").is_dir():
        raise ScenarioError(
            f"{data_root} does not contain pairs.txt and lfw-deepfunneled/; pass --lfw-root with the LFW folder "
            "(or set VQBENCH_DATA_DIR to the folder above it), or run `vqbench data fetch lfw`"
        )
    pairs_all = read_lfw_pairs(data_root / "pairs.txt", data_root / "lfw-deepfunneled", fold_numbers=sample_fold_numbers(data_root / "pairs.txt"))
    folds, choices = _select_folds(card, pairs_all, folds, data_root / "pairs.txt", training_fit)
    pairs = [pair for pair in pairs_all if pair.fold in set(folds)]
    impostors_per_fold = min(sum(1 for pair in pairs if pair.fold == fold and not pair.same) for fold in folds)
    if impostors_per_fold < 1000:
        logger.warning(
            "only %d impostor pairs in the smallest fold, so TAR at FAR 1e-3 rests on fewer than one false accept per fold",
            impostors_per_fold,
        )
    paths = list(dict.fromkeys(path for pair in pairs for path in (pair.path_a, pair.path_b)))
    index = {path: i for i, path in enumerate(paths)}
    chips, detected = _aligned_chips(paths, cache_dir)
    inputs = chips_to_input(chips)
    host_load = HostLoadMonitor()

    metrics: dict = {
        "dataset": _dataset_label(data_root),
        "held_out": not training_fit,
        "folds": folds,
        "pairs": len(pairs),
        "images": len(paths),
        "alignment": EVALUATION_ALIGNMENT,
        "detection_fallbacks": int((~detected).sum()),
    }
    key = metrics_key(metrics["dataset"], folds, choices, held_out=not training_fit)
    metrics["teacher_on_chips"] = _score(pairs, index, _teacher_embed(chips))
    if card.kind == "edge-embed":
        metrics.update(_embedder_metrics(card, pairs, index, inputs, paths, host_load))
        _record_metrics(model_dir, key, metrics)
        return RecordedEvaluation(card.model_id, key, metrics)

    fmt = PayloadFormat(card.model_id, card.grid, card.codebook_size)
    student = _session(card.file("student"))
    decoder = _session(card.file("decoder"))
    for role in ("edge_encoder", "edge_encoder_int8"):
        if role not in card.data["onnx"]:
            continue
        indices = _run_batched(_session(card.file(role)), "chips", inputs)
        sizes = [len(fmt.encode(grid)) for grid in indices]
        decoded = np.stack([fmt.decode(fmt.encode(grid)) for grid in indices])
        recon = np.clip(np.rint(_run_batched(decoder, "indices", decoded)), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        metrics[role] = {
            "payload_bytes_mean": round(float(np.mean(sizes)), 1),
            "payload_bytes_max": int(np.max(sizes)),
            "student": _score(pairs, index, _run_batched(student, "indices", decoded)),
            "recon_teacher": _score(pairs, index, _teacher_embed(recon)),
            "load_average_1min": round(host_load.sample()[0], 2),
            "edge_latency_ms_p50": _edge_latency_ms(card, paths, role),
        }
        logger.info("%s %s: %s", card.model_id, role, metrics[role])
    _record_metrics(model_dir, key, metrics)
    return RecordedEvaluation(card.model_id, key, metrics)


def _embedder_metrics(
    card: VQModelCard, pairs: list[Pair], index: dict[Path, int], inputs: np.ndarray, paths: list[Path], host_load: HostLoadMonitor
) -> dict:
    """Score the edge-embed model's fp32 and int8 graphs, each sent as fp16 and as int8."""
    from vqbench.pipelines.edge_vq import decode_embedding, encode_embedding

    metrics: dict = {}
    aligner = evaluation_aligner()
    for role in ("embedder", "embedder_int8"):
        if role not in card.data["onnx"]:
            continue
        session = _session(card.file(role))
        embeddings = _run_batched(session, "chips", inputs)
        load_1min = round(host_load.sample()[0], 2)
        times_ms = []
        for path in paths[:LATENCY_SAMPLES]:
            data = path.read_bytes()
            start = time.perf_counter_ns()
            chip = aligner.align_bytes(data).chip
            encode_embedding(session.run(None, {"chips": chips_to_input(chip[None])})[0][0], "fp16")  # type: ignore[attr-defined]
            times_ms.append((time.perf_counter_ns() - start) / 1e6)
        metrics[role] = {"load_average_1min": load_1min, "edge_latency_ms_p50": round(float(np.median(times_ms)), 2)}
        for dtype in ("fp16", "int8"):
            sent = np.stack([decode_embedding(encode_embedding(row, dtype), dtype) for row in embeddings])
            metrics[role][dtype] = {"payload_bytes": len(encode_embedding(embeddings[0], dtype)), **_score(pairs, index, sent)}
        logger.info("%s %s: %s", card.model_id, role, metrics[role])
    return metrics


def render_metrics_table(model_id: str, metrics: dict) -> "object":
    """Return a rich table of ``evaluate_model``'s figures: one row per graph and path."""
    from rich.table import Table

    fit = "" if metrics.get("held_out", True) else ", its training people: a fit check, not held-out accuracy"
    table = Table(title=f"{model_id} on folds {metrics['folds']} ({metrics['pairs']} pairs{fit})")
    for column in ("graph", "path", "bytes", "accuracy", "std", "TAR@FAR1e-3", "edge ms p50"):
        table.add_column(column, justify="left" if column in ("graph", "path") else "right")

    def add(graph: str, path: str, payload_bytes: object, scores: dict, latency_ms: object) -> None:
        table.add_row(graph, path, str(payload_bytes), f"{scores['accuracy_mean']:.4f}", f"{scores['accuracy_std']:.4f}",
                      f"{scores['tar_at_far_1e_3']:.3f}", str(latency_ms))

    add("teacher", "original chips", "-", metrics["teacher_on_chips"], "-")
    for graph in ("edge_encoder", "edge_encoder_int8"):
        if graph in metrics:
            figures = metrics[graph]
            for path in ("student", "recon_teacher"):
                add(graph, path, figures["payload_bytes_mean"], figures[path], figures["edge_latency_ms_p50"])
    for graph in ("embedder", "embedder_int8"):
        if graph in metrics:
            figures = metrics[graph]
            for dtype in ("fp16", "int8"):
                add(graph, dtype, figures[dtype]["payload_bytes"], figures[dtype], figures["edge_latency_ms_p50"])
    return table


def _dataset_label(data_root: Path) -> str:
    """Name the LFW copy scored: the full View 2 set or a sample (its manifest lists the folds)."""
    folds = sample_fold_numbers(data_root / "pairs.txt")
    return "LFW View 2" if folds is None else f"LFW View 2 sample of folds {folds}"


def metrics_key(dataset: str, folds: list[int], choices: list[int], held_out: bool) -> str:
    """Return the card ``metrics`` key for figures on ``folds`` out of the eligible ``choices``.

    Figures from a sample, from the training people or from a subset of the eligible folds each
    get their own key. So none of them replaces the held-out figures on every allowed fold of
    the full View 2 set (``lfw_view2``). A subset's key ends in its folds, as in
    ``lfw_view2_folds_9_10`` and ``lfw_view2_training_fit_folds_1_2``.
    """
    key = "lfw_view2" if dataset == "LFW View 2" else "lfw_view2_sample"
    if not held_out:
        key += "_training_fit"
    if sorted(folds) != sorted(choices):
        key += "_folds_" + "_".join(str(fold) for fold in sorted(folds))
    return key


def _record_metrics(model_dir: Path, key: str, metrics: dict) -> None:
    from vqbench.training.export import write_card

    card = json.loads((model_dir / CARD_FILE).read_text(encoding="utf-8"))
    recorded = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    recorded[key] = metrics
    recorded["note"] = "measured by vqbench models evaluate, with the PyTorch teacher port for reconstructions"
    card["metrics"] = recorded
    write_card(model_dir, card)
