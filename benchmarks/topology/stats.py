"""Intervals, paired differences and the one verdict rule of the topology benchmark.

Every comparative word the report writes ("higher", "lower", "no difference detected") comes from
:func:`verdict`, and :data:`RULE` is the sentence that states the rule on the page.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Optional, Sequence

#: confidence of every interval
CONFIDENCE = 0.95
HIGHER, LOWER, NO_DIFFERENCE, TOO_FEW = "higher", "lower", "no difference detected", "too few seeds"
#: the rule, as the report states it
RULE = ("A difference is called *higher* or *lower* when its paired 95% Student-t interval (mean ± "
        "t(0.975, n - 1) s / sqrt(n) over the n seeds both sides ran) lies entirely above or below 0, and *no "
        "difference detected* when the interval includes 0 (whatever the mean); with fewer than 2 pairs, "
        "*too few seeds*.")


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """``(mean, half-width, n)`` of the two-sided Student-t interval over the non-NaN values.

    The half-width is NaN when n < 2; the mean is NaN when n = 0.
    """
    values = [v for v in values if not math.isnan(v)]
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, 1
    from scipy.stats import t

    return mean, float(t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n), n


def seeds_for(values: Sequence[float], half_width: float, confidence: float = CONFIDENCE,
              most: int = 10_000) -> int:
    """Seeds a paired interval needs for a half-width of at most ``half_width`` at the spread ``values`` show.

    The smallest n with ``t(0.5 + confidence / 2, n - 1) s / sqrt(n) <= half_width``, ``s`` the sample standard
    deviation of the non-NaN values; ``most`` + 1 when even ``most`` seeds are not enough. A planning figure
    only: ``s`` itself comes from the seeds run so far.

    Raises
    ------
    ValueError
        With fewer than 2 values, or ``half_width`` not positive.
    """
    values = [v for v in values if not math.isnan(v)]
    if len(values) < 2 or not half_width > 0:
        raise ValueError(f"seeds_for: expected at least 2 values and half_width > 0, got {len(values)} values "
                         f"and half_width {half_width}")
    from scipy.stats import t

    spread = statistics.stdev(values)
    for n in range(2, most + 1):
        if float(t.ppf(0.5 + confidence / 2, n - 1)) * spread / math.sqrt(n) <= half_width:
            return n
    return most + 1


def verdict(differences: Sequence[float]) -> str:
    """:data:`HIGHER`, :data:`LOWER`, :data:`NO_DIFFERENCE` or :data:`TOO_FEW`, by :data:`RULE`."""
    mean, half, n = t_interval(differences)
    if n < 2 or math.isnan(half):
        return TOO_FEW
    if mean - half > 0:
        return HIGHER
    if mean + half < 0:
        return LOWER
    return NO_DIFFERENCE


def paired(rows: Sequence[dict[str, Any]], topology: str, baseline: str, noise: Optional[float] = None,
           metric: str = "zero_shot_top1") -> list[float]:
    """``metric`` of ``topology`` minus ``baseline``'s, one value per (noise, batch, seed) both ran.

    Runs of the same seed share the noise draw, phrasings, initialization and batch order. ``noise`` None
    pairs every noise level.
    """
    def by_key(name):
        return {(r["noise"], r["batch_size"], r["seed"]): r[metric] for r in rows
                if r["topology"] == name and (noise is None or abs(r["noise"] - noise) < 1e-9)}

    mine, base = by_key(topology), by_key(baseline)
    return [mine[key] - base[key] for key in sorted(mine) if key in base]


def cell(values: Sequence[float], scale: float = 100.0, digits: int = 1, sign: bool = False) -> str:
    """``mean ± half-width (n)`` of the 95% t-interval; ``--`` without values; ``(n=1)`` for one."""
    mean, half, n = t_interval(list(values))
    if n == 0:
        return "--"
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    if math.isnan(half):
        return f"{fmt.format(scale * mean)} (n=1)"
    return f"{fmt.format(scale * mean)} ± {scale * half:.{digits}f} ({n})"


def compared(differences: Sequence[float], scale: float = 100.0, digits: int = 1, unit: str = " points") -> str:
    """A paired difference with its verdict: ``+1.3 ± 1.2 (5) points (higher)``."""
    return f"{cell(differences, scale, digits, sign=True)}{unit} ({verdict(differences)})"
