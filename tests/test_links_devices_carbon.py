"""Link model, device model and carbon arithmetic against hand-computed values."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone
from importlib import resources

import pytest
import yaml

from vqbench.carbon import (
    GridIntensity,
    co2e_g,
    grid_intensity,
    read_hourly_intensity,
)
from vqbench.devices import (
    MIN_INFERENCES_PER_DAY,
    embodied_co2e_g_per_inference,
    get_device_profile,
    load_device_profiles,
    model_stage_on_device,
)
from vqbench.errors import DataError, ScenarioError
from vqbench.network.links import (
    LoraModulation,
    get_link_profile,
    link_cost,
    load_link_profiles,
    lora_time_on_air_s,
)
from vqbench.scenario import DeploymentConfig

# -- links ------------------------------------------------------------------------------------


def test_link_profiles_present_with_sources():
    profiles = load_link_profiles()
    assert set(profiles) == {
        "wifi", "lte", "5g", "nbiot", "lorawan-sf7", "lorawan-sf12", "ethernet",
    }
    for profile in profiles.values():
        assert "transit_kwh_per_gb" in profile.sources
        assert "fixed_energy_j" in profile.sources


def test_lte_cost_hand_computed():
    lte = get_link_profile("lte")
    cost = link_cost(lte, 3000, 100)
    # up: 3 frames (1460, 1460, 80) + 3 x 45 B = 3135 B; down: 1 frame, 145 B
    assert cost.n_frames == 4
    assert cost.wire_bytes == 3280
    latency_s = 0.070 + 8 * 3135 / 6e6 + 8 * 145 / 1.3e7
    assert cost.transfer_latency_ms == pytest.approx(latency_s * 1e3, rel=1e-12)
    radio_j = 12.6 + 1.29 * latency_s + 3.51e-6 * 3135 + 4.16e-7 * 145
    assert cost.radio_energy_j == pytest.approx(radio_j, rel=1e-12)
    # 3280 B x 0.14 kWh/GB x 3.6e6 J/kWh / 1e9 B/GB
    assert cost.transit_energy_j == pytest.approx(3280 * 0.14 * 3.6e-3, rel=1e-12)
    assert cost.method == "modeled-link"
    assert cost.feasible


def test_lora_time_on_air_hand_computed():
    # SF12, 125 kHz, 64 B: symbol 32.768 ms, 12.25 preamble symbols,
    # 8 + ceil((512 - 48 + 44) / 40) x 5 = 73 payload symbols
    sf12 = LoraModulation(spreading_factor=12, bandwidth_hz=125_000)
    assert lora_time_on_air_s(64, sf12) == pytest.approx((12.25 + 73) * 0.032768, rel=1e-12)
    # SF7, 235 B: 8 + ceil((1880 - 28 + 44) / 28) x 5 = 348 symbols of 1.024 ms
    sf7 = LoraModulation(spreading_factor=7, bandwidth_hz=125_000)
    assert lora_time_on_air_s(235, sf7) == pytest.approx((12.25 + 348) * 1.024e-3, rel=1e-12)


@pytest.mark.parametrize("per_day, fixed_j", [
    (100, 12.6),                  # 864 s apart: promotion and the whole tail each time
    (7_000, 12.6),                # 12.3 s apart, still beyond the 11.6 s tail
    (86_400, 1.06 * 1.0),         # 1 s apart: the tail power until the next transfer, no promotion
    (86_400 / 5, 1.06 * 5.0),     # 5 s apart
])
def test_lte_tail_shared_when_frequent(per_day: float, fixed_j: float):
    lte = get_link_profile("lte")
    cost = link_cost(lte, 200, transfers_per_day=per_day)
    latency_s = cost.transfer_latency_ms / 1e3
    expected_j = fixed_j + 1.29 * latency_s + 3.51e-6 * (200 + 45)
    assert cost.radio_energy_j == pytest.approx(expected_j, rel=1e-12)


def test_untailed_link_fixed_energy_constant():
    nr = get_link_profile("5g")
    assert nr.tail_s is None
    often = link_cost(nr, 200, transfers_per_day=86_400).radio_energy_j
    rarely = link_cost(nr, 200, transfers_per_day=1).radio_energy_j
    assert often == pytest.approx(rarely, rel=1e-12)


def test_tail_figures_validated():
    from vqbench.network.links import _parse_profile

    entry = yaml.safe_load(resources.files("vqbench").joinpath("data_files/links.yaml").read_text())["links"]["lte"]
    lacking = {key: value for key, value in entry.items() if key != "tail_power_w"}
    with pytest.raises(ScenarioError, match="lacks a value or source for \\['tail_power_w'\\]"):
        _parse_profile("lte", lacking)
    with pytest.raises(ScenarioError, match="exceeds fixed_energy_j 12.6, which includes it"):
        _parse_profile("lte", {**entry, "tail_s": 20})


@pytest.mark.parametrize("round_trips", [1, 2])
def test_setup_round_trips_add_rtt(round_trips: int):
    lte = get_link_profile("lte")
    kept_alive = link_cost(lte, 3000, 100)
    opened = link_cost(lte, 3000, 100, setup_round_trips=round_trips)
    extra_s = round_trips * 0.070
    assert opened.transfer_latency_ms == pytest.approx(kept_alive.transfer_latency_ms + extra_s * 1e3, rel=1e-12)
    # The radio stays active for the extra round trips, but the bytes on the wire do not change.
    assert opened.radio_energy_j == pytest.approx(kept_alive.radio_energy_j + 1.29 * extra_s, rel=1e-12)
    assert opened.wire_bytes == kept_alive.wire_bytes


def test_setup_round_trips_skip_lora():
    sf7 = get_link_profile("lorawan-sf7")
    assert link_cost(sf7, 221, setup_round_trips=2) == link_cost(sf7, 221)


def test_setup_round_trips_in_scenario():
    assert DeploymentConfig(links=["lte"]).setup_round_trips == 0
    with pytest.raises(ValueError, match="setup_round_trips"):
        DeploymentConfig(links=["lte"], setup_round_trips=4)
    with pytest.raises(ValueError, match="setup_round_trips"):
        DeploymentConfig(links=["lte"], setup_round_trips=True)
    with pytest.raises(ScenarioError, match="setup_round_trips=-1"):
        link_cost(get_link_profile("wifi"), 10, setup_round_trips=-1)
    with pytest.raises(ScenarioError, match="transfers_per_day=nan"):
        link_cost(get_link_profile("lorawan-sf7"), 10, transfers_per_day=math.nan)


@pytest.mark.parametrize("value", [True, 1.5, "1", None])
def test_link_cost_rejects_fractional_round_trips(value):
    with pytest.raises(ScenarioError, match="whole number of round trips"):
        link_cost(get_link_profile("lte"), 200, 10, setup_round_trips=value)


@pytest.mark.parametrize("links", [[], ["lorawan-sf7"]], ids=["no-link", "lora-only"])
def test_round_trips_need_ip_link(links):
    with pytest.raises(ValueError, match="no listed link opens a connection"):
        DeploymentConfig(links=links, setup_round_trips=1)
    assert DeploymentConfig(links=[*links, "nbiot"], setup_round_trips=1).setup_round_trips == 1


def test_lorawan_vq_code_fits_one_frame():
    cost = link_cost(get_link_profile("lorawan-sf7"), 221)
    assert cost.feasible
    assert cost.n_frames == 1
    airtime_s = (12.25 + 348) * 1.024e-3
    assert cost.transfer_latency_ms == pytest.approx(airtime_s * 1e3, rel=1e-12)
    assert cost.radio_energy_j == pytest.approx(0.15 * airtime_s + 0.01, rel=1e-12)


def test_lorawan_jpeg_infeasible():
    cost = link_cost(get_link_profile("lorawan-sf12"), 8700, transfers_per_day=100)
    assert not cost.feasible
    assert "duty cycle" in cost.infeasible_reason
    assert cost.n_frames == 171
    assert math.isnan(cost.radio_energy_j)
    assert math.isnan(cost.transfer_latency_ms)


def test_lorawan_multi_frame_waits_for_duty_cycle():
    cost = link_cost(get_link_profile("lorawan-sf12"), 102)
    airtime_s = (12.25 + 73) * 0.032768
    # two frames of 51 B; 99 x airtime of silence between them at 1 % duty cycle
    assert cost.transfer_latency_ms == pytest.approx((2 + 99) * airtime_s * 1e3, rel=1e-12)


def test_lorawan_downlink_frames_need_uplinks():
    sf12 = get_link_profile("lorawan-sf12")

    def on_air_s(phy_bytes, payload_crc=True):
        return lora_time_on_air_s(phy_bytes, sf12.lora, payload_crc)

    # 40 B up (one 53-byte frame), 60 B down (frames of 64 and 22 bytes, without payload CRC).
    # The first downlink frame rides in the window 1 s after the data frame. The second waits
    # for the duty cycle's off-time after that frame, then for an empty 12-byte uplink (no
    # FPort) and its window.
    cost = link_cost(sf12, 40, 60)
    first_window_s = 1.0 + on_air_s(64, payload_crc=False)
    expected_s = (on_air_s(53) + first_window_s + (99 * on_air_s(53) - first_window_s)
                  + on_air_s(12) + 1.0 + on_air_s(22, payload_crc=False))
    assert cost.transfer_latency_ms == pytest.approx(expected_s * 1e3, rel=1e-12)
    assert cost.radio_energy_j == pytest.approx(0.15 * (on_air_s(53) + on_air_s(12)) + 2 * 0.05, rel=1e-12)
    assert cost.n_frames == 4
    assert cost.wire_bytes == 53 + 12 + 64 + 22
    assert cost.reply_wait_ms == 1000.0
    # One downlink frame needs no extra uplink.
    single = link_cost(sf12, 40, 30)
    assert single.n_frames == 2
    expected_single_s = on_air_s(53) + 1.0 + on_air_s(43, payload_crc=False)
    assert single.transfer_latency_ms == pytest.approx(expected_single_s * 1e3, rel=1e-12)


def test_lorawan_reply_alone_sends_uplink():
    sf7 = get_link_profile("lorawan-sf7")
    cost = link_cost(sf7, 0, 10)
    assert cost.n_frames == 2
    expected_s = lora_time_on_air_s(12, sf7.lora) + 1.0 + lora_time_on_air_s(23, sf7.lora, payload_crc=False)
    assert cost.transfer_latency_ms == pytest.approx(expected_s * 1e3, rel=1e-12)


def test_link_latency_limit_and_frame_limit():
    sf12 = get_link_profile("lorawan-sf12")
    cost = link_cost(sf12, 102, max_transfer_latency_s=60)
    assert not cost.feasible
    assert "maximum of 60 s" in cost.infeasible_reason
    limited = dataclasses.replace(get_link_profile("wifi"), max_frames_per_transfer=2)
    assert "frame limit" in link_cost(limited, 5000).infeasible_reason


def test_link_rejects_negative_payload():
    with pytest.raises(ScenarioError, match="payload"):
        link_cost(get_link_profile("wifi"), -1)
    with pytest.raises(ScenarioError, match="valid links"):
        get_link_profile("carrier-pigeon")


# -- devices ----------------------------------------------------------------------------------


def test_device_profiles_present_with_sources():
    profiles = load_device_profiles()
    assert set(profiles) == {
        "raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano",
        "phone-midrange", "host",
    }
    assert profiles["host"].measured
    for profile in profiles.values():
        if not profile.measured:
            assert set(profile.sources) >= {"idle_power_w", "active_power_w", "embodied_kgco2e"}


def test_device_model_from_macs():
    pi4 = get_device_profile("raspberry-pi-4")
    cost = model_stage_on_device(pi4, host_time_s=0.001, macs=50_000_000, speed_ratio=None)
    # 5e7 MACs / 5e9 MAC/s = 10 ms at 6.4 W active, 2.7 W idle
    assert cost.basis == "macs"
    assert cost.time_s == pytest.approx(0.01)
    assert cost.energy_j == pytest.approx(0.064)
    assert cost.dynamic_energy_j == pytest.approx(0.037)
    assert cost.method == "modeled-device-profile"


def test_device_model_from_speed_ratio():
    pi5 = get_device_profile("raspberry-pi-5")
    cost = model_stage_on_device(pi5, host_time_s=0.002, macs=None, speed_ratio=4.0)
    assert cost.basis == "speed-ratio"
    assert cost.time_s == pytest.approx(0.008)
    assert cost.energy_j == pytest.approx(0.008 * 7.9)


def test_device_model_errors():
    with pytest.raises(ScenarioError, match="MACs or a speed_ratio"):
        model_stage_on_device(get_device_profile("jetson-nano"), 0.01, None, None)
    with pytest.raises(ScenarioError, match="measured"):
        model_stage_on_device(get_device_profile("host"), 0.01, 1000, None)
    with pytest.raises(ScenarioError, match="valid devices"):
        get_device_profile("toaster")


def test_embodied_share_hand_computed():
    phone = get_device_profile("phone-midrange")
    # 55 kg over 3 years x 365.25 days x 100 inferences a day
    expected_g = 55_000 / (3 * 365.25 * 100)
    assert embodied_co2e_g_per_inference(phone) == pytest.approx(expected_g)
    assert embodied_co2e_g_per_inference(phone, 1000) == pytest.approx(expected_g / 10)


@pytest.mark.parametrize("per_day", [0.0, 1e-320, 0.0009])
def test_embodied_share_rate_floor(per_day: float):
    # 1e-320 once gave an infinite share per face (inf in results.csv, null in results.json).
    with pytest.raises(ScenarioError, match="inferences_per_day must be at least 0.001"):
        embodied_co2e_g_per_inference(get_device_profile("phone-midrange"), per_day)
    with pytest.raises(ValueError, match="greater than or equal to 0.001"):
        DeploymentConfig(transfers_per_day=per_day)


def test_scenario_floor_matches_device_floor():
    assert DeploymentConfig.model_fields["transfers_per_day"].metadata[0].ge == MIN_INFERENCES_PER_DAY
    assert math.isfinite(embodied_co2e_g_per_inference(get_device_profile("phone-midrange"), MIN_INFERENCES_PER_DAY))


# -- carbon -----------------------------------------------------------------------------------


def test_co2e_arithmetic():
    intensity = GridIntensity(400.0, "test", "hand", 2024)
    # 3.6e6 J = 1 kWh -> 400 g; 36 J -> 0.004 g
    assert co2e_g(3.6e6, intensity) == pytest.approx(400.0)
    assert co2e_g(36.0, intensity) == pytest.approx(0.004)


def test_grid_intensity_country_codes():
    france = grid_intensity("FRA")
    assert france.gco2e_per_kwh == pytest.approx(56.039)
    assert france.year == 2023
    assert not france.is_world_average
    assert grid_intensity("fr").gco2e_per_kwh == france.gco2e_per_kwh


def test_grid_intensity_world_and_cloud():
    world = grid_intensity("world")
    assert world.is_world_average
    assert world.gco2e_per_kwh == pytest.approx(475.0)
    assert grid_intensity("gcp:europe-west1").gco2e_per_kwh == pytest.approx(122.0)
    aws = grid_intensity("aws:eu-west-3")
    assert aws.gco2e_per_kwh == grid_intensity("FRA").gco2e_per_kwh
    assert "aws:eu-west-3" in aws.source


def test_grid_intensity_unknown_location():
    with pytest.raises(ScenarioError, match="ISO 3166"):
        grid_intensity("Atlantis")
    with pytest.raises(ScenarioError, match="known regions"):
        grid_intensity("aws:moon-1")


def test_hourly_intensity(tmp_path):
    path = tmp_path / "hourly.csv"
    path.write_text(
        "timestamp_utc,gco2e_per_kwh\n2024-05-01T10:00:00Z,120\n2024-05-01T11:00:00Z,80\n"
    )
    hourly = read_hourly_intensity(path)
    at = hourly.at(datetime(2024, 5, 1, 11, 42, tzinfo=timezone.utc))
    assert at.gco2e_per_kwh == 80
    with pytest.raises(DataError, match="no value"):
        hourly.at(datetime(2024, 5, 2, 0, 0, tzinfo=timezone.utc))


def test_hourly_intensity_off_the_hour(tmp_path):
    path = tmp_path / "hourly.csv"
    path.write_text("timestamp_utc,gco2e_per_kwh\n2024-05-01T10:00:00Z,120\n2024-05-01T11:07:00Z,80\n")
    with pytest.raises(DataError, match=r"2024-05-01T11:07:00\+00:00, which is not on a whole hour"):
        read_hourly_intensity(path)


def test_hourly_intensity_repeated_hour(tmp_path):
    path = tmp_path / "hourly.csv"
    path.write_text("timestamp_utc,gco2e_per_kwh\n2024-05-01T10:00:00Z,900\n2024-05-01T10:00:00Z,200\n")
    with pytest.raises(DataError, match=r"gives the hour 2024-05-01T10:00:00\+00:00 on lines 2 and 3"):
        read_hourly_intensity(path)


def test_hourly_intensity_names_bad_line(tmp_path):
    path = tmp_path / "hourly.csv"
    path.write_text("timestamp_utc,gco2e_per_kwh\n2024-05-01T10:00:00Z,120\n2024-05-01T11:00:00Z,-5\n")
    with pytest.raises(DataError, match="gco2e_per_kwh -5.0 on line 3"):
        read_hourly_intensity(path)


def test_hourly_intensity_with_byte_order_mark(tmp_path):
    path = tmp_path / "hourly.csv"
    path.write_bytes(b"\xef\xbb\xbftimestamp_utc,gco2e_per_kwh\n2024-05-01T10:00:00Z,120\n")
    hourly = read_hourly_intensity(path)
    assert hourly.gco2e_per_kwh == (120.0,)


def test_hourly_file_keeps_location_check(tmp_path):
    from vqbench import runner
    from vqbench.scenario import Scenario

    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    path = tmp_path / "hourly.csv"
    path.write_text(f"timestamp_utc,gco2e_per_kwh\n{hour.isoformat()},123\n")
    pipelines = [{"kind": "cloud-raw"}]
    bad = Scenario.model_validate({"name": "x", "pipelines": pipelines,
                                   "carbon": {"edge_location": "XYZ", "edge_hourly_csv": str(path)}})
    with pytest.raises(ScenarioError, match="'XYZ'"):
        runner._assumptions(bad, tmp_path)
    good = Scenario.model_validate({"name": "x", "pipelines": pipelines,
                                    "carbon": {"edge_location": "FRA", "edge_hourly_csv": str(path)}})
    recorded = runner._assumptions(good, tmp_path)["grid_intensity_edge"]
    assert recorded["gco2e_per_kwh"] == 123.0
    assert recorded["location"].startswith("FRA, hourly ")


@dataclasses.dataclass
class _StubPipeline:
    kind: str
    variant: str
    edge_macs: int | None

    def footprint(self):
        from vqbench.pipelines.base import HalfFootprint

        return HalfFootprint(macs=self.edge_macs), HalfFootprint()


def test_device_without_ratio_rejected_before_measuring():
    from vqbench.deployment import check_deployment
    from vqbench.scenario import DeploymentConfig

    pipelines = [_StubPipeline("edge-vq-student", "known", 1_000_000), _StubPipeline("cloud-codec", "jpeg-q30", None)]
    config = DeploymentConfig(edge_devices=["host", "raspberry-pi-4"])
    with pytest.raises(ScenarioError) as raised:
        check_deployment(config, pipelines)
    message = str(raised.value)
    assert message.startswith("edge device raspberry-pi-4 has no speed_ratio")
    assert "cloud-codec/jpeg-q30" in message
    assert "edge-vq-student/known" not in message
    assert "deployment.edge_devices[1].speed_ratio" in message

    # Known MACs, or a speed ratio, are enough to model the device.
    check_deployment(config, pipelines[:1])
    check_deployment(DeploymentConfig(edge_devices=[{"name": "raspberry-pi-4", "speed_ratio": 4.0}]), pipelines)


# -- presets against their sources ------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "field", "mw_per_mbps"),
    [("wifi", "energy_per_byte_up_j", 283), ("wifi", "energy_per_byte_down_j", 137),
     ("lte", "energy_per_byte_up_j", 438), ("lte", "energy_per_byte_down_j", 52)],
)
def test_per_byte_energy_matches_huang_power_model(link, field, mw_per_mbps):
    # Huang et al., MobiSys 2012, give power per throughput: x mW per Mbps is x * 1e-3 W per
    # 1e6 bit/s, so x * 1e-9 J per bit and x * 8e-9 J per byte. A per-bit slip is 8x off.
    assert getattr(get_link_profile(link), field) == pytest.approx(mw_per_mbps * 8e-9, rel=0.01)
    assert str(mw_per_mbps) in get_link_profile(link).sources[field].source


def test_lora_downlink_without_crc_is_shorter():
    # Without the 16-bit payload CRC, SF7's 4/5 coding needs one 5-symbol block less for 10 bytes.
    modulation = LoraModulation(spreading_factor=7, bandwidth_hz=125_000)
    saved_s = lora_time_on_air_s(10, modulation) - lora_time_on_air_s(10, modulation, payload_crc=False)
    assert saved_s == pytest.approx(5 * 1.024e-3, rel=1e-9)


@pytest.mark.parametrize(
    ("spreading_factor", "payload_bytes", "airtime_ms"),
    # Published airtime calculators for LoRaWAN at 125 kHz, coding rate 4/5, 8 preamble symbols.
    [(7, 10, 41.216), (11, 10, 577.536), (9, 13, 164.864)],
)
def test_lora_time_on_air_matches_published_calculators(spreading_factor, payload_bytes, airtime_ms):
    modulation = LoraModulation(spreading_factor=spreading_factor, bandwidth_hz=125_000)
    assert lora_time_on_air_s(payload_bytes, modulation) * 1e3 == pytest.approx(airtime_ms, rel=1e-9)


def test_lora_duty_cycle_budget_per_day_boundary():
    # 106 B on SF12: frames of 64, 64 and 17 PHY bytes, 6.906 s on air per transfer. At 1 %
    # duty cycle a day allows 864 s on air: 125 transfers fit and 126 do not.
    sf12 = get_link_profile("lorawan-sf12")
    modulation = sf12.lora
    airtime_s = 2 * lora_time_on_air_s(64, modulation) + lora_time_on_air_s(17, modulation)
    assert 125 * airtime_s <= 864 < 126 * airtime_s
    assert link_cost(sf12, 106, transfers_per_day=125).feasible
    over = link_cost(sf12, 106, transfers_per_day=126)
    assert not over.feasible
    assert "duty cycle" in over.infeasible_reason
