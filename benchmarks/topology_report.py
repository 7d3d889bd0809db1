"""Tables and plots of the fast-mode topology benchmark, from results.csv and trajectories.csv only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def paired(rows: list[dict[str, Any]], topology: str, baseline: str, noise: Optional[float] = None,
           metric: str = "zero_shot_top1") -> list[float]:
    """``metric`` of ``topology`` minus ``baseline``'s, one value per seed both ran (same noise and batch)."""
    def by_key(name):
        return {(r["noise"], r["batch_size"], r["seed"]): r[metric] for r in rows
                if r["topology"] == name and (noise is None or abs(r["noise"] - noise) < 1e-9)}

    mine, base = by_key(topology), by_key(baseline)
    return [mine[key] - base[key] for key in sorted(mine) if key in base]


def write_report(output: Path, *, profile: str, command: str) -> list[Path]:
    return []
