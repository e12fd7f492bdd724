"""Results rows built from one variant's measurements: which bytes a modeled link carries, how a
modeled device's energy scales, the transit range and the CO2e of each part."""

from __future__ import annotations

import dataclasses
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest

from vqbench.deployment import JOULES_PER_KWH, VariantMeasurement, build_rows
from vqbench.measure import HalfEnergy
from vqbench.metrics.verification import VerificationResult
from vqbench.network.links import TRANSIT_KWH_PER_GB_REFERENCES, get_link_profile, link_cost
from vqbench.pipelines.base import HalfFootprint
from vqbench.scenario import DeploymentConfig

EDGE_J = 0.5
CLOUD_J = 2.0


def _energy(energy_j: float) -> HalfEnergy:
    return HalfEnergy(SimpleNamespace(energy_j_per_inference=energy_j, dynamic_energy_j_per_inference=None,
                                      ci95_j=None, repeats_j_per_inference=(), method="measured-test"))


def _measurement(payload_bytes: list[int], edge_ms: list[float], **http: list) -> VariantMeasurement:
    """A variant whose timed samples are its evaluated payloads, with fixed edge and cloud energy."""
    return VariantMeasurement(
        pipeline="edge-vq-student", variant="test", n_pairs=10, n_pairs_skipped=0, folds=[9, 10],
        verification=VerificationResult(0.9, 0.01, (0.9, 0.9), 0.5, 0.95, 0.1),
        payload_bytes=np.asarray(payload_bytes), edge_ms=edge_ms, cloud_ms=[5.0] * len(edge_ms),
        edge_energy=_energy(EDGE_J), cloud_energy=_energy(CLOUD_J),
        edge_footprint=HalfFootprint(macs=1_000_000), cloud_footprint=HalfFootprint(),
        sample_payload_bytes=list(payload_bytes), **http,
    )


def test_http_run_models_the_link_on_payload_bytes() -> None:
    # Over HTTP each 221 B payload became a 401 B request and a 150 B response. A LoRa link
    # carries the payload, not the test's HTTP exchange, for energy, latency and feasibility.
    payloads = [221, 221]
    measured = _measurement(payloads, [10.0, 10.0], transfer_ms=[3.0, 3.0], wire_bytes_up=[401, 401],
                            wire_bytes_down=[150, 150], transport="http")
    config = DeploymentConfig(links=["lorawan-sf12"], transfers_per_day=60)
    (row,) = build_rows(measured, config, (300.0, 50.0))
    expected = link_cost(get_link_profile("lorawan-sf12"), 221, 0, transfers_per_day=60)
    assert expected.feasible
    assert row.link_feasible is True
    assert row.network_energy_j_per_inference == pytest.approx(expected.radio_energy_j + expected.transit_energy_j)
    assert row.transfer_latency_ms_p50 == pytest.approx(expected.transfer_latency_ms)
    assert row.end_to_end_latency_ms_p50 == pytest.approx(10.0 + 5.0 + expected.transfer_latency_ms)
    # The HTTP exchange itself stays in the measured columns.
    assert row.wire_bytes_up_mean == 401


def test_rows_pay_setup_round_trips() -> None:
    measured = _measurement([221, 221], [10.0, 10.0])
    config = DeploymentConfig(links=["wifi"], setup_round_trips=2)
    (row,) = build_rows(measured, config, (300.0, 50.0))
    expected = link_cost(get_link_profile("wifi"), 221, 0, setup_round_trips=2)
    kept_alive = link_cost(get_link_profile("wifi"), 221, 0)
    assert expected.transfer_latency_ms > kept_alive.transfer_latency_ms
    assert row.transfer_latency_ms_p50 == pytest.approx(expected.transfer_latency_ms)
    assert row.network_energy_j_per_inference == pytest.approx(expected.radio_energy_j + expected.transit_energy_j)


@pytest.mark.parametrize(("cloud_ms", "beyond_wait_ms"), [(5.0, 0.0), (1500.0, 500.0)])
def test_lora_reply_wait_hides_cloud_time(cloud_ms: float, beyond_wait_ms: float) -> None:
    # The cloud half runs during the 1 s before the class A receive window, so only its time
    # beyond that wait adds to the end-to-end latency.
    measured = dataclasses.replace(_measurement([40, 40], [10.0, 10.0]), cloud_ms=[cloud_ms, cloud_ms])
    (row,) = build_rows(measured, DeploymentConfig(links=["lorawan-sf7"], downlink_bytes=8), (300.0, 50.0))
    expected = link_cost(get_link_profile("lorawan-sf7"), 40, 8)
    assert expected.reply_wait_ms == 1000.0
    assert row.end_to_end_latency_ms_p50 == pytest.approx(10.0 + expected.transfer_latency_ms + beyond_wait_ms)


def test_lora_without_reply_adds_cloud_time() -> None:
    (row,) = build_rows(_measurement([40, 40], [10.0, 10.0]), DeploymentConfig(links=["lorawan-sf7"]), (300.0, 50.0))
    expected = link_cost(get_link_profile("lorawan-sf7"), 40, 0)
    assert expected.reply_wait_ms == 0.0
    assert row.end_to_end_latency_ms_p50 == pytest.approx(10.0 + expected.transfer_latency_ms + 5.0)


def test_payload_the_link_cannot_carry_empties_the_row() -> None:
    # 221 B over SF12 needs 8 frames; at 1,000 transfers a day the duty cycle forbids it.
    measured = _measurement([221, 300, 221], [10.0, 10.0, 10.0])
    (row,) = build_rows(measured, DeploymentConfig(links=["lorawan-sf12"], transfers_per_day=1000), (300.0, 50.0))
    assert row.link_feasible is False
    assert "duty cycle" in row.link_infeasible_reason
    # The reason is the largest payload's, the one furthest from fitting.
    largest = link_cost(get_link_profile("lorawan-sf12"), 300, 0, transfers_per_day=1000).infeasible_reason
    assert row.link_infeasible_reason == f"{largest} (largest payload 300 B; 2 payload sizes do not fit)"
    assert row.network_energy_j_per_inference is None
    assert row.total_energy_j_per_inference is None
    assert row.end_to_end_latency_ms_p50 is None
    assert row.edge_energy_j_per_inference == EDGE_J
    # Nothing was modeled, so no method is named beside the empty figure.
    assert row.network_energy_method is None


def test_unpaired_transfer_times_empty_total(caplog: pytest.LogCaptureFixture) -> None:
    # Two modeled transfer times for three timed cloud halves: summing edge and cloud alone
    # would understate the end-to-end latency without a word.
    measured = dataclasses.replace(_measurement([230, 230, 230], [10.0, 10.0, 10.0]), sample_payload_bytes=[230, 230])
    config = DeploymentConfig(links=["wifi", "lte"])
    with caplog.at_level(logging.WARNING, logger="vqbench.deployment"):
        rows = build_rows(measured, config, (300.0, 50.0))
    assert [row.end_to_end_latency_ms_p50 for row in rows] == [None, None]
    assert rows[0].transfer_latency_ms_p50 is not None
    assert rows[0].edge_latency_ms_p50 == pytest.approx(10.0)
    # One warning for the variant, not one per row.
    assert [record.getMessage() for record in caplog.records] == [
        "edge-vq-student/test: the timed samples do not pair up (3 edge times, 3 cloud times, 2 payload sizes for "
        "the modeled links), so end-to-end latency is left empty"]


def test_unpaired_edge_cloud_times_empty_total(caplog: pytest.LogCaptureFixture) -> None:
    # Three edge times and five cloud times, two of them slow: zip would drop the slow ones.
    measured = dataclasses.replace(_measurement([230] * 3, [10.0] * 3), cloud_ms=[5.0, 5.0, 5.0, 500.0, 500.0])
    with caplog.at_level(logging.WARNING, logger="vqbench.deployment"):
        (row,) = build_rows(measured, DeploymentConfig(), (300.0, 50.0))
    assert row.end_to_end_latency_ms_p50 is None
    assert row.cloud_latency_ms_p95 is not None and row.cloud_latency_ms_p95 > 400
    assert "3 edge times, 5 cloud times" in caplog.records[0].getMessage()


def test_co2e_charges_each_part_at_its_grid() -> None:
    measured = _measurement([230, 230], [10.0, 10.0])
    (row,) = build_rows(measured, DeploymentConfig(links=["wifi"]), (300.0, 50.0))
    network_j = row.network_energy_j_per_inference
    assert network_j is not None and network_j > 0
    assert row.total_energy_j_per_inference == pytest.approx(EDGE_J + CLOUD_J + network_j)
    # Edge and network at the edge's 300 g/kWh, cloud at the cloud's 50 g/kWh.
    expected_g = ((EDGE_J + network_j) * 300.0 + CLOUD_J * 50.0) / JOULES_PER_KWH
    assert row.co2e_g_per_inference == pytest.approx(expected_g, rel=1e-12)
    swapped = build_rows(measured, DeploymentConfig(links=["wifi"]), (50.0, 300.0))[0]
    assert swapped.co2e_g_per_inference != pytest.approx(expected_g)


def test_transit_part_and_its_range() -> None:
    measured = _measurement([230, 1500], [10.0, 10.0])
    (row,) = build_rows(measured, DeploymentConfig(links=["wifi"]), (300.0, 50.0))
    wifi = get_link_profile("wifi")
    costs = [link_cost(wifi, size) for size in (230, 1500)]
    assert row.network_transit_energy_j_per_inference == pytest.approx(np.mean([c.transit_energy_j for c in costs]))
    wire_mean = np.mean([c.wire_bytes for c in costs])
    factors = [kwh_per_gb for kwh_per_gb, _, _ in TRANSIT_KWH_PER_GB_REFERENCES.values()]
    assert row.network_transit_energy_j_per_inference_min == pytest.approx(wire_mean / 1e9 * min(factors) * 3.6e6)
    assert row.network_transit_energy_j_per_inference_max == pytest.approx(wire_mean / 1e9 * max(factors) * 3.6e6)
    assert row.network_transit_energy_j_per_inference_max / row.network_transit_energy_j_per_inference_min > 5
    host_row = build_rows(measured, DeploymentConfig(), (300.0, 50.0))[0]
    assert host_row.network_transit_energy_j_per_inference is None


def test_speed_ratio_energy_uses_mean_host_time() -> None:
    # A skewed edge half: three fast inferences and one slow one.
    measured = _measurement([100] * 4, [10.0, 10.0, 10.0, 50.0])
    config = DeploymentConfig(edge_devices=[{"name": "raspberry-pi-5", "speed_ratio": 3.0}])
    (row,) = build_rows(measured, config, (300.0, 50.0))
    from vqbench.devices import get_device_profile

    active_w = get_device_profile("raspberry-pi-5").active_power_w
    assert row.edge_energy_j_per_inference == pytest.approx(active_w * 3.0 * 0.020, rel=1e-12)
    assert row.edge_latency_ms_p50 == pytest.approx(30.0)
    assert row.edge_time_basis == "speed-ratio"
    assert not math.isnan(row.edge_energy_j_per_inference)
