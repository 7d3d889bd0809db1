"""The from-scratch plateau of the ViT-B-16 recipe, reproduced and dissected on a CPU-sized tower.

``configs/vit-b-16-webdataset.yaml`` trained from scratch sat at loss log(256) for 150-300 steps on a GPU
(``results/train_gpu.md``). This script trains the recipe's loss, optimizer and schedule (oblique
similarity, learnable scale capped at 3.95, RiemannianAdamW lr 5e-4, betas (0.9, 0.98), eps 1e-6, weight
decay 0.2, gradient clipping at 1, linear warmup then cosine) on towers a CPU can run (``--model``, default
``digits-deep``: 4-layer width-128 ViT and text transformer) and batch 256 of the digit-pairs task, for a
list of variants, and prints per variant:

- ``leave``: the first step whose loss is below ``log(N) - 0.1`` (``-``: not within ``--steps``);
- ``plateau``: the number of steps with ``|loss - log N| < 0.02`` before ``leave``;
- collapse measures on one fixed batch, at step 0 and at the plateau step (the step whose loss is
  closest to log N before ``leave``): ``img``/``txt`` the mean cosine between the features of two
  different samples (per token, averaged over tokens; 1 = every sample maps to the same point),
  ``tok`` the mean cosine between two different tokens of one image, ``std`` the spread of a row of
  logits (scale x similarity), ``gap`` positive minus mean negative logit, ``|g|`` the gradient norm.

Usage::

    python benchmarks/plateau.py                     # every variant, 60 steps each, writes results/plateau.md
    python benchmarks/plateau.py --variants recipe k1-cosine --steps 40 --no-write

Runs on the CPU, one thread (``--threads``), one variant after the other.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from machine_info import machine  # benchmarks/ is on sys.path: scripts run from there

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CONFIG = REPO / "configs" / "vit-b-16-webdataset.yaml"
RESULTS = Path(__file__).parent / "results" / "plateau.md"

#: the recipe on a CPU: its loss, optimizer and schedule; the embedded digit-pairs task, fp32, no checkpoints
CPU_OVERRIDES = [
    "data.dataset=digit-pairs", "data.train_data=null", "data.num_samples=null", "data.image_size=32",
    "data.batch_size=256", "data.workers=0", "data.caption_noise=0.0",
    "train.precision=fp32", "train.grad_checkpointing=false", "train.device=cpu",
    "log.progress=false", "log.tensorboard=false",
]

STOCK = ["model.n_tokens=1", "model.token_dim=512", "model.geometry=cosine"]

#: name -> (overrides, what it tests)
VARIANTS: dict[str, tuple[list[str], str]] = {
    "recipe-0.07": (["loss.temperature.init=0.07"],
                    "k = 16 oblique, init 0.07, cap 3.95: starts at the cap, 3.95 x 16 = 63 on a cosine's scale"),
    "recipe-1.12": (["loss.temperature.init=1.12"],
                    "k = 16 oblique, init 0.07 x 16 = 1.12: scale 0.89, 0.89 x 16 = 14.3 (CLIP's start), cap 3.95"),
    "no-cap": (["loss.temperature.init=0.07", "loss.temperature.max_scale=100.0"],
               "k = 16 oblique, init 0.07, cap 100: scale 14.3, 14.3 x 16 = 228"),
    "k1-cosine": (STOCK + ["loss.temperature.init=0.07", "loss.temperature.max_scale=100.0"],
                  "stock open_clip: k = 1 cosine, scale 14.3"),
    "recipe-0.07-bf16": (["loss.temperature.init=0.07", "train.precision=bf16"], "recipe-0.07 under bf16 autocast"),
}


def build_trainer(overrides: list[str], model: str, steps: int, warmup: int, threads: int):
    """The recipe's Trainer on the CPU; ``steps`` is the schedule's length (the cosine ends there)."""
    from manifold_align_train.builders import configure_torch
    from manifold_align_train.config import load_config
    from manifold_align_train.distributed_env import init_distributed
    from manifold_align_train.trainer import Trainer

    cfg = load_config(CONFIG, CPU_OVERRIDES + [f"model.name={model}", f"train.steps={steps}",
                                               f"train.warmup={warmup}", f"train.threads={threads}"] + overrides)
    env = init_distributed("cpu")
    configure_torch(cfg, env)
    return Trainer(cfg, "/nonexistent-plateau-run", env=env)  # nothing is written: no fit(), no checkpoint


def _mean_offdiag(g: torch.Tensor) -> float:
    n = g.shape[-1]
    return float(((g.sum((-2, -1)) - g.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * n - n)).mean())


@torch.no_grad()
def collapse(model, batch) -> dict[str, float]:
    """Collapse measures of ``model`` on ``batch`` (see the module docstring)."""
    model.eval()
    out = model(image=batch.images, text=batch.texts)
    model.train()
    u, v, s = out["image_features"], out["text_features"], float(out["logit_scale"])
    n = u.shape[0]
    z = s * model.geometry.pairwise(u, v)
    negatives = (z.sum() - z.diagonal().sum()) / (n * n - n)
    return {
        "img": _mean_offdiag(torch.einsum("ikd,jkd->kij", u, u)),
        "txt": _mean_offdiag(torch.einsum("ikd,jkd->kij", v, v)),
        "tok": _mean_offdiag(torch.einsum("ikd,ild->ikl", u, u)) if u.shape[1] > 1 else float("nan"),
        "std": float(z.std(1).mean()),
        "gap": float(z.diagonal().mean() - negatives),
    }


def run_variant(name: str, overrides: list[str], args) -> dict:
    tic = time.perf_counter()
    trainer = build_trainer(overrides, args.model, args.schedule_steps, args.warmup, args.threads)
    batches = trainer._batches()
    probe = next(iter(trainer.data.train))
    chance = math.log(trainer.cfg.data.batch_size)
    at_start = collapse(trainer.model, probe)
    losses, grads, snapshots = [], [], {0: at_start}
    leave = None
    for step in range(args.steps):
        metrics = trainer.train_step([next(batches)])
        trainer.step += 1
        losses.append(metrics["loss"])
        grads.append(metrics["grad_norm"])
        if step in args.snapshot_steps or (args.stop_on_leave and metrics["loss"] < chance - 0.1):
            snapshots[step + 1] = collapse(trainer.model, probe)
        if args.verbose:
            print(f"  {name} step {step + 1}: loss - log N {metrics['loss'] - chance:+.4f}, |g| "
                  f"{metrics['grad_norm']:.3g}, scale {metrics['temperature']:.3g}", flush=True)
        if leave is None and metrics["loss"] < chance - 0.1:
            leave = step + 1
            if args.stop_on_leave:
                break
    before = losses[: leave - 1] if leave else losses
    plateau_steps = sum(abs(x - chance) < 0.02 for x in before)
    plateau_at = min(range(len(before)), key=lambda i: abs(before[i] - chance)) + 1 if before else 0
    return {"name": name, "leave": leave, "plateau": plateau_steps, "plateau_at": plateau_at,
            "losses": losses, "grads": grads, "start": at_start, "snapshots": snapshots,
            "seconds": time.perf_counter() - tic}


def _fmt(m: dict) -> str:
    return f"{m['img']:.4f} / {m['txt']:.4f} / {m['tok']:.3f} / {m['std']:.2f} / {m['gap']:.3f}"


def table(results: list[dict], chance: float) -> str:
    """The markdown table of :func:`run_variant` results."""
    lines = ["| variant | what | leave | plateau steps | step 0: img / txt / tok / std / gap | at plateau (step): "
             "img / txt / tok / std / gap | median |g| on plateau |",
             "|---|---|---:|---:|---|---|---:|"]
    for r in results:
        last = (r["leave"] or len(r["losses"]) + 1) - 1
        snap_step = max(s for s in r["snapshots"] if s <= max(last, 0))
        on = [g for x, g in zip(r["losses"], r["grads"]) if abs(x - chance) < 0.02]
        grad = f"{sorted(on)[len(on) // 2]:.3g}" if on else "-"
        leave = str(r["leave"]) if r["leave"] else f"> {len(r['losses'])}"
        lines.append(f"| {r['name']} | {VARIANTS[r['name']][1]} | {leave} | {r['plateau']} | {_fmt(r['start'])} | "
                     f"({snap_step}) {_fmt(r['snapshots'][snap_step])} | {grad} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--model", default="digits-deep")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=30, help="warmup steps (the GPU run's 30)")
    parser.add_argument("--schedule-steps", type=int, default=300,
                        help="length of the lr schedule (train.steps; the GPU run's 300); --steps are run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--snapshot-every", type=int, default=5)
    parser.add_argument("--stop-on-leave", action="store_true", help="stop a variant at its first step below log N - 0.1")
    parser.add_argument("--verbose", action="store_true", help="print every step")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    args.snapshot_steps = {s - 1 for s in range(args.snapshot_every, args.steps + 1, args.snapshot_every)}
    tic = time.perf_counter()
    results = []
    for name in args.variants:
        results.append(run_variant(name, VARIANTS[name][0], args))
        r = results[-1]
        print(f"{name}: leave {r['leave']}, plateau {r['plateau']} steps, {r['seconds']:.0f} s; losses - log N: "
              + " ".join(f"{x - math.log(256):+.3f}" for x in r["losses"]), flush=True)
    command = "python benchmarks/plateau.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = (f"Command: `{command}`  \nMachine: {machine(threads=args.threads)}; "
              f"{time.perf_counter() - tic:.0f} s in all.  \n"
              f"Towers `{args.model}`, batch 256 (log N = {math.log(256):.3f}), {args.steps} steps of a "
              f"{args.schedule_steps}-step schedule with warmup {args.warmup}, "
              "the recipe's optimizer otherwise.\n\n" + table(results, math.log(256)))
    print(report)
    if not args.no_write:
        RESULTS.write_text(RESULTS.read_text() + "\n" + report + "\n" if RESULTS.exists() else report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
