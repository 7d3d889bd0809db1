"""Tables and plots of the fast-mode topology benchmark, from ``results.csv`` and ``trajectories.csv`` only.

``write_report`` is what ``--report-only`` runs: every number of ``results.md`` (and so of the topology
section of docs/benchmarks.md, which quotes it) is recomputed here from those two files.
"""

from __future__ import annotations

import math
import shutil
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import topologies as bench
import topology_grid as grid

PLOTS = ("accuracy_vs_noise.png", "scale_vs_noise.png", "paired_differences.png", "batch_sweep.png",
         "accuracy_vs_k.png", "trajectories.png")


# --------------------------------------------------------------------------------------------------
# selections and statistics
# --------------------------------------------------------------------------------------------------
def paired(rows: list[dict[str, Any]], topology: str, baseline: str, noise: Optional[float] = None,
           metric: str = "zero_shot_top1") -> list[float]:
    """``metric`` of ``topology`` minus ``baseline``'s, one value per seed both ran (same noise and batch)."""
    def by_key(name):
        return {(r["noise"], r["batch_size"], r["seed"]): r[metric] for r in rows
                if r["topology"] == name and (noise is None or abs(r["noise"] - noise) < 1e-9)}

    mine, base = by_key(topology), by_key(baseline)
    return [mine[key] - base[key] for key in sorted(mine) if key in base]


def main_batch(rows: list[dict[str, Any]]) -> int:
    """The main grid's batch size: the most common batch among rows at noise > 0 (the batch sweep is at 0)."""
    noisy = [r["batch_size"] for r in rows if r["noise"] > 0] or [r["batch_size"] for r in rows]
    return Counter(noisy).most_common(1)[0][0]


def values(rows, topology, noise=None, metric="zero_shot_top1", batch=None) -> list[float]:
    """``metric`` of the rows of ``topology`` (at ``noise`` and ``batch`` when given), in seed order."""
    sel = [r for r in rows if r["topology"] == topology and (noise is None or abs(r["noise"] - noise) < 1e-9)
           and (batch is None or r["batch_size"] == batch)]
    return [r[metric] for r in sorted(sel, key=lambda r: r["seed"])]


def cell(xs: Sequence[float], scale: float = 100.0, digits: int = 1, sign: bool = False) -> str:
    """``mean ± half-width (n)`` of the 95% t-interval; ``--`` without values."""
    mean, half, n = bench.t_interval(list(xs))
    if n == 0:
        return "--"
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    if math.isnan(half):
        return f"{fmt.format(scale * mean)} (n=1)"
    return f"{fmt.format(scale * mean)} ± {scale * half:.{digits}f} ({n})"


def verdict(xs: Sequence[float]) -> str:
    """``higher`` / ``lower`` when the 95% interval excludes 0, else ``no difference detected``."""
    mean, half, n = bench.t_interval(list(xs))
    if n < 2 or math.isnan(half):
        return "too few seeds"
    if abs(mean) <= half:
        return "no difference detected at this power"
    return "higher" if mean > 0 else "lower"


def setting(rows: list[dict[str, Any]]) -> str:
    """Profile, tower, steps, batch and seed count of a set of rows."""
    def join(key):
        return ", ".join(str(v) for v in sorted({r[key] for r in rows}))

    seeds = sorted({r["seed"] for r in rows})
    return (f"fast mode, profile {join('profile')} ({join('device')}), digit-pairs 16 px on fixed features, "
            f"MLP towers hidden {join('hidden')}, {join('steps')} steps, batch {join('batch_size')}, "
            f"seeds {seeds[0]}-{seeds[-1]}")


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------
def _main_rows(rows):
    batch = main_batch(rows)
    return [r for r in rows if r["batch_size"] == batch and not r["topology"].startswith(f"{bench.K_SWEEP_BASE}-k")]


def _topologies(rows) -> list[str]:
    """Topologies with rows, in ``TOPOLOGIES`` order, without the fast mode's aliases."""
    present = {r["topology"] for r in rows}
    return [t for t in bench.TOPOLOGIES if t in present and t not in grid.ALIASES]


def _noises(rows) -> list[float]:
    return sorted({r["noise"] for r in rows})


def table_metric(rows, metric, title, scale=100.0, digits=1) -> list[str]:
    """Topologies x noise of ``metric`` (the aliased controls listed as their counterparts)."""
    noises = _noises(rows)
    out = [f"### {title}", "", "| topology | " + " | ".join(f"noise {n:g}" for n in noises) + " |",
           "|---|" + "---:|" * len(noises)]
    for topo in _topologies(rows):
        out.append(f"| {topo} | " + " | ".join(cell(values(rows, topo, n, metric), scale, digits) for n in noises)
                   + " |")
    for alias, target in grid.ALIASES.items():
        out.append(f"| {alias} | = {target} (identical in fast mode) |" + " |" * (len(noises) - 1))
    return out + [""]


def table_alias_check(rows) -> list[str]:
    """Runs of an aliased topology made anyway, against its counterpart's of the same seed and noise."""
    out = []
    for alias, target in grid.ALIASES.items():
        diffs = paired(rows, alias, target)
        if diffs:
            out.append(f"- {alias} against {target}: {len(diffs)} runs paired by seed and noise, largest "
                       f"difference in zero-shot top-1 {100 * max(abs(d) for d in diffs):.2f} points.")
    if out:
        out = ["### Aliases run anyway", ""] + out
    return out + [""]


def table_paired(rows) -> list[str]:
    """Each topology minus the CLIP sphere, paired by seed, per noise, with the verdict."""
    noises = _noises(rows)
    out = [f"### Paired by seed: zero-shot top-1 minus {grid.BASELINE}'s (points)", "",
           "Cell: mean ± 95% t half-width (seeds); **n.d.**: the interval includes 0 (no difference detected "
           "at this power).", "",
           "| topology | " + " | ".join(f"noise {n:g}" for n in noises) + " |", "|---|" + "---:|" * len(noises)]
    for topo in _topologies(rows):
        if topo == grid.BASELINE:
            continue
        cells = []
        for n in noises:
            diffs = paired(rows, topo, grid.BASELINE, n)
            text = cell(diffs, sign=True)
            cells.append(text + (" **n.d.**" if verdict(diffs).startswith("no difference") else ""))
        out.append(f"| {topo} | " + " | ".join(cells) + " |")
    wide = []
    for topo in _topologies(rows):
        for n in noises:
            mean, half, count = bench.t_interval([100 * d for d in paired(rows, topo, grid.BASELINE, n)])
            if topo != grid.BASELINE and count and not half <= grid.TARGET:
                wide.append(f"{topo} at {n:g} (±{half:.1f}, {count} seeds, mean {mean:+.1f})")
    total = (len(_topologies(rows)) - 1) * len(noises)
    out += ["", f"{total - len(wide)} of {total} cells have a half-width of at most {grid.TARGET:g} points; "
            + ("the others: " + "; ".join(wide) + "." if wide else "all do.")]
    return out + [""]


def learnable(rows) -> list[str]:
    return [t for t in _topologies(rows) if grid.topology(t).temperature["name"] == "learnable"]


def table_scale(rows) -> list[str]:
    """Final scale per learnable topology x noise, and the paired change from noise 0 to each level."""
    noises = _noises(rows)
    out = table_metric([r for r in rows if r["topology"] in learnable(rows)], "scale",
                       "Final learned scale (multiplier of the similarity)", 1.0, 3)
    out = [line for line in out if "identical in fast mode" not in line]
    out += ["### Learned scale: change from noise 0, paired by seed (%)", "",
            "| topology | " + " | ".join(f"noise {n:g}" for n in noises[1:]) + " | monotone in noise |",
            "|---|" + "---:|" * (len(noises) - 1) + "---|"]
    for topo in learnable(rows):
        base = {r["seed"]: r["scale"] for r in rows if r["topology"] == topo and r["noise"] == noises[0]}
        cells = []
        for n in noises[1:]:
            rel = [r["scale"] / base[r["seed"]] - 1 for r in rows
                   if r["topology"] == topo and r["noise"] == n and r["seed"] in base]
            cells.append(cell(rel, 100.0, 1, sign=True))
        out.append(f"| {topo} | " + " | ".join(cells) + f" | {monotone(rows, topo)} |")
    return out + [""]


def monotone(rows, topology) -> str:
    """``decreasing``/``increasing`` when every step between adjacent noise levels moves the same way with a
    paired interval excluding 0, ``not monotone`` when two steps' intervals exclude 0 with opposite signs,
    else ``<direction> overall, not every step resolved``."""
    noises = _noises(rows)
    steps = []
    for a, b in zip(noises, noises[1:]):
        lo = {r["seed"]: r["scale"] for r in rows if r["topology"] == topology and r["noise"] == a}
        diffs = [r["scale"] - lo[r["seed"]] for r in rows if r["topology"] == topology and r["noise"] == b
                 and r["seed"] in lo]
        steps.append(verdict(diffs))
    resolved = {s for s in steps if s in ("higher", "lower")}
    if len(resolved) == 2:
        return "not monotone"
    overall = paired_scale(rows, topology, noises[0], noises[-1])
    direction = {"higher": "increasing", "lower": "decreasing"}.get(verdict(overall), "flat")
    if len(resolved) == 1 and all(s in resolved for s in steps):
        return direction
    return f"{direction} overall; {sum(s in resolved for s in steps)} of {len(steps)} steps resolved"


def paired_scale(rows, topology, a, b) -> list[float]:
    lo = {r["seed"]: r["scale"] for r in rows if r["topology"] == topology and r["noise"] == a}
    return [r["scale"] - lo[r["seed"]] for r in rows if r["topology"] == topology and r["noise"] == b
            and r["seed"] in lo]


def table_geometry(rows) -> list[str]:
    """Lorentz's learned curvature and modality scales against noise."""
    lorentz = [t for t in _topologies(rows) if grid.topology(t).similarity == "lorentz"]
    if not lorentz:
        return []
    noises = _noises(rows)
    out = ["### Lorentz geometry at the end of training (curvature c, image and text scales)", "",
           "| topology | parameter | " + " | ".join(f"noise {n:g}" for n in noises) + " |",
           "|---|---|" + "---:|" * len(noises)]
    for topo in lorentz:
        for param in ("curvature", "image_scale", "text_scale"):
            out.append(f"| {topo} | {param} | " + " | ".join(cell(values(rows, topo, n, param), 1.0, 3)
                                                           for n in noises) + " |")
    return out + [""]


def table_trained(rows) -> list[str]:
    """Noise 0: accuracy gain and scale change over the last 20% of steps, per topology."""
    at0 = [r for r in rows if r["noise"] == 0]
    out = ["### Trained, not started: the last 20% of steps at noise 0", "",
           "Accuracy gain = top-1 at the end minus top-1 at 80% of the steps (paired by seed, points); scale "
           "change = |scale at the end / scale at 80% - 1| (%), mean and largest over seeds.", "",
           "| topology | top-1 at 80% | top-1 at end | gain (points) | scale change mean (%) | largest (%) |",
           "|---|---:|---:|---:|---:|---:|"]
    for topo in _topologies(at0):
        sel = [r for r in at0 if r["topology"] == topo]
        gain = [r["zero_shot_top1"] - r["zero_shot_top1_at_80pct"] for r in sel]
        change = [abs(r["scale"] / r["scale_at_80pct"] - 1) for r in sel]
        is_learnable = grid.topology(topo).temperature["name"] == "learnable"
        out.append(f"| {topo} | {cell([r['zero_shot_top1_at_80pct'] for r in sel])} | "
                   f"{cell([r['zero_shot_top1'] for r in sel])} | {cell(gain, sign=True)} | "
                   + (f"{100 * statistics.fmean(change):.2f} | {100 * max(change):.2f} |" if is_learnable
                      else "-- | -- |"))
    return out + [""]


def batch_rows(rows) -> list[dict[str, Any]]:
    return [r for r in rows if r["noise"] == 0 and r["topology"] in grid.BATCH_TOPOLOGIES]


def table_batch(rows) -> list[str]:
    """Batch sweep: final training loss against the floor, and accuracy, per N."""
    sel = batch_rows(rows)
    sizes = sorted({r["batch_size"] for r in sel})
    if len(sizes) < 2:
        return []
    topos = [t for t in grid.BATCH_TOPOLOGIES if any(r["topology"] == t for r in sel)]
    out = ["### Batch sweep at noise 0: final training loss (nats) and zero-shot top-1 (%)", "",
           "Final loss: mean over the last 5% of steps of the training batches' loss. Floor: "
           "log(1 + (N - 1)/e), the loss at scale 1 with positives at similarity 1 and negatives at 0.", "",
           "| N | floor | " + " | ".join(f"{t} loss" for t in topos) + " | "
           + " | ".join(f"{t} top-1" for t in topos) + " |", "|---:|---:|" + "---:|" * (2 * len(topos))]
    for n in sizes:
        losses = [cell(values(sel, t, 0.0, "final_loss", n), 1.0, 3) for t in topos]
        accs = [cell(values(sel, t, 0.0, "zero_shot_top1", n)) for t in topos]
        out.append(f"| {n} | {grid.loss_floor(n):.3f} | " + " | ".join(losses + accs) + " |")
    return out + [""]


def k_rows(rows) -> list[dict[str, Any]]:
    batch = main_batch(rows)
    return [r for r in rows if r["batch_size"] == batch and r["noise"] in set(grid.K_NOISE)
            and (r["topology"] == bench.K_SWEEP_BASE or r["topology"].startswith(f"{bench.K_SWEEP_BASE}-k"))]


def table_k(rows) -> list[str]:
    sel = k_rows(rows)
    if not sel:
        return []
    out = [f"### k sweep: {bench.K_SWEEP_BASE} (oblique, no scale) at k * d = {bench.WIDTH}, noise "
           f"{', '.join(f'{n:g}' for n in grid.K_NOISE)}", "",
           "| k | d | zero-shot top-1 (%) | minus k = 16, paired (points) |", "|---:|---:|---:|---:|"]
    base = grid.k_name(16)
    for k in sorted({r["k"] for r in sel}):
        name = grid.k_name(k)
        diff = "--" if name == base else cell(paired(sel, name, base), sign=True)
        out.append(f"| {k} | {bench.WIDTH // k} | {cell(values(sel, name))} | {diff} |")
    return out + [""]


def table_time(rows) -> list[str]:
    out = ["### Wall time per run (seconds per seed: a cell's wall time over its seeds)", "",
           "| topology | batch | mean s/run |", "|---|---:|---:|"]
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["topology"], r["batch_size"]), []).append(r["wall_time_seconds"])
    for (topo, batch), ts in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        out.append(f"| {topo} | {batch} | {statistics.fmean(ts):.2f} |")
    total = sum(r["wall_time_seconds"] for r in rows)
    return out + ["", f"Sum over all {len(rows)} runs: {total / 60:.1f} min.", ""]


# --------------------------------------------------------------------------------------------------
# the six answers
# --------------------------------------------------------------------------------------------------
def _pd(rows, a, b, noise) -> str:
    return cell(paired(rows, a, b, noise), sign=True) + f" points ({verdict(paired(rows, a, b, noise))})"


def claims(rows: list[dict[str, Any]]) -> list[str]:
    """The six answers, one line each, computed from the rows."""
    main = _main_rows(rows)
    noises = _noises(main)
    hi = noises[-1]
    out = ["## The six answers", ""]
    have = {r["topology"] for r in main}

    if {"sphere-none", "oblique-none", grid.BASELINE} <= have:
        sel = batch_rows(rows)
        # the largest N that all three topologies reached (the sweep's tail may be partly run)
        sizes = sorted(n for n in {r["batch_size"] for r in sel}
                       if all(values(sel, t, 0.0, batch=n) for t in grid.BATCH_TOPOLOGIES))
        lo_n, hi_n = sizes[0], sizes[-1]
        gap = lambda t, n: [x - grid.loss_floor(n) for x in values(sel, t, 0.0, "final_loss", n)]  # noqa: E731
        out.append(
            f"1. **Range.** Noise 0: sphere at scale 1 {cell(values(main, 'sphere-none', 0.0))}%, oblique at scale 1 "
            f"{cell(values(main, 'oblique-none', 0.0))}%, CLIP sphere {cell(values(main, grid.BASELINE, 0.0))}%; "
            f"oblique-none minus sphere-none {_pd(main, 'oblique-none', 'sphere-none', 0.0)}. Batch sweep "
            f"N = {lo_n}..{hi_n}: sphere-none's final loss minus the floor {cell(gap('sphere-none', lo_n), 1, 3, True)} "
            f"nats at N = {lo_n} and {cell(gap('sphere-none', hi_n), 1, 3, True)} at N = {hi_n} (floor "
            f"{grid.loss_floor(lo_n):.2f} -> {grid.loss_floor(hi_n):.2f}); oblique-none "
            f"{cell(gap('oblique-none', lo_n), 1, 3, True)} and {cell(gap('oblique-none', hi_n), 1, 3, True)}; "
            f"top-1 at N = {hi_n}: sphere-none {cell(values(sel, 'sphere-none', 0.0, batch=hi_n))}%, oblique-none "
            f"{cell(values(sel, 'oblique-none', 0.0, batch=hi_n))}%, CLIP sphere "
            f"{cell(values(sel, grid.BASELINE, 0.0, batch=hi_n))}%.")
    if grid.BASELINE in have:
        rel = [x * 100 for x in _rel(main, grid.BASELINE, noises[0], hi)]
        out.append(
            f"2. **Temperature against noise.** CLIP sphere's learned scale: "
            + ", ".join(f"{cell(values(main, grid.BASELINE, n, 'scale'), 1, 2)} at {n:g}" for n in noises)
            + f"; noise {hi:g} against 0, paired: {cell(rel, 1, 1, True)}%; {monotone(main, grid.BASELINE)}.")
    if {"oblique-none", grid.BASELINE} <= have:
        out.append(
            "3. **Oblique against the sphere under noise** (oblique-none minus CLIP sphere): "
            + "; ".join(f"noise {n:g}: {_pd(main, 'oblique-none', grid.BASELINE, n)}" for n in noises)
            + ". In fast mode the joint and block controls are their counterparts exactly (an MLP's 512 outputs "
              "are the same read as 16 tokens or as one), so any difference here is the topology alone.")
    obl = [t for t in ("oblique-learnable-3.95", "oblique-learnable-100") if t in have]
    if obl and "oblique-none" in have:
        out.append(
            "4. **Temperature for oblique** (minus oblique-none, paired): "
            + "; ".join(f"{t}: " + ", ".join(f"{cell(paired(main, t, 'oblique-none', n), sign=True)} at {n:g}"
                                             for n in noises) for t in obl) + ".")
    ks = k_rows(rows)
    if ks:
        means = {k: statistics.fmean(values(ks, grid.k_name(k))) for k in sorted({r['k'] for r in ks})}
        best = max(means, key=means.get)
        second = max((k for k in means if k != best), key=means.get, default=None)
        line = (f"5. **Best k** (noise {', '.join(f'{n:g}' for n in grid.K_NOISE)}, oblique, no scale): k = {best} "
                f"({cell(values(ks, grid.k_name(best)))}%)")
        if second is not None:
            line += (f"; against the runner-up k = {second}: "
                     f"{_pd(ks, grid.k_name(best), grid.k_name(second), None)}")
        out.append(line + "; k = 1 " + f"{cell(values(ks, grid.k_name(1)))}%." if 1 in means else line + ".")
    new = [t for t in ("euclidean-k1", "euclidean-k1-own", "lorentz-k1", "lorentz-k16") if t in have]
    if new and grid.BASELINE in have:
        parts = []
        for t in new:
            vs_sphere = ", ".join(f"{cell(paired(main, t, grid.BASELINE, n), sign=True)} at {n:g}" for n in (0.0, hi))
            vs_obl = (cell(paired(main, t, 'oblique-none', 0.0), sign=True) if "oblique-none" in have else "--")
            parts.append(f"{t} {cell(values(main, t, 0.0))}% at noise 0, minus CLIP sphere {vs_sphere}, "
                         f"minus oblique-none {vs_obl} at 0")
        out.append("6. **Euclidean and hyperbolic.** " + "; ".join(parts) + ".")
    return out + [""]


def _rel(rows, topology, a, b) -> list[float]:
    lo = {r["seed"]: r["scale"] for r in rows if r["topology"] == topology and r["noise"] == a}
    return [r["scale"] / lo[r["seed"]] - 1 for r in rows if r["topology"] == topology and r["noise"] == b
            and r["seed"] in lo]


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------
def _errorbars(ax, rows, topologies, x_key, metric, scale=100.0, log_x=False):
    for topo in topologies:
        sel = [r for r in rows if r["topology"] == topo]
        xs = sorted({r[x_key] for r in sel})
        stats = [bench.t_interval([r[metric] for r in sel if r[x_key] == x]) for x in xs]
        ax.errorbar(xs, [scale * m for m, _, _ in stats],
                    yerr=[0 if math.isnan(h) else scale * h for _, h, _ in stats], marker="o", ms=3,
                    capsize=3, label=topo)
    if log_x:
        ax.set_xscale("log", base=2)


def write_plots(rows, traj, output: Path) -> list[Path]:
    """The six PNGs (a plot without data is skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    main = _main_rows(rows)
    title = setting(main) if main else ""

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(output / name, dpi=100)
        plt.close(fig)
        written.append(output / name)

    topos = _topologies(main)
    if main:
        fig, ax = plt.subplots(figsize=(8, 5))
        _errorbars(ax, main, topos, "noise", "zero_shot_top1")
        ax.set(xlabel="caption noise", ylabel="zero-shot top-1 (%)", title=f"Zero-shot accuracy\n{title}")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        save(fig, "accuracy_vs_noise.png")

        learn = learnable(main)
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        _errorbars(left, main, learn, "noise", "scale", 1.0)
        left.set(xlabel="caption noise", ylabel="final scale", yscale="log", title="Learned scale")
        left.legend(fontsize=7)
        left.grid(alpha=0.3)
        lorentz = [t for t in topos if grid.topology(t).similarity == "lorentz"]
        _errorbars(right, main, lorentz, "noise", "curvature", 1.0)
        right.set(xlabel="caption noise", ylabel="curvature c", title="Lorentz: learned curvature")
        if lorentz:
            right.legend(fontsize=7)
        right.grid(alpha=0.3)
        fig.suptitle(title, fontsize=8)
        save(fig, "scale_vs_noise.png")

        noises = _noises(main)
        others = [t for t in topos if t != grid.BASELINE]
        fig, axes = plt.subplots(1, len(noises), figsize=(3.2 * len(noises), 0.35 * len(others) + 1.8),
                                 sharey=True, squeeze=False)
        for ax, n in zip(axes[0], noises):
            for i, t in enumerate(others):
                mean, half, _ = bench.t_interval([100 * d for d in paired(main, t, grid.BASELINE, n)])
                ax.errorbar([mean], [i], xerr=[[0 if math.isnan(half) else half]], fmt="o", ms=3, capsize=3,
                            color="C3" if not math.isnan(half) and abs(mean) > half else "C0")
            ax.axvline(0, color="k", lw=0.8)
            ax.set_title(f"noise {n:g}", fontsize=9)
            ax.set_xlabel("points", fontsize=8)
            ax.grid(alpha=0.3)
        axes[0][0].set_yticks(range(len(others)), others, fontsize=7)
        fig.suptitle(f"Zero-shot top-1 minus {grid.BASELINE}, paired by seed, 95% intervals "
                     "(red: excludes 0)\n" + title, fontsize=8)
        save(fig, "paired_differences.png")

    sel = batch_rows(rows)
    if len({r["batch_size"] for r in sel}) > 1:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        present = [t for t in grid.BATCH_TOPOLOGIES if any(r["topology"] == t for r in sel)]
        _errorbars(left, sel, present, "batch_size", "final_loss", 1.0, log_x=True)
        sizes = sorted({r["batch_size"] for r in sel})
        left.plot(sizes, [grid.loss_floor(n) for n in sizes], "k--", label="log(1 + (N-1)/e)")
        left.set(xlabel="batch size N", ylabel="final training loss (nats)", title="Loss against the floor")
        left.legend(fontsize=7)
        left.grid(alpha=0.3)
        _errorbars(right, sel, present, "batch_size", "zero_shot_top1", log_x=True)
        right.set(xlabel="batch size N", ylabel="zero-shot top-1 (%)", title="Accuracy against N")
        right.legend(fontsize=7)
        right.grid(alpha=0.3)
        fig.suptitle(setting(sel) + ", noise 0", fontsize=8)
        save(fig, "batch_sweep.png")

    ks = k_rows(rows)
    if ks:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        ordered = sorted(ks, key=lambda r: r["k"])
        stats = {k: bench.t_interval([100 * r["zero_shot_top1"] for r in ordered if r["k"] == k])
                 for k in sorted({r["k"] for r in ordered})}
        ax.errorbar(list(stats), [m for m, _, _ in stats.values()],
                    yerr=[0 if math.isnan(h) else h for _, h, _ in stats.values()], marker="o", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set(xlabel=f"k (d = {bench.WIDTH} / k)", ylabel="zero-shot top-1 (%)",
               title=f"oblique, no scale, noise {', '.join(f'{n:g}' for n in grid.K_NOISE)}\n{setting(ks)}")
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
        save(fig, "accuracy_vs_k.png")

    batch = main_batch(rows) if rows else None
    t0 = [p for p in traj if p["noise"] == 0 and p["batch_size"] == batch and p["topology"] in set(topos)]
    if t0:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        for t in topos:
            steps = sorted({p["step"] for p in t0 if p["topology"] == t})
            for ax, key, scale in ((left, "zero_shot_top1", 100.0), (right, "scale", 1.0)):
                if key == "scale" and grid.topology(t).temperature["name"] != "learnable":
                    continue
                means = [scale * statistics.fmean(p[key] for p in t0 if p["topology"] == t and p["step"] == s)
                         for s in steps]
                ax.plot(steps, means, marker=".", ms=3, label=t)
        steps_total = max(p["steps"] for p in t0)
        for ax in (left, right):
            ax.axvspan(0.8 * steps_total, steps_total, color="0.9")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        left.set(xlabel="step", ylabel="zero-shot top-1 (%)", title="Accuracy during training (mean over seeds)")
        right.set(xlabel="step", ylabel="scale", yscale="log", title="Learned scale during training")
        fig.suptitle(f"Noise 0; shaded: the last 20% of steps\n{setting([r for r in rows if r['noise'] == 0])}",
                     fontsize=8)
        save(fig, "trajectories.png")
    return written


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
def write_report(output: Path, *, profile: str, command: str, images_to: Optional[Path] = None) -> list[Path]:
    """``results.md`` and the plots from ``output/results.csv`` and ``output/trajectories.csv`` (rows of
    ``profile``); the plots are also copied to ``images_to`` when given. Returns the files written."""
    rows = [r for r in grid.read_rows(output / "results.csv") if r["profile"] == profile]
    traj = [p for p in grid.read_rows(output / "trajectories.csv") if p["profile"] == profile]
    if not rows:
        return []
    main = _main_rows(rows)
    lines = ["# Topology comparison, fast mode", "",
             f"Written by `{command}` on {bench.machine()}, from `results.csv` and `trajectories.csv` alone "
             f"(the grid itself: `python benchmarks/topologies.py --mode fast --profile {profile}`; "
             "`--report-only` rewrites this file and the plots).", "",
             f"Setting of the main grid: {setting(main)}. Every table below comes from the fast mode "
             "(fixed inputs, MLP towers; see docs/benchmarks-topologies.md). Cells: mean ± half-width of the "
             "95% Student-t interval (seeds in parentheses).", ""]
    lines += claims(rows)
    lines += ["## Tables", ""]
    lines += table_metric(main, "zero_shot_top1", "Zero-shot top-1 (%)")
    lines += table_paired(main)
    lines += table_metric(main, "retrieval_R@1", "Retrieval R@1 (%), mean of image->text and text->image")
    lines += table_scale(main)
    lines += table_geometry(main)
    lines += table_trained(main)
    lines += table_batch(rows)
    lines += table_k(rows)
    lines += table_metric(main, "final_loss", "Final training loss (nats)", 1.0, 3)
    lines += table_alias_check(main)
    lines += table_time(rows)
    path = output / "results.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    plots = write_plots(rows, traj, output)
    if images_to is not None:
        images_to.mkdir(parents=True, exist_ok=True)
        for p in plots:
            shutil.copyfile(p, images_to / p.name)
    return [path, *plots]
