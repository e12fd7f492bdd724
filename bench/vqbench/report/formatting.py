"""Number formatting shared by the HTML and PDF reports. Missing figures print as an en dash."""

from __future__ import annotations

import math

MISSING = "–"


def _is_missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


#: Integers below this print without thousands separators (4-digit numbers read fine as they are).
_SEPARATOR_FROM = 10_000


def format_integer(value: int | None) -> str:
    """Print a year, a count of pairs or an id as plain digits, never with separators."""
    if _is_missing(value):
        return MISSING
    return str(value)


def format_number(value: float | None, digits: int = 3) -> str:
    """Format a quantity with ``digits`` significant figures; integers of 5 digits or more get separators."""
    if _is_missing(value):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= _SEPARATOR_FROM else str(value)
    if math.isinf(value):
        # The loader rejects infinity in results.json, but environment.json is printed unchecked.
        return "inf" if value > 0 else "-inf"
    if abs(value) >= 10**digits:
        # Round to ``digits`` significant figures but print every integer digit: 1,100 not 1.1e+03.
        magnitude = math.floor(math.log10(abs(value)))
        return f"{round(value, digits - 1 - magnitude):,.0f}"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def format_bytes(value: float | None) -> str:
    """Format a byte count with decimal prefixes: ``221 B``, ``8.7 kB``, ``1.2 MB``."""
    if _is_missing(value):
        return MISSING
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def format_percent(fraction: float | None, digits: int = 2) -> str:
    """Format a fraction in [0, 1] as a percentage with ``digits`` decimals."""
    if _is_missing(fraction):
        return MISSING
    return f"{fraction * 100:.{digits}f} %"


def format_energy(joules: float | None) -> str:
    """Format an energy in J, or in mJ below 1 J, with three significant figures."""
    if _is_missing(joules):
        return MISSING
    if abs(joules) >= 1:
        return f"{format_number(joules)} J"
    return f"{format_number(joules * 1e3)} mJ"


def _decimals_for(value: float, digits: int) -> int:
    """Decimals that give ``value`` ``digits`` significant figures in fixed notation."""
    if value == 0:
        return digits - 1
    return digits - 1 - math.floor(math.log10(abs(value)))


def format_with_interval(value: float | None, half_width: float | None, scale: float = 1.0) -> str:
    """Format ``value ± half_width`` after multiplying both by ``scale``, in one notation.

    The interval gets two significant figures and the value is rounded to the same last decimal,
    so ``0.0261 ± 0.00032`` prints as ``0.02610 ± 0.00032`` and never mixes fixed and exponent forms.
    """
    if _is_missing(value):
        return MISSING
    scaled = value * scale
    if _is_missing(half_width):
        return format_number(scaled)
    half = abs(half_width * scale)
    if half == 0:
        return f"{format_number(scaled)} ± 0"
    decimals = min(_decimals_for(half, 2), 12)
    if abs(scaled) < 1e-3 and half < 1e-3:
        exponent = math.floor(math.log10(max(abs(scaled), half)))
        factor = 10.0**exponent
        inner = max(0, min(_decimals_for(half / factor, 2), 12))
        return f"({scaled / factor:.{inner}f} ± {half / factor:.{inner}f})e{exponent:+03d}"
    if decimals <= 0:
        # Round both to the interval's second significant figure: 2,165 ± 1,076 prints 2,200 ± 1,100.
        return f"{round(scaled, decimals):,.0f} ± {round(half, decimals):,.0f}"
    return f"{scaled:.{decimals}f} ± {half:.{decimals}f}"
