"""One-sided Mann-Whitney U test for the noisy gates.

The exact null distribution is used for small samples without ties, and the normal
approximation with tie and continuity corrections otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vqbench.metrics.verification import average_ranks


#: Largest U-test sample (both groups together) for which the exact null distribution is used.
EXACT_TEST_MAX_SAMPLES = 100


@dataclass(frozen=True)
class UTestResult:
    """One-sided Mann-Whitney U test that the first sample tends to be larger than the second."""

    u_statistic: float
    p_value: float
    method: Literal["exact", "normal"]


def exact_u_counts(n1: int, n2: int) -> np.ndarray:
    """Count the arrangements giving each U in 0..n1*n2 when there are no ties.

    These are the coefficients of the Gaussian binomial [n1+n2 choose n1]_q, built with
    [m, k] = [m-1, k-1] + q^k [m-1, k]. Floats keep large counts (C(100, 50) ~ 1e29) in range.
    """
    size = n1 * n2 + 1
    by_k = [np.zeros(size) for _ in range(n1 + 1)]
    by_k[0][0] = 1.0
    for m in range(1, n1 + n2 + 1):
        for k in range(min(m, n1), 0, -1):
            shifted = np.zeros(size)
            shifted[k:] = by_k[k][: size - k]
            by_k[k] = by_k[k - 1] + shifted
    return by_k[n1]


def mann_whitney_greater(sample: np.ndarray, other: np.ndarray) -> UTestResult:
    """Test whether ``sample`` is stochastically greater than ``other`` (one-sided).

    Uses the exact null distribution when there are no ties and at most
    ``EXACT_TEST_MAX_SAMPLES`` values in all, otherwise the normal approximation with tie and
    continuity corrections.
    """
    x = np.asarray(sample, dtype=float)
    y = np.asarray(other, dtype=float)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("the U test needs at least one value in each sample")
    combined = np.concatenate([x, y])
    ranks = average_ranks(combined)
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    has_ties = len(np.unique(combined)) < len(combined)

    if not has_ties and n1 + n2 <= EXACT_TEST_MAX_SAMPLES:
        counts = exact_u_counts(n1, n2)
        p_value = float(counts[int(round(u)) :].sum() / counts.sum())
        return UTestResult(u, min(p_value, 1.0), "exact")

    _, tie_sizes = np.unique(combined, return_counts=True)
    return UTestResult(u, normal_p_value(u, n1, n2, tie_sizes), "normal")


def normal_p_value(u: float, n1: int, n2: int, tie_sizes: np.ndarray | None = None) -> float:
    """One-sided P(U >= u) from the normal approximation with tie and continuity corrections."""
    n = n1 + n2
    sizes = np.asarray(tie_sizes if tie_sizes is not None else [], dtype=float)
    tie_term = float((sizes**3 - sizes).sum()) / (n * (n - 1)) if n > 1 else 0.0
    variance = n1 * n2 / 12 * ((n + 1) - tie_term)
    if variance <= 0:
        return 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def smallest_p_value(n1: int, n2: int) -> float:
    """Smallest one-sided p-value the U test can return for these sample sizes (no ties)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    return 1.0 / math.comb(n1 + n2, n1)
