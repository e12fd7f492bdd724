"""Turn one variant's measurements into results rows, one per (link, edge device) pair.

The host measurements are the base. For an edge device that is not the host, the edge half's
time and energy come from the device profile (``modeled-device-profile``): its time from a
speed ratio the scenario gives, else from the edge half's MACs and the profile's throughput.
For a link, the size of each payload the edge half produced, with the framing of the link's
profile, gives its transfer time, the radio energy on the device and the network's transit
energy (``modeled-link``). The same sizes decide whether the link can carry the payloads: one it
cannot carry marks the row infeasible and leaves its network figures, its end-to-end latency
and its totals empty. The transit part of the network energy has its own column, with its
range under the published factors, because the choice of factor alone moves it about 20x.

CO2e per inference counts edge energy at the edge's grid intensity, cloud energy at the
cloud's, and network energy (radio and transit) at the edge's. The device's embodied CO2e is a
separate column.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vqbench.errors import ScenarioError
from vqbench.measure import HalfEnergy, latency_summary
from vqbench.metrics.verification import VerificationResult
from vqbench.pipelines.base import HalfFootprint, Pipeline
from vqbench.results import ResultRow
from vqbench.scenario import DeploymentConfig, EdgeDeviceChoice
from vqbench.text import plural

logger = logging.getLogger(__name__)

JOULES_PER_KWH = 3.6e6
HOST = "host"


@dataclass
class VariantMeasurement:
    """Everything measured for one pipeline variant on the host."""

    pipeline: str
    variant: str
    n_pairs: int
    n_pairs_skipped: int
    folds: list[int]
    verification: VerificationResult
    payload_bytes: np.ndarray
    edge_ms: list[float]
    cloud_ms: list[float]
    edge_energy: HalfEnergy
    cloud_energy: HalfEnergy
    edge_footprint: HalfFootprint
    cloud_footprint: HalfFootprint
    edge_peak_rss_bytes: int | None = None
    cloud_peak_rss_bytes: int | None = None
    sample_payload_bytes: list[int] = field(default_factory=list)
    transfer_ms: list[float] = field(default_factory=list)
    wire_bytes_up: list[int] = field(default_factory=list)
    wire_bytes_down: list[int] = field(default_factory=list)
    transport: str = "local"
    detection_fallbacks: int = 0
    extra_columns: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _EdgeOnDevice:
    latency_ms: list[float]
    energy_j: float | None
    dynamic_energy_j: float | None
    ci95_j: float | None
    repeats_j: list[float]
    method: str | None
    basis: str
    embodied_co2e_g: float | None


@dataclass(frozen=True)
class _Network:
    transfer_ms: list[float]
    energy_j: float | None
    method: str | None
    feasible: bool | None
    reason: str | None
    # The part of energy_j spent in the network beyond the radio, at the link's factor and at
    # the lowest and highest published factor.
    transit_j: float | None = None
    transit_range_j: tuple[float, float] | None = None
    # Per timed sample, the part of transfer_ms spent waiting for a receive window (LoRaWAN
    # class A with a reply). The cloud half runs meanwhile. Empty when there is no such wait.
    reply_wait_ms: list[float] = field(default_factory=list)


def check_deployment(config: DeploymentConfig, pipelines: Sequence[Pipeline] = ()) -> None:
    """Reject unknown link and device names, and modeled devices that lack a needed speed ratio.

    Runs before anything is measured. A device without ``speed_ratio`` is modeled from the edge
    half's MACs, so every pipeline whose edge MACs are unknown needs the ratio.
    """
    from vqbench.devices import get_device_profile
    from vqbench.network.links import get_link_profile

    for link in config.links:
        get_link_profile(link)
    for device in config.edge_devices:
        if device.name != HOST:
            get_device_profile(device.name)

    without_ratio = [
        (index, device) for index, device in enumerate(config.edge_devices)
        if device.name != HOST and device.speed_ratio is None
    ]
    if not without_ratio:
        return
    unknown_macs = [f"{pipeline.kind}/{pipeline.variant}" for pipeline in pipelines if pipeline.footprint()[0].macs is None]
    if unknown_macs:
        index, device = without_ratio[0]
        raise ScenarioError(
            f"edge device {device.name} has no speed_ratio, and the edge half of {', '.join(unknown_macs)} has no MAC "
            f"count (dlib alignment) to model it from; set deployment.edge_devices[{index}].speed_ratio to the "
            "device's time divided by this host's time for the edge half"
        )


def build_rows(
    measured: VariantMeasurement, config: DeploymentConfig, intensities: tuple[float, float]
) -> list[ResultRow]:
    """Return one row per (link, edge device) combination, or one host row without links."""
    paired = _samples_paired(measured, bool(config.links))
    rows = []
    for device in config.edge_devices:
        edge = _edge_on_device(measured, device, config)
        for link in config.links or [None]:
            network = _network(measured, link, config, device)
            rows.append(_row(measured, device.name, link, edge, network, intensities, paired))
    return rows


def _samples_paired(measured: VariantMeasurement, modeled_links: bool) -> bool:
    """Return whether the timed samples' edge, transfer and cloud figures pair up one to one.

    End-to-end latency adds them sample by sample, so lists of other lengths would drop
    samples without a word. The runner times all three on the same samples; anything else is
    logged once for the variant, and its rows leave end-to-end latency empty.
    """
    counts = {"edge times": len(measured.edge_ms), "cloud times": len(measured.cloud_ms)}
    if measured.transfer_ms:
        counts["measured transfer times"] = len(measured.transfer_ms)
    if modeled_links:
        counts["payload sizes for the modeled links"] = len(measured.sample_payload_bytes)
    if len(set(counts.values())) == 1:
        return True
    found = ", ".join(f"{count} {name}" for name, count in counts.items())
    logger.warning("%s/%s: the timed samples do not pair up (%s), so end-to-end latency is left empty",
                   measured.pipeline, measured.variant, found)
    return False


def _edge_on_device(measured: VariantMeasurement, device: EdgeDeviceChoice, config: DeploymentConfig) -> _EdgeOnDevice:
    if device.name == HOST:
        energy = measured.edge_energy.energy
        return _EdgeOnDevice(
            latency_ms=list(measured.edge_ms),
            energy_j=getattr(energy, "energy_j_per_inference", None),
            dynamic_energy_j=getattr(energy, "dynamic_energy_j_per_inference", None),
            ci95_j=getattr(energy, "ci95_j", None),
            repeats_j=list(getattr(energy, "repeats_j_per_inference", ())),
            method=getattr(energy, "method", None),
            basis="measured",
            embodied_co2e_g=None,
        )

    from vqbench.devices import embodied_co2e_g_per_inference, get_device_profile, model_stage_on_device

    profile = get_device_profile(device.name)
    macs = measured.edge_footprint.macs
    if device.speed_ratio is None and macs is None:
        raise ScenarioError(
            f"the edge half's MACs are unknown (dlib alignment), so modeling it on {device.name} "
            "needs deployment.edge_devices[].speed_ratio (device time / host time)"
        )
    # Energy per inference is the mean over inferences, so the ratio scales the mean host time.
    host_mean_ms = float(np.mean(measured.edge_ms)) if measured.edge_ms else 0.0
    cost = model_stage_on_device(profile, host_mean_ms / 1000, None if device.speed_ratio else macs, device.speed_ratio)
    if cost.basis == "speed-ratio":
        latency_ms = [value * device.speed_ratio for value in measured.edge_ms]  # type: ignore[operator]
    else:
        latency_ms = [cost.time_s * 1000] * len(measured.edge_ms)
    return _EdgeOnDevice(
        latency_ms=latency_ms,
        energy_j=cost.energy_j,
        dynamic_energy_j=cost.dynamic_energy_j,
        ci95_j=None,
        repeats_j=[],
        method=cost.method,
        basis=cost.basis,
        embodied_co2e_g=embodied_co2e_g_per_inference(profile, config.transfers_per_day),
    )


def _transfers_per_day(config: DeploymentConfig, device: EdgeDeviceChoice) -> float:
    if config.transfers_per_day is not None:
        return config.transfers_per_day
    if device.name != HOST:
        from vqbench.devices import get_device_profile

        return get_device_profile(device.name).inferences_per_day
    return 1.0


def _network(
    measured: VariantMeasurement, link: str | None, config: DeploymentConfig, device: EdgeDeviceChoice
) -> _Network:
    if link is None:
        return _Network(transfer_ms=list(measured.transfer_ms), energy_j=None, method=None, feasible=None, reason=None)

    from vqbench.network.links import get_link_profile, link_cost, transit_energy_sensitivity_j

    profile = get_link_profile(link)
    per_day = _transfers_per_day(config, device)
    # The link carries the edge half's payload up and the deployment's reply down, for energy,
    # latency and feasibility alike. The link's profile adds its own framing. The HTTP exchange
    # of a run with transport http is measured in the wire_* columns and is not modeled here:
    # its headers belong to the test transport, and LoRa or NB-IoT would not carry HTTP at all.
    down = config.downlink_bytes
    # Energy over every evaluated payload; latency over the timed samples.
    sizes_for_energy = [int(size) for size in measured.payload_bytes]
    sizes_for_latency = [int(size) for size in measured.sample_payload_bytes]
    costs = {size: link_cost(profile, size, down, transfers_per_day=per_day, setup_round_trips=config.setup_round_trips)
             for size in sorted(set(sizes_for_energy) | set(sizes_for_latency))}
    method = next(iter(costs.values())).method if costs else "modeled-link"
    # The largest payload the link cannot carry names the reason, since it is the furthest from fitting.
    infeasible = [(size, cost) for size, cost in costs.items() if not cost.feasible]
    if infeasible:
        size, cost = infeasible[-1]
        reason = f"{cost.infeasible_reason} (largest payload {size} B; {plural(len(infeasible), 'payload size')} do not fit)"
        # No figure is modeled, so no method is named beside the empty network energy.
        return _Network([], None, None, False, reason)
    latency = [costs[size].transfer_latency_ms for size in sizes_for_latency]
    wait = [costs[size].reply_wait_ms for size in sizes_for_latency]
    if not sizes_for_energy:
        return _Network(latency, None, method, True, None, reply_wait_ms=wait)
    energy_j = float(np.mean([costs[size].radio_energy_j + costs[size].transit_energy_j for size in sizes_for_energy]))
    transit_j = float(np.mean([costs[size].transit_energy_j for size in sizes_for_energy]))
    by_factor = [transit_energy_sensitivity_j(costs[size].wire_bytes) for size in sizes_for_energy]
    means = [float(np.mean([factors[name] for factors in by_factor])) for name in by_factor[0]]
    return _Network(latency, energy_j, method, True, None, transit_j, (min(means), max(means)), wait)


def _end_to_end_ms(
    edge_ms: Sequence[float], cloud_ms: Sequence[float], transfer_ms: Sequence[float], reply_wait_ms: Sequence[float]
) -> list[float]:
    """Return edge + transfer + cloud time per sample, less the cloud time spent within a reply wait."""
    if not transfer_ms:
        return [edge + cloud for edge, cloud in zip(edge_ms, cloud_ms)]
    waits = reply_wait_ms or [0.0] * len(transfer_ms)
    return [
        edge + transfer + max(0.0, cloud - wait)
        for edge, cloud, transfer, wait in zip(edge_ms, cloud_ms, transfer_ms, waits)
    ]


def _transfer_basis(link: str | None, transfer_ms: list[float]) -> str | None:
    """Name where the transfer latency of a row comes from: the link's model or the HTTP requests timed."""
    if not transfer_ms:
        return None
    return "modeled-link" if link is not None else "measured-http"


def _row(
    measured: VariantMeasurement,
    device: str,
    link: str | None,
    edge: _EdgeOnDevice,
    network: _Network,
    intensities: tuple[float, float],
    paired: bool = True,
) -> ResultRow:
    from vqbench.network.client import measured_transfer_columns

    edge_intensity, cloud_intensity = intensities
    cloud = measured.cloud_energy.energy
    cloud_j = getattr(cloud, "energy_j_per_inference", None)

    # End to end per timed sample: edge, transfer (when known), cloud. The cloud half runs while
    # the device waits for its receive window, so only its time beyond that wait adds. A link
    # that cannot carry the payload has no transfer time, so it has no end-to-end time either.
    # Neither has a row whose samples do not pair up (see _samples_paired).
    # NOTE: a LoRaWAN reply ready after its window opened would wait for the second window or
    # the next uplink. Only the cloud time beyond the first window's delay is added here.
    transfer = network.transfer_ms
    end_to_end = []
    if network.feasible is not False and paired:
        end_to_end = _end_to_end_ms(edge.latency_ms, measured.cloud_ms, transfer, network.reply_wait_ms)
    edge_lat, cloud_lat = latency_summary(edge.latency_ms), latency_summary(measured.cloud_ms)
    transfer_lat, total_lat = latency_summary(transfer), latency_summary(end_to_end)

    energies = [edge.energy_j, cloud_j] + ([network.energy_j] if link is not None else [])
    total_j = sum(energies) if all(value is not None for value in energies) else None  # type: ignore[arg-type]
    co2e = None
    if total_j is not None:
        network_j = network.energy_j or 0.0
        co2e = ((edge.energy_j + network_j) * edge_intensity + cloud_j * cloud_intensity) / JOULES_PER_KWH  # type: ignore[operator]

    return ResultRow(
        pipeline=measured.pipeline,
        variant=measured.variant,
        n_pairs=measured.n_pairs,
        n_pairs_skipped=measured.n_pairs_skipped,
        folds=measured.folds,
        lfw_accuracy_mean=measured.verification.accuracy_mean,
        lfw_accuracy_std=measured.verification.accuracy_std,
        tar_at_far_1e_3=measured.verification.tar_at_far_1e_3,
        roc_auc=measured.verification.roc_auc,
        eer=measured.verification.eer,
        payload_bytes_mean=float(measured.payload_bytes.mean()),
        payload_bytes_p95=float(np.percentile(measured.payload_bytes, 95)),
        edge_latency_ms_p50=edge_lat["p50"],
        edge_latency_ms_p95=edge_lat["p95"],
        cloud_latency_ms_p50=cloud_lat["p50"],
        cloud_latency_ms_p95=cloud_lat["p95"],
        transfer_latency_ms_p50=transfer_lat["p50"],
        transfer_latency_ms_p95=transfer_lat["p95"],
        transfer_latency_basis=_transfer_basis(link, transfer),
        end_to_end_latency_ms_p50=total_lat["p50"],
        end_to_end_latency_ms_p95=total_lat["p95"],
        end_to_end_latency_ms_p99=total_lat["p99"],
        edge_peak_rss_bytes=measured.edge_peak_rss_bytes,
        cloud_peak_rss_bytes=measured.cloud_peak_rss_bytes,
        edge_model_bytes=measured.edge_footprint.model_bytes,
        cloud_model_bytes=measured.cloud_footprint.model_bytes,
        edge_params=measured.edge_footprint.params,
        cloud_params=measured.cloud_footprint.params,
        edge_macs=measured.edge_footprint.macs,
        cloud_macs=measured.cloud_footprint.macs,
        edge_energy_j_per_inference=edge.energy_j,
        edge_energy_method=edge.method,
        edge_energy_ci95_j=edge.ci95_j,
        edge_dynamic_energy_j_per_inference=edge.dynamic_energy_j,
        edge_energy_j_per_inference_repeats=edge.repeats_j,
        cloud_energy_j_per_inference=cloud_j,
        cloud_energy_method=getattr(cloud, "method", None),
        cloud_energy_ci95_j=getattr(cloud, "ci95_j", None),
        cloud_dynamic_energy_j_per_inference=getattr(cloud, "dynamic_energy_j_per_inference", None),
        cloud_energy_j_per_inference_repeats=list(getattr(cloud, "repeats_j_per_inference", ())),
        network_energy_j_per_inference=network.energy_j,
        network_energy_method=network.method,
        network_transit_energy_j_per_inference=network.transit_j,
        network_transit_energy_j_per_inference_min=network.transit_range_j[0] if network.transit_range_j else None,
        network_transit_energy_j_per_inference_max=network.transit_range_j[1] if network.transit_range_j else None,
        total_energy_j_per_inference=total_j,
        co2e_g_per_inference=co2e,
        embodied_co2e_g_per_inference=edge.embodied_co2e_g,
        grid_intensity_edge_gco2e_per_kwh=edge_intensity,
        grid_intensity_cloud_gco2e_per_kwh=cloud_intensity,
        **measured_transfer_columns(
            measured.transfer_ms, measured.wire_bytes_up, measured.wire_bytes_down, measured.sample_payload_bytes
        ),
        transport=measured.transport,
        link=link,
        link_feasible=network.feasible,
        link_infeasible_reason=network.reason,
        edge_device=device,
        edge_time_basis=edge.basis,
        detection_fallbacks=measured.detection_fallbacks,
        **{key: value for key, value in measured.extra_columns.items() if key in ResultRow.model_fields},
    )

