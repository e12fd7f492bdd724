"""The measurement pass: latency, energy and memory of each half of a pipeline variant.

Nothing here reads a cache. Latency and energy are measured for all variants together, with
their samples interleaved, because a host's speed drifts over seconds (turbo, a shared virtual
machine, other jobs). Measured one variant after another, a variant timed in a slow spell looks
slower than one timed in a fast spell. Interleaved, the drift affects every variant alike, so
comparisons between variants and the ratios that ``vqbench check`` gates stay steady.

1. Latency: the ``latency_samples`` images are split into ``LATENCY_ROUNDS`` blocks. Each round
   times one block for every variant in turn: the block's images through the edge half one by
   one, then their payloads through the cloud half one by one (batch size 1), each call timed
   with ``time.perf_counter_ns``. With several variants, one untimed call of each half
   precedes a variant's block, because the other variants' calls may have evicted its weights
   from the caches.
2. Energy: each half of each variant is a stage metered in windows on the host meter, and the
   stages' windows take turns (see ``vqbench.meters.protocol``).
3. Memory: each half runs alone in a fresh child process on a few images (see
   ``vqbench.memory_probe``). The child's peak RSS is the half's footprint, including the
   Python interpreter and the libraries that half loads, but not the benchmark's own.
"""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vqbench.data.dataset import ImageRecord
from vqbench.errors import MeterError, RunError, VqbenchError
from vqbench.meters.base import EnergyMeter
from vqbench.pipelines.base import Pipeline
from vqbench.scenario import AlignmentConfig, MeasurementConfig, TeacherConfig

if TYPE_CHECKING:
    from vqbench.network.client import HttpCloud, TransferStats

logger = logging.getLogger(__name__)

#: Images each memory probe child processes.
MEMORY_PROBE_IMAGES = 4

#: Seconds a memory probe child may take before it is stopped.
MEMORY_PROBE_TIMEOUT_S = 600


@dataclass
class LatencySamples:
    """Per-sample latencies in milliseconds, and the payloads produced on the way.

    ``transfer_ms`` and the wire byte lists are filled only when payloads travel over HTTP.
    """

    edge_ms: list[float] = field(default_factory=list)
    cloud_ms: list[float] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    transfer_ms: list[float] = field(default_factory=list)
    wire_bytes_up: list[int] = field(default_factory=list)
    wire_bytes_down: list[int] = field(default_factory=list)


#: Blocks that each variant's latency samples are split into; one round times one block of every variant.
LATENCY_ROUNDS = 5


def measure_latencies(
    pipelines: Sequence[Pipeline],
    images: list[ImageRecord],
    warmup: int,
    http: "HttpCloud | None" = None,
    after_round: Callable[[], None] | None = None,
) -> list[LatencySamples | VqbenchError]:
    """Time the edge and the cloud half of every variant on each image, rounds interleaved.

    Returns one entry per pipeline: its samples, in image order, or the VqbenchError that
    stopped it (the other variants go on). With ``http``, each payload is posted to
    `vqbench serve`: the cloud latency is the service's own compute time and the rest of the
    request time is transfer. ``after_round`` is called after each round.
    """
    results: list[LatencySamples | VqbenchError] = []
    for pipeline in pipelines:
        try:
            for image in images[:warmup]:
                _call_cloud(pipeline, pipeline.edge(image.data).payload, http)
            results.append(LatencySamples())
        except VqbenchError as error:
            results.append(error)

    blocks = [list(block) for block in np.array_split(np.arange(len(images)), min(LATENCY_ROUNDS, len(images)))]
    for block in blocks:
        for index, pipeline in enumerate(pipelines):
            samples = results[index]
            if isinstance(samples, VqbenchError):
                continue
            try:
                if len(pipelines) > 1:
                    # Not one of the block's images, so the timed calls do not find their input cached.
                    warm = images[block[0] - 1].data
                    _call_cloud(pipeline, pipeline.edge(warm).payload, http)
                _time_block(pipeline, [images[i] for i in block], http, samples)
            except VqbenchError as error:
                results[index] = error
        if after_round is not None:
            after_round()
    return results


def _time_block(pipeline: Pipeline, images: list[ImageRecord], http: "HttpCloud | None", samples: LatencySamples) -> None:
    """Time the edge half on each image, then the cloud half on each payload, appending to ``samples``."""
    payloads: list[bytes] = []
    for image in images:
        start = time.perf_counter_ns()
        output = pipeline.edge(image.data)
        samples.edge_ms.append((time.perf_counter_ns() - start) / 1e6)
        payloads.append(output.payload)
    samples.payloads.extend(payloads)
    for payload in payloads:
        start = time.perf_counter_ns()
        stats = _call_cloud(pipeline, payload, http)
        elapsed_ms = (time.perf_counter_ns() - start) / 1e6
        if stats is None:
            samples.cloud_ms.append(elapsed_ms)
        else:
            samples.cloud_ms.append(stats.compute_ms)
            samples.transfer_ms.append(stats.transfer_ms)
            samples.wire_bytes_up.append(stats.wire_bytes_up)
            samples.wire_bytes_down.append(stats.wire_bytes_down)


def _call_cloud(pipeline: Pipeline, payload: bytes, http: "HttpCloud | None") -> "TransferStats | None":
    if http is None:
        pipeline.cloud([payload])
        return None
    _, stats = http.embed(pipeline.kind, pipeline.variant, payload)
    return stats


@dataclass(frozen=True)
class HalfEnergy:
    """Energy of one half, or the reason it is missing."""

    energy: object | None  # vqbench.meters.protocol.StageEnergy
    missing_reason: str | None = None


def measure_energies(
    pipelines: Sequence[Pipeline],
    images: list[ImageRecord],
    payloads: Sequence[list[bytes]],
    meter: EnergyMeter | None,
    settings: MeasurementConfig,
    after_round: Callable[[], None] | None = None,
) -> list[tuple[HalfEnergy, HalfEnergy] | VqbenchError]:
    """Meter the edge and the cloud half of every variant, their windows interleaved.

    ``payloads[i]`` are pipeline ``i``'s payloads of ``images``. Returns one entry per pipeline:
    its (edge, cloud) energy, where a half that a MeterError stopped is missing with the
    reason, or the VqbenchError of its own work that stopped the variant.
    """
    if meter is None:
        reason = "no energy meter is available on this host (see `vqbench env`)"
        return [(HalfEnergy(None, reason), HalfEnergy(None, reason)) for _ in pipelines]

    from vqbench.meters.protocol import EnergyStage, WindowSettings, measure_stages_energy

    window = WindowSettings(
        warmup=settings.warmup, repeats=settings.repeats, min_window_s=settings.min_window_s, idle_s=settings.idle_s
    )
    stages = []
    for pipeline, variant_payloads in zip(pipelines, payloads):
        label = f"{pipeline.kind}/{pipeline.variant}"
        stages.append(EnergyStage(f"{label} edge", _edge_work(pipeline, images), len(images)))
        stages.append(EnergyStage(f"{label} cloud", _cloud_work(pipeline, variant_payloads), len(variant_payloads)))
    try:
        measured = measure_stages_energy(stages, meter, window, after_round=after_round)
    except MeterError as error:
        logger.warning("energy not measured: %s", error)
        return [(HalfEnergy(None, str(error)), HalfEnergy(None, str(error))) for _ in pipelines]

    results: list[tuple[HalfEnergy, HalfEnergy] | VqbenchError] = []
    for index, pipeline in enumerate(pipelines):
        halves: list[HalfEnergy] = []
        work_error: VqbenchError | None = None
        for result in measured[2 * index : 2 * index + 2]:
            if isinstance(result, MeterError):
                logger.warning("energy of %s/%s not measured: %s", pipeline.kind, pipeline.variant, result)
                halves.append(HalfEnergy(None, str(result)))
            elif isinstance(result, VqbenchError):
                work_error = result
            else:
                halves.append(HalfEnergy(result))
        results.append(work_error if work_error is not None else (halves[0], halves[1]))
    return results


def _edge_work(pipeline: Pipeline, images: list[ImageRecord]) -> Callable[[int], object]:
    return lambda i: pipeline.edge(images[i % len(images)].data)


def _cloud_work(pipeline: Pipeline, payloads: list[bytes]) -> Callable[[int], object]:
    return lambda i: pipeline.cloud([payloads[i % len(payloads)]])


def measure_peak_rss(
    pipeline: Pipeline,
    pipeline_config: dict,
    alignment: AlignmentConfig,
    teacher: TeacherConfig,
    images: list[ImageRecord],
    payloads: list[bytes],
) -> tuple[int | None, int | None, list[str]]:
    """Run each half alone in a fresh ``vqbench.memory_probe`` process.

    Return the edge and cloud peak RSS in bytes, None for a half whose probe failed, and the
    failures' messages. One half's failure does not stop the other's probe.
    """
    peaks: list[int | None] = []
    failures: list[str] = []
    for half, inputs in (("edge", [i.data for i in images]), ("cloud", payloads)):
        request = {
            "half": half,
            "kind": pipeline.kind,
            "variant": pipeline.variant,
            "pipeline_config": pipeline_config,
            "alignment": alignment.model_dump(),
            "teacher": teacher.model_dump(),
            "inputs": inputs[:MEMORY_PROBE_IMAGES],
        }
        try:
            peaks.append(_run_probe(request))
        except RunError as error:
            peaks.append(None)
            failures.append(str(error))
    return peaks[0], peaks[1], failures


def _run_probe(request: dict) -> int:
    """Start one probe child, hand it the request and return the peak RSS it reports."""
    label = f"{request['kind']}/{request['variant']} {request['half']} half"
    try:
        child = subprocess.run(
            [sys.executable, "-m", "vqbench.memory_probe"],
            input=pickle.dumps(request),
            capture_output=True,
            timeout=MEMORY_PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise RunError(f"memory probe of the {label} ran past {MEMORY_PROBE_TIMEOUT_S} s; set measurement.memory to false to skip it") from error
    if child.returncode != 0:
        lines = child.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {child.returncode}"]
        raise RunError(f"memory probe of the {label} failed: {lines[-1]}")
    try:
        return int(json.loads(child.stdout)["peak_rss_bytes"])
    except (ValueError, KeyError, TypeError) as error:
        raise RunError(f"memory probe of the {label} printed no peak RSS: {child.stdout[:200]!r}") from error


def latency_summary(values_ms: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 of a list of latencies."""
    if not values_ms:
        return {"p50": None, "p95": None, "p99": None}
    array = np.asarray(values_ms)
    return {f"p{q}": float(np.percentile(array, q)) for q in (50, 95, 99)}
