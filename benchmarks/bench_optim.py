"""Time one optimizer step of RiemannianAdamW against torch.optim.AdamW and geoopt's RiemannianAdam.

Run: python benchmarks/bench_optim.py [--quick] [--repeat R] [--threads T] [--out benchmarks/results/optim.md]

Cases (float32, CPU; on a GPU also the same cases on cuda):

- Euclidean parameters with the shapes of a real model: the tiny multi-token model of the CPU
  benchmarks (``tiny-vit-oblique``, both towers) and a ViT-B/16 image tower cut to a few blocks
  (every ViT-B/16 tensor shape, millions of parameters). Against torch's AdamW in its three
  implementations (``foreach=False``, the single-tensor loop that torch picks by default for CPU
  tensors; ``foreach=True``; ``fused=True``) and geoopt's RiemannianAdam (coupled weight decay).
- An Oblique ``ManifoldParameter`` of shape (N, 16, 32): against geoopt's RiemannianAdam on the
  same manifold, geoopt's RiemannianAdam on ``geoopt.Sphere`` (geoopt's own per-row sphere, the same
  point set) and, as the Euclidean floor, torch's AdamW treating the tensor as unconstrained.

Every optimizer owns its parameters, gradients (fixed random values) and state. Each repeat times
every optimizer of a case once, in turn (torch.utils.benchmark ``blocked_autorange`` median); the
table gives the medians over the repeats of the times and of the per-repeat ratios, which is robust
to load that drifts during the run (shared machines). ratio = baseline / ours: above 1, ours is faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from machine_info import machine, median_s  # benchmarks/ is on sys.path: scripts run from there

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "optim.md"
K, D = 16, 32
LR, WD = 1e-4, 1e-2


# ----------------------------------------------------------------------------------------------
# parameter sets
# ----------------------------------------------------------------------------------------------
def vit_b16_shapes(blocks: int) -> list[tuple[int, ...]]:
    """Parameter shapes of open_clip's ViT-B/16 image tower with ``blocks`` of its 12 residual blocks."""
    width, mlp, embed = 768, 3072, 512
    shapes: list[tuple[int, ...]] = [(width, 3, 16, 16), (width,), (197, width), (width,), (width,)]
    per_block = [(width,), (width,), (3 * width, width), (3 * width,), (width, width), (width,),
                 (width,), (width,), (mlp, width), (mlp,), (width, mlp), (width,)]
    shapes += per_block * blocks
    shapes += [(width,), (width,), (width, embed)]
    return shapes


def tiny_model_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of the ``tiny-vit-oblique`` multi-token model (both towers)."""
    sys.path.insert(0, str(REPO))  # training/ from the checkout when not installed
    from manifold_align.clip import create_model, load_model_config

    cfg = load_model_config("tiny-vit-oblique")
    embed = cfg.pop("embed_cfg")
    return [tuple(p.shape) for p in create_model(cfg, embed).parameters()]


def _tensors(shapes, device, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((0.02 * torch.randn(shape, generator=g)).to(device))
        p.grad = torch.randn(shape, generator=g).to(device)
        params.append(p)
    return params


def _oblique_param(n: int, manifold, device, seed: int):
    import geoopt

    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, K, D, generator=g), dim=-1).to(device)
    p = geoopt.ManifoldParameter(x, manifold=manifold)
    p.grad = torch.randn(n, K, D, generator=g).to(device)
    return p


# ----------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One parameter set and the optimizers stepping it; the first one is ours."""

    name: str
    params_m: float
    tensors: int
    device: str
    optimizers: list[tuple[str, Callable[[], None]]]


def _steppers(make_params, contenders) -> list[tuple[str, Callable[[], None]]]:
    out = []
    for i, (label, factory) in enumerate(contenders):
        try:
            opt = factory(make_params(i))
        except (RuntimeError, TypeError) as exc:  # e.g. fused=True on a torch without CPU fused AdamW
            print(f"skipping {label}: {exc}", file=sys.stderr)
            continue
        opt.step()  # allocate the state outside the timing
        out.append((label, opt.step))
    return out


def euclidean_case(name: str, shapes, device: str) -> Case:
    import geoopt

    from manifold_align.optim import RiemannianAdamW

    on_cpu = device == "cpu"
    contenders = [
        ("RiemannianAdamW (ours)", lambda ps: RiemannianAdamW(ps, lr=LR, weight_decay=WD)),
        ("torch AdamW foreach=False" + (" (torch's CPU default)" if on_cpu else ""),
         lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD, foreach=False)),
        ("torch AdamW foreach=True" + ("" if on_cpu else " (torch's CUDA default)"),
         lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD, foreach=True)),
        ("torch AdamW fused=True", lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD, fused=True)),
        ("geoopt RiemannianAdam (coupled wd)",
         lambda ps: geoopt.optim.RiemannianAdam(ps, lr=LR, weight_decay=WD)),
    ]
    optimizers = _steppers(lambda i: _tensors(shapes, device, seed=i), contenders)
    numel = sum(torch.Size(s).numel() for s in shapes)
    return Case(name, numel / 1e6, len(shapes), device, optimizers)


def oblique_case(n: int, device: str) -> Case:
    import geoopt

    from manifold_align import Oblique
    from manifold_align.optim import RiemannianAdamW

    contenders = [
        ("RiemannianAdamW (ours)", lambda p: RiemannianAdamW([p], lr=LR, weight_decay=WD)),
        ("geoopt RiemannianAdam, same Oblique", lambda p: geoopt.optim.RiemannianAdam([p], lr=LR)),
        ("geoopt RiemannianAdam on geoopt.Sphere", lambda p: geoopt.optim.RiemannianAdam([p], lr=LR)),
        ("torch AdamW foreach=False, unconstrained", lambda p: torch.optim.AdamW([p], lr=LR, foreach=False)),
    ]
    manifolds = [Oblique(), Oblique(), geoopt.Sphere(), geoopt.Euclidean()]
    optimizers = _steppers(lambda i: _oblique_param(n, manifolds[i], device, seed=i), contenders)
    return Case(f"Oblique ManifoldParameter ({n}, {K}, {D})", n * K * D / 1e6, 1, device, optimizers)


def build_cases(quick: bool, device: str) -> list[Case]:
    blocks = 1 if quick else 3
    cases = [
        euclidean_case("tiny-vit-oblique model (both towers)", tiny_model_shapes(), device),
        euclidean_case(f"ViT-B/16 image tower, {blocks} of 12 blocks", vit_b16_shapes(blocks), device),
    ]
    cases += [oblique_case(n, device) for n in ((4096,) if quick else (256, 4096))]
    return cases


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
def time_case(case: Case, repeat: int, min_run_time: float) -> list[tuple[str, float, float]]:
    """(label, median time, median ratio baseline/ours) per optimizer; ours first with ratio 1."""
    cuda = case.device == "cuda"
    times = {label: [] for label, _ in case.optimizers}
    for r in range(repeat):
        order = case.optimizers if r % 2 == 0 else case.optimizers[::-1]
        for label, step in order:
            times[label].append(median_s(step, min_run_time, sync_cuda=cuda))
    ours = times[case.optimizers[0][0]]
    return [(label, statistics.median(t), statistics.median(b / o for b, o in zip(t, ours)))
            for label, t in times.items()]


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def table(results: list[tuple[Case, list[tuple[str, float, float]]]]) -> str:
    lines = ["| parameters | device | params (M) | tensors | optimizer | step (ms) | baseline / ours |",
             "|---|---|---:|---:|---|---:|---:|"]
    for case, rows in results:
        for label, seconds, ratio in rows:
            lines.append(f"| {case.name} | {case.device} | {case.params_m:.2f} | {case.tensors} | {label} | "
                         f"{seconds * 1e3:.3f} | {ratio:.2f}x |")
    return "\n".join(lines)


def command_line(argv: list[str]) -> str:
    """The command as a user would type it (without the output flags a driver such as speed.py adds)."""
    kept, skip = [], False
    for item in argv:
        if skip or item == "--no-write":
            skip = False
            continue
        if item == "--out":
            skip = True
            continue
        if not item.startswith("--out="):
            kept.append(item)
    return " ".join(["python benchmarks/bench_optim.py", *kept])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing windows, fewer and smaller cases")
    parser.add_argument("--repeat", type=int, default=None, help="alternating timings per case (default 5; quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file to write (default %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat = args.repeat or (3 if args.quick else 5)
    min_run_time = 0.1 if args.quick else 0.3
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for case in build_cases(args.quick, device):
            results.append((case, time_case(case, repeat, min_run_time)))
            print(f"done {case.name} on {device}", file=sys.stderr)
    import geoopt

    text = "\n".join([
        "# One optimizer step: RiemannianAdamW against torch AdamW and geoopt RiemannianAdam",
        "",
        f"Command: `{command_line(argv)}`  ",
        f"Machine: {machine(extra=[f'geoopt {geoopt.__version__}'])}  ",
        f"float32, lr {LR:g}, weight decay {WD:g} (geoopt's is coupled, written into the gradient). Times: median "
        f"over {repeat} repeats, alternating the optimizers' order, of the torch.utils.benchmark blocked_autorange "
        "median; ratio: median of the per-repeat ratios baseline / ours (above 1: ours is faster). Expect +-30% "
        "between runs on a shared machine; compare ratios.",
        "",
        *([] if torch.cuda.is_available() else ["No GPU on this machine: CPU rows only.", ""]),
        table(results),
        "",
    ])
    print(text, end="")
    if args.no_write:
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
