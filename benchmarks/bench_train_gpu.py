"""The ViT-B-16 webdataset recipe through ``manifold-align train`` on one GPU, multi-token against stock-equivalent.

Runs ``configs/vit-b-16-webdataset.yaml`` (bf16, gradient checkpointing, RiemannianAdamW, webdataset
loader, checkpoints) for a few hundred steps on webdataset shards written from the real handwritten digits
that ship with scikit-learn (no download), twice:

- *recipe*: the config as shipped, k = 16 tokens of d = 32 on OB(32, 16), learnable scale capped at 3.95;
- *stock-equivalent*: the same run with ``model.n_tokens=1 model.token_dim=512 model.geometry=cosine`` and
  CLIP's learnable scale capped at 100, which is open_clip's ``CLIP`` architecture (the k = 1 model equals
  stock open_clip to 1e-6, tested in tests/test_model.py), trained by the same loop.

Reported per run, from its ``metrics.jsonl`` and ``summary.json``: median samples/s over the logged
windows after the first (the first holds CUDA warm-up), peak ``torch.cuda.max_memory_allocated``, the loss at
the first and last logged step, the final temperature scale; and the ratios recipe / stock-equivalent.

Usage::

    python benchmarks/bench_train_gpu.py                       # 300 steps, global batch 256
    python benchmarks/bench_train_gpu.py --steps 100 --batch-size 128 --no-write
    python benchmarks/bench_train_gpu.py --device cpu --steps 4 --batch-size 8 --model ViT-S-32 --no-write  # smoke

Writes ``benchmarks/results/train_gpu.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from machine_info import machine  # benchmarks/ is on sys.path: scripts run from there

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "vit-b-16-webdataset.yaml"
RESULTS = Path(__file__).parent / "results" / "train_gpu.md"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTIONS = ("a photo of the digit {}.", "a handwritten {}.", "the number {}, written by hand.", "a scan of a {}.")

VARIANTS = {
    "recipe": [],
    "stock-equivalent": ["model.n_tokens=1", "model.token_dim=512", "model.geometry=cosine",
                         "loss.temperature.max_scale=100.0"],
}


def write_digit_shards(folder: Path, n_shards: int, per_shard: int) -> str:
    """Write ``n_shards`` tar shards of scikit-learn's digits (PNG + caption); return the brace pattern."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    index = 0
    for shard in range(n_shards):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for _ in range(per_shard):
                i = index % len(images)
                buffer = io.BytesIO()
                Image.fromarray(images[i]).convert("RGB").save(buffer, format="PNG")
                caption = CAPTIONS[index % len(CAPTIONS)].format(DIGIT_NAMES[digits.target[i]])
                for name, data in ((f"{index:07d}.png", buffer.getvalue()), (f"{index:07d}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                index += 1
    return str(folder / f"{{00000..{n_shards - 1:05d}}}.tar")


def run_variant(name: str, run_dir: Path, pattern: str, n_samples: int, args) -> dict:
    """Train one variant in a subprocess; return its figures."""
    overrides = [
        f"data.train_data={pattern}", f"data.num_samples={n_samples}", f"data.batch_size={args.batch_size}",
        f"data.workers={args.workers}", f"model.name={args.model}", f"train.steps={args.steps}",
        f"train.warmup={max(1, args.steps // 10)}", f"train.checkpoint_every={args.steps // 2 or 1}",
        f"train.device={args.device}", f"log.every={args.log_every}", "log.progress=false",
        "eval.every=0", f"name=bench-train-gpu-{name}",
    ] + VARIANTS[name]
    if args.device == "cpu":
        overrides += ["train.precision=fp32"]
    command = [sys.executable, "-m", "manifold_align_train", "train", "--config", str(CONFIG), "--output", str(run_dir)]
    for item in overrides:
        command += ["--set", item]
    print(f"[bench_train_gpu] {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train"]
    summary = json.loads((run_dir / "summary.json").read_text())
    rates = [r["samples_per_second"] for r in train[1:]] or [train[0]["samples_per_second"]]
    return {
        "samples_per_second": statistics.median(rates),
        "peak_memory_mib": max(r["peak_memory"] for r in train),
        "first_loss": train[0]["loss"], "first_step": train[0]["step"],
        "last_loss": train[-1]["loss"], "last_step": train[-1]["step"],
        "final_temperature": summary["final_temperature"],
        "checkpoint": Path(summary["outputs"]["final_checkpoint"]).name,
        "wall_s": summary["wall_time_seconds"],
    }


def render(results: dict, args, device_name: str, command: str) -> str:
    import torch

    lines = [
        "# ViT-B-16 recipe through the trainer: multi-token against stock-equivalent",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; trained on {device_name}  ",
        f"Config: `configs/vit-b-16-webdataset.yaml` with model {args.model}, global batch {args.batch_size}, "
        f"{args.steps} steps, {args.workers} loader workers, on webdataset shards of scikit-learn's digits "
        "(PNG, 8x8 upscaled to the model's 224 by open_clip's transform; 4 caption templates). "
        "Throughput: median samples/s of the logged windows after the first.",
        "",
        "| run | samples/s | peak memory (MiB) | loss at first log (step) | loss at end (step) | final scale | "
        "final checkpoint | wall (s) |",
        "|---|---:|---:|---|---|---:|---|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['samples_per_second']:.0f} | {r['peak_memory_mib']:.0f} | {r['first_loss']:.3f} "
            f"({r['first_step']}) | {r['last_loss']:.3f} ({r['last_step']}) | {r['final_temperature']:.3g} | "
            f"{r['checkpoint']} | {r['wall_s']:.0f} |")
    if len(results) == 2:
        recipe, stock = results["recipe"], results["stock-equivalent"]
        lines += ["", f"Recipe / stock-equivalent: step time {stock['samples_per_second'] / recipe['samples_per_second']:.3f}x, "
                      f"peak memory {recipe['peak_memory_mib'] / stock['peak_memory_mib']:.3f}x."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch (default %(default)s)")
    parser.add_argument("--workers", type=int, default=8, help="loader workers (default %(default)s)")
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model config (default %(default)s)")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu to smoke-test")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of %(default)s")
    parser.add_argument("--runs-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_train_gpu: no CUDA device; use --device cpu to smoke-test", file=sys.stderr)
        return 2
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "no GPU (CPU run)"
    with tempfile.TemporaryDirectory(prefix="bench-train-gpu-") as scratch:
        shards = Path(scratch) / "shards"
        shards.mkdir()
        per_shard = 512
        n_shards = 16
        pattern = write_digit_shards(shards, n_shards, per_shard)
        runs = args.runs_dir or Path(scratch) / "runs"
        results = {name: run_variant(name, runs / name, pattern, n_shards * per_shard, args)
                   for name in args.variants.split(",")}
    command = "python benchmarks/bench_train_gpu.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    text = render(results, args, device_name, command)
    print(text, end="")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
