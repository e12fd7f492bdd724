"""Rows of a run: their keys and labels, and the figures and noisy samples read from them.

Energy samples are a row's repeats. Latency samples are read from the run's per-sample latency
file (``LATENCY_FILE``) and thinned to at most ``max_samples`` evenly spaced quantiles. A metric
without samples falls back to the row's scalar figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vqbench.check.policy import NOISY_METRICS
from vqbench.errors import DataError
from vqbench.report.loader import LATENCY_FILE
from vqbench.results import ResultRow


def _row_key(row: ResultRow) -> tuple[str, str, str | None, str | None]:
    return (row.pipeline, row.variant, row.link, row.edge_device)


def _key_label(key: tuple[str, str, str | None, str | None]) -> str:
    pipeline, variant, link, device = key
    extras = [part for part in (link, device) if part]
    return f"{pipeline}/{variant}" + (f" [{', '.join(extras)}]" if extras else "")


def _key_description(key: tuple[str, str, str | None, str | None]) -> str:
    """Describe a row for an error message, without the square brackets that rich reads as markup."""
    pipeline, variant, link, device = key
    extras = [f"{name} {part}" for name, part in (("link", link), ("edge device", device)) if part]
    return f"{pipeline}/{variant}" + (f" ({', '.join(extras)})" if extras else "")


def _thin(values: np.ndarray, max_samples: int) -> list[float]:
    """Keep at most ``max_samples`` values as evenly spaced quantiles of ``values``."""
    if len(values) <= max_samples:
        return [float(v) for v in values]
    return [float(v) for v in np.quantile(values, np.linspace(0, 1, max_samples))]


def _read_latency(results_dir: Path) -> pd.DataFrame | None:
    path = results_dir / LATENCY_FILE
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path, columns=["pipeline", "variant", "stage", "latency_ms"])
    except (OSError, ValueError) as error:
        raise DataError(f"{path} could not be read ({error}); rerun `vqbench run` or delete the file") from error


def _row_samples(row: ResultRow, latency: pd.DataFrame | None, max_samples: int) -> dict[str, list[float]]:
    """Raw samples of every noisy metric for one row; the row's scalar when there are none."""
    samples: dict[str, list[float]] = {}
    for metric, (source, name, scalar_field) in NOISY_METRICS.items():
        values: list[float] = []
        if source == "repeats":
            values = [float(v) for v in getattr(row, name)]
        elif latency is not None:
            chosen = latency[(latency["pipeline"] == row.pipeline) & (latency["variant"] == row.variant)
                             & (latency["stage"] == name)]
            values = _thin(chosen["latency_ms"].to_numpy(dtype=float), max_samples)
        if not values and getattr(row, scalar_field) is not None:
            values = [float(getattr(row, scalar_field))]
        samples[metric] = values
    return samples


def _numeric_figures(row: ResultRow) -> dict[str, float | None]:
    figures: dict[str, float | None] = {}
    for name, value in row.model_dump().items():
        if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
            continue
        figures[name] = None if value is None else float(value)
    return figures
