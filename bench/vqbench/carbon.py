"""Grid carbon intensity and the energy-to-CO2e conversion.

Intensities come from the data files that codecarbon bundles, read by path so no tracker
starts and nothing goes online:

- ``codecarbon/data/private_infra/global_energy_mix.json``: per country, keyed by ISO 3166
  alpha-3 code, with ``carbon_intensity`` (gCO2e/kWh) and ``year``;
- ``codecarbon/data/cloud/impact.csv``: per cloud region (``provider:region``, for example
  ``gcp:europe-west1``), in gCO2e/kWh. codecarbon 3.3.2 ships figures for GCP only. For an AWS
  or Azure region listed in ``_CLOUD_REGION_COUNTRIES`` the country figure is used, and the
  ``source`` field states that;
- ``world``: codecarbon's world average (475 gCO2e/kWh in codecarbon 3.3.2, from the IEA Global
  Energy & CO2 Status Report 2019), flagged with ``is_world_average``.

An hourly intensity CSV (``timestamp_utc, gco2e_per_kwh``) can replace the annual figure.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vqbench.errors import DataError, ScenarioError

_J_PER_KWH = 3.6e6

# Country of AWS and Azure regions, for which codecarbon has no regional figure.
_CLOUD_REGION_COUNTRIES = {
    "aws:us-east-1": "USA", "aws:us-east-2": "USA", "aws:us-west-1": "USA",
    "aws:us-west-2": "USA", "aws:ca-central-1": "CAN", "aws:sa-east-1": "BRA",
    "aws:eu-west-1": "IRL", "aws:eu-west-2": "GBR", "aws:eu-west-3": "FRA",
    "aws:eu-central-1": "DEU", "aws:eu-north-1": "SWE", "aws:eu-south-1": "ITA",
    "aws:ap-northeast-1": "JPN", "aws:ap-northeast-2": "KOR", "aws:ap-south-1": "IND",
    "aws:ap-southeast-1": "SGP", "aws:ap-southeast-2": "AUS",
    "azure:westeurope": "NLD", "azure:northeurope": "IRL", "azure:francecentral": "FRA",
    "azure:germanywestcentral": "DEU", "azure:uksouth": "GBR", "azure:swedencentral": "SWE",
    "azure:eastus": "USA", "azure:eastus2": "USA", "azure:westus2": "USA",
    "azure:centralus": "USA", "azure:japaneast": "JPN", "azure:australiaeast": "AUS",
}  # fmt: skip


@dataclass(frozen=True)
class GridIntensity:
    """Carbon intensity of the electricity at one location, with its source and data year.

    ``year`` is None where the data file states none (codecarbon's cloud region table).
    """

    gco2e_per_kwh: float
    location: str
    source: str
    year: int | None
    is_world_average: bool = False


def codecarbon_data_dir() -> Path:
    """Return codecarbon's bundled data directory; raise DataError when codecarbon is missing."""
    import importlib.util

    spec = importlib.util.find_spec("codecarbon")
    if spec is None or spec.origin is None:
        raise DataError("codecarbon is not installed, so no grid data: pip install codecarbon")
    return Path(spec.origin).parent / "data"


@functools.cache
def _energy_mix() -> dict:
    path = codecarbon_data_dir() / "private_infra" / "global_energy_mix.json"
    return json.loads(path.read_text())


@functools.cache
def _carbon_per_source() -> dict:
    path = codecarbon_data_dir() / "private_infra" / "carbon_intensity_per_source.json"
    return json.loads(path.read_text())


@functools.cache
def _cloud_impact() -> dict[str, dict[str, str]]:
    path = codecarbon_data_dir() / "cloud" / "impact.csv"
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return {f"{row['provider']}:{row['region']}": row for row in csv.DictReader(handle)}


def _codecarbon_version() -> str:
    from importlib.metadata import version

    return version("codecarbon")


def _world_average() -> GridIntensity:
    data = _carbon_per_source()
    return GridIntensity(
        gco2e_per_kwh=float(data["world_average"]),
        location="world",
        source=(
            f"world average from codecarbon {_codecarbon_version()} "
            f"carbon_intensity_per_source.json ({data.get('world_average_source', 'no source')})"
        ),
        year=2019,
        is_world_average=True,
    )


def _country(iso3: str, location: str, via: str = "") -> GridIntensity:
    entry = _energy_mix()[iso3]
    return GridIntensity(
        gco2e_per_kwh=float(entry["carbon_intensity"]),
        location=location,
        source=(
            f"{entry['country_name']} ({iso3}) grid mix{via}, codecarbon "
            f"{_codecarbon_version()} global_energy_mix.json"
        ),
        year=int(entry["year"]),
    )


def _iso2_to_iso3(code: str) -> str | None:
    try:
        import pycountry
    except ImportError:
        return None
    country = pycountry.countries.get(alpha_2=code)
    return country.alpha_3 if country is not None else None


def _cloud_region(location: str) -> GridIntensity:
    key = location.lower()
    impact = _cloud_impact()
    if key in impact:
        row = impact[key]
        return GridIntensity(
            gco2e_per_kwh=float(row["impact"]),
            location=key,
            source=f"{row['providerName'] or row['provider']} region {row['region']}, "
            f"codecarbon {_codecarbon_version()} impact.csv ({row['source']}; no year given)",
            year=None,
        )
    if key in _CLOUD_REGION_COUNTRIES:
        via = f", country of cloud region {key} (provider publishes no regional figure)"
        return _country(_CLOUD_REGION_COUNTRIES[key], key, via)
    known = sorted(impact) + sorted(_CLOUD_REGION_COUNTRIES)
    raise ScenarioError(
        f"unknown cloud region {location!r}; known regions: {', '.join(known)}. "
        "Or give the region's country as an ISO 3166 code (e.g. FRA)."
    )


def grid_intensity(location: str) -> GridIntensity:
    """Return the grid intensity of a country (ISO3 or ISO2), a cloud region or ``world``."""
    text = location.strip()
    if text.lower() == "world":
        return _world_average()
    if ":" in text:
        return _cloud_region(text)
    code = text.upper()
    if len(code) == 2:
        code = _iso2_to_iso3(code) or code
    if code in _energy_mix():
        return _country(code, code)
    raise ScenarioError(
        f"unknown grid location {location!r}. Use an ISO 3166 country code (alpha-3 such as "
        "FRA, or alpha-2 such as FR) present in codecarbon's global_energy_mix.json, a cloud "
        "region such as gcp:europe-west1 or aws:eu-west-3, or 'world'. List countries with: "
        "python -c \"from vqbench.carbon import known_locations; print(known_locations())\""
    )


def known_locations() -> list[str]:
    """List every accepted location: countries (ISO3), cloud regions and ``world``."""
    return sorted(_energy_mix()) + sorted(_cloud_impact()) + sorted(_CLOUD_REGION_COUNTRIES) + [
        "world"
    ]


def co2e_g(energy_j: float, intensity: GridIntensity) -> float:
    """Convert energy in joules to grams of CO2e at ``intensity`` (1 kWh = 3.6e6 J)."""
    return energy_j / _J_PER_KWH * intensity.gco2e_per_kwh


@dataclass(frozen=True)
class HourlyIntensity:
    """An hourly carbon intensity series, timestamps in UTC."""

    timestamps_utc: tuple[datetime, ...]
    gco2e_per_kwh: tuple[float, ...]
    source: str

    def at(self, when: datetime) -> GridIntensity:
        """Return the intensity of the hour that contains ``when`` (naive times are UTC)."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        hour = when.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
        for stamp, value in zip(self.timestamps_utc, self.gco2e_per_kwh):
            if stamp == hour:
                return GridIntensity(value, f"hourly {hour.isoformat()}", self.source, hour.year)
        raise DataError(
            f"hourly intensity {self.source} has no value for {hour.isoformat()}; it covers "
            f"{self.timestamps_utc[0].isoformat()}..{self.timestamps_utc[-1].isoformat()}"
        )


def _parse_utc(text: str) -> datetime:
    stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.astimezone(timezone.utc)


def read_hourly_intensity(path: Path) -> HourlyIntensity:
    """Read a CSV with columns ``timestamp_utc`` (ISO 8601) and ``gco2e_per_kwh``."""
    try:
        # utf-8-sig drops the byte order mark that spreadsheet programs write before the header.
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle, skipinitialspace=True))
        pairs = [(_parse_utc(row["timestamp_utc"]), float(row["gco2e_per_kwh"])) for row in rows]
    except OSError as error:
        raise DataError(
            f"cannot read hourly intensity file {path}: {error.strerror or error}; "
            "check the carbon.edge_hourly_csv or carbon.cloud_hourly_csv path"
        ) from error
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"hourly intensity file {path} must have columns timestamp_utc, gco2e_per_kwh with "
            f"ISO 8601 times and numbers: {error}"
        ) from error
    if not pairs:
        raise DataError(f"hourly intensity file {path} has no rows; add one row per hour under its header")
    for line, (stamp, value) in enumerate(pairs, start=2):
        if not math.isfinite(value) or value < 0:
            raise DataError(
                f"hourly intensity file {path} has gco2e_per_kwh {value} on line {line}; "
                "an intensity is a finite number of at least 0"
            )
    first_line: dict[datetime, int] = {}
    for line, (stamp, _) in enumerate(pairs, start=2):
        if stamp in first_line:
            raise DataError(
                f"hourly intensity file {path} gives the hour {stamp.isoformat()} on lines {first_line[stamp]} "
                f"and {line}; keep one row per hour"
            )
        first_line[stamp] = line
    # A run looks up the value of the hour it starts in, so a timestamp between hours would never match.
    off_hour = next((stamp for stamp, _ in pairs if (stamp.minute, stamp.second, stamp.microsecond) != (0, 0, 0)), None)
    if off_hour is not None:
        raise DataError(
            f"hourly intensity file {path} has the timestamp {off_hour.isoformat()}, which is not on a whole hour; "
            "each timestamp_utc must fall on a whole hour (such as 2024-05-01T10:00:00Z), one row per hour"
        )
    pairs.sort()
    return HourlyIntensity(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), str(path))
