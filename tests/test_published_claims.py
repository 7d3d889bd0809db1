"""Every published sentence about the topology benchmark that uses a comparative word cites its paired interval,
and the word agrees with that interval recomputed from ``results.csv``.

The pages: the README's "Which geometry?", the benchmarks page's "Topology comparison", the topology benchmark
page, and every ``benchmarks/results/topologies*/results.md``. The recomputation is this file's own (the csv
module, repeated runs counted once, Student-t quantiles from scipy), not the report's, so a report that miscounts
or misnames a verdict fails here. A comparative word is allowed in three forms only:

- a claim: ``m ± h (n)[ points| nats|%] (verdict)``, the verdict one of the rule's words; its interval must be
  one that ``results.csv`` gives (a paired difference of zero-shot top-1, a paired change of the learned scale
  between two noise levels, or a run's gain over its last 20% of steps) and the verdict the one that interval
  implies;
- a mention, not a use: inside ``*italics*``, ``"quotes"`` or ``code`` (the rule stated, a test described);
- nothing else: any other comparative word fails the test, naming the page and the words around it.

Where a sentence names its cell (the generated summary: ```A` minus `B`: noise x: ...``), the cell is
recomputed exactly rather than looked up.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from scipy.stats import t as student_t

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FOLDERS = sorted(p.parent for p in RESULTS.glob("topologies*/results.csv"))

WORD = re.compile(r"\b(higher|lower|no difference detected|matches|beats|overtakes|behind|ahead|leads|hurts|gains"
                  r"|falls)\b", re.I)
VERDICTS = ("higher", "lower", "no difference detected", "too few seeds")
NUM = r"[+-]?\d+\.\d+"
INTERVAL = rf"({NUM}) ± (\d+\.\d+) \((\d+)\)"
CLAIM = re.compile(INTERVAL + r"(?: points| nats|%)? \((" + "|".join(VERDICTS) + r")\)")
#: Markdown italics (an opening * before a non-space, a closing one after: not the * of "k * d"), quotes, code
MENTION = re.compile(r'(?<![*\w])\*(?=[^\s*])[^*]+?(?<=[^\s*])\*(?![*\w])|"[^"]*"|`[^`]*`')
BLOCK = re.compile(r"<!-- topology-report (\w+) ([^>]*?) -->(.*?)<!-- /topology-report -->", re.S)
#: the columns that identify a run
KEY = ("mode", "profile", "dataset", "model", "topology", "noise", "batch_size", "steps", "hidden", "seed")


# --------------------------------------------------------------------------------------------------
# results.csv, read and recomputed here
# --------------------------------------------------------------------------------------------------
def read_runs(folder: Path) -> list[dict[str, str]]:
    """The distinct runs of ``folder/results.csv``; a run found twice must have identical results."""
    with (folder / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    first: dict[tuple, dict[str, str]] = {}
    for row in rows:
        key = tuple(row.get(c, "") for c in KEY)
        if key in first:
            differ = [c for c in row if c not in ("wall_time_seconds", "run_dir") and row[c] != first[key][c]]
            assert not differ, f"{folder.name}: run {key} appears twice with different {differ}"
        else:
            first[key] = row
    return list(first.values())


def interval(xs: list[float]) -> tuple[float, float, int]:
    n = len(xs)
    mean = statistics.fmean(xs)
    half = student_t.ppf(0.975, n - 1) * statistics.stdev(xs) / math.sqrt(n) if n > 1 else math.nan
    return mean, half, n


def word_of(mean: float, half: float, n: int) -> str:
    if n < 2:
        return "too few seeds"
    return "higher" if mean - half > 0 else "lower" if mean + half < 0 else "no difference detected"


def _f(row: dict[str, str], *names: str) -> float:
    for name in names:
        if row.get(name, "") != "":
            return float(row[name])
    return math.nan


class Folder:
    """The intervals a folder's runs give: every paired difference of zero-shot top-1 between two topologies
    at one (noise, batch), every paired change of a topology's learned scale between two noise levels, and
    every cell's gain over its last 20% of steps (all in points or %)."""

    def __init__(self, folder: Path):
        self.name = folder.name
        self.runs = read_runs(folder)
        acc: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        scale: dict[tuple, dict[float, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        self.intervals: list[tuple[float, float, int, str]] = []
        gains: dict[tuple, list[float]] = defaultdict(list)
        for r in self.runs:
            noise, batch, seed = round(float(r["noise"]), 6), int(r["batch_size"]), int(r["seed"])
            acc[(noise, batch)][r["topology"]][seed] = float(r["zero_shot_top1"])
            scale[(r["topology"], batch)][noise][seed] = _f(r, "scale", "final_temperature")
            end, at80 = _f(r, "zero_shot_top1"), _f(r, "zero_shot_top1_at_80pct")
            if not math.isnan(at80):
                gains[(r["topology"], noise, batch)].append(100 * (end - at80))
        self.acc = acc
        self.scale = scale
        for (noise, batch), by_topo in acc.items():
            for a in by_topo:
                for b in by_topo:
                    d = self.paired(a, b, noise, batch)
                    if a != b and d:
                        self.intervals.append((*interval(d), f"{a} minus {b}, noise {noise:g}, batch {batch}"))
        for (topo, batch), by_noise in scale.items():
            for lo in by_noise:
                for hi in by_noise:
                    ch = self.scale_change(topo, lo, hi, batch)
                    if lo < hi and ch:
                        self.intervals.append((*interval(ch), f"{topo} scale {hi:g} against {lo:g}, batch {batch}"))
        for (topo, noise, batch), g in gains.items():
            self.intervals.append((*interval(g), f"{topo} gain over the last 20%, noise {noise:g}, batch {batch}"))

    def paired(self, a: str, b: str, noise: float, batch: int) -> list[float]:
        cell = self.acc.get((round(noise, 6), batch), {})
        mine, base = cell.get(a, {}), cell.get(b, {})
        return [100 * (mine[s] - base[s]) for s in sorted(mine) if s in base]

    def scale_change(self, topo: str, lo: float, hi: float, batch: int) -> list[float]:
        by = self.scale.get((topo, batch), {})
        a, b = by.get(round(lo, 6), {}), by.get(round(hi, 6), {})
        return [100 * (b[s] / a[s] - 1) for s in sorted(b) if s in a]


@pytest.fixture(scope="module")
def folders() -> dict[str, Folder]:
    return {f.name: Folder(f) for f in FOLDERS}


def printed_as(mean: float, half: float, m: str, h: str) -> bool:
    """Whether ``m ± h`` is ``mean ± half`` rounded to the printed digits; a value on a rounding boundary (a
    mean of -8.55 summed in another order is -8.5499... or -8.5500...) may round either way."""
    digits = len(m.split(".")[1])
    bound = 0.5 * 10.0 ** -digits + 1e-9
    return abs(mean - float(m)) <= bound and abs(half - float(h)) <= bound


# --------------------------------------------------------------------------------------------------
# the published pages
# --------------------------------------------------------------------------------------------------
def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end > 0 else len(text)]


def pages() -> list[tuple[str, str, list[str]]]:
    """``(page, text, folders its claims may cite)``; a generated block is split off as its own page,
    citing the folders its marker names."""
    readme, bench = (ROOT / "README.md").read_text(), (ROOT / "docs" / "benchmarks.md").read_text()
    every = [f.name for f in FOLDERS]
    raw = [("README.md#which-geometry", _section(readme, "## Which geometry?"), every),
           ("docs/benchmarks.md#topology-comparison", _section(bench, "## Topology comparison"), every),
           ("docs/benchmarks-topologies.md", (ROOT / "docs" / "benchmarks-topologies.md").read_text(), every)]
    for f in FOLDERS:  # a results.md cites its own folder, and the one its agreement table compares it with
        text = (f / "results.md").read_text()
        raw.append((f"{f.relative_to(ROOT)}/results.md", text,
                    [f.name, *re.findall(r"^## Agreement with `([\w.-]+)`", text, re.M)]))
    out = []
    for name, text, cites in raw:
        for m in BLOCK.finditer(text):
            out.append((f"{name} [{m.group(1)} {m.group(2)}]", m.group(3), [Path(p).name for p in m.group(2).split()]))
        out.append((name, BLOCK.sub("", text), cites))
    return out


PAGES = pages()


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("page,text,cites", PAGES, ids=[p[0] for p in PAGES])
def test_every_comparative_word_is_a_claim_with_its_interval(page, text, cites):
    flat = _flat(text)
    covered = [m.span() for m in CLAIM.finditer(flat)] + [m.span() for m in MENTION.finditer(flat)]
    bare = [flat[max(0, m.start() - 80):m.end() + 40] for m in WORD.finditer(flat)
            if not any(a <= m.start() and m.end() <= b for a, b in covered)]
    assert not bare, f"{page}: comparative words without their interval and verdict:\n" + "\n".join(bare)


@pytest.mark.parametrize("page,text,cites", PAGES, ids=[p[0] for p in PAGES])
def test_every_claim_agrees_with_its_interval_recomputed(page, text, cites, folders):
    wrong = []
    for m in CLAIM.finditer(_flat(text)):
        mean_s, half_s, n, said = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        found = [(mean, half, k, what) for f in cites for mean, half, k, what in folders[f].intervals
                 if k == n and printed_as(mean, half, mean_s, half_s)]
        if not found:
            wrong.append(f"{m.group(0)}: no interval of {', '.join(cites)} is {mean_s} ± {half_s} ({n})")
        elif any(word_of(mean, half, k) != said for mean, half, k, _ in found):
            wrong += [f"{m.group(0)}: {what} is {mean:+.4f} ± {half:.4f} ({k}): {word_of(mean, half, k)}"
                      for mean, half, k, what in found if word_of(mean, half, k) != said]
    assert not wrong, f"{page}:\n" + "\n".join(wrong)


_PAIR = re.compile(r"`([\w.-]+)`(?: \([^`]*?\))? minus `([\w.-]+)`(?: \([^`]*?\))?:")
_AT_NOISE = re.compile(r"noise (\d+(?:\.\d+)?): " + CLAIM.pattern)
_SCALE = re.compile(r"`([\w.-]+)`'s learned scale at noise ([\d.]+) against noise ([\d.]+), paired: " + CLAIM.pattern)


def test_summary_cells_recomputed(folders):
    """The generated summary names each cell; each is recomputed exactly (no lookup), with its verdict."""
    summaries = [(text, cites) for page, text, cites in PAGES if "[summary " in page]
    assert summaries, "README.md has no generated summary block"
    checked = 0
    for text, (name,) in summaries:
        f = folders[name]
        batch = int(re.search(r"steps, batch (\d+),", text).group(1))
        for line in _flat(text).split(" - ")[1:]:
            pairs = list(_PAIR.finditer(line))
            for i, pair in enumerate(pairs):
                segment = line[pair.end():pairs[i + 1].start() if i + 1 < len(pairs) else len(line)]
                n_batch = int(re.search(r"N = (\d+)", line).group(1)) if "N = " in line else batch
                before = re.findall(r"noise (\d+(?:\.\d+)?)", line[:pair.start()])
                claims = [(float(c.group(1)), c.groups()[1:]) for c in _AT_NOISE.finditer(segment)]
                if not claims:  # one claim for the whole pair, at the noise named before it
                    claims = [(float(before[-1]), c.groups()) for c in CLAIM.finditer(segment)]
                for noise, (mean_s, half_s, n, said) in claims:
                    mean, half, k = interval(f.paired(pair.group(1), pair.group(2), noise, n_batch))
                    cell = f"{pair.group(1)} minus {pair.group(2)} at noise {noise:g}, batch {n_batch}"
                    assert printed_as(mean, half, mean_s, half_s) and k == int(n), \
                        f"{cell}: published {mean_s} ± {half_s} ({n}), recomputed {mean:+.3f} ± {half:.3f} ({k})"
                    assert said == word_of(mean, half, k), f"{cell}: published {said!r}, interval says otherwise"
                    checked += 1
            if "the highest mean" in line:
                k_best = int(re.search(r"\(k = (\d+), the highest mean\)", line).group(1))
                sweep = {name: statistics.fmean(seeds.values()) for name, seeds in f.acc[(0.4, batch)].items()
                         if re.fullmatch(r"oblique-none(-k\d+)?", name)}
                assert max(sweep, key=sweep.get) == ("oblique-none" if k_best == 16 else f"oblique-none-k{k_best}")
        for m in _SCALE.finditer(_flat(text)):
            mean, half, k = interval(f.scale_change(m.group(1), float(m.group(3)), float(m.group(2)), batch))
            assert printed_as(mean, half, m.group(4), m.group(5)) and k == int(m.group(6)), m.group(0)
            assert m.group(7) == word_of(mean, half, k), m.group(0)
            checked += 1
    assert checked >= 20  # every bullet was parsed: 7 pairs x 5 noise levels, the scale, k and the batch sweep


_TABLE_CELL = re.compile(r"^([+-]\d+\.\d+) ± (\d+\.\d+) \((\d+)\)( \*\*n\.d\.\*\*)?$")


@pytest.mark.parametrize("page,text,cites", PAGES, ids=[p[0] for p in PAGES])
def test_paired_tables_mark_exactly_the_intervals_that_include_0(page, text, cites, folders):
    """In a table introduced with the **n.d.** legend, a signed cell is a claim: marked **n.d.** when its
    interval includes 0, unmarked when it excludes 0."""
    lines, wrong, checked = text.splitlines(), [], 0
    for i, line in enumerate(lines):
        legend = [text for text in lines[max(0, i - 8):i] if "**n.d.**" in text and not text.startswith("|")]
        if not line.startswith("|") or not legend:
            continue
        for cell_text in (c.strip() for c in line.strip("|").split("|")):
            m = _TABLE_CELL.match(cell_text)
            if not m:
                continue
            found = [(mean, half, k) for f in cites for mean, half, k, _ in folders[f].intervals
                     if k == int(m.group(3)) and printed_as(mean, half, m.group(1), m.group(2))]
            marked, checked = bool(m.group(4)), checked + 1
            if not found or any((word_of(*x) == "no difference detected") != marked for x in found):
                wrong.append(f"{cell_text} (in: {line[:60]}...)")
    assert not wrong, f"{page}: cells whose **n.d.** mark disagrees with results.csv:\n" + "\n".join(wrong)
    if page.endswith("results.md") and "### Paired by seed" in text:
        assert checked, f"{page}: its paired table was not parsed"


def test_run_counts_and_minutes_recounted(folders):
    fast = folders["topologies-fast"]
    runs, minutes = len(fast.runs), sum(float(r["wall_time_seconds"]) for r in fast.runs) / 60
    with (RESULTS / "topologies-fast" / "results.csv").open(newline="") as handle:
        repeated = sum(1 for _ in csv.DictReader(handle)) - runs
    readme = _flat(_section((ROOT / "README.md").read_text(), "## Which geometry?"))
    bench = _flat(_section((ROOT / "docs" / "benchmarks.md").read_text(), "## Topology comparison"))
    assert f"{runs} runs, {minutes:.1f} minutes of run time" in readme
    assert f"The grid made {runs} distinct runs in {minutes:.1f} minutes" in bench
    assert f"seeds 20-24 of six cells twice ({repeated} runs" in bench
    cells = sorted(sum(float(r["wall_time_seconds"]) for r in fast.runs
                       if r["batch_size"] == "4096" and r["topology"] == t) / 60
                   for t in {r["topology"] for r in fast.runs if r["batch_size"] == "4096"})
    said = re.search(r"the three N = 4096 cells took ([\d.]+), ([\d.]+) and ([\d.]+) minutes", bench)
    assert sorted(float(x) for x in said.groups()) == [round(c, 1) for c in cells]
    budget = folders["topologies-fast-600"]
    assert f"(5 seeds, {sum(float(r['wall_time_seconds']) for r in budget.runs) / 60:.1f} minutes;" in bench
    assert f"plus the k sweep, {len(folders['topologies'].runs)} runs, 2 at a time" in bench
    assert f"topologies-full-new` ({len(folders['topologies-full-new'].runs)} runs," in bench


def test_the_checker_fails_on_a_contradicting_sentence(folders):
    """The checks above can fail: a flipped verdict, a bare comparative word and a made-up interval are caught."""
    text = ("oblique-none minus sphere-learnable: +0.5 ± 0.9 (5) points (higher). Oblique beats the sphere. "
            "+9.9 ± 0.1 (5) points (higher).")
    flat = _flat(text)
    covered = [m.span() for m in CLAIM.finditer(flat)] + [m.span() for m in MENTION.finditer(flat)]
    assert [m.group(0) for m in WORD.finditer(flat) if not any(a <= m.start() < b for a, b in covered)] == ["beats"]
    verdicts = []
    for m in CLAIM.finditer(flat):
        found = [x for x in folders["topologies-fast"].intervals
                 if x[2] == int(m.group(3)) and printed_as(x[0], x[1], m.group(1), m.group(2))]
        verdicts.append(sorted({word_of(*x[:3]) for x in found}))
    assert verdicts == [["no difference detected"], []]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
