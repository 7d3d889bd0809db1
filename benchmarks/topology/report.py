"""The one report engine of the topology benchmark: ``results.md`` and the plots, for both modes.

:func:`write_report` reads a results folder (:func:`.results.load`: ``results.csv`` plus ``trajectories.csv``, or
an older full-mode folder's ``results.json``) and writes every table, answer and plot from those rows alone;
``--report-only`` runs nothing else. A table or plot whose data a folder lacks is left out (the full mode has
no batch sweep, the fast mode no similarity gap). It refuses a folder that holds a run twice
(:class:`.results.DuplicateRunError`). Every comparative word comes from :func:`.stats.verdict`, whose rule
:data:`.stats.RULE` the page states.
"""

from __future__ import annotations

import math
import re
import shutil
import statistics
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

from . import results, spec, stats
from .stats import cell, compared, paired, verdict

PLOTS = ("accuracy_vs_noise.png", "scale_vs_noise.png", "paired_differences.png", "batch_sweep.png",
         "accuracy_vs_k.png", "trajectories.png")
Rows = list[dict[str, Any]]


# --------------------------------------------------------------------------------------------------
# selections
# --------------------------------------------------------------------------------------------------
def mode_of(rows: Rows) -> str:
    """``fast``, ``full``, or both joined, of a set of rows."""
    return "+".join(sorted({r["mode"] for r in rows})) or "unknown"


def aliases(rows: Rows) -> dict[str, str]:
    """The fast mode's aliased topologies (:data:`.spec.ALIASES`) when the rows are fast-mode rows, else none:
    in full mode the controls are trained for real."""
    return dict(spec.ALIASES) if any(r["mode"] == "fast" for r in rows) else {}


def main_batch(rows: Rows) -> int:
    """The main grid's batch size: the most common batch among rows at noise > 0 (the batch sweep is at 0)."""
    noisy = [r["batch_size"] for r in rows if r["noise"] > 0] or [r["batch_size"] for r in rows]
    return Counter(noisy).most_common(1)[0][0]


def is_k_variant(name: str) -> bool:
    return name.startswith(f"{spec.K_SWEEP_BASE}-k")


def is_main_setting(row: dict[str, Any]) -> bool:
    """Whether a row was trained as the main grid is: every other pair a negative, the task's 5000 pairs (a
    full-mode row has neither column and is)."""
    defaults = spec.FAST_ROW_DEFAULTS
    return all(row.get(key, value) == value for key, value in defaults.items())


def main_rows(rows: Rows) -> Rows:
    """The main grid: the main batch size, without the k sweep's variants and the masked batch sweep's rows."""
    batch = main_batch(rows)
    return [r for r in rows if r["batch_size"] == batch and not is_k_variant(r["topology"]) and is_main_setting(r)]


def values(rows: Rows, topology: str, noise: Optional[float] = None, metric: str = "zero_shot_top1",
           batch: Optional[int] = None) -> list[float]:
    """``metric`` of the rows of ``topology`` (at ``noise`` and ``batch`` when given), in seed order."""
    sel = [r for r in rows if r["topology"] == topology and (noise is None or abs(r["noise"] - noise) < 1e-9)
           and (batch is None or r["batch_size"] == batch)]
    return [r.get(metric, math.nan) for r in sorted(sel, key=lambda r: r["seed"])]


def topologies(rows: Rows) -> list[str]:
    """Topologies with rows: those of :data:`.spec.TOPOLOGIES` in its order, then any other (a registered
    geometry run by name) in order of appearance; the fast mode's aliases left out."""
    present = list(dict.fromkeys(r["topology"] for r in rows))
    skip = aliases(rows)
    known = [t for t in spec.TOPOLOGIES if t in present]
    return [t for t in known + [t for t in present if t not in spec.TOPOLOGIES] if t not in skip]


def noises(rows: Rows) -> list[float]:
    return sorted({r["noise"] for r in rows})


def learnable(rows: Rows) -> list[str]:
    """Topologies whose temperature scale was trained (their rows' temperature label says so)."""
    return [t for t in topologies(rows)
            if any(r["topology"] == t and str(r.get("temperature", "")).startswith("learnable") for r in rows)]


def _span(counts: Sequence[int]) -> str:
    lo, hi = min(counts), max(counts)
    return f"{lo} seed{'s' if lo != 1 else ''}" if lo == hi else f"{lo} to {hi} seeds"


def setting(rows: Rows) -> str:
    """Mode, task, towers, budget and seeds of a set of rows: what a caption must say."""
    def join(key):
        return ", ".join(str(v) for v in sorted({r[key] for r in rows if r.get(key) not in (None, "")}))

    per_point = Counter((r["topology"], r["noise"], r["batch_size"]) for r in rows)
    seeds = sorted({r["seed"] for r in rows})
    ids = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    budget = f"{join('steps')} steps, batch {join('batch_size')}, {_span(list(per_point.values()))} per point ({ids})"
    if mode_of(rows) == "fast":
        return (f"fast mode, profile {join('profile')} ({join('device')}), digit-pairs 16 px on fixed features, "
                f"MLP towers hidden {join('hidden')}, {budget}")
    return f"{mode_of(rows)} mode, task {_data(rows)}, towers {join('model')}, {budget}"


def hardware_lines(rows: Rows) -> list[str]:
    """Where the runs trained (the trainer's ``summary.json`` ``hardware``; older rows lack it), as a paragraph:
    a seed's result depends on the machine it trained on."""
    counts = Counter(r.get("hardware") or "not recorded" for r in rows)
    if set(counts) == {"not recorded"}:
        return []
    parts = [f"{name} ({count} run{'s' if count != 1 else ''})" for name, count in counts.most_common()]
    return [f"Trained on: {', '.join(parts)}. One seed's runs differ across machines and installs (kernels "
            "round differently and training amplifies it), so a seed's result depends on where it ran.", ""]


def _data(rows: Rows) -> str:
    """The full mode's data: the dataset, and for csv/webdataset data its path and the eval sets that gave the
    zero-shot and retrieval numbers (its rows' ``data``, ``zero_shot_set``, ``retrieval_set``)."""
    parts = []
    for dataset, data in sorted({(r.get("dataset", ""), r.get("data", "")) for r in rows}):
        parts.append(f"{dataset} data {data} (its captions as they are: caption noise does not apply)" if data
                     else dataset)
    for key, what in (("zero_shot_set", "zero-shot"), ("retrieval_set", "retrieval")):
        names = sorted({r.get(key, "") for r in rows} - {""})
        if names:
            parts.append(f"{what} on eval set {', '.join(names)}")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------
def _head(noise_levels: Sequence[float], first: str = "topology") -> list[str]:
    return [f"| {first} | " + " | ".join(f"noise {n:g}" for n in noise_levels) + " |",
            "|---|" + "---:|" * len(noise_levels)]


def table_metric(rows: Rows, metric: str, title: str, scale: float = 100.0, digits: int = 1) -> list[str]:
    """Topologies x noise of ``metric`` (the aliased controls listed as their counterparts)."""
    if not any(not math.isnan(r.get(metric, math.nan)) for r in rows):
        return []
    levels = noises(rows)
    out = [f"### {title}", "", *_head(levels)]
    for topo in topologies(rows):
        out.append(f"| {topo} | " + " | ".join(cell(values(rows, topo, n, metric), scale, digits) for n in levels)
                   + " |")
    for alias, target in aliases(rows).items():
        out.append(f"| {alias} | = {target} (identical in fast mode) |" + " |" * (len(levels) - 1))
    return out + [""]


def table_alias_check(rows: Rows) -> list[str]:
    """Runs of an aliased topology made anyway, against its counterpart's of the same seed and noise."""
    out = []
    for alias, target in aliases(rows).items():
        diffs = paired(rows, alias, target)
        if diffs:
            out.append(f"- {alias} against {target}: {len(diffs)} runs paired by seed and noise, largest "
                       f"difference in zero-shot top-1 {100 * max(abs(d) for d in diffs):.2f} points.")
    return ["### Aliases run anyway", "", *out, ""] if out else []


def table_paired(rows: Rows) -> list[str]:
    """Each topology minus the CLIP sphere, paired by seed, per noise, with the verdict."""
    if spec.BASELINE not in {r["topology"] for r in rows}:
        return []
    levels = noises(rows)
    others = [t for t in topologies(rows) if t != spec.BASELINE]
    out = [f"### Paired by seed: zero-shot top-1 minus {spec.BASELINE}'s (points)", "",
           f"Cell: mean ± 95% t half-width (seeds); **n.d.**: *{stats.NO_DIFFERENCE}* (the interval includes 0); "
           "unmarked: the interval excludes 0, so the sign of the mean is the verdict.", "", *_head(levels)]
    wide, goal = [], spec.target(mode_of(rows))
    for topo in others:
        cells = []
        for n in levels:
            diffs = paired(rows, topo, spec.BASELINE, n)
            cells.append(cell(diffs, sign=True) + (" **n.d.**" if verdict(diffs) == stats.NO_DIFFERENCE else ""))
            points = [100 * d for d in diffs]
            mean, half, count = stats.t_interval(points)
            if count and not half <= goal:
                need = (f"; about {stats.seeds_for(points, goal)} seeds for ±{goal:g} at this spread"
                        if count > 1 else "")
                wide.append(f"{topo} at {n:g} (±{half:.1f}, {count} seeds, mean {mean:+.1f}{need})")
        out.append(f"| {topo} | " + " | ".join(cells) + " |")
    total = len(others) * len(levels)
    out += ["", f"{total - len(wide)} of {total} cells have a half-width of at most {goal:g} points"
            + ("; the others: " + "; ".join(wide) + "." if wide else "; all do.")]
    return out + [""]


def relative(rows: Rows, topology: str, a: float, b: float, metric: str = "scale") -> list[float]:
    """``metric`` at noise ``b`` over its value at noise ``a``, minus 1, paired by seed (same batch)."""
    lo = {(r["seed"], r["batch_size"]): r[metric] for r in rows if r["topology"] == topology and r["noise"] == a}
    return [r[metric] / lo[(r["seed"], r["batch_size"])] - 1 for r in rows
            if r["topology"] == topology and r["noise"] == b and (r["seed"], r["batch_size"]) in lo]


def difference(rows: Rows, topology: str, a: float, b: float, metric: str = "scale") -> list[float]:
    """``metric`` at noise ``b`` minus its value at noise ``a``, paired by seed (same batch)."""
    lo = {(r["seed"], r["batch_size"]): r[metric] for r in rows if r["topology"] == topology and r["noise"] == a}
    return [r[metric] - lo[(r["seed"], r["batch_size"])] for r in rows
            if r["topology"] == topology and r["noise"] == b and (r["seed"], r["batch_size"]) in lo]


def monotone(rows: Rows, topology: str, metric: str = "scale") -> str:
    """``decreasing``/``increasing`` when every step between adjacent noise levels has the same verdict
    (:func:`.stats.verdict` of the paired step), ``not monotone`` when two steps have opposite verdicts, else
    ``<direction> overall; <m> of <n> steps resolved`` (direction: the verdict from the lowest to the highest
    noise, ``flat`` for no difference detected)."""
    levels = noises(rows)
    steps = [verdict(difference(rows, topology, a, b, metric)) for a, b in zip(levels, levels[1:])]
    resolved = {s for s in steps if s in (stats.HIGHER, stats.LOWER)}
    if len(resolved) == 2:
        return "not monotone"
    overall = verdict(difference(rows, topology, levels[0], levels[-1], metric))
    direction = {stats.HIGHER: "increasing", stats.LOWER: "decreasing"}.get(overall, "flat")
    if len(resolved) == 1 and all(s in resolved for s in steps):
        return direction
    return f"{direction} overall; {sum(s in resolved for s in steps)} of {len(steps)} steps resolved"


def table_scale(rows: Rows) -> list[str]:
    """Final scale per learnable topology x noise, and the paired change from noise 0 to each level."""
    learn = learnable(rows)
    if not learn:
        return []
    levels = noises(rows)
    out = table_metric([r for r in rows if r["topology"] in learn], "scale",
                       "Final learned scale (multiplier of the scores)", 1.0, 3)
    out = [line for line in out if "identical in fast mode" not in line]
    out += [f"### Learned scale: change from noise {levels[0]:g}, paired by seed (%)", "",
            "| topology | " + " | ".join(f"noise {n:g}" for n in levels[1:]) + " | monotone in noise |",
            "|---|" + "---:|" * (len(levels) - 1) + "---|"]
    for topo in learn:
        cells = [cell(relative(rows, topo, levels[0], n), 100.0, 1, sign=True) for n in levels[1:]]
        out.append(f"| {topo} | " + " | ".join(cells) + f" | {monotone(rows, topo)} |")
    return out + [""]


def table_geometry(rows: Rows) -> list[str]:
    """The geometries' learned values (their ``values()``: a curvature, modality scales) against noise."""
    columns = results.value_columns(rows)
    owners = [t for t in topologies(rows) if any(not math.isnan(v) for c in columns for v in values(rows, t, None, c))]
    if not owners:
        return []
    levels = noises(rows)
    out = ["### Learned geometry values at the end of training (each geometry's `values()`)", "",
           "| topology | value | " + " | ".join(f"noise {n:g}" for n in levels) + " |",
           "|---|---|" + "---:|" * len(levels)]
    for topo in owners:
        for column in columns:
            if any(not math.isnan(v) for v in values(rows, topo, None, column)):
                out.append(f"| {topo} | {column} | "
                           + " | ".join(cell(values(rows, topo, n, column), 1.0, 3) for n in levels) + " |")
    return out + [""]


def table_trained(rows: Rows) -> list[str]:
    """Noise 0: accuracy gain and scale change over the last 20% of steps, per topology."""
    at0 = [r for r in rows if r["noise"] == 0 and not math.isnan(r.get("zero_shot_top1_at_80pct", math.nan))]
    if not at0:
        return []
    out = ["### Trained, not started: the last 20% of steps at noise 0", "",
           "Accuracy gain = top-1 at the end minus top-1 at 80% of the steps (paired by seed, points, with its "
           "verdict); scale change = |scale at the end / scale at 80% - 1| (%), mean and largest over seeds.", "",
           "| topology | top-1 at 80% | top-1 at end | gain (points) | scale change mean (%) | largest (%) |",
           "|---|---:|---:|---:|---:|---:|"]
    learn = set(learnable(at0))
    for topo in topologies(at0):
        sel = [r for r in at0 if r["topology"] == topo]
        gain = [r["zero_shot_top1"] - r["zero_shot_top1_at_80pct"] for r in sel]
        change = [abs(r["scale"] / r["scale_at_80pct"] - 1) for r in sel]
        out.append(f"| {topo} | {cell([r['zero_shot_top1_at_80pct'] for r in sel])} | "
                   f"{cell([r['zero_shot_top1'] for r in sel])} | {compared(gain, unit='')} | "
                   + (f"{100 * statistics.fmean(change):.2f} | {100 * max(change):.2f} |" if topo in learn
                      else "-- | -- |"))
    return out + [""]


def batch_settings(rows: Rows) -> list[tuple[str, int]]:
    """The (negatives, training pairs) of the batch sweep's rows, the main grid's first (spec.NEGATIVES order)."""
    found = {(r.get("negatives", "all"), r.get("train_pairs", spec.FAST_ROW_DEFAULTS["train_pairs"]))
             for r in rows if r["noise"] == 0 and r["topology"] in spec.BATCH_TOPOLOGIES}
    return sorted(found, key=lambda s: (spec.NEGATIVES.index(s[0]), s[1]))


def batch_rows(rows: Rows, setting: Optional[tuple[str, int]] = None) -> Rows:
    """Rows of the batch sweep's topologies at noise 0, of one (negatives, training pairs) ``setting``: by
    default the last of :func:`batch_settings` (the masked sweep where a folder holds both)."""
    settings = batch_settings(rows)
    if not settings:
        return []
    setting = setting or settings[-1]
    return [r for r in rows if r["noise"] == 0 and r["topology"] in spec.BATCH_TOPOLOGIES
            and (r.get("negatives", "all"), r.get("train_pairs", spec.FAST_ROW_DEFAULTS["train_pairs"])) == setting]


def batch_sizes(rows: Rows, setting: Optional[tuple[str, int]] = None) -> list[int]:
    """Batch sizes of the batch sweep (of ``setting``, as :func:`batch_rows`) that every topology of it reached
    (its largest ones may be partly run)."""
    sel = batch_rows(rows, setting)
    present = [t for t in spec.BATCH_TOPOLOGIES if any(r["topology"] == t for r in sel)]
    return sorted(n for n in {r["batch_size"] for r in sel} if all(values(sel, t, 0.0, batch=n) for t in present))


def _same_class(n: int, setting: tuple[str, int]) -> float:
    """Expected same-class captions per anchor at batch ``n`` (noise 0: a caption's class is its image's)."""
    return spec.same_class_per_anchor(n, setting[1])


def _floor(n: int, setting: tuple[str, int]) -> float:
    return spec.row_floor(n, *setting)


def negatives_text(setting: tuple[str, int]) -> str:
    """How a batch sweep setting treats same-class pairs, in words, with its training set."""
    negatives, pairs = setting
    how = ("same-class pairs left out of the negatives (`ContrastiveLoss(class_ids=...)`: a caption of the "
           "anchor's class is neither positive nor negative)" if negatives == "other-class"
           else "every other pair of the batch a negative, same-class captions included")
    return f"{how}; {pairs} training pairs ({pairs // spec.N_CLASSES} per class, {spec.N_CLASSES} classes)"


def table_batch(rows: Rows) -> list[str]:
    """Batch sweep, one table per (negatives, training pairs) setting: final training loss against the floor,
    and accuracy, per N, with the same-class captions per anchor and how they were treated."""
    out = []
    for setting in batch_settings(rows):
        sel = batch_rows(rows, setting)
        sizes = sorted({r["batch_size"] for r in sel})
        if len(sizes) < 2 and setting == tuple(spec.FAST_ROW_DEFAULTS.values()):
            continue  # the main grid's own batch at noise 0, no sweep
        masked = setting[0] == "other-class"
        topos = [t for t in spec.BATCH_TOPOLOGIES if any(r["topology"] == t for r in sel)]
        reached = batch_sizes(rows, setting)
        largest = (f"Largest N in these rows: {sizes[-1]} ({100 * sizes[-1] / setting[1]:.1f}% of the training pairs)"
                   + ("" if reached and reached[-1] == sizes[-1] else
                      f"; the largest that every topology reached: {reached[-1] if reached else 'none'}") + ".")
        m_text = ("m, the expected same-class captions per anchor, (N - 1)(P - 1)/(n - 1) for P pairs per class "
                  "out of n, is left out of the negatives (the floor's N - 1 - m negatives; m's spread from row "
                  "to row moves the mean floor by under 1e-3 nats)" if masked else
                  "m, the expected same-class captions per anchor, (N - 1)(P - 1)/(n - 1), is counted among the "
                  "N - 1 negatives")
        out += [f"### Batch sweep at noise 0, negatives: {setting[0]}: final training loss (nats) and zero-shot "
                "top-1 (%)", "",
                f"Negatives: {negatives_text(setting)}. {largest}", "",
                "Final loss: mean over the last 5% of steps of the training batches' loss. Floor: "
                f"log(1 + (N - 1{' - m' if masked else ''})/e), the loss at scale 1 with positives at similarity 1 "
                f"and negatives at 0; {m_text}.", "",
                "| N | m, same-class per anchor | negatives per anchor | floor | "
                + " | ".join(f"{t} loss" for t in topos) + " | " + " | ".join(f"{t} top-1" for t in topos) + " |",
                "|---:|---:|---:|---:|" + "---:|" * (2 * len(topos))]
        for n in sizes:
            m = _same_class(n, setting)
            losses = [cell(values(sel, t, 0.0, "final_loss", n), 1.0, 3) for t in topos]
            accs = [cell(values(sel, t, 0.0, "zero_shot_top1", n)) for t in topos]
            out.append(f"| {n} | {m:.1f} {'(left out)' if masked else '(counted)'} | "
                       f"{n - 1 - m if masked else n - 1:.1f} | {_floor(n, setting):.3f} | "
                       + " | ".join(losses + accs) + " |")
        out.append("")
    return out


def k_rows(rows: Rows) -> Rows:
    """The k sweep: the base topology and its ``-k<k>`` variants at the main batch, at the noise levels that
    have a variant."""
    batch = main_batch(rows)
    sel = [r for r in rows if r["batch_size"] == batch
           and (r["topology"] == spec.K_SWEEP_BASE or is_k_variant(r["topology"]))]
    levels = {r["noise"] for r in sel if is_k_variant(r["topology"])}
    return [r for r in sel if r["noise"] in levels]


def k_means(rows: Rows) -> dict[int, float]:
    """Mean zero-shot top-1 of each k of the k sweep's rows (:func:`k_rows`), by k."""
    return {k: statistics.fmean(values(rows, spec.k_name(k))) for k in sorted({r["k"] for r in rows})}


def _k_noise_text(rows: Rows) -> str:
    return ", ".join(f"{n:g}" for n in noises(rows))


def table_k(rows: Rows) -> list[str]:
    sel = k_rows(rows)
    if not sel:
        return []
    base = spec.k_name(16)
    out = [f"### k sweep: {spec.K_SWEEP_BASE} (oblique, no scale) at k * d = {spec.WIDTH}, noise "
           f"{_k_noise_text(sel)}", "",
           "| k | d | zero-shot top-1 (%) | minus k = 16, paired (points) |", "|---:|---:|---:|---:|"]
    for k in sorted({r["k"] for r in sel}):
        name = spec.k_name(k)
        diff = "--" if name == base else compared(paired(sel, name, base), unit="")
        out.append(f"| {k} | {spec.WIDTH // k} | {cell(values(sel, name))} | {diff} |")
    return out + [""]


def table_time(rows: Rows) -> list[str]:
    per = ("seconds per seed: a cell's wall time over its seeds" if mode_of(rows) == "fast"
           else "seconds, each run's own")
    out = [f"### Wall time per run ({per})", "", "| topology | batch | mean s/run |", "|---|---:|---:|"]
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
def _pd(rows: Rows, a: str, b: str, noise: Optional[float]) -> str:
    return compared(paired(rows, a, b, noise))


def _answer_range(rows: Rows, main: Rows) -> str:
    line = (f"1. **Range.** Noise 0: sphere at scale 1 {cell(values(main, 'sphere-none', 0.0))}%, oblique at scale 1 "
            f"{cell(values(main, 'oblique-none', 0.0))}%, CLIP sphere {cell(values(main, spec.BASELINE, 0.0))}%; "
            f"oblique-none minus sphere-none {_pd(main, 'oblique-none', 'sphere-none', 0.0)}.")
    batch = answer_batch(rows)
    return f"{line} {batch}" if batch else line


def answer_batch(rows: Rows) -> str:
    """Answer 1's batch-sweep sentence, of the setting :func:`batch_rows` picks: how same-class negatives were
    treated, the N reached, loss minus floor at the smallest and largest N and the paired differences there
    (their words from :func:`.stats.verdict`); empty without two batch sizes."""
    settings = batch_settings(rows)
    sizes = batch_sizes(rows)
    if len(sizes) < 2 or not settings:
        return ""
    setting = settings[-1]
    sel = batch_rows(rows)
    lo_n, hi_n = sizes[0], sizes[-1]
    gap = lambda t, n: [x - _floor(n, setting) for x in values(sel, t, 0.0, "final_loss", n)]  # noqa: E731
    treated = "left out of the negatives" if setting[0] == "other-class" else "counted as negatives"
    return (
        f"Batch sweep N = {lo_n}..{hi_n} ({setting[1]} training pairs; the expected {_same_class(lo_n, setting):.1f} "
        f"to {_same_class(hi_n, setting):.1f} same-class captions per anchor {treated}): sphere-none's final loss "
        f"minus the floor {cell(gap('sphere-none', lo_n), 1, 3, True)} nats at N = {lo_n} and "
        f"{cell(gap('sphere-none', hi_n), 1, 3, True)} at N = {hi_n} (floor {_floor(lo_n, setting):.2f} -> "
        f"{_floor(hi_n, setting):.2f}); oblique-none {cell(gap('oblique-none', lo_n), 1, 3, True)} and "
        f"{cell(gap('oblique-none', hi_n), 1, 3, True)}; top-1 at N = {hi_n}: sphere-none "
        f"{cell(values(sel, 'sphere-none', 0.0, batch=hi_n))}%, oblique-none "
        f"{cell(values(sel, 'oblique-none', 0.0, batch=hi_n))}%, CLIP sphere "
        f"{cell(values(sel, spec.BASELINE, 0.0, batch=hi_n))}%; sphere-none minus CLIP sphere at N = {hi_n}: "
        f"{compared(_paired_at(sel, 'sphere-none', spec.BASELINE, hi_n))}, minus oblique-none: "
        f"{compared(_paired_at(sel, 'sphere-none', 'oblique-none', hi_n))}.")


def _paired_at(rows: Rows, a: str, b: str, batch: int) -> list[float]:
    return paired([r for r in rows if r["batch_size"] == batch], a, b, 0.0)


#: the topologies answers 1 to 5 are about; answer 6 takes every other one (other geometries, any registered one)
ANSWERED = {"sphere-learnable", "sphere-fixed", "sphere-none", "oblique-none", "oblique-learnable-3.95",
            "oblique-learnable-100", "joint-control", "block-control"}


def claims(rows: Rows) -> list[str]:
    """The six answers, one line each, computed from the rows (an answer whose topologies are missing is left
    out); every comparison carries its paired interval, seed count and verdict. A folder of the batch sweep
    alone (no main grid) answers with its range sentence (:func:`answer_batch`)."""
    main = main_rows(rows)
    levels = noises(main)
    if not levels:
        batch = answer_batch(rows)
        return ["## The range answer at large batches", "", *([batch] if batch else [])]
    hi = levels[-1]
    have = {r["topology"] for r in main}
    out = ["## The six answers", ""]
    if {"sphere-none", "oblique-none", spec.BASELINE} <= have:
        out.append(_answer_range(rows, main))
    if spec.BASELINE in have and spec.BASELINE in learnable(main):
        rel = [x * 100 for x in relative(main, spec.BASELINE, levels[0], hi)]
        out.append(
            "2. **Temperature against noise.** CLIP sphere's learned scale: "
            + ", ".join(f"{cell(values(main, spec.BASELINE, n, 'scale'), 1, 2)} at {n:g}" for n in levels)
            + f"; noise {hi:g} against {levels[0]:g}, paired: {compared(rel, 1, 1, '%')}; "
              f"{monotone(main, spec.BASELINE)}.")
    if {"oblique-none", spec.BASELINE} <= have:
        line = ("3. **Oblique against the sphere under noise** (oblique-none minus CLIP sphere): "
                + "; ".join(f"noise {n:g}: {_pd(main, 'oblique-none', spec.BASELINE, n)}" for n in levels) + ".")
        if aliases(main):
            line += (" In fast mode the joint and block controls are their counterparts exactly (an MLP's 512 "
                     "outputs are the same read as 16 tokens or as one), so any difference here is the topology "
                     "alone.")
        out.append(line)
    obl = [t for t in ("oblique-learnable-3.95", "oblique-learnable-100") if t in have]
    if obl and "oblique-none" in have:
        out.append(
            "4. **Temperature for oblique** (minus oblique-none, paired): "
            + "; ".join(f"{t}: " + ", ".join(f"{_pd(main, t, 'oblique-none', n)} at {n:g}" for n in levels)
                        for t in obl) + ".")
    ks = k_rows(rows)
    if ks:
        means = k_means(ks)
        best = max(means, key=means.get)
        second = max((k for k in means if k != best), key=means.get, default=None)
        line = (f"5. **Best k** (noise {_k_noise_text(ks)}, oblique, no scale): the highest mean is k = {best} "
                f"({cell(values(ks, spec.k_name(best)))}%)")
        if second is not None:
            line += f"; against the runner-up k = {second}: {_pd(ks, spec.k_name(best), spec.k_name(second), None)}"
        if 16 in means and best != 16:
            line += f"; against k = 16: {_pd(ks, spec.k_name(best), spec.k_name(16), None)}"
        out.append(line + (f"; k = 1 {cell(values(ks, spec.k_name(1)))}%." if 1 in means else "."))
    new = [t for t in topologies(main) if t not in ANSWERED]
    if new and spec.BASELINE in have:
        parts = []
        for t in new:
            vs_sphere = ", ".join(f"{_pd(main, t, spec.BASELINE, n)} at {n:g}" for n in (0.0, hi))
            vs_obl = f", minus oblique-none {_pd(main, t, 'oblique-none', 0.0)} at 0" if "oblique-none" in have else ""
            parts.append(f"{t} {cell(values(main, t, 0.0))}% at noise 0, minus CLIP sphere {vs_sphere}{vs_obl}")
        out.append("6. **Other geometries.** " + "; ".join(parts) + ".")
    return out + [""]


# --------------------------------------------------------------------------------------------------
# the README's summary, the fast-full agreement, and the generated blocks of the docs
# --------------------------------------------------------------------------------------------------
#: the pairs the README's summary states (minuend, subtrahend, what the minuend is), each where both have rows
SUMMARY_PAIRS = (("oblique-none", spec.BASELINE, "OB(32, 16), no temperature"),
                 ("sphere-none", spec.BASELINE, "the sphere at scale 1"),
                 ("oblique-learnable-3.95", "oblique-none", "a learnable scale on oblique, capped at 3.95"),
                 ("oblique-learnable-100", "oblique-none", "capped at 100"),
                 ("lorentz-k1", spec.BASELINE, "hyperbolic, MERU's geometry, one token"),
                 ("euclidean-k1-own", spec.BASELINE, "squared Euclidean with its own temperature"),
                 ("euclidean-k1", spec.BASELINE, "squared Euclidean with CLIP's temperature, as EuCLIP trains it"))


def _by_noise(rows: Rows, a: str, b: str, levels: Sequence[float]) -> str:
    """``noise 0: +0.5 ± 0.9 (5) points (no difference detected); noise 0.2: ...`` (levels where both ran)."""
    return "; ".join(f"noise {n:g}: {_pd(rows, a, b, n)}" for n in levels if paired(rows, a, b, n))


def summary(rows: Rows) -> list[str]:
    """The README's summary of a fast grid: its size and setting, then one bullet per comparison of
    :data:`SUMMARY_PAIRS`, the learned scale against noise, the best k and the batch sweep's largest N, each
    as ``A minus B`` with its paired interval, seed count and :func:`.stats.verdict`.

    It states numbers and verdicts only: the pages around it describe, they do not conclude.
    """
    main = main_rows(rows)
    minutes = sum(r["wall_time_seconds"] for r in rows) / 60
    if not main:  # a batch-sweep folder: its size, setting and the largest N only
        sel = batch_rows(rows)
        return [f"{len(rows)} runs, {minutes:.1f} minutes of run time ({setting(sel)}).", "", *_batch_bullet(rows)]
    levels = noises(main)
    out = [f"{len(rows)} runs, {minutes:.1f} minutes of run time ({setting(main)}). The CLIP sphere "
           f"(`{spec.BASELINE}`) reaches {cell(values(main, spec.BASELINE, levels[0]))}% zero-shot top-1 at "
           f"noise {levels[0]:g}. Differences in points of zero-shot top-1, paired by seed, each with its 95% "
           "interval, seed count and the rule's verdict:", ""]
    for a, b, what in SUMMARY_PAIRS:
        if paired(main, a, b):
            out.append(f"- `{a}` ({what}) minus `{b}`: {_by_noise(main, a, b, levels)}.")
    if spec.BASELINE in learnable(main) and len(levels) > 1:
        rel = [100 * x for x in relative(main, spec.BASELINE, levels[0], levels[-1])]
        out.append(f"- `{spec.BASELINE}`'s learned scale at noise {levels[-1]:g} against noise {levels[0]:g}, "
                   f"paired: {compared(rel, 1, 1, '%')}.")
    ks = k_rows(rows)
    if ks and 16 in {r["k"] for r in ks}:
        means = k_means(ks)
        best = max(means, key=means.get)
        if best != 16:
            out.append(f"- k sweep at k * d = {spec.WIDTH}, noise {_k_noise_text(ks)}: `{spec.k_name(best)}` (k = "
                       f"{best}, the highest mean) minus `{spec.k_name(16)}` (k = 16): "
                       f"{_pd(ks, spec.k_name(best), spec.k_name(16), None)}.")
    return out + _batch_bullet(rows)


def _batch_bullet(rows: Rows) -> list[str]:
    """The summary's batch-sweep bullet (the setting :func:`batch_rows` picks) at its largest N, saying how the
    same-class captions counted; none without two batch sizes."""
    sizes, settings = batch_sizes(rows), batch_settings(rows)
    if len(sizes) < 2:
        return []
    sel, hi_n, negatives = batch_rows(rows), sizes[-1], settings[-1]
    treated = "left out of the negatives" if negatives[0] == "other-class" else "counted as negatives"
    return [f"- batch sweep at noise 0, largest N = {hi_n} ({negatives[1]} training pairs; the expected "
            f"{_same_class(hi_n, negatives):.1f} same-class captions per anchor {treated}): `sphere-none` minus "
            f"`{spec.BASELINE}`: {compared(_paired_at(sel, 'sphere-none', spec.BASELINE, hi_n))}; `sphere-none` "
            f"minus `oblique-none`: {compared(_paired_at(sel, 'sphere-none', 'oblique-none', hi_n))}; "
            f"`oblique-none` minus `{spec.BASELINE}`: "
            f"{compared(_paired_at(sel, 'oblique-none', spec.BASELINE, hi_n))}."]


def _comparisons(rows: Rows) -> dict[str, list[float]]:
    """The three main answers as paired differences, by name: the range effect at scale 1 and oblique against
    the CLIP sphere per noise level, and each k of the k sweep against k = 16."""
    main = main_rows(rows)
    out = {}
    for answer, a, b in (("a", "sphere-none", spec.BASELINE), ("a", "oblique-none", "sphere-none"),
                         ("b", "oblique-none", spec.BASELINE)):
        for n in noises(main):
            diffs = paired(main, a, b, n)
            if diffs:
                out[f"({answer}) {a} minus {b}, noise {n:g}"] = diffs
    ks = k_rows(rows)
    for k in sorted({r["k"] for r in ks} - {16}):
        diffs = paired(ks, spec.k_name(k), spec.k_name(16))
        if diffs:
            out[f"(c) k = {k} minus k = 16, noise {_k_noise_text(ks)}"] = diffs
    return out


def _settled(differences: list[float], resolved: float) -> bool:
    """Whether a comparison's verdict can be compared: *higher* or *lower* (an interval that excludes 0 is a
    verdict at any width), or *no difference detected* with a half-width of at most ``resolved`` points (a
    narrow interval around 0); not a wide interval that includes 0, nor one seed."""
    found = verdict(differences)
    if found in (stats.HIGHER, stats.LOWER):
        return True
    return found == stats.NO_DIFFERENCE and stats.t_interval([100 * d for d in differences])[1] <= resolved


def _agrees(a: list[float], b: list[float], resolved: float) -> str:
    if not (_settled(a, resolved) and _settled(b, resolved)):
        return "not resolved"
    return "yes" if verdict(a) == verdict(b) else "no"


def agreement(rows: Rows, other: Rows, *, other_name: str, resolved: float = spec.FULL_TARGET) -> list[str]:
    """Table: each main comparison (:func:`_comparisons`) in ``rows`` and in ``other`` (another results folder,
    named ``other_name``), with its interval and verdict, and whether the verdicts agree; ``not resolved`` where
    either side is not settled (:func:`_settled`: an interval that includes 0 and is wider than ``resolved``
    points). Comparisons only one side has are left out."""
    mine, theirs = _comparisons(rows), _comparisons(other)
    names = [n for n in mine if n in theirs]
    if not names:
        return []
    here, there = mode_of(rows), mode_of(other)
    out = [f"## Agreement with {other_name}", "",
           f"This folder: {setting(main_rows(rows))}. {other_name}: {setting(main_rows(other))}. "
           "*Agree*: the same verdict on both sides. A verdict is compared when its interval excludes 0 "
           f"(at any width) or includes 0 within ±{resolved:g} points; *not resolved*: one side's interval "
           f"includes 0 and is wider than ±{resolved:g} points (too few seeds to call it), so agreement is not "
           "judged.", "",
           f"| comparison | {here} mode (points) | {there} mode (points) | agree? |", "|---|---:|---:|---|"]
    for name in names:
        out.append(f"| {name} | {compared(mine[name], unit='')} | {compared(theirs[name], unit='')} | "
                   f"{_agrees(mine[name], theirs[name], resolved)} |")
    counts = Counter(_agrees(mine[n], theirs[n], resolved) for n in names)
    return out + ["", f"{counts['yes']} agree, {counts['no']} disagree, {counts['not resolved']} not resolved, "
                      f"of {len(names)} comparisons.", ""]


#: a generated block of a Markdown page: ``<!-- topology-report KIND FOLDER [FOLDER] -->`` ... the block ...
#: ``<!-- /topology-report -->``; FOLDER relative to the repository root
BLOCK = re.compile(r"(<!-- topology-report (\w+) ([^>]*?) -->\n)(.*?)(<!-- /topology-report -->)", re.S)


def block(kind: str, folders: Sequence[Path]) -> str:
    """The Markdown of one generated block: ``summary`` (:func:`summary`) or ``answers`` (:func:`claims`) of one
    folder, ``agreement`` (:func:`agreement`) of two. Rows are read as ``--drop-duplicates`` reads them (the
    published folders' repeated runs are identical copies, listed in their ``results.md``)."""
    loaded = [results.load(f, drop_duplicates=True)[0] for f in folders]
    if not all(loaded):
        raise ValueError(f"topology-report {kind}: expected results in {', '.join(map(str, folders))}, "
                         "found no rows")
    if kind == "summary" and len(folders) == 1:
        lines = summary(loaded[0])
    elif kind == "answers" and len(folders) == 1:
        lines = claims(loaded[0])[2:]  # without the heading: the page has its own
    elif kind == "agreement" and len(folders) == 2:
        lines = agreement(loaded[0], loaded[1], other_name=f"`{folders[1].name}`")[2:]  # likewise
    else:
        raise ValueError(f"topology-report: expected 'summary FOLDER', 'answers FOLDER' or 'agreement FOLDER "
                         f"FOLDER', got {kind!r} with {len(folders)} folders")
    return "\n".join(lines).strip() + "\n"


def render_blocks(text: str, root: Path) -> str:
    """``text`` with every generated block (:data:`BLOCK`) rewritten from its folders under ``root``."""
    def fill(match):
        folders = [root / f for f in match.group(3).split()]
        return match.group(1) + block(match.group(2), folders) + match.group(5)

    return BLOCK.sub(fill, text)


def update_pages(pages: Sequence[Path], root: Path) -> list[Path]:
    """Rewrite the generated blocks of ``pages`` in place; returns the pages that changed."""
    changed = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        new = render_blocks(text, root)
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------
def _errorbars(ax, rows: Rows, names: Sequence[str], x_key: str, metric: str, scale: float = 100.0,
               log_x: bool = False, label=None) -> None:
    for topo in names:
        sel = [r for r in rows if r["topology"] == topo]
        xs = sorted({r[x_key] for r in sel})
        points = [stats.t_interval([r[metric] for r in sel if r[x_key] == x]) for x in xs]
        ax.errorbar(xs, [scale * m for m, _, _ in points],
                    yerr=[0 if math.isnan(h) else scale * h for _, h, _ in points], marker="o", ms=3,
                    capsize=3, label=label(topo) if label else topo)
    if log_x:
        ax.set_xscale("log", base=2)


def _changes(ax, rows: Rows, series: Sequence[tuple[str, str]]) -> None:
    """Per (topology, metric): the paired change from the lowest noise (%), 95% intervals, linear axis."""
    levels = noises(rows)
    for topo, metric in series:
        points = [(0.0, 0.0, 0)] + [stats.t_interval([100 * x for x in relative(rows, topo, levels[0], n, metric)])
                                    for n in levels[1:]]
        ax.errorbar(levels, [m for m, _, _ in points], yerr=[0 if math.isnan(h) else h for _, h, _ in points],
                    marker="o", ms=3, capsize=3, label=topo if metric == "scale" else f"{topo}: {metric}")
    ax.axhline(0, color="k", lw=0.8)


def _caption(fig, text: str, width: int = 150) -> None:
    """The plot's caption under the axes: what it shows (mode, budget, seeds), wrapped to the figure."""
    wrapped = textwrap.fill(text, width=width)
    lines = wrapped.count("\n") + 1
    fig.text(0.5, 0.01, wrapped, ha="center", va="bottom", fontsize=7)
    # 7-point lines are about 0.13 inch apart: keep that much of the figure's height free under the axes
    fig.tight_layout(rect=(0, min(0.4, (0.13 * lines + 0.1) / fig.get_size_inches()[1]), 1, 1))


def write_plots(rows: Rows, traj: Rows, output: Path) -> list[Path]:
    """The PNGs of :data:`PLOTS` whose data the rows hold; each caption names mode, budget and seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    main = main_rows(rows)

    def save(fig, name, text):
        _caption(fig, text, width=int(fig.get_size_inches()[0] * 17))
        fig.savefig(output / name, dpi=100)
        plt.close(fig)
        written.append(output / name)

    topos = topologies(main)
    levels = noises(main)
    if main:
        fig, ax = plt.subplots(figsize=(8, 5))
        _errorbars(ax, main, topos, "noise", "zero_shot_top1")
        ax.set(xlabel="caption noise", ylabel="zero-shot top-1 (%)", title="Zero-shot accuracy against caption noise")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        save(fig, "accuracy_vs_noise.png", f"Mean and 95% interval over seeds. {setting(main)}.")

        learn = learnable(main)
        columns = results.value_columns(main)
        owned = [(t, c) for t in topos for c in columns if any(not math.isnan(v) for v in values(main, t, None, c))]
        if learn or owned:
            fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
            _changes(left, main, [(t, "scale") for t in learn])
            left.set(xlabel="caption noise", ylabel=f"final scale, change from noise {levels[0]:g} (%)",
                     title="Learned temperature scale")
            _changes(right, main, owned)
            right.set(xlabel="caption noise", ylabel=f"final value, change from noise {levels[0]:g} (%)",
                      title="Learned geometry values")
            for ax in (left, right):
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7)
                else:
                    ax.text(0.5, 0.5, "none in these runs", transform=ax.transAxes, ha="center")
                ax.grid(alpha=0.3)
            save(fig, "scale_vs_noise.png", "Change of each run's final value from the same seed's run at noise "
                 f"{levels[0]:g}, mean and 95% paired interval, linear axis. {setting(main)}.")

        others = [t for t in topos if t != spec.BASELINE]
        if spec.BASELINE in topos and others:
            fig, axes = plt.subplots(1, len(levels), figsize=(3.2 * len(levels), 0.35 * len(others) + 2.4),
                                     sharey=True, squeeze=False)
            for ax, n in zip(axes[0], levels):
                for i, t in enumerate(others):
                    diffs = paired(main, t, spec.BASELINE, n)
                    mean, half, _ = stats.t_interval([100 * d for d in diffs])
                    ax.errorbar([mean], [i], xerr=[[0 if math.isnan(half) else half]], fmt="o", ms=3, capsize=3,
                                color="C0" if verdict(diffs) in (stats.NO_DIFFERENCE, stats.TOO_FEW) else "C3")
                ax.axvline(0, color="k", lw=0.8)
                ax.set_title(f"noise {n:g}", fontsize=9)
                ax.set_xlabel("points", fontsize=8)
                ax.grid(alpha=0.3)
            axes[0][0].set_yticks(range(len(others)), others, fontsize=7)
            title = (f"Zero-shot top-1 minus {spec.BASELINE}, paired by seed, 95% intervals (red: excludes 0; "
                     f"blue: {stats.NO_DIFFERENCE})")
            # 9-point text is about 13 characters an inch: wrapped, the title fits a grid of few noise levels
            fig.suptitle(textwrap.fill(title, width=int(13 * fig.get_size_inches()[0])), fontsize=9)
            save(fig, "paired_differences.png", f"{setting(main)}.")

    sel = [r for r in batch_rows(rows) if r["batch_size"] in set(batch_sizes(rows))]
    if len({r["batch_size"] for r in sel}) > 1:
        chosen = batch_settings(rows)[-1]
        masked = chosen[0] == "other-class"
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        present = [t for t in spec.BATCH_TOPOLOGIES if any(r["topology"] == t for r in sel)]
        _errorbars(left, sel, present, "batch_size", "final_loss", 1.0, log_x=True)
        sizes = sorted({r["batch_size"] for r in sel})
        left.plot(sizes, [_floor(n, chosen) for n in sizes], "k--",
                  label="log(1 + (N - 1 - m)/e), m same-class left out" if masked else "log(1 + (N-1)/e)")
        left.set(xlabel="batch size N", ylabel="final training loss (nats)", title="Loss against the floor")
        left.legend(fontsize=7)
        left.grid(alpha=0.3)
        _errorbars(right, sel, present, "batch_size", "zero_shot_top1", log_x=True)
        right.set(xlabel="batch size N", ylabel="zero-shot top-1 (%)", title="Accuracy against N")
        right.legend(fontsize=7)
        right.grid(alpha=0.3)
        save(fig, "batch_sweep.png", f"Noise 0, mean and 95% interval over seeds; negatives: {negatives_text(chosen)}; "
             f"largest N {sizes[-1]}. {setting(sel)}.")

    ks = k_rows(rows)
    if ks:
        fig, ax = plt.subplots(figsize=(7, 4.8))
        kk = sorted({r["k"] for r in ks})
        points = [stats.t_interval([100 * r["zero_shot_top1"] for r in ks if r["k"] == k]) for k in kk]
        ax.errorbar(kk, [m for m, _, _ in points], yerr=[0 if math.isnan(h) else h for _, h, _ in points],
                    marker="o", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(kk, [str(k) for k in kk])
        ax.set(xlabel=f"k (d = {spec.WIDTH} / k)", ylabel="zero-shot top-1 (%)",
               title=f"Zero-shot accuracy against k at k * d = {spec.WIDTH}")
        ax.grid(alpha=0.3)
        save(fig, "accuracy_vs_k.png", f"{spec.K_SWEEP_BASE} (oblique, no scale), noise {_k_noise_text(ks)}, "
             f"mean and 95% interval over seeds. {setting(ks)}.")

    if main:
        batch = main_batch(rows)
        shown = set(topos)
        low = levels[0]  # the lowest noise of the grid: 0 in a default run
        t0 = [p for p in traj if p["noise"] == low and p["batch_size"] == batch and p["topology"] in shown]
        panels = [(key, title) for key, title in (("zero_shot_top1", "Zero-shot top-1 (%)"),
                                                 ("scale", "Learned temperature scale (log axis)"),
                                                 ("gap_normalized", "Positive - negative similarity gap / factors"))
                  if any(not math.isnan(p.get(key, math.nan)) for p in t0)]
        if t0 and panels:
            learn = set(learnable(main))
            fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
            for ax, (key, title) in zip(axes[0], panels):
                for t in topos:
                    if key == "scale" and t not in learn:
                        continue
                    steps = sorted({p["step"] for p in t0 if p["topology"] == t})
                    scale = 100.0 if key == "zero_shot_top1" else 1.0
                    means = [scale * statistics.fmean(p[key] for p in t0 if p["topology"] == t and p["step"] == s)
                             for s in steps]
                    ax.plot(steps, means, marker=".", ms=3, label=t)
                total = max(p["steps"] for p in t0)
                ax.axvspan(0.8 * total, total, color="0.9")
                ax.set(xlabel="step", title=f"{title}, mean over seeds")
                if key == "scale":
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7)
            plotted = [r for r in main if r["noise"] == low and r["topology"] in shown]
            save(fig, "trajectories.png", f"Noise {low:g}; shaded: the last 20% of steps. {setting(plotted)}.")
    return written


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
def batch_markdown(rows: Rows, *, command: str, machine: str, repeated: Sequence[tuple] = (),
                   failed: Sequence[str] = ()) -> str:
    """``results.md`` of a batch sweep's own folder (``--sweep batch``): where it comes from, how same-class
    negatives were treated and the largest N, the rule, the batch tables and the wall times."""
    sel = batch_rows(rows)
    lines = [f"# Batch sweep, {mode_of(rows)} mode", "",
             f"Written by `{command}` on {machine}, from `results.csv` and `trajectories.csv` alone "
             "(`--report-only` rewrites this file and the plots from them).", "",
             f"Setting: {setting(sel or rows)}. Cells: mean ± half-width of the 95% Student-t interval (seeds in "
             "parentheses). Differences are paired by seed (same phrasings, initialization and batch order). "
             f"{stats.RULE}", ""]
    if repeated:
        lines += [f"**{len(repeated)} runs appear twice in `results.csv`, with identical results; each is counted "
                  "once here:** " + results.summarize(repeated) + ".", ""]
    if failed:
        lines += [f"Runs that failed and are missing from the tables: {', '.join(failed)}.", ""]
    answer = answer_batch(rows)
    if answer:
        lines += ["## The range answer at large batches", "", answer, ""]
    lines += ["## Tables", "", *table_batch(rows), *table_time(rows)]
    return "\n".join(lines).rstrip() + "\n"


def markdown(rows: Rows, *, command: str, machine: str, repeated: Sequence[tuple] = (),
             failed: Sequence[str] = (), compare: Optional[tuple[str, Rows]] = None) -> str:
    """``results.md``: where it comes from, the rule, the six answers, the agreement with ``compare`` (a name
    and the rows of another results folder) when given, then every table (a folder of the masked batch sweep
    alone: :func:`batch_markdown`)."""
    main = main_rows(rows)
    if not main:
        return batch_markdown(rows, command=command, machine=machine, repeated=repeated, failed=failed)
    mode = mode_of(rows)
    inputs = "`results.csv` and `trajectories.csv`" + ("" if mode == "fast" else " (or an older folder's `results.json`)")
    lines = [f"# Topology comparison, {mode} mode", "",
             f"Written by `{command}` on {machine}, from {inputs} alone "
             "(`--report-only` rewrites this file and the plots from them).", "",
             f"Setting of the main grid: {setting(main)}. Cells: mean ± half-width of the 95% Student-t interval "
             "(seeds in parentheses). Differences are paired by seed (same noise draw, phrasings, initialization "
             f"and batch order). {stats.RULE}", "", *hardware_lines(rows)]
    if repeated:
        lines += [f"**{len(repeated)} runs appear twice in `results.csv`, with identical results (the grid of that "
                  "time trained them twice); each is counted once here:** "
                  + results.summarize(repeated) + ".", ""]
    if failed:
        lines += [f"Runs that failed and are missing from the tables: {', '.join(failed)}.", ""]
    lines += claims(rows)
    if compare is not None:
        lines += agreement(rows, compare[1], other_name=compare[0])
    lines += ["## Tables", ""]
    lines += table_metric(main, "zero_shot_top1", "Zero-shot top-1 (%)")
    lines += table_paired(main)
    lines += table_metric(main, "retrieval_R@1", "Retrieval R@1 (%), mean of image->text and text->image")
    lines += table_scale(main)
    lines += table_geometry(main)
    lines += table_trained(main)
    lines += table_metric(main, "gap_normalized", "Positive - negative similarity gap at the end of training, "
                          "divided by the number of factors (1 for cosine, k for oblique)", 1.0, 3)
    lines += table_batch(rows)
    lines += table_k(rows)
    lines += table_metric(main, "final_loss", "Final training loss (nats)", 1.0, 3)
    lines += table_alias_check(main)
    lines += table_time(rows)
    return "\n".join(lines).rstrip() + "\n"


def write_report(output: Path, *, command: str, profile: Optional[str] = None, drop_duplicates: bool = False,
                 images_to: Optional[Path] = None, failed: Sequence[str] = (),
                 compare_with: Optional[Path] = None) -> list[Path]:
    """``results.md`` and the plots from the results folder ``output`` (rows of ``profile`` when given); the
    plots are also copied to ``images_to`` when given; ``compare_with``, another results folder (read with the
    same ``drop_duplicates``), adds the agreement table (:func:`agreement`). Returns the files written (none
    without rows).

    Raises
    ------
    results.DuplicateRunError
        When ``results.csv`` holds a run twice (``drop_duplicates``: unless its copies are identical).
    """
    from machine_info import machine  # benchmarks/ is on sys.path: scripts run from there

    rows, traj, repeated = results.load(output, profile=profile, drop_duplicates=drop_duplicates)
    if not rows:
        return []
    if repeated:
        print(f"WARNING: {len(repeated)} runs appear more than once in {output / 'results.csv'} with identical "
              "results; counting each once (--drop-duplicates): " + results.summarize(repeated),
              flush=True)
    compare = None
    if compare_with is not None:
        other = results.load(compare_with, drop_duplicates=drop_duplicates)[0]
        if not other:
            raise ValueError(f"--compare-with: expected a results folder with a results.csv, got {compare_with}")
        compare = (f"`{compare_with.name}`", other)
    path = output / "results.md"
    path.write_text(markdown(rows, command=command, machine=machine(), repeated=repeated, failed=failed,
                             compare=compare))
    plots = write_plots(rows, traj, output)
    for stale in set(PLOTS) - {p.name for p in plots}:
        (output / stale).unlink(missing_ok=True)  # a plot this data no longer supports must not linger
    if images_to is not None:
        images_to.mkdir(parents=True, exist_ok=True)
        for p in plots:
            shutil.copyfile(p, images_to / p.name)
    return [path, *plots]
