"""Whole training runs side by side: our trainer against open_clip's own (``open_clip_train.main``), CPU.

Both train the same towers (``digits-fast``: ViT 2 x 64 wide, patch 8, on 32 px images; text transformer
2 x 64, context 16) from scratch on the same CSV of PNG images (scikit-learn's digits upscaled to 32 px,
made by this script), batch 128, 2 loader workers, fp32, AdamW with the same hyperparameters, warmup and
cosine schedule, gradient clipping at 1, for the same number of steps, without evaluation. open_clip
gets the towers as a stock model config (``open_clip_config.json`` in a folder, passed as
``--model local-dir:FOLDER``, which open_clip reads offline): one 512-wide embedding, cosine similarity,
its learnable logit scale. Ours trains the same towers with ``n_tokens=1, token_dim=512``,
``model.geometry=cosine``, ``temperature=learnable`` (the same model), and then the oblique ``k = 16``
model of ``digits-fast`` (16 tokens of 32) against the same open_clip run, with the FLOP ratio of one
training step (forward and backward, counted on the meta device as ``bench_model.py --flops`` counts)
beside it.

Measured: whole-process wall time of each command (Python start-up, imports, model and data building,
training, the end of the run), as a user waits for it. The runs are interleaved (open_clip, ours k = 1,
ours k = 16, then again, ``--repeats`` rounds) so that load from other processes on a shared machine
hits all of them alike; the table gives the best and the median of each, and the ratios of the bests and
of the medians.

What differs, and cannot be made equal from the command lines:
- open_clip counts epochs (``--epochs``), ours steps: 2048 samples / batch 128 = 16 steps an epoch, so 20
  epochs are 320 steps (``--samples`` and ``--steps`` must keep that a whole number of epochs).
- ours always writes one checkpoint at the end of a run (``train.checkpoint_every=0``: only then);
  open_clip writes none with ``--save-frequency 0``.
- ours writes ``metrics.jsonl`` every ``log.every=10`` steps and shows a progress bar (the defaults);
  open_clip logs a line every ``--log-every-n-steps 10`` steps. Neither writes TensorBoard files.

    python benchmarks/bench_trainer.py --repeats 2 --write benchmarks/results/trainer.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import header_lines  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "trainer.md"
MODEL = "digits-fast"
#: the optimizer settings both trainers get (ours: train.*, open_clip: --lr, --wd, ...)
LR, WD, BETA1, BETA2, EPS, WARMUP, CLIP = 2e-3, 0.1, 0.9, 0.98, 1e-6, 25, 1.0
PHRASINGS = ("a photo of the digit {}", "a picture of a handwritten {}", "the number {}", "a drawing of {}")
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def make_csv(folder: Path, samples: int, size: int = 32, seed: int = 0) -> Path:
    """``samples`` PNGs (scikit-learn digits upscaled to ``size`` px, cycled with fresh pixel noise past
    1797) and a tab-separated ``train.csv`` (``filepath``, ``title``) of them; return its path."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir()
    rows = ["filepath\ttitle"]
    for i in range(samples):
        j = i % len(digits.images)
        pixels = digits.images[j] * (255 / 16) + (rng.normal(0, 12, (8, 8)) if i >= len(digits.images) else 0)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        image.convert("RGB").save(images / f"{i:05d}.png")
        label = int(digits.target[j])
        caption = PHRASINGS[i % len(PHRASINGS)].format(NAMES[label] if i % 2 else label)
        rows.append(f"{images / f'{i:05d}.png'}\t{caption}")  # absolute: open_clip reads paths from its cwd
    path = folder / "train.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def open_clip_config(folder: Path) -> Path:
    """``digits-fast``'s towers as a stock open_clip model config (one 512-wide embedding), in a folder
    for ``--model local-dir:FOLDER``."""
    from manifold_align.clip import load_model_config

    cfg = load_model_config(MODEL)
    stock = {"embed_dim": cfg["embed_dim"], "vision_cfg": cfg["vision_cfg"], "text_cfg": cfg["text_cfg"]}
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": stock}, indent=2))
    return folder


def open_clip_command(csv: Path, model_dir: Path, logs: Path, args) -> list[str]:
    return [
        sys.executable, "-m", "open_clip_train.main",
        "--model", f"local-dir:{model_dir}", "--train-data", str(csv), "--dataset-type", "csv",
        "--csv-separator", "\t", "--csv-img-key", "filepath", "--csv-caption-key", "title",
        "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        "--epochs", str(args.steps * args.batch_size // args.samples), "--precision", "fp32", "--device", "cpu",
        "--lr", str(LR), "--wd", str(WD), "--beta1", str(BETA1), "--beta2", str(BETA2), "--eps", str(EPS),
        "--warmup", str(WARMUP), "--grad-clip-norm", str(CLIP), "--seed", "0",
        "--save-frequency", "0", "--log-every-n-steps", "10", "--report-to", "",
        "--logs", str(logs), "--name", "run",
    ]


def ours_command(csv: Path, output: Path, args, *, k: int) -> list[str]:
    geometry = (["model.n_tokens=1", "model.token_dim=512", "model.geometry=cosine", "loss.temperature.name=learnable"]
                if k == 1 else [f"model.n_tokens={k}", f"model.token_dim={512 // k}", "model.geometry=oblique"])
    settings = [
        "data.dataset=csv", f"data.train_data={csv}", f"data.batch_size={args.batch_size}",
        f"data.workers={args.workers}", f"model.name={MODEL}", f"train.steps={args.steps}", f"train.lr={LR}",
        f"train.weight_decay={WD}", f"train.beta1={BETA1}", f"train.beta2={BETA2}", f"train.eps={EPS:.1e}",
        f"train.warmup={WARMUP}", f"train.grad_clip={CLIP}", "train.precision=fp32", "train.device=cpu",
        "train.checkpoint_every=0", "train.keep_checkpoints=1", "log.tensorboard=false", "log.every=10", "seed=0",
        *geometry,
    ]
    command = [sys.executable, "-m", "manifold_align_train", "train", "--output", str(output)]
    for setting in settings:
        command += ["--set", setting]
    return command


def run_timed(command: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds the whole process took, and the CPU seconds (user + system) of it and its loader
    workers; its output is shown on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def step_flops(kind: str, k: int, batch_size: int) -> float:
    """GFLOP of one training step (forward and backward) of ``digits-fast``, stock open_clip (``kind="stock"``)
    or multi-token with ``k`` tokens (``"multi-realistic"``), counted on the meta device by ``bench_model``."""
    import dataclasses

    from bench_model import SETTINGS, count_step

    setting = dataclasses.replace(SETTINGS["tiny-cpu"], name=f"{MODEL}-k{k}", model=MODEL, n_tokens=k,
                                  token_dim=512 // k, batch=batch_size)
    return count_step(setting, kind)["gflop"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--runs", nargs="+", default=["open_clip", "ours_k1", "ours_k16"],
                        choices=["open_clip", "ours_k1", "ours_k16"])
    parser.add_argument("--write", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args(argv)
    if (args.steps * args.batch_size) % args.samples:
        parser.error("--steps x --batch-size must be a whole number of epochs of --samples (open_clip counts epochs)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    times = {name: [] for name in args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv = make_csv(folder, args.samples)
        model_dir = open_clip_config(folder / "open_clip_model")
        for r in range(args.repeats):
            for name in args.runs:
                out = folder / f"{name}-{r}"
                if name == "open_clip":
                    command = open_clip_command(csv, model_dir, out, args)
                else:
                    command = ours_command(csv, out, args, k=int(name.split("_k")[1]))
                times[name].append(run_timed(command, env))
                shutil.rmtree(out, ignore_errors=True)
                wall, cpu = times[name][-1]
                print(f"round {r + 1}: {name} {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    flops = {"open_clip": step_flops("stock", 1, args.batch_size),
             "ours_k16": step_flops("multi-realistic", 16, args.batch_size)}
    text = report(times, flops, args, argv)
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    return 0


def report(times: dict, flops: dict, args, argv) -> str:
    """The Markdown table: per run the best and median wall time, CPU time, their ratios to open_clip's."""

    def stats(name, column):
        values = [run[column] for run in times[name]]
        return min(values), statistics.median(values)

    lines = [
        "# Whole training runs: our trainer against open_clip's (`open_clip_train.main`), CPU",
        "",
        *header_lines("bench_trainer.py", argv),
        f"Setting: `{MODEL}` towers, {args.samples} PNG images of 32 px in a CSV, batch {args.batch_size}, "
        f"{args.workers} loader workers, fp32, {args.steps} steps ({args.steps * args.batch_size // args.samples} "
        f"epochs), AdamW lr {LR} with {WARMUP} warmup steps and cosine decay, no evaluation. Whole-process wall "
        "time, and CPU time (user + system, the process and its loader workers: less sensitive to other jobs "
        f"than wall time on a shared machine); runs interleaved, {args.repeats} round(s), best and median. "
        "Differences: ours writes one checkpoint at the end (open_clip: none), metrics.jsonl every 10 steps and a "
        "progress bar (open_clip: a log line every 10 steps).",
        "",
        "| run | wall best (s) | wall median (s) | / open_clip best | / open_clip median | CPU best (s) | "
        "/ open_clip CPU best | step FLOPs / open_clip |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {"open_clip": "open_clip, k = 1 cosine (baseline)", "ours_k1": "ours, k = 1 cosine, learnable scale",
              "ours_k16": "ours, k = 16 oblique (d = 32)"}
    base = {column: stats("open_clip", column) if "open_clip" in times else (math.nan, math.nan) for column in (0, 1)}
    for name in times:
        (wall, wall_median), (cpu, _) = stats(name, 0), stats(name, 1)
        flop = f"{flops[name] / flops['open_clip']:.2f}x" if name in flops else "1 (same model)"
        lines.append(f"| {labels[name]} | {wall:.1f} | {wall_median:.1f} | {wall / base[0][0]:.2f}x | "
                     f"{wall_median / base[0][1]:.2f}x | {cpu:.1f} | {cpu / base[1][0]:.2f}x | {flop} |")
    lines += ["", "All runs (wall s / CPU s, in order): " + "; ".join(
        f"{name} " + ", ".join(f"{wall:.1f}/{cpu:.1f}" for wall, cpu in runs) for name, runs in times.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
