"""The measurement pass: latency, energy and memory of each half of a pipeline variant.

Nothing here reads a cache. For each variant:

1. Latency: ``latency_samples`` images go through the edge half one by one, then their
   payloads through the cloud half one by one (batch size 1), each call timed with
   ``time.perf_counter_ns``.
2. Energy: each half runs in measurement windows on the host meter (see
   ``vqbench.meters.protocol`` for warm-up, idle window, windows and repeats).
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vqbench.data.dataset import ImageRecord
from vqbench.errors import MeterError, RunError
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


def measure_latency(
    pipeline: Pipeline, images: list[ImageRecord], warmup: int, http: "HttpCloud | None" = None
) -> LatencySamples:
    """Time the edge and the cloud half on each image, one call at a time.

    With ``http``, each payload is posted to `vqbench serve`: the cloud latency is the
    service's own compute time and the rest of the request time is transfer.
    """
    for image in images[:warmup]:
        _call_cloud(pipeline, pipeline.edge(image.data).payload, http)

    samples = LatencySamples()
    for image in images:
        start = time.perf_counter_ns()
        output = pipeline.edge(image.data)
        samples.edge_ms.append((time.perf_counter_ns() - start) / 1e6)
        samples.payloads.append(output.payload)
    for payload in samples.payloads:
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
    return samples


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
