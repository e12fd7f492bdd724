"""The measurement pass: latency, energy and memory of each half of a pipeline variant.

Nothing here reads a cache. For each variant:

1. Latency: ``latency_samples`` images go through the edge half one by one, then their
   payloads through the cloud half one by one (batch size 1), each call timed with
   ``time.perf_counter_ns``.
2. Energy: each half runs in measurement windows on the host meter (see
   ``vqbench.meters.protocol`` for warm-up, idle window, windows and repeats).
3. Memory: each half runs alone in a fresh child process on a few images; the child's peak
   RSS is the half's footprint, including the Python interpreter and the libraries it loads.
"""

from __future__ import annotations

import logging
import multiprocessing
import resource
import time
from dataclasses import dataclass, field

import numpy as np

from vqbench.data.dataset import ImageRecord
from vqbench.errors import MeterError
from vqbench.meters.base import EnergyMeter
from vqbench.pipelines.base import Pipeline
from vqbench.scenario import AlignmentConfig, MeasurementConfig, TeacherConfig

logger = logging.getLogger(__name__)

#: Images each memory probe child processes.
MEMORY_PROBE_IMAGES = 4


@dataclass
class LatencySamples:
    """Per-sample latencies in milliseconds, and the payloads produced on the way."""

    edge_ms: list[float] = field(default_factory=list)
    cloud_ms: list[float] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)


def measure_latency(pipeline: Pipeline, images: list[ImageRecord], warmup: int) -> LatencySamples:
    """Time the edge and the cloud half on each image, one call at a time."""
    for image in images[:warmup]:
        pipeline.cloud([pipeline.edge(image.data).payload])

    samples = LatencySamples()
    for image in images:
        start = time.perf_counter_ns()
        output = pipeline.edge(image.data)
        samples.edge_ms.append((time.perf_counter_ns() - start) / 1e6)
        samples.payloads.append(output.payload)
    for payload in samples.payloads:
        start = time.perf_counter_ns()
        pipeline.cloud([payload])
        samples.cloud_ms.append((time.perf_counter_ns() - start) / 1e6)
    return samples


@dataclass(frozen=True)
class HalfEnergy:
    """Energy of one half, or the reason it is missing."""

    energy: object | None  # vqbench.meters.protocol.StageEnergy
    missing_reason: str | None = None


def measure_energy(
    pipeline: Pipeline,
    images: list[ImageRecord],
    payloads: list[bytes],
    meter: EnergyMeter | None,
    settings: MeasurementConfig,
) -> tuple[HalfEnergy, HalfEnergy]:
    """Measure the edge and the cloud half in energy windows on the host meter."""
    if meter is None:
        reason = "no energy meter is available on this host (see `vqbench env`)"
        return HalfEnergy(None, reason), HalfEnergy(None, reason)

    from vqbench.meters.protocol import WindowSettings, measure_stage_energy

    window = WindowSettings(
        warmup=settings.warmup, repeats=settings.repeats, min_window_s=settings.min_window_s, idle_s=settings.idle_s
    )
    halves = []
    for work in (
        lambda i: pipeline.edge(images[i % len(images)].data),
        lambda i: pipeline.cloud([payloads[i % len(payloads)]]),
    ):
        try:
            halves.append(HalfEnergy(measure_stage_energy(work, len(images), meter, window)))
        except MeterError as error:
            logger.warning("energy of %s/%s not measured: %s", pipeline.kind, pipeline.variant, error)
            halves.append(HalfEnergy(None, str(error)))
    return halves[0], halves[1]


def _probe_half(
    half: str, kind: str, variant: str, pipeline_config: dict, alignment: dict, teacher: dict, inputs: list[bytes]
) -> int:
    """Child-process body: build one pipeline, run one half, return peak RSS in bytes."""
    from vqbench.pipelines.base import Components
    from vqbench.pipelines.registry import build_pipelines
    from vqbench.scenario import Scenario

    scenario = Scenario.model_validate({"name": "memory-probe", "pipelines": [pipeline_config]})
    components = Components(AlignmentConfig(**alignment), TeacherConfig(**teacher))
    pipeline = next(
        p for p in build_pipelines(scenario.pipelines, components) if (p.kind, p.variant) == (kind, variant)
    )
    for item in inputs:
        if half == "edge":
            pipeline.edge(item)
        else:
            pipeline.cloud([item])
    # Linux reports ru_maxrss in kibibytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_peak_rss(
    pipeline: Pipeline,
    pipeline_config: dict,
    alignment: AlignmentConfig,
    teacher: TeacherConfig,
    images: list[ImageRecord],
    payloads: list[bytes],
) -> tuple[int, int]:
    """Run each half alone in a fresh process and return (edge, cloud) peak RSS in bytes."""
    context = multiprocessing.get_context("spawn")
    results = []
    with context.Pool(1, maxtasksperchild=1) as pool:
        for half, inputs in (("edge", [i.data for i in images]), ("cloud", payloads)):
            arguments = (
                half, pipeline.kind, pipeline.variant, pipeline_config,
                alignment.model_dump(), teacher.model_dump(), inputs[:MEMORY_PROBE_IMAGES],
            )
            results.append(pool.apply(_probe_half, arguments))
    return results[0], results[1]


def latency_summary(values_ms: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 of a list of latencies."""
    if not values_ms:
        return {"p50": None, "p95": None, "p99": None}
    array = np.asarray(values_ms)
    return {f"p{q}": float(np.percentile(array, q)) for q in (50, 95, 99)}
