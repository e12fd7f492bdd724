"""Link profiles and the link model: latency, device radio energy and network transit energy.

Profiles live in ``data_files/links.yaml``, each number with its source. For one transfer of
``payload_up_bytes`` up and ``payload_down_bytes`` down:

- frames: each direction is cut into frames of at most ``max_frame_payload_bytes``, and each
  frame adds ``frame_overhead_bytes`` on the wire;
- IP links (WiFi, LTE, 5G, NB-IoT, Ethernet):
  latency = (1 + set-up round trips) x RTT + wire bits up / uplink rate + wire bits down /
  downlink rate, where the set-up round trips are those of opening a connection before the
  data (0 on a kept-alive one, 1 for TCP, 2 for TCP and TLS 1.3), and
  radio energy = fixed (promotion + tail) + active power x latency + per-byte energy x wire
  bytes (a power model of the form used by Huang et al., MobiSys 2012);
- LoRa links: each frame's time on air follows the Semtech SX127x formula (explicit header,
  payload CRC on uplinks only), and after each uplink frame the radio stays silent for time on
  air x (1 / duty cycle - 1) before the next. Downlinks follow class A: one frame in the receive
  window ``rtt_ms`` after an uplink, the first after the last data frame and each further one
  after an empty uplink of its own. Energy is transmit power x time on air plus the fixed
  receive-window energy per uplink frame;
- transit energy = wire bytes / 1e9 x ``transit_kwh_per_gb`` x 3.6e6 J/kWh.

A transfer that breaks the link's rules (more frames than ``max_frames_per_transfer``, more
time on air per day than the duty cycle allows at ``transfers_per_day``, or longer than a given
``max_transfer_latency_s``) is returned with ``feasible=False``, the reason, and NaN figures.
It is never computed as if it fitted.

The fixed energy is paid in full by transfers further apart than the radio's tail time. A
profile that gives ``tail_s`` and ``tail_power_w`` (WiFi, LTE) models transfers that come closer,
spread evenly over the day: the radio then never returns to idle, so a transfer pays no
promotion and, in place of the whole tail, the tail power until the next transfer.

Not modeled: the bytes of a connection's set-up (TCP's SYN and ACK, a TLS certificate of a few
kB down), TCP slow start and retransmissions, and the LTE promotion delay (its energy is in ``fixed_energy_j``, its time is
not). Profiles without tail figures (5G, NB-IoT) charge the whole fixed energy to every
transfer, however frequent. On NB-IoT the round trip is charged at the transmit power, an upper
bound for a modem that waits. A LoRa downlink frame's receive energy is in the fixed energy
per uplink frame, and the gateway's own duty cycle is not modeled.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from importlib import resources

import yaml

from vqbench.errors import ScenarioError

METHOD = "modeled-link"
#: The FPort byte that ``frame_overhead_bytes`` counts for LoRaWAN and an empty frame leaves out.
_LORAWAN_FPORT_BYTES = 1
_J_PER_KWH = 3.6e6
_BYTES_PER_GB = 1e9
_S_PER_DAY = 86_400.0


@dataclass(frozen=True)
class LoraModulation:
    """LoRa physical-layer settings that set each frame's time on air."""

    spreading_factor: int
    bandwidth_hz: float
    coding_rate_denominator: int = 5
    preamble_symbols: int = 8


@dataclass(frozen=True)
class FigureSource:
    """Source and year of one profile number."""

    source: str
    year: int


@dataclass(frozen=True)
class LinkProfile:
    """Rates, latency, energy terms, framing rules and transit energy of one link."""

    name: str
    description: str
    uplink_bit_per_s: float
    downlink_bit_per_s: float
    rtt_ms: float
    fixed_energy_j: float
    active_power_w: float
    energy_per_byte_up_j: float
    energy_per_byte_down_j: float
    max_frame_payload_bytes: int
    frame_overhead_bytes: int
    duty_cycle: float
    max_frames_per_transfer: int | None
    transit_kwh_per_gb: float
    transit_year: int
    lora: LoraModulation | None = None
    sources: dict[str, FigureSource] = field(default_factory=dict)
    #: Time and power of the radio's high-power tail after a transfer; part of ``fixed_energy_j``.
    tail_s: float | None = None
    tail_power_w: float | None = None


@dataclass(frozen=True)
class LinkCost:
    """Modeled cost of one transfer; figures are NaN when ``feasible`` is False."""

    transfer_latency_ms: float
    radio_energy_j: float
    transit_energy_j: float
    feasible: bool
    infeasible_reason: str | None
    n_frames: int
    wire_bytes: int = 0
    method: str = METHOD
    #: Part of ``transfer_latency_ms`` spent waiting for a receive window that opens a fixed
    #: delay after the last uplink (LoRaWAN class A with a reply). The cloud half runs meanwhile.
    reply_wait_ms: float = 0.0


_NUMBER_FIELDS = (
    "uplink_bit_per_s", "downlink_bit_per_s", "rtt_ms", "fixed_energy_j", "active_power_w",
    "energy_per_byte_up_j", "energy_per_byte_down_j", "max_frame_payload_bytes",
    "frame_overhead_bytes", "duty_cycle", "max_frames_per_transfer", "transit_kwh_per_gb",
    "transit_year",
)  # fmt: skip
_TAIL_FIELDS = ("tail_s", "tail_power_w")
_INT_FIELDS = {
    "max_frame_payload_bytes": int,
    "frame_overhead_bytes": int,
    "transit_year": int,
    "max_frames_per_transfer": lambda value: value,
}


def _parse_profile(name: str, entry: dict) -> LinkProfile:
    missing = [key for key in _NUMBER_FIELDS if key not in entry or key not in entry["sources"]]
    if missing:
        raise ScenarioError(f"link profile {name!r} lacks a value or source for {missing}")
    sources = {key: FigureSource(**value) for key, value in entry["sources"].items()}
    lora = LoraModulation(**entry["lora"]) if entry.get("lora") else None
    # PyYAML reads exponents without a sign (5.0e7) as strings, so convert every number here.
    values = {key: _INT_FIELDS.get(key, float)(entry[key]) for key in _NUMBER_FIELDS}
    if values["max_frames_per_transfer"] is not None:
        values["max_frames_per_transfer"] = int(values["max_frames_per_transfer"])
    return LinkProfile(name, entry.get("description", ""), lora=lora, sources=sources, **values, **_tail(name, entry))


def _tail(name: str, entry: dict) -> dict[str, float]:
    """Read the optional tail figures, which come as a pair, each with a source, within the fixed energy."""
    present = [key for key in _TAIL_FIELDS if key in entry]
    if not present:
        return {}
    lacking = [key for key in _TAIL_FIELDS if key not in entry or key not in entry["sources"]]
    if lacking:
        raise ScenarioError(f"link profile {name!r} gives {present} but lacks a value or source for {lacking}; "
                            "give both tail_s and tail_power_w with their sources, or neither")
    tail = {key: float(entry[key]) for key in _TAIL_FIELDS}
    tail_energy_j = tail["tail_s"] * tail["tail_power_w"]
    if tail_energy_j > float(entry["fixed_energy_j"]):
        raise ScenarioError(f"link profile {name!r}: its tail ({tail['tail_s']:g} s at {tail['tail_power_w']:g} W, "
                            f"{tail_energy_j:.3g} J) exceeds fixed_energy_j {entry['fixed_energy_j']}, which includes it")
    return tail


@functools.cache
def load_link_profiles() -> dict[str, LinkProfile]:
    """Read the bundled link profiles, keyed by name."""
    text = resources.files("vqbench").joinpath("data_files/links.yaml").read_text()
    links = yaml.safe_load(text)["links"]
    return {name: _parse_profile(name, entry) for name, entry in links.items()}


def get_link_profile(name: str) -> LinkProfile:
    """Return a bundled profile; raise ScenarioError listing valid names for an unknown one."""
    profiles = load_link_profiles()
    if name not in profiles:
        raise ScenarioError(f"unknown link {name!r}; valid links: {', '.join(profiles)}")
    return profiles[name]


def frame_count(payload_bytes: int, max_frame_payload_bytes: int) -> int:
    """Return how many frames carry ``payload_bytes`` (0 for an empty payload)."""
    return math.ceil(payload_bytes / max_frame_payload_bytes)


def lora_time_on_air_s(phy_payload_bytes: int, modulation: LoraModulation, payload_crc: bool = True) -> float:
    """Return one LoRa frame's time on air (explicit header, Semtech SX127x formula).

    LoRaWAN uplinks carry a payload CRC and downlinks do not (``payload_crc=False``).
    """
    sf = modulation.spreading_factor
    symbol_s = 2**sf / modulation.bandwidth_hz
    # Low data rate optimisation is mandatory when a symbol lasts longer than 16 ms.
    low_data_rate = 1 if symbol_s > 0.016 else 0
    numerator = 8 * phy_payload_bytes - 4 * sf + 28 + (16 if payload_crc else 0)
    payload_symbols = 8 + max(
        math.ceil(numerator / (4 * (sf - 2 * low_data_rate))) * modulation.coding_rate_denominator,
        0,
    )
    preamble_s = (modulation.preamble_symbols + 4.25) * symbol_s
    return preamble_s + payload_symbols * symbol_s


def _frame_sizes(payload_bytes: int, profile: LinkProfile) -> list[int]:
    n_frames = frame_count(payload_bytes, profile.max_frame_payload_bytes)
    sizes = [profile.max_frame_payload_bytes] * n_frames
    if n_frames:
        sizes[-1] = payload_bytes - profile.max_frame_payload_bytes * (n_frames - 1)
    return [size + profile.frame_overhead_bytes for size in sizes]


@dataclass(frozen=True)
class _Timing:
    latency_s: float
    radio_energy_j: float
    uplink_airtime_s: float


def fixed_energy_j(profile: LinkProfile, transfers_per_day: float) -> float:
    """Return the promotion and tail energy that one of ``transfers_per_day`` evenly spread transfers pays."""
    if profile.tail_s is None or profile.tail_power_w is None:
        return profile.fixed_energy_j
    interval_s = _S_PER_DAY / transfers_per_day
    if interval_s >= profile.tail_s:
        return profile.fixed_energy_j
    # The next transfer starts within the tail, so the radio stays in its tail state between
    # transfers and is never promoted again.
    return profile.tail_power_w * interval_s


def _ip_timing(
    profile: LinkProfile, up_wire_bytes: int, down_wire_bytes: int, transfers_per_day: float, setup_round_trips: int
) -> _Timing:
    latency_s = (
        (1 + setup_round_trips) * profile.rtt_ms / 1e3
        + 8 * up_wire_bytes / profile.uplink_bit_per_s
        + 8 * down_wire_bytes / profile.downlink_bit_per_s
    )
    energy_j = (
        fixed_energy_j(profile, transfers_per_day)
        + profile.active_power_w * latency_s
        + profile.energy_per_byte_up_j * up_wire_bytes
        + profile.energy_per_byte_down_j * down_wire_bytes
    )
    return _Timing(latency_s, energy_j, 8 * up_wire_bytes / profile.uplink_bit_per_s)


def _lora_timing(profile: LinkProfile, up_frames: list[int], down_frames: list[int]) -> tuple[_Timing, list[int]]:
    """Time a class A transfer; return its timing and the empty uplink frames it had to add.

    A class A device hears the network only in the receive window that opens ``rtt_ms`` after
    each of its uplinks, one downlink frame per window. The reply exists once the last uplink
    frame has arrived, so its first frame rides in that frame's window. Each further downlink
    frame needs an empty uplink (the frame header and MIC alone) to open a window, sent once the duty
    cycle allows.
    """
    rx_delay_s = profile.rtt_ms / 1e3
    off_factor = 1 / profile.duty_cycle - 1
    # A frame without payload has no FPort byte (LoRaWAN 1.0.3, section 4.3.2).
    empty_uplink_bytes = profile.frame_overhead_bytes - _LORAWAN_FPORT_BYTES
    uplinks_s = [lora_time_on_air_s(size, profile.lora) for size in up_frames]
    # Between uplink frames the duty cycle imposes an off-time; none is needed after the last.
    latency_s = sum(uplinks_s) + sum(uplinks_s[:-1]) * off_factor
    empty_uplinks: list[int] = []
    since_uplink_s = 0.0
    for index, size in enumerate(down_frames):
        if index > 0 or not uplinks_s:
            if uplinks_s:
                latency_s += max(0.0, uplinks_s[-1] * off_factor - since_uplink_s)
            empty_uplinks.append(empty_uplink_bytes)
            uplinks_s.append(lora_time_on_air_s(empty_uplink_bytes, profile.lora))
            latency_s += uplinks_s[-1]
        since_uplink_s = rx_delay_s + lora_time_on_air_s(size, profile.lora, payload_crc=False)
        latency_s += since_uplink_s
    energy_j = profile.active_power_w * sum(uplinks_s) + profile.fixed_energy_j * len(uplinks_s)
    return _Timing(latency_s, energy_j, sum(uplinks_s)), empty_uplinks


def _infeasible_reason(
    profile: LinkProfile,
    n_frames: int,
    timing: _Timing,
    transfers_per_day: float,
    max_transfer_latency_s: float | None,
) -> str | None:
    if profile.max_frames_per_transfer is not None and n_frames > profile.max_frames_per_transfer:
        return (
            f"{n_frames} frames exceed the {profile.max_frames_per_transfer}-frame limit of "
            f"link {profile.name!r}"
        )
    airtime_budget_s = profile.duty_cycle * _S_PER_DAY
    if profile.duty_cycle < 1 and timing.uplink_airtime_s * transfers_per_day > airtime_budget_s:
        return (
            f"{transfers_per_day:g} transfers a day need "
            f"{timing.uplink_airtime_s * transfers_per_day:.1f} s of uplink time on air, over the "
            f"{airtime_budget_s:.1f} s a day that the {profile.duty_cycle:.0%} duty cycle of "
            f"link {profile.name!r} allows"
        )
    if max_transfer_latency_s is not None and timing.latency_s > max_transfer_latency_s:
        return (
            f"transfer takes {timing.latency_s:.1f} s on link {profile.name!r}, over the "
            f"maximum of {max_transfer_latency_s:g} s"
        )
    return None


def link_cost(
    profile: LinkProfile,
    payload_up_bytes: int,
    payload_down_bytes: int = 0,
    *,
    transfers_per_day: float = 1.0,
    max_transfer_latency_s: float | None = None,
    setup_round_trips: int = 0,
) -> LinkCost:
    """Model one transfer over ``profile`` (see the module docstring for the formulas).

    ``setup_round_trips`` applies to IP links only: a LoRa link opens no connection. The
    ``nbiot`` profile frames UDP datagrams, so there the round trips model a handshake above UDP,
    such as DTLS.
    """
    if isinstance(setup_round_trips, bool) or not isinstance(setup_round_trips, int):
        raise ScenarioError(
            f"setup_round_trips must be a whole number of round trips, got {setup_round_trips!r}; "
            "pass 0 for a kept-alive connection, 1 for TCP, 2 for TCP and TLS 1.3"
        )
    if payload_up_bytes < 0 or payload_down_bytes < 0 or not transfers_per_day > 0 or setup_round_trips < 0:
        raise ScenarioError(
            f"payload sizes and setup_round_trips must be >= 0 and transfers_per_day > 0, got up={payload_up_bytes}, "
            f"down={payload_down_bytes}, transfers_per_day={transfers_per_day}, setup_round_trips={setup_round_trips}"
        )
    up_frames = _frame_sizes(payload_up_bytes, profile)
    down_frames = _frame_sizes(payload_down_bytes, profile)
    if profile.lora is not None:
        timing, empty_uplinks = _lora_timing(profile, up_frames, down_frames)
        up_frames += empty_uplinks
    else:
        timing = _ip_timing(profile, sum(up_frames), sum(down_frames), transfers_per_day, setup_round_trips)
    wire_bytes = sum(up_frames) + sum(down_frames)
    n_frames = len(up_frames) + len(down_frames)

    reason = _infeasible_reason(
        profile, n_frames, timing, transfers_per_day, max_transfer_latency_s
    )
    if reason is not None:
        return LinkCost(math.nan, math.nan, math.nan, False, reason, n_frames, wire_bytes)

    transit_j = wire_bytes / _BYTES_PER_GB * profile.transit_kwh_per_gb * _J_PER_KWH
    return LinkCost(
        transfer_latency_ms=timing.latency_s * 1e3,
        radio_energy_j=timing.radio_energy_j,
        transit_energy_j=transit_j,
        feasible=True,
        infeasible_reason=None,
        n_frames=n_frames,
        wire_bytes=wire_bytes,
        reply_wait_ms=profile.rtt_ms if profile.lora is not None and down_frames else 0.0,
    )


# Published transit factors (kWh per GB), to show how much the choice of factor moves results.
TRANSIT_KWH_PER_GB_REFERENCES: dict[str, tuple[float, int, str]] = {
    "fixed-line-2015": (
        0.06, 2015, "Aslan, Mayers, Koomey, France, J. Industrial Ecology 22(4), 2018"
    ),
    "eu-fixed-2020": (0.03, 2020, "EU ICT study, quoted in the Scope3 data-transfer methodology"),
    "eu-mobile-2020": (0.14, 2020, "EU ICT study, quoted in the Scope3 data-transfer methodology"),
    "ran-4g": (0.23, 2022, "Scope3 data-transfer methodology, bottom-up radio access network"),
    "ran-5g": (0.06, 2022, "Scope3 data-transfer methodology, bottom-up radio access network"),
}  # fmt: skip


def transit_energy_sensitivity_j(wire_bytes: int) -> dict[str, float]:
    """Return the transit energy of ``wire_bytes`` under each published factor."""
    return {
        name: wire_bytes / _BYTES_PER_GB * kwh_per_gb * _J_PER_KWH
        for name, (kwh_per_gb, _, _) in TRANSIT_KWH_PER_GB_REFERENCES.items()
    }
