"""The report's figures, one function per figure, each returning a matplotlib Figure.

Figures are built with ``matplotlib.figure.Figure`` directly instead of pyplot, so this module
never selects a global backend or keeps figures alive in pyplot's registry: saving to SVG or PDF
uses the renderer for that format, which needs no display. A plot function returns ``None`` when
the run contains no data for it, and ``build_figures`` turns that into a note for the report.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vqbench.report.findings import accuracy_noun, is_unmeasured, pareto_front, row_label, varying_dimensions
from vqbench.report.formatting import format_bytes, format_number
from vqbench.report.loader import RunData, SamplePair
from vqbench.results import ResultRow

if TYPE_CHECKING:
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

#: Style applied while figures are built and saved. SVG text stays text (smaller, selectable).
_STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",
    "pdf.fonttype": 42,
    "figure.dpi": 100,
}
_PIPELINE_ORDER = ("cloud-raw", "cloud-codec", "edge-vq-recon", "edge-vq-student", "edge-embed")
_PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
_STAGE_COLORS = {"edge": "#55a868", "cloud": "#4c72b0", "network": "#dd8452"}
_LATENCY_STAGES = ("edge", "transfer", "cloud", "end_to_end")
_WIDTH_IN = 7.0
#: At most this many original/reconstruction pairs per variant in the sample grid.
MAX_SAMPLES_PER_VARIANT = 4


@dataclass(frozen=True)
class PlotItem:
    """A titled figure for the report, or the reason it is missing."""

    key: str
    title: str
    caption: str
    figure: Figure | None
    missing_reason: str | None = None


def plot_style():
    """Context manager applying the report style (fonts, grid, SVG and PDF font embedding)."""
    import matplotlib

    return matplotlib.rc_context(_STYLE)


def _new_figure(height_in: float, ncols: int = 1, nrows: int = 1, **kwargs):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(_WIDTH_IN, height_in), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False, **kwargs)
    return figure, axes


def pipeline_color(pipeline: str, all_pipelines: Sequence[str] = ()) -> str:
    """Return a stable colour per pipeline: known pipelines first, others in order of appearance."""
    known = list(_PIPELINE_ORDER) + [p for p in all_pipelines if p not in _PIPELINE_ORDER]
    index = known.index(pipeline) if pipeline in known else len(known)
    return _PALETTE[index % len(_PALETTE)]


def readable_log_axis(axis, label=format_number) -> None:
    """Label a log axis with plain numbers: powers of ten, plus 2x and 5x when it spans under 3 decades.

    Call it after plotting. Minor ticks stay unlabeled, which avoids matplotlib's crowded
    ``2x10^3 3x10^3`` labels on axes that span under a decade.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = sorted(axis.get_view_interval())
    decades = np.log10(high / low) if low > 0 else 10.0
    subs = (1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 1 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _: label(value)))
    axis.set_minor_formatter(NullFormatter())


def _bar_height_in(count: int) -> float:
    return 1.4 + 0.32 * count


# ---------------------------------------------------------------------------------------------
# Accuracy against cost


def _accuracy_vs_cost(
    rows: Sequence[ResultRow],
    costs: Sequence[float | None],
    methods: Sequence[str | None],
    x_label: str,
    y_label: str = "LFW accuracy (%)",
    tick_label=format_number,
) -> Figure | None:
    """Scatter accuracy against a cost on a log x axis; only Pareto-front points carry a label."""
    points = [
        (row, cost, method)
        for row, cost, method in zip(rows, costs, methods)
        if cost is not None and cost > 0 and row.lfw_accuracy_mean is not None
    ]
    if not points:
        return None
    left_out = [row_label(row, rows) for row, cost, _ in zip(rows, costs, methods) if row not in [p[0] for p in points]]
    pipelines = list(dict.fromkeys(row.pipeline for row in rows))

    with plot_style():
        figure, axes = _new_figure(4.6)
        ax = axes[0][0]
        x = np.array([cost for _, cost, _ in points])
        y = np.array([row.lfw_accuracy_mean * 100 for row, _, _ in points])
        for pipeline in pipelines:
            chosen = [i for i, (row, _, _) in enumerate(points) if row.pipeline == pipeline]
            if not chosen:
                continue
            color = pipeline_color(pipeline, pipelines)
            measured = [i for i in chosen if not is_unmeasured(points[i][2])]
            unmeasured = [i for i in chosen if is_unmeasured(points[i][2])]
            if measured:
                ax.scatter(x[measured], y[measured], color=color, label=pipeline, s=36, zorder=3)
            if unmeasured:
                ax.scatter(x[unmeasured], y[unmeasured], facecolors="white", edgecolors=color, s=36, zorder=3,
                           label=f"{pipeline} (estimated or modeled)")

        front = pareto_front(list(x), list(y))
        ax.plot(x[front], y[front], drawstyle="steps-post", color="#333333", linewidth=1, linestyle="--",
                label="Pareto front", zorder=2)
        for number, index in enumerate(front):
            row = points[index][0]
            ax.annotate(_short_label(row, rows), (x[index], y[index]), textcoords="offset points",
                        xytext=(6, -10 if number % 2 else 6), fontsize=7,
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        ax.set_xscale("log")
        readable_log_axis(ax.xaxis, tick_label)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.legend(fontsize=7, loc="best")
        if left_out:
            figure.text(0.01, 0.005, "Not shown (no figure): " + ", ".join(left_out), fontsize=6, color="#666666")
    return figure


def _short_label(row: ResultRow, rows: Sequence[ResultRow]) -> str:
    """Return a point label: the variant, plus link and device when the run varies them."""
    several_links, several_devices = varying_dimensions(rows)
    parts = [row.variant]
    if several_links and row.link:
        parts.append(row.link)
    if several_devices and row.edge_device:
        parts.append(row.edge_device)
    return ", ".join(parts)


def plot_accuracy_vs_bytes(rows: Sequence[ResultRow], y_label: str = "LFW accuracy (%)") -> Figure | None:
    """Accuracy against mean payload bytes on a log x axis, with the Pareto front dashed."""
    return _accuracy_vs_cost(
        rows, [r.payload_bytes_mean for r in rows], [None] * len(rows),
        "Mean payload per face (log scale)", y_label, tick_label=format_bytes,
    )


def plot_accuracy_vs_energy(
    rows: Sequence[ResultRow], stage: str = "edge", y_label: str = "LFW accuracy (%)"
) -> Figure | None:
    """Accuracy against one stage's energy per inference; hollow markers are not measured."""
    costs = [getattr(r, f"{stage}_energy_j_per_inference") for r in rows]
    costs_mj = [None if c is None else c * 1e3 for c in costs]
    methods = [getattr(r, f"{stage}_energy_method") for r in rows]
    return _accuracy_vs_cost(
        rows, costs_mj, methods, f"{stage.capitalize()} energy per inference (mJ, log scale)", y_label,
    )


# ---------------------------------------------------------------------------------------------
# Energy and carbon


def plot_energy_per_stage(rows: Sequence[ResultRow]) -> Figure | None:
    """Energy per inference stacked by stage (edge, cloud, network); hatched segments are not measured."""
    stages = ("edge", "cloud", "network")
    if not any(getattr(r, f"{s}_energy_j_per_inference") is not None for r in rows for s in stages):
        return None
    labels = [row_label(r, rows) for r in rows]

    with plot_style():
        figure, axes = _new_figure(_bar_height_in(len(rows)))
        ax = axes[0][0]
        left = np.zeros(len(rows))
        for stage in stages:
            values = np.array([(getattr(r, f"{stage}_energy_j_per_inference") or 0.0) * 1e3 for r in rows])
            hatches = ["//" if is_unmeasured(getattr(r, f"{stage}_energy_method")) else "" for r in rows]
            bars = ax.barh(labels, values, left=left, color=_STAGE_COLORS[stage], label=stage, edgecolor="white",
                           linewidth=0.5)
            for bar, hatch in zip(bars, hatches):
                bar.set_hatch(hatch)
            left += values
        for index, total in enumerate(left):
            ax.annotate(format_number(total), (total, index), textcoords="offset points", xytext=(3, 0),
                        va="center", fontsize=7)
        from matplotlib.patches import Patch

        handles, names = ax.get_legend_handles_labels()
        handles.append(Patch(facecolor="white", edgecolor="#555555", hatch="//"))
        names.append("estimated or modeled")
        ax.invert_yaxis()
        ax.set_xlabel("Energy per inference (mJ)")
        figure.legend(handles, names, fontsize=7, loc="outside lower center", ncol=4, frameon=False)
        ax.margins(x=0.15)
    return figure


_OPERATIONAL_COLOR = "#4c72b0"
_EMBODIED_COLOR = "#b8b8b8"


def plot_co2e_per_million(rows: Sequence[ResultRow]) -> Figure | None:
    """Operational CO2e per million inferences, with embodied CO2e stacked on when a row has it."""
    if not any(r.co2e_g_per_inference is not None for r in rows):
        return None
    labels = [row_label(r, rows) for r in rows]
    operational = np.array([(r.co2e_g_per_inference or 0.0) * 1e6 for r in rows])
    embodied = np.array([(r.embodied_co2e_g_per_inference or 0.0) * 1e6 for r in rows])

    with plot_style():
        figure, axes = _new_figure(_bar_height_in(len(rows)))
        ax = axes[0][0]
        ax.barh(labels, operational, color=_OPERATIONAL_COLOR, label="operational")
        if embodied.any():
            ax.barh(labels, embodied, left=operational, color=_EMBODIED_COLOR, label="embodied (modeled devices)")
        for index, (op, em) in enumerate(zip(operational, embodied)):
            text = format_number(op) if not em else f"{format_number(op)} + {format_number(em)}"
            ax.annotate(text, (op + em, index), textcoords="offset points", xytext=(3, 0), va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("CO2e (g per million inferences)")
        figure.legend(fontsize=7, loc="outside lower center", ncol=2, frameon=False)
        ax.margins(x=0.3)
    return figure


# ---------------------------------------------------------------------------------------------
# Latency and ROC


def _horizontal_boxplot() -> dict[str, object]:
    """Keyword for horizontal boxes: ``orientation`` since matplotlib 3.10, ``vert`` before."""
    import matplotlib

    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def plot_latency_distributions(latency: pd.DataFrame | None) -> Figure | None:
    """Box plots of per-sample latency per stage; whiskers span the 1st to 99th percentile."""
    if latency is None or latency.empty:
        return None
    stages = [s for s in _LATENCY_STAGES if s in set(latency["stage"])]
    keys = list(dict.fromkeys(zip(latency["pipeline"], latency["variant"])))
    pipelines = list(dict.fromkeys(p for p, _ in keys))

    with plot_style():
        figure, axes = _new_figure(len(stages) * (0.9 + 0.3 * len(keys)), nrows=len(stages))
        flat = [row[0] for row in axes]
        for ax, stage in zip(flat, stages):
            frame = latency[latency["stage"] == stage]
            data, labels, colors = [], [], []
            for pipeline, variant in keys:
                values = frame.loc[(frame["pipeline"] == pipeline) & (frame["variant"] == variant), "latency_ms"]
                if len(values):
                    data.append(values.to_numpy(dtype=float))
                    labels.append(f"{pipeline}/{variant}")
                    colors.append(pipeline_color(pipeline, pipelines))
            if not data:
                ax.set_visible(False)
                continue
            boxes = ax.boxplot(data, **_horizontal_boxplot(), whis=(1, 99), showfliers=False, patch_artist=True,
                               widths=0.6, medianprops={"color": "black"})
            for patch, color in zip(boxes["boxes"], colors):
                patch.set_facecolor(color)
                patch.set_alpha(0.7)
            ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=7)
            ax.invert_yaxis()
            low = min(float(np.min(d)) for d in data)
            high = max(float(np.max(d)) for d in data)
            if low > 0 and high / low > 50:
                ax.set_xscale("log")
                readable_log_axis(ax.xaxis)
            ax.set_xlabel(f"{stage.replace('_', '-')} latency (ms)")
    return figure


def _roc_points(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-accept and true-accept rates at every distinct score threshold, highest first."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_same = same[order]
    true_accepts = np.cumsum(sorted_same)
    false_accepts = np.cumsum(~sorted_same)
    # Keep the last point of each run of tied scores so that ties form one step.
    last_of_tie = np.r_[np.diff(scores[order]) != 0, True]
    tar = np.r_[0.0, true_accepts[last_of_tie] / max(sorted_same.sum(), 1)]
    far = np.r_[0.0, false_accepts[last_of_tie] / max((~sorted_same).sum(), 1)]
    return far, tar


def plot_roc_curves(scores: pd.DataFrame | None) -> Figure | None:
    """ROC curves over all folds pooled, false-accept rate on a log axis."""
    if scores is None or scores.empty:
        return None
    keys = list(dict.fromkeys(zip(scores["pipeline"], scores["variant"])))
    pipelines = list(dict.fromkeys(p for p, _ in keys))
    linestyles = ("-", "--", ":", "-.")

    with plot_style():
        figure, axes = _new_figure(4.6)
        ax = axes[0][0]
        smallest_far = 1.0
        lowest_tar = 1.0
        seen_per_pipeline: dict[str, int] = {}
        for pipeline, variant in keys:
            frame = scores[(scores["pipeline"] == pipeline) & (scores["variant"] == variant)]
            same = frame["same"].to_numpy(dtype=bool)
            if same.all() or not same.any():
                continue
            far, tar = _roc_points(frame["score"].to_numpy(dtype=float), same)
            smallest_far = min(smallest_far, 1.0 / (~same).sum())
            lowest_tar = min(lowest_tar, float(tar[far > 0].min()))
            style = linestyles[seen_per_pipeline.get(pipeline, 0) % len(linestyles)]
            seen_per_pipeline[pipeline] = seen_per_pipeline.get(pipeline, 0) + 1
            ax.plot(np.maximum(far, smallest_far / 2), tar * 100, drawstyle="steps-post", linestyle=style,
                    color=pipeline_color(pipeline, pipelines), label=f"{pipeline}/{variant}", linewidth=1.2)
        ax.set_xscale("log")
        ax.set_xlim(smallest_far / 2, 1.0)
        ax.set_ylim(max(0.0, lowest_tar * 100 - 2), 100.5)
        ax.set_xlabel("False-accept rate (log scale)")
        ax.set_ylabel("True-accept rate (%)")
        ax.legend(fontsize=7, loc="lower right")
    return figure


# ---------------------------------------------------------------------------------------------
# Samples and sensitivity


def plot_reconstructions(samples: Sequence[SamplePair]) -> Figure | None:
    """Originals beside their reconstructions, one row per variant."""
    if not samples:
        return None
    from matplotlib.image import imread

    variants = list(dict.fromkeys(s.variant for s in samples))
    per_variant = {v: [s for s in samples if s.variant == v][:MAX_SAMPLES_PER_VARIANT] for v in variants}
    ncols = 2 * max(len(pairs) for pairs in per_variant.values())

    with plot_style():
        figure, axes = _new_figure(0.4 + 1.15 * len(variants), ncols=ncols, nrows=len(variants))
        for row_axes, variant in zip(axes, variants):
            for column, ax in enumerate(row_axes):
                ax.axis("off")
                pair_index, is_reconstruction = divmod(column, 2)
                if pair_index >= len(per_variant[variant]):
                    continue
                pair = per_variant[variant][pair_index]
                ax.imshow(imread(pair.reconstruction_png if is_reconstruction else pair.original_png))
                ax.set_title(("reconstruction" if is_reconstruction else "original"), fontsize=7)
            row_axes[0].text(-0.1, 0.5, variant, transform=row_axes[0].transAxes, rotation=90,
                             ha="right", va="center", fontsize=8)
    return figure


def plot_sensitivity(rows: Sequence[ResultRow], dimension: str) -> Figure | None:
    """Total energy and end-to-end latency per pipeline variant for each ``link`` or ``edge_device``."""
    values = list(dict.fromkeys(getattr(r, dimension) for r in rows if getattr(r, dimension)))
    if len(values) < 2:
        return None
    keys = list(dict.fromkeys((r.pipeline, r.variant) for r in rows))
    key_labels = [f"{p}/{v}" for p, v in keys]
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    metrics = (
        ("total_energy_j_per_inference", 1e3, "Total energy per inference (mJ)"),
        ("end_to_end_latency_ms_p50", 1.0, "End-to-end latency p50 (ms)"),
    )

    with plot_style():
        figure, axes = _new_figure(_bar_height_in(len(keys)) + 0.6, ncols=2, sharey=True)
        for ax, (field_name, scale, x_label) in zip(axes[0], metrics):
            for index, value in enumerate(values):
                xs, ys, infeasible = [], [], []
                for position, key in enumerate(keys):
                    match = [r for r in rows if (r.pipeline, r.variant) == key and getattr(r, dimension) == value]
                    if match and getattr(match[0], field_name) is not None:
                        xs.append(getattr(match[0], field_name) * scale)
                        ys.append(position)
                        infeasible.append(match[0].link_feasible is False)
                color = _PALETTE[index % len(_PALETTE)]
                ax.scatter(xs, ys, marker=markers[index % len(markers)], color=color, label=value, zorder=3)
                bad = [(x, y) for x, y, flag in zip(xs, ys, infeasible) if flag]
                if bad:
                    ax.scatter(*zip(*bad), marker="x", color="black", s=60, zorder=4)
            ax.set_yticks(range(len(keys)), key_labels, fontsize=7)
            positive = [c.get_offsets()[:, 0] for c in ax.collections if len(c.get_offsets())]
            if positive and np.concatenate(positive).min() > 0:
                ax.set_xscale("log")
                readable_log_axis(ax.xaxis)
            ax.set_xlabel(x_label)
        axes[0][0].invert_yaxis()
        axes[0][1].legend(fontsize=7, title=dimension.replace("_", " "), title_fontsize=7, loc="lower right")
    return figure


# ---------------------------------------------------------------------------------------------
# Output helpers


def figure_to_svg(figure: Figure, title: str = "") -> str:
    """Render a figure as an inline ``<svg>`` element that scales to its container's width."""
    buffer = io.StringIO()
    with plot_style():
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    # Drop the fixed size on the root element so CSS sets the width; the viewBox keeps the aspect.
    head_end = svg.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", svg[:head_end])
    head += ' class="plot" role="img"'
    if title:
        head += f' aria-label="{_escape_attribute(title)}"'
    return head + svg[head_end:]


def _escape_attribute(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def add_figure_to_pdf(pdf: PdfPages, figure: Figure) -> None:
    """Append a figure to an open PdfPages document as one page."""
    with plot_style():
        pdf.savefig(figure)


def titled_for_pdf(item: PlotItem) -> Figure:
    """Return the item's figure with its title added as a suptitle, for a PDF page."""
    item.figure.suptitle(item.title, fontsize=12, fontweight="bold")
    return item.figure


def build_figures(run: RunData) -> list[PlotItem]:
    """Build every report figure for a run. An item without a figure stores the reason."""
    rows = run.rows
    several_links, several_devices = varying_dimensions(rows)
    y_label = f"{accuracy_noun(run.results.assumptions)} (%)"
    specs = [
        ("accuracy-bytes", "Accuracy against payload size",
         "Each point is a pipeline variant; the dashed staircase is the Pareto front (no other variant "
         "is both smaller and more accurate), and only its points are labeled.",
         lambda: plot_accuracy_vs_bytes(rows, y_label), "no row has both an accuracy and a payload figure"),
        ("accuracy-energy", "Accuracy against edge energy",
         "Hollow markers are estimated or modeled energy figures; the dashed staircase is the Pareto front, "
         "and only its points are labeled.",
         lambda: plot_accuracy_vs_energy(rows, "edge", y_label), "no row has both an accuracy and an edge energy figure"),
        ("energy-stages", "Energy per inference by stage",
         "Edge, cloud and network energy stacked per variant; hatched segments are estimated or modeled.",
         lambda: plot_energy_per_stage(rows), "no row has an energy figure"),
        ("co2e", "CO2e per million inferences",
         "Operational CO2e is energy times the grid intensity of the edge's and the cloud's location (see "
         "Assumptions). Embodied CO2e, stacked in grey, is the modeled device's manufacturing footprint spread "
         "over its lifetime inferences; host rows carry no embodied figure.",
         lambda: plot_co2e_per_million(rows), "no row has a CO2e figure"),
        ("latency", "Latency distributions",
         "Per-sample latency of each stage and end to end; boxes span the quartiles, whiskers the 1st to "
         "99th percentile.",
         lambda: plot_latency_distributions(run.latency), "latency.parquet is missing or empty"),
        ("roc", "ROC curves",
         "True-accept rate against false-accept rate over all pairs of all folds pooled, from scores.parquet.",
         lambda: plot_roc_curves(run.scores), "scores.parquet is missing or empty"),
        ("samples", "Reconstructions",
         "Aligned face chips beside what the cloud rebuilds from the payload (decoded JPEG or VQ codes).",
         lambda: plot_reconstructions(run.samples), "the run saved no sample reconstructions"),
    ]
    if several_links:
        specs.append(("links", "Sensitivity to the link",
                      "The same pipeline variants over each link profile; a black x marks a payload that does not fit "
                      "the link.",
                      lambda: plot_sensitivity(rows, "link"), "only one link"))
    if several_devices:
        specs.append(("devices", "Sensitivity to the edge device",
                      "The same pipeline variants on each edge device profile; a black x marks a payload that does not "
                      "fit the link.",
                      lambda: plot_sensitivity(rows, "edge_device"), "only one edge device"))

    items = []
    for key, title, caption, build, reason in specs:
        figure = build()
        items.append(PlotItem(key, title, caption, figure, None if figure is not None else reason))
    return items
