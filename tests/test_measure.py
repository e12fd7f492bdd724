"""Interleaved timing and metering of several variants, on fake pipelines and a fake clock."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from vqbench.data.dataset import ImageRecord
from vqbench.errors import MeterError, PayloadError
from vqbench.measure import LATENCY_ROUNDS, LatencySamples, measure_latencies
from vqbench.meters.protocol import EnergyStage, WindowSettings, measure_stages_energy
from vqbench.meters.replay import ReplayMeter


@dataclass
class _EdgeOutput:
    payload: bytes


@dataclass
class RecordingPipeline:
    """A pipeline whose halves log each call into a log shared by every fake pipeline."""

    variant: str
    log: list[tuple[str, str, bytes]]
    fail_on: bytes | None = None
    kind: str = "fake"

    def edge(self, data: bytes) -> _EdgeOutput:
        if data == self.fail_on:
            raise PayloadError(f"{self.variant} cannot encode {data!r}")
        self.log.append((self.variant, "edge", data))
        return _EdgeOutput(payload=self.variant.encode() + b":" + data)

    def cloud(self, payloads: list[bytes]) -> list[bytes]:
        self.log.append((self.variant, "cloud", payloads[0]))
        return payloads


def _images(count: int) -> list[ImageRecord]:
    return [ImageRecord(index=i, path=Path(f"{i}.jpg"), data=f"image-{i}".encode()) for i in range(count)]


def test_latency_rounds_take_turns():
    log: list[tuple[str, str, bytes]] = []
    pipelines = [RecordingPipeline("a", log), RecordingPipeline("b", log)]
    images = _images(10)
    rounds: list[int] = []
    results = measure_latencies(pipelines, images, warmup=0, after_round=lambda: rounds.append(len(log)))

    assert len(rounds) == LATENCY_ROUNDS
    edge_order = [variant for variant, half, _ in log if half == "edge"]
    # Each round: a's untimed call and its block of 2, then b's.
    assert edge_order[:6] == ["a", "a", "a", "b", "b", "b"]
    assert edge_order[6:12] == ["a", "a", "a", "b", "b", "b"]
    for result, name in zip(results, "ab"):
        assert isinstance(result, LatencySamples)
        assert len(result.edge_ms) == 10
        assert len(result.cloud_ms) == 10
        assert result.payloads == [f"{name}:image-{i}".encode() for i in range(10)]


def test_one_variant_needs_no_warm_calls():
    log: list[tuple[str, str, bytes]] = []
    [result] = measure_latencies([RecordingPipeline("a", log)], _images(6), warmup=0)
    assert isinstance(result, LatencySamples)
    assert [data for _, half, data in log if half == "edge"] == [f"image-{i}".encode() for i in range(6)]


def test_failed_variant_leaves_others_timed():
    log: list[tuple[str, str, bytes]] = []
    pipelines = [RecordingPipeline("a", log, fail_on=b"image-4"), RecordingPipeline("b", log)]
    broken, timed = measure_latencies(pipelines, _images(10), warmup=0)
    assert isinstance(broken, PayloadError)
    assert "cannot encode b'image-4'" in str(broken)
    assert isinstance(timed, LatencySamples)
    assert len(timed.edge_ms) == 10


class FakeHost:
    """A clock and energy counter; each stage draws its own power while it works."""

    def __init__(self, idle_power_w: float) -> None:
        self.now_s = 0.0
        self.energy_j = 0.0
        self.idle_power_w = idle_power_w
        self.order: list[str] = []

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds
        self.energy_j += self.idle_power_w * seconds

    def stage(self, label: str, power_w: float, inference_s: float) -> EnergyStage:
        def work(item: int) -> None:
            if not self.order or self.order[-1] != label:
                self.order.append(label)
            self.now_s += inference_s
            self.energy_j += power_w * inference_s

        return EnergyStage(label, work, 3)


def test_energy_windows_take_turns():
    host = FakeHost(idle_power_w=2.0)
    meter = ReplayMeter(lambda: host.energy_j, lambda: host.now_s)
    # Durations that are exact binary fractions, so each window contains a known count.
    stages = [host.stage("a", 10.0, 0.0625), host.stage("b", 30.0, 0.125)]
    settings = WindowSettings(warmup=1, repeats=3, min_window_s=0.25, idle_s=0.5)
    first, second = measure_stages_energy(stages, meter, settings, clock=lambda: host.now_s, sleep=host.sleep)

    assert host.order == ["a", "b", "a", "b", "a", "b", "a", "b"]  # warm-ups, then three rounds
    assert first.energy_j_per_inference == pytest.approx(0.625)
    assert second.energy_j_per_inference == pytest.approx(3.75)
    assert first.idle_power_w == pytest.approx(2.0)
    assert second.idle_power_w == pytest.approx(2.0)
    assert first.repeats_j_per_inference == pytest.approx((0.625, 0.625, 0.625))
    assert first.n_inferences == 3 * 4
    assert second.n_inferences == 3 * 2
    assert second.window_inferences == (2, 2, 2)
    assert second.window_durations_s == pytest.approx((0.25, 0.25, 0.25))


class FailingMeter(ReplayMeter):
    """Fails every window that ends while stage ``b`` runs."""

    def __init__(self, host: FakeHost) -> None:
        super().__init__(lambda: host.energy_j, lambda: host.now_s)
        self.host = host

    def end(self, token):
        if self.host.order and self.host.order[-1] == "b":
            raise MeterError("counter went backwards")
        return super().end(token)


def test_meter_error_stops_one_stage():
    host = FakeHost(idle_power_w=1.0)
    stages = [host.stage("a", 10.0, 0.01), host.stage("b", 30.0, 0.01)]
    settings = WindowSettings(warmup=0, repeats=2, min_window_s=0.1, idle_s=0.1)
    first, second = measure_stages_energy(stages, FailingMeter(host), settings, clock=lambda: host.now_s,
                                          sleep=host.sleep)
    assert first.energy_j_per_inference == pytest.approx(0.1)
    assert isinstance(second, MeterError)
    assert host.order.count("b") == 1  # the failed stage gets no second window

