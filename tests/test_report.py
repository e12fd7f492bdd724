"""Tests of the HTML and PDF reports built from a synthetic run folder."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from pydantic import Field

from conftest_report import synthetic_run
from vqbench.errors import DataError
from vqbench.report import render_reports
from vqbench.report.findings import accuracy_noun, collect_warnings, key_findings, pareto_front
from vqbench.report.formatting import format_bytes, format_number, format_with_interval
from vqbench.report.loader import load_run
from vqbench.report.tables import assumption_tables, readable_header, report_tables
from vqbench.results import RunResults

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PDFINFO = shutil.which("pdfinfo")
PDFTOTEXT = shutil.which("pdftotext")


class _PageParser(HTMLParser):
    """Collect element counts, ids and external references of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.ids: set[str] = set()
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        for name in ("src", "href"):
            value = attributes.get(name) or ""
            if value and not value.startswith(("#", "data:")):
                self.external.append(value)

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, Path, Path]:
    run_dir = synthetic_run(0, links=("wifi", "lorawan")).write(tmp_path_factory.mktemp("run") / "synthetic")
    html_path, pdf_path = render_reports(run_dir)
    return run_dir, html_path, pdf_path


def test_reports_written(rendered):
    run_dir, html_path, pdf_path = rendered
    assert html_path == run_dir / "report.html"
    assert pdf_path == run_dir / "report.pdf"
    assert pdf_path.read_bytes().startswith(b"%PDF")
    assert not list(run_dir.glob(".report*.tmp"))


def test_html_has_sections_and_plots(rendered):
    _, html_path, _ = rendered
    page = _parse(html_path)
    for section in ("findings", "warnings", "table-1", "table-2", "plots", "assumptions", "environment"):
        assert section in page.ids
    for plot in ("accuracy-bytes", "accuracy-energy", "energy-stages", "co2e", "latency", "roc", "samples", "links"):
        assert f"plot-{plot}" in page.ids
    # One inline SVG per drawn plot; the run varies links but not devices.
    assert page.counts.get("svg") == 8


def test_html_is_self_contained(rendered):
    _, html_path, _ = rendered
    page = _parse(html_path)
    assert page.external == []
    assert page.counts.get("link", 0) == 0
    assert page.counts.get("script", 0) == 0
    # The page's own stylesheet plus the one matplotlib writes inside each SVG.
    assert page.counts.get("style") == 1 + page.counts.get("svg")


def test_html_findings_computed(rendered):
    _, html_path, _ = rendered
    text = " ".join(_parse(html_path).text)
    # 8700 B / 221 B = 39.4, and 99.38 % - 98.98 % = 0.4 points.
    assert "edge-vq-student/k512-14x14 @wifi needs 39.4x fewer bytes than cloud-raw/original @wifi" in text
    assert "at 0.4 points lower accuracy" in text


def test_html_energy_methods_and_warnings(rendered):
    _, html_path, _ = rendered
    text = " ".join(_parse(html_path).text)
    assert "Edge method" in text
    assert "measured-rapl" in text
    assert "Edge energy is modeled, not measured (modeled-device-profile)" in text
    assert "the payload does not fit link lorawan" in text
    # results.json already warns about the cloud's world-average grid, so the report adds no second wording.
    assert "codecarbon could not find the cloud region" in text
    assert "cloud grid intensity is the world average (380 gCO2e/kWh)" not in text
    assert "The figures these warnings name are estimated" in text


def test_html_shows_dynamic_energy(rendered):
    _, html_path, _ = rendered
    text = " ".join(_parse(html_path).text)
    assert "Edge dynamic energy (mJ/inference, share)" in text
    assert "Cloud dynamic energy (mJ/inference, share)" in text
    assert "The dynamic energy is the part above idle power" in text


def _summary_cell(rows, pipeline: str, header: str) -> str:
    summary = report_tables(rows)[0]
    column = summary.headers.index(header)
    return next(row[column] for row in summary.rows if row[0] == pipeline)


def test_dynamic_energy_cell_gives_share():
    run = synthetic_run(0, with_samples=False)
    cloud_raw = run.row("cloud-raw", "original")
    cloud_raw.cloud_energy_j_per_inference = 3.2
    cloud_raw.cloud_dynamic_energy_j_per_inference = 2.24
    rows = run.results.rows
    assert _summary_cell(rows, "cloud-raw", "Cloud dynamic energy (mJ/inference, share)") == "2,240 (70 %)"
    # cloud-raw has no edge half, so neither an edge energy nor its dynamic share.
    assert _summary_cell(rows, "cloud-raw", "Edge dynamic energy (mJ/inference, share)") == "–"


def test_negative_dynamic_energy_flagged(tmp_path):
    run = synthetic_run(0, with_samples=False)
    run.row("cloud-raw", "original").cloud_dynamic_energy_j_per_inference = -0.0207
    run.row("edge-embed", "int8").edge_dynamic_energy_j_per_inference = -0.5
    rows = run.results.rows
    assert _summary_cell(rows, "cloud-raw", "Cloud dynamic energy (mJ/inference, share)") == "-20.7 (below idle)"

    warnings = collect_warnings(load_run(run.write(tmp_path / "run")))
    cloud = next(w for w in warnings if w.startswith("Cloud dynamic energy is negative"))
    assert cloud.startswith("Cloud dynamic energy is negative for cloud-raw/original (-20.7 mJ): ")
    assert "idle power drifted during the run or the stage is too light for the meter" in cloud
    assert "measurement.min_window_s" in cloud
    edge = next(w for w in warnings if w.startswith("Edge dynamic energy is negative"))
    assert edge.startswith("Edge dynamic energy is negative for edge-embed/int8 (-500 mJ): ")


def test_positive_dynamic_energy_not_flagged(tmp_path):
    warnings = collect_warnings(load_run(synthetic_run(0, with_samples=False).write(tmp_path / "run")))
    assert not any("dynamic energy is negative" in w for w in warnings)


def test_html_assumptions_printed(rendered):
    _, html_path, _ = rendered
    text = " ".join(_parse(html_path).text)
    for expected in ("Grid carbon intensity", "FRA", "Measurement settings", "min_window_s", "lorawan",
                     "raspberry-pi-4", "no NVIDIA GPU found"):
        assert expected in text


@pytest.mark.skipif(PDFINFO is None or PDFTOTEXT is None, reason="poppler-utils (pdfinfo, pdftotext) not installed")
def test_pdf_pages_and_text(rendered):
    _, _, pdf_path = rendered
    info = subprocess.run([PDFINFO, str(pdf_path)], capture_output=True, text=True, check=True).stdout
    pages = int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
    # Title page, 3 summary pages (17 data columns, 8 per page), 3 detail pages (20 columns),
    # 8 plots, and 2 or 3 pages of stacked assumption and environment tables.
    assert 17 <= pages <= 18
    text = subprocess.run([PDFTOTEXT, "-layout", str(pdf_path), "-"], capture_output=True, text=True, check=True).stdout
    for expected in ("Key findings", "Warnings", "39.4x fewer bytes", "Edge method", "modeled-device-profile",
                     "Accuracy against payload size", "ROC curves", "Grid carbon intensity",
                     "synthetic lorawan profile"):  # a source from the links table, not cut off at the edge
        assert expected in text


def test_missing_optional_files_degrade(tmp_path):
    run = synthetic_run(0, with_samples=False)
    run_dir = run.write(tmp_path / "run")
    for name in ("scores.parquet", "latency.parquet", "energy.parquet", "environment.json"):
        (run_dir / name).unlink()
    html_path, _ = render_reports(run_dir)
    page = _parse(html_path)
    text = " ".join(page.text)
    assert "scores.parquet is missing" in text
    assert "Not drawn: latency.parquet is missing or empty." in text
    assert "Not drawn: the run saved no sample reconstructions." in text
    assert "environment.json is missing or unreadable." in text
    assert page.counts.get("svg") == 4


def test_infinite_environment_figure_printed(tmp_path):
    # environment.json is not validated, so the report must print what it contains without failing.
    run_dir = synthetic_run(0, with_samples=False).write(tmp_path / "run")
    path = run_dir / "environment.json"
    environment = json.loads(path.read_text(encoding="utf-8"))
    environment["max_load_average_1min_while_timing"] = float("inf")
    path.write_text(json.dumps(environment), encoding="utf-8")
    html_path, _ = render_reports(run_dir, pdf=False)
    text = _parse(html_path).text
    assert text[text.index("max_load_average_1min_while_timing") + 1] == "inf"


def test_missing_results_raises(tmp_path):
    with pytest.raises(DataError, match="results.json not found"):
        render_reports(tmp_path)


def test_invalid_results_raises(tmp_path):
    (tmp_path / "results.json").write_text('{"rows": [{"pipeline": 3}]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"results\.json is not a valid results file"):
        render_reports(tmp_path)


def _edit_results(run_dir: Path, **fields) -> Path:
    path = run_dir / "results.json"
    content = json.loads(path.read_text(encoding="utf-8"))
    content.update(fields)
    path.write_text(json.dumps(content), encoding="utf-8")
    return run_dir


@pytest.mark.parametrize("version", [9, 0, "1", None])
def test_unknown_results_schema_version_raises(tmp_path, version):
    run_dir = _edit_results(synthetic_run(0, with_samples=False).write(tmp_path / "run"), schema_version=version)
    with pytest.raises(DataError, match=f"results schema_version {version!r}") as caught:
        render_reports(run_dir)
    assert "reads only version 1" in str(caught.value)
    assert caught.value.exit_code == 2
    assert not (run_dir / "report.html").exists()


def test_results_without_schema_version_read_as_version_1(tmp_path):
    run_dir = synthetic_run(0, with_samples=False).write(tmp_path / "run")
    path = run_dir / "results.json"
    content = json.loads(path.read_text(encoding="utf-8"))
    del content["schema_version"]
    path.write_text(json.dumps(content), encoding="utf-8")
    assert load_run(run_dir).results.schema_version == 1


class _MarkedResults(RunResults):
    """RunResults with the interrupted-run marker, for a results schema that does not define it yet."""

    complete: bool = True
    variants_missing: list[str] = Field(default_factory=list)


def test_incomplete_run_warned_in_report(tmp_path, monkeypatch):
    monkeypatch.setattr("vqbench.report.loader.RunResults", _MarkedResults)
    run = synthetic_run(0, with_samples=False)
    run.results.rows = [row for row in run.results.rows if row.pipeline != "edge-embed"]
    run_dir = _edit_results(run.write(tmp_path / "run"), complete=False, variants_missing=["edge-embed/int8"])
    warnings = collect_warnings(load_run(run_dir))
    assert "The run is incomplete (it was interrupted), so it has no rows for the variant edge-embed/int8." in warnings
    complete_dir = _edit_results(synthetic_run(0, with_samples=False).write(tmp_path / "complete"), complete=True)
    assert not any("incomplete" in warning for warning in collect_warnings(load_run(complete_dir)))


def test_failed_variants_named_in_report(tmp_path):
    run = synthetic_run(0, with_samples=False)
    run.results.rows = [row for row in run.results.rows if row.pipeline != "edge-embed"]
    run_dir = _edit_results(run.write(tmp_path / "run"), complete=False, variants_missing=["edge-embed/int8"],
                            variants_failed=["edge-embed/int8"])
    warnings = collect_warnings(load_run(run_dir))
    assert ("The run is incomplete (the variant edge-embed/int8 failed), so it has no rows for the variant "
            "edge-embed/int8.") in warnings


def test_findings_cloud_only_compare_codecs():
    run = synthetic_run(0, with_samples=False)
    rows = [r for r in run.results.rows if r.pipeline.startswith("cloud")]
    findings = key_findings(rows)
    assert findings[0].startswith("cloud-codec/jpeg-q50 needs 4.14x fewer bytes than cloud-raw/original")


def test_findings_without_reference():
    run = synthetic_run(0, with_samples=False)
    rows = [r for r in run.results.rows if r.pipeline != "cloud-raw"]
    findings = key_findings(rows)
    assert findings[0] == (
        "The run has no cloud-raw row, so comparisons are against cloud-codec/jpeg-q50, the largest payload."
    )


def test_pareto_front():
    costs = [100.0, 200.0, 200.0, 50.0, 400.0]
    accuracies = [0.90, 0.95, 0.93, 0.90, 0.94]
    assert pareto_front(costs, accuracies) == [3, 1]


def test_years_and_counts_have_no_separators():
    tables = assumption_tables({
        "grid_intensity_edge": {"location": "world", "gco2e_per_kwh": 475.0, "year": 2019},
        "links": {"wifi": {"name": "wifi", "transit_year": 2020, "uplink_bit_per_s": 5e7,
                           "sources": {"rtt_ms": {"source": "an assumption", "year": 2025}}}},
    })
    cells = " ".join(cell for table in tables for row in table.rows for cell in row)
    for year in ("2019", "2020", "2025"):
        assert year in cells
    assert "2,0" not in cells
    links = next(table for table in tables if table.title == "Links")
    assert links.headers == ("Link", "Transit year", "Uplink (bit/s)")  # one name column, units in headers
    assert any(table.title == "Links: sources" and table.rows[0][2] == "an assumption" for table in tables)
    assert readable_header("rtt_ms") == "RTT (ms)"


@pytest.mark.parametrize(
    ("value", "half_width", "expected"),
    [(0.0261, 3.2e-4, "0.02610 ± 0.00032"), (2165.0, 1076.0, "2,200 ± 1,100"), (99.67, 0.33, "99.67 ± 0.33"),
     (1e-5, 3e-6, "(1.00 ± 0.30)e-05"), (5.0, None, "5")],
)
def test_interval_uses_one_notation(value, half_width, expected):
    assert format_with_interval(value, half_width) == expected


def test_co2e_finding_names_operational_and_embodied(tmp_path):
    run = synthetic_run(0, with_samples=False)
    for row in run.results.rows:
        row.embodied_co2e_g_per_inference = 5e-3
    findings = " ".join(key_findings(run.results.rows))
    assert "Lowest operational CO2e" in findings
    assert "g embodied in the edge device" in findings


def test_warnings_deduplicated_and_impostors(tmp_path):
    run = load_run(synthetic_run(0, with_samples=False).write(tmp_path / "run"))
    warnings = collect_warnings(run)
    assert sum("world average" in w for w in warnings) == 1  # the run's own warning, not a second wording
    # 10 folds x 30 impostor pairs: too few for TAR at FAR = 1e-3.
    assert any(w.startswith("Only 300 impostor pairs (30 per fold over 10 folds)") for w in warnings)
    many = pd.concat([run.scores] * 4, ignore_index=True)
    larger = type(run)(run.run_dir, run.results, many, run.latency, run.energy, run.environment, run.samples)
    assert not any("impostor pairs" in w for w in collect_warnings(larger))


def test_accuracy_noun():
    assert accuracy_noun({}) == "LFW accuracy"
    assert accuracy_noun({"dataset": {"name": "lfw", "path": "data/lfw"}}) == "LFW accuracy"
    assert accuracy_noun({"dataset": {"kind": "identity-folders", "path": "faces/"}}) == "verification accuracy"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1104.2, "1,100"), (0.01234, "0.0123"), (3, "3"), (None, "–"), (0.0004, "4.00e-04"), (True, "yes"),
     (float("inf"), "inf"), (float("-inf"), "-inf")],
)
def test_format_number(value, expected):
    assert format_number(value) == expected


def test_format_bytes():
    assert format_bytes(221) == "221 B"
    assert format_bytes(8700) == "8.7 kB"
    assert format_bytes(16e9) == "16 GB"


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *extra, url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_chromium_renders_report(rendered, tmp_path):
    _, html_path, _ = rendered
    url = html_path.as_uri()
    dom = _chromium(url, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 8
    assert 'id="plot-roc"' in dom.stdout

    for name, size in (("desktop", "1280,2000"), ("phone", "390,2000")):
        screenshot = tmp_path / f"{name}.png"
        shot = _chromium(url, tmp_path / f"profile-{name}", f"--screenshot={screenshot}", f"--window-size={size}",
                         "--hide-scrollbars")
        assert shot.returncode == 0, shot.stderr[-2000:]
        assert screenshot.stat().st_size > 10_000
