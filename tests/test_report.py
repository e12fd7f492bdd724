"""Tests of the HTML and PDF reports built from a synthetic run folder."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest_report import synthetic_run
from vqbench.errors import DataError
from vqbench.report import render_reports
from vqbench.report.findings import key_findings, pareto_front
from vqbench.report.formatting import format_bytes, format_number

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
    # Title page, 2 summary pages (15 data columns, 8 per page), 3 detail pages (20 columns),
    # 8 plots, and 2 pages of stacked assumption and environment tables.
    assert pages == 16
    text = subprocess.run([PDFTOTEXT, "-layout", str(pdf_path), "-"], capture_output=True, text=True, check=True).stdout
    for expected in ("Key findings", "Warnings", "39.4x fewer bytes", "Edge method", "modeled-device-profile",
                     "Accuracy against payload size", "ROC curves", "Grid carbon intensity"):
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


def test_missing_results_raises(tmp_path):
    with pytest.raises(DataError, match="results.json not found"):
        render_reports(tmp_path)


def test_invalid_results_raises(tmp_path):
    (tmp_path / "results.json").write_text('{"rows": [{"pipeline": 3}]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"results\.json is not a valid results file"):
        render_reports(tmp_path)


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


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1104.2, "1,100"), (0.01234, "0.0123"), (3, "3"), (None, "–"), (0.0004, "4.00e-04"), (True, "yes")],
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
