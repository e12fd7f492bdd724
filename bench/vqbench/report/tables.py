"""The report's tables as plain strings, shared by the HTML and PDF renderers.

Each energy column is followed by the column that names its method, so no energy figure appears
without saying whether it was measured, estimated or modeled. The edge and cloud method columns
are followed by the dynamic energy (above idle power) and its share of the figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vqbench.report.findings import row_label, total_energy_methods, varying_dimensions
from vqbench.report.formatting import (
    MISSING,
    format_bytes,
    format_integer,
    format_number,
    format_percent,
    format_with_interval,
)
from vqbench.results import ResultRow


@dataclass(frozen=True)
class Column:
    """One table column: a header (with its unit) and how to print a row's cell."""

    header: str
    cell: Callable[[ResultRow], str]
    numeric: bool = True


@dataclass(frozen=True)
class Table:
    """A titled table of printed cells."""

    title: str
    headers: tuple[str, ...]
    numeric: tuple[bool, ...]
    rows: tuple[tuple[str, ...], ...]


def _text(value: object) -> str:
    return MISSING if value is None or value == "" else str(value)


def _mj(field_name: str, ci_field: str | None = None) -> Callable[[ResultRow], str]:
    def cell(row: ResultRow) -> str:
        half_width = getattr(row, ci_field) if ci_field else None
        return format_with_interval(getattr(row, field_name), half_width, scale=1e3)

    return cell


def _number(field_name: str, scale: float = 1.0) -> Callable[[ResultRow], str]:
    def cell(row: ResultRow) -> str:
        value = getattr(row, field_name)
        return format_number(None if value is None else value * scale)

    return cell


def _accuracy(row: ResultRow) -> str:
    if row.lfw_accuracy_mean is None:
        return MISSING
    text = format_percent(row.lfw_accuracy_mean).removesuffix(" %")
    if row.lfw_accuracy_std is not None:
        text += f" ± {row.lfw_accuracy_std * 100:.2f}"
    return text


def _dynamic(stage: str) -> Callable[[ResultRow], str]:
    """Print a stage's dynamic energy in mJ with its share of the stage's energy: ``2.24 (70 %)``.

    A negative dynamic energy prints as ``-20.7 (below idle)``, because a share of it means
    nothing. The report's warnings explain it.
    """
    def cell(row: ResultRow) -> str:
        dynamic_j = getattr(row, f"{stage}_dynamic_energy_j_per_inference")
        energy_j = getattr(row, f"{stage}_energy_j_per_inference")
        if dynamic_j is None:
            return MISSING
        text = format_number(dynamic_j * 1e3)
        if dynamic_j < 0:
            return f"{text} (below idle)"
        if energy_j is None or energy_j <= 0:
            return text
        return f"{text} ({dynamic_j / energy_j * 100:.0f} %)"

    return cell


def _transit(row: ResultRow) -> str:
    """Print the transit part of the network energy in mJ with its range: ``0.0337 (0.0337 to 0.258)``."""
    if row.network_transit_energy_j_per_inference is None:
        return MISSING
    text = format_number(row.network_transit_energy_j_per_inference * 1e3)
    low_j, high_j = row.network_transit_energy_j_per_inference_min, row.network_transit_energy_j_per_inference_max
    if low_j is None or high_j is None:
        return text
    return f"{text} ({format_number(low_j * 1e3)} to {format_number(high_j * 1e3)})"


def _co2e_per_million(row: ResultRow) -> str:
    return format_number(None if row.co2e_g_per_inference is None else row.co2e_g_per_inference * 1e6)


SUMMARY_COLUMNS: tuple[Column, ...] = (
    Column("Accuracy (%, mean ± std over the held-out folds)", _accuracy),
    Column("TAR @ FAR 1e-3 (%)", _number("tar_at_far_1e_3", 100)),
    Column("Payload mean", lambda r: format_bytes(r.payload_bytes_mean)),
    Column("Payload p95", lambda r: format_bytes(r.payload_bytes_p95)),
    Column("End-to-end p50 (ms)", _number("end_to_end_latency_ms_p50")),
    Column("End-to-end p95 (ms)", _number("end_to_end_latency_ms_p95")),
    Column("Edge energy (mJ/inference)", _mj("edge_energy_j_per_inference", "edge_energy_ci95_j")),
    Column("Edge method", lambda r: _text(r.edge_energy_method), numeric=False),
    Column("Edge dynamic energy (mJ/inference, share)", _dynamic("edge")),
    Column("Cloud energy (mJ/inference)", _mj("cloud_energy_j_per_inference", "cloud_energy_ci95_j")),
    Column("Cloud method", lambda r: _text(r.cloud_energy_method), numeric=False),
    Column("Cloud dynamic energy (mJ/inference, share)", _dynamic("cloud")),
    Column("Network energy (mJ/inference)", _mj("network_energy_j_per_inference")),
    Column("Network method", lambda r: _text(r.network_energy_method), numeric=False),
    Column("Total energy (mJ/inference)", _mj("total_energy_j_per_inference")),
    Column("Total methods", lambda r: _text(total_energy_methods(r)), numeric=False),
    Column("CO2e (g per million inferences)", _co2e_per_million),
)

DETAIL_COLUMNS: tuple[Column, ...] = (
    Column("ROC AUC", _number("roc_auc")),
    Column("EER (%)", _number("eer", 100)),
    Column("Pairs", lambda r: format_integer(r.n_pairs)),
    Column("Pairs skipped", lambda r: format_integer(r.n_pairs_skipped)),
    Column("Detection fallbacks", lambda r: format_integer(r.detection_fallbacks)),
    Column("Edge p50 (ms)", _number("edge_latency_ms_p50")),
    Column("Transfer p50 (ms)", _number("transfer_latency_ms_p50")),
    Column("Transfer basis", lambda r: _text(r.transfer_latency_basis), numeric=False),
    Column("Cloud p50 (ms)", _number("cloud_latency_ms_p50")),
    Column("Edge params", _number("edge_params")),
    Column("Edge MACs", _number("edge_macs")),
    Column("Edge model", lambda r: format_bytes(r.edge_model_bytes)),
    Column("Edge peak RSS", lambda r: format_bytes(r.edge_peak_rss_bytes)),
    Column("Cloud params", _number("cloud_params")),
    Column("Cloud MACs", _number("cloud_macs")),
    Column("Cloud model", lambda r: format_bytes(r.cloud_model_bytes)),
    Column("Cloud peak RSS", lambda r: format_bytes(r.cloud_peak_rss_bytes)),
    Column("Codebook size", _number("codebook_size")),
    Column("Code grid", lambda r: _text(r.code_grid), numeric=False),
    Column("Network transit (mJ/inference; range over published factors)", _transit),
    Column("Edge grid (gCO2e/kWh)", _number("grid_intensity_edge_gco2e_per_kwh")),
    Column("Cloud grid (gCO2e/kWh)", _number("grid_intensity_cloud_gco2e_per_kwh")),
)


def _key_columns(rows: Sequence[ResultRow]) -> tuple[Column, ...]:
    several_links, several_devices = varying_dimensions(rows)
    columns = [
        Column(KEY_HEADERS[0], lambda r: r.pipeline, numeric=False),
        Column(KEY_HEADERS[1], lambda r: r.variant, numeric=False),
    ]
    if several_links or any(r.link for r in rows):
        columns.append(Column(KEY_HEADERS[2], lambda r: _text(r.link), numeric=False))
    if several_devices or any(r.edge_device for r in rows):
        columns.append(Column(KEY_HEADERS[3], lambda r: _text(r.edge_device), numeric=False))
    return tuple(columns)


def build_table(title: str, rows: Sequence[ResultRow], columns: Sequence[Column]) -> Table:
    """Print ``rows`` under the key columns followed by ``columns``."""
    all_columns = (*_key_columns(rows), *columns)
    return Table(
        title=title,
        headers=tuple(c.header for c in all_columns),
        numeric=tuple(c.numeric for c in all_columns),
        rows=tuple(tuple(c.cell(row) for c in all_columns) for row in rows),
    )


KEY_HEADERS = ("Pipeline", "Variant", "Link", "Edge device")


def key_column_count(table: Table) -> int:
    """Count the leading key columns (pipeline, variant, link, device) of a result table."""
    count = 0
    for header in table.headers:
        if header not in KEY_HEADERS:
            break
        count += 1
    return count


def report_tables(rows: Sequence[ResultRow]) -> list[Table]:
    """Return the summary table and the models-and-quality table."""
    return [
        build_table("Summary", rows, SUMMARY_COLUMNS),
        build_table("Models, memory and quality", rows, DETAIL_COLUMNS),
    ]


def labels(rows: Sequence[ResultRow]) -> list[str]:
    """Row labels in table order."""
    return [row_label(row, rows) for row in rows]


# ---------------------------------------------------------------------------------------------
# Assumptions and environment: free-form dictionaries printed as tables


#: Keys whose integer values are years, counts or ids, printed as plain digits.
_PLAIN_INTEGER_KEYS = ("year", "_id", "index", "seed", "port", "pairs", "folds")
#: Unit suffixes of assumption keys, turned into readable header units.
_UNIT_SUFFIXES = (
    ("_bit_per_s", "bit/s"), ("_gco2e_per_kwh", "gCO2e/kWh"), ("_kwh_per_gb", "kWh/GB"), ("_kgco2e", "kgCO2e"),
    ("_macs_per_s", "MAC/s"), ("_bytes", ""), ("_years", "years"), ("_ms", "ms"), ("_j", "J"),
    ("_w", "W"), ("_s", "s"),
)
_HEADER_WORDS = {"rtt": "RTT", "lora": "LoRa", "macs": "MACs", "co2e": "CO2e", "gco2e": "gCO2e", "id": "id"}


_WHOLE_HEADERS = {"gco2e_per_kwh": "Intensity (gCO2e/kWh)", "is_world_average": "World average"}


def readable_header(key: str) -> str:
    """Turn ``uplink_bit_per_s`` into ``Uplink (bit/s)`` and ``transit_year`` into ``Transit year``."""
    if key in _WHOLE_HEADERS:
        return _WHOLE_HEADERS[key]
    unit = ""
    for suffix, printed in _UNIT_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            key, unit = key[: -len(suffix)], printed
            break
    words = [_HEADER_WORDS.get(word, word) for word in key.split("_")]
    text = " ".join(words)
    text = text[:1].upper() + text[1:]
    return f"{text} ({unit})" if unit else text


def _cell_text(value: object, key: str = "") -> str:
    if key.endswith("_bytes") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_bytes(value)
    if isinstance(value, int) and not isinstance(value, bool) and any(part in key for part in _PLAIN_INTEGER_KEYS):
        return format_integer(value)
    if isinstance(value, (bool, int, float)):
        return format_number(value)
    if isinstance(value, dict):
        return "; ".join(f"{name}: {_cell_text(item, name)}" for name, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell_text(item) for item in value)
    return _text(value)


def sources_table(title: str, records: dict[str, object], key_header: str = "Name") -> Table | None:
    """Build one row per (record, figure) from each record's ``sources`` mapping of ``{source, year}``."""
    rows = []
    for name, record in records.items():
        sources = record.get("sources") if isinstance(record, dict) else None
        if not isinstance(sources, dict):
            continue
        for figure, entry in sources.items():
            entry = entry if isinstance(entry, dict) else {"source": entry}
            rows.append((str(name), readable_header(figure), _text(entry.get("source")), format_integer(entry.get("year"))))
    if not rows:
        return None
    return Table(title, (key_header, "Figure", "Source", "Year"), (False, False, False, True), tuple(rows))


def key_value_table(title: str, mapping: dict[str, object], key_header: str = "Name") -> Table:
    """Build a two-column table of a mapping's keys and printed values."""
    rows = tuple((str(key), _cell_text(value, str(key))) for key, value in mapping.items())
    return Table(title, (key_header, "Value"), (False, False), rows)


def records_table(title: str, records: dict[str, object], key_header: str = "Name") -> Table:
    """Build a table with one row per record (a mapping of mappings) and one column per field.

    A record field that repeats the record's own name is dropped, headers are written out with
    their units, and a ``sources`` field prints one ``field: source (year)`` line per entry.
    """
    fields: list[str] = []
    for name, record in records.items():
        if isinstance(record, dict):
            fields.extend(key for key in record if key not in fields)
    fields = [f for f in fields if f != "sources" and not (f == "name" and _names_repeat(records))]
    if not fields:
        return key_value_table(title, records, key_header)
    rows = tuple(
        (str(name), *(_field_text(record, f) if isinstance(record, dict) else _cell_text(record) for f in fields))
        for name, record in records.items()
    )
    numeric = tuple(_is_numeric_field(records, f) for f in fields)
    return Table(title, (key_header, *(readable_header(f) for f in fields)), (False, *numeric), rows)


def _names_repeat(records: dict[str, object]) -> bool:
    return all(not isinstance(r, dict) or r.get("name") in (None, name) for name, r in records.items())


def _field_text(record: dict, field_name: str) -> str:
    return _cell_text(record.get(field_name), field_name)


def _is_numeric_field(records: dict[str, object], field_name: str) -> bool:
    values = [r.get(field_name) for r in records.values() if isinstance(r, dict) and r.get(field_name) is not None]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


#: Assumption key -> (table title, header of the name column).
_ASSUMPTION_TITLES = {
    "measurement": ("Measurement settings", "Setting"),
    "links": ("Links", "Link"),
    "devices": ("Devices", "Device"),
}


def assumption_tables(assumptions: dict[str, object]) -> list[Table]:
    """Tables for grid intensities, measurement settings, links, devices and any other assumption.

    Links and devices get a second table listing the source and year of each figure.
    """
    tables = []
    grids = {key.removeprefix("grid_intensity_"): value for key, value in assumptions.items()
             if key.startswith("grid_intensity")}
    if grids:
        tables.append(records_table("Grid carbon intensity", grids, "Grid"))
    for key, (title, key_header) in _ASSUMPTION_TITLES.items():
        value = assumptions.get(key)
        if isinstance(value, dict) and value:
            nested = all(isinstance(item, dict) for item in value.values())
            tables.append(records_table(title, value, key_header) if nested else key_value_table(title, value, key_header))
            sources = sources_table(f"{title}: sources", value, key_header) if nested else None
            if sources is not None:
                tables.append(sources)
    others = {k: v for k, v in assumptions.items() if not k.startswith("grid_intensity") and k not in _ASSUMPTION_TITLES}
    if others:
        tables.append(key_value_table("Other assumptions", others, "Assumption"))
    return tables


def environment_tables(environment: dict[str, object] | None) -> list[Table]:
    """Tables for the host, the meters and the package versions."""
    if not environment:
        return []
    scalars = {k: v for k, v in environment.items() if k not in ("packages", "meters")}
    tables = [key_value_table("Host", scalars, "Item")]
    meters = environment.get("meters")
    if isinstance(meters, dict) and meters:
        tables.append(records_table("Energy meters", meters, "Meter"))
    packages = environment.get("packages")
    if isinstance(packages, dict) and packages:
        tables.append(key_value_table("Packages", packages, "Package"))
    return tables
