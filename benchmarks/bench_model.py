"""One training step (forward, backward, AdamW step) of the multi-token model against stock open_clip.

Step time: both models in one subprocess, their steps interleaved (stock, multi, multi, stock, ...) so
that load from other processes hits both alike; best (minimum) and median of the timed steps after
warm-up. Memory: each (setting, model) pair in its own subprocess so that its peak memory is its own:

- CPU: peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of the process, and its
  increase during two training steps over the RSS peak after building model, optimizer and batch (so: gradients,
  AdamW state, activations and allocator caching, not the weights). torch's CPU allocator returns memory to
  the OS lazily, so these are upper-bound style numbers, comparable between the two models.
- GPU: ``torch.cuda.max_memory_allocated`` over the steps (weights included), bf16 autocast.

Both models use the same loss (symmetric cross-entropy over the batch logits, each model scoring with
its own similarity: stock cosine with its ``logit_scale``, multi-token ``temperature(similarity)``), so
the difference is the towers. On a shared machine the minimum step time is the least contended
estimate; the median is printed alongside.

Usage::

    python benchmarks/bench_model.py                       # all settings that fit this machine
    python benchmarks/bench_model.py --settings tiny-cpu   # one setting
    python benchmarks/bench_model.py --no-write            # print only

Writes ``benchmarks/results/model.md`` (table, command, machine) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "model.md"


@dataclass(frozen=True)
class Setting:
    name: str
    model: str
    n_tokens: int
    token_dim: int
    batch: int
    device: str
    precision: str
    warmup: int
    steps: int


SETTINGS = {
    "tiny-cpu": Setting("tiny-cpu", "tiny-vit-oblique", 16, 32, 64, "cpu", "fp32", 2, 10),
    "vit-b-16-cpu": Setting("vit-b-16-cpu", "ViT-B-16", 16, 32, 8, "cpu", "fp32", 1, 4),
    "vit-b-16-gpu": Setting("vit-b-16-gpu", "ViT-B-16", 16, 32, 128, "cuda", "bf16", 3, 10),
}


# ----------------------------------------------------------------------------------------------------
# worker: one model, one setting, in a fresh process


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _symmetric_ce(logits):
    import torch
    import torch.nn.functional as F

    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _build(setting: Setting, kind: str):
    """Model, loss closure and batch for one setting, on its device, in training mode."""
    import torch
    import torch.nn.functional as F

    from training.model import create_model, create_stock_model, load_model_config

    torch.manual_seed(0)
    device = torch.device(setting.device)
    cfg = load_model_config(setting.model)
    cfg.pop("embed_cfg", None)
    if kind == "stock":
        model = create_stock_model(cfg)

        def loss_fn(images, texts):
            image = F.normalize(model.encode_image(images), dim=-1)
            text = F.normalize(model.encode_text(texts), dim=-1)
            return _symmetric_ce(model.logit_scale.exp() * image.float() @ text.float().T)
    else:
        embed = {"n_tokens": setting.n_tokens, "token_dim": setting.token_dim, "similarity": "oblique",
                 "temperature": {"name": "learnable"}}
        model = create_model(cfg, embed)

        def loss_fn(images, texts):
            out = model(images, texts)
            scores = model.similarity.pairwise(out["image_features"], out["text_features"])
            return _symmetric_ce(model.temperature(scores))

    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = cfg["vision_cfg"]["image_size"]
    context = cfg["text_cfg"]["context_length"]
    images = torch.randn(setting.batch, 3, size, size, device=device)
    texts = torch.randint(1, 49406, (setting.batch, context), device=device)
    texts[:, 0] = 49406
    texts[torch.arange(setting.batch), torch.randint(3, context, (setting.batch,))] = 49407  # end-of-text
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting.precision == "bf16")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(images, texts)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return model, step


def time_worker(setting: Setting, threads: int | None) -> dict:
    """Both models in one process, their steps interleaved so that machine load hits both alike."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    steps = {kind: _build(setting, kind)[1] for kind in ("stock", "multi")}
    for _ in range(setting.warmup):
        for step in steps.values():
            step()
    times = {kind: [] for kind in steps}
    for i in range(setting.steps):
        for kind in (("stock", "multi") if i % 2 == 0 else ("multi", "stock")):
            start = time.perf_counter()
            steps[kind]()
            times[kind].append(time.perf_counter() - start)
    return {kind: {"step_s": min(t), "step_median_s": statistics.median(t)} for kind, t in times.items()}


def memory_worker(setting: Setting, kind: str, threads: int | None) -> dict:
    """One model alone in this process: peak memory of its training steps."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    model, step = _build(setting, kind)
    rss_before = _max_rss_mib()
    if setting.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step()
    result = {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "rss_peak_mib": _max_rss_mib(),
        "rss_step_delta_mib": _max_rss_mib() - rss_before,
    }
    if setting.device == "cuda":
        result["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


# ----------------------------------------------------------------------------------------------------
# driver


def _run_in_subprocess(setting: Setting, kind: str, threads: int | None) -> dict:
    """``kind``: "time" (both models, interleaved) or "stock"/"multi" (memory of one model)."""
    command = [sys.executable, __file__, "--worker", setting.name, kind]
    command += ["--threads", str(threads)] if threads else []
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory(result: dict, setting: Setting) -> tuple[float, str]:
    if setting.device == "cuda":
        return result["gpu_peak_mib"], "max_memory_allocated"
    return result["rss_step_delta_mib"], "RSS increase during steps"


def _table(rows: list[tuple[Setting, dict, dict]]) -> str:
    lines = [
        "| setting | model | batch | precision | params (M) | step (s), best (median) | memory (MiB) | "
        "memory measure | "
        "step ratio | memory ratio | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, stock, multi in rows:
        for result in (stock, multi):
            memory, measure = _memory(result, setting)
            name = f"stock open_clip {setting.model}" if result is stock else (
                f"multi-token k={setting.n_tokens}, d={setting.token_dim}")
            step_ratio = multi["step_s"] / stock["step_s"] if result is multi else 1.0
            memory_ratio = memory / _memory(stock, setting)[0] if result is multi else 1.0
            lines.append(
                f"| {setting.name} | {name} | {setting.batch} | {setting.precision} | {result['params_m']:.1f} | "
                f"{result['step_s']:.3f} ({result['step_median_s']:.3f}) | {memory:.0f} | {measure} | "
                f"{step_ratio:.3f}x | {memory_ratio:.3f}x | "
                f"{result['rss_peak_mib']:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="*", default=None, choices=sorted(SETTINGS))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker (default: torch's)")
    parser.add_argument("--worker", nargs=2, metavar=("SETTING", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        setting, kind = SETTINGS[args.worker[0]], args.worker[1]
        result = time_worker(setting, args.threads) if kind == "time" else memory_worker(setting, kind, args.threads)
        print(json.dumps(result))
        return

    import torch

    names = args.settings or [n for n, s in SETTINGS.items() if s.device == "cpu" or torch.cuda.is_available()]
    rows = []
    for name in names:
        setting = SETTINGS[name]
        timing = _run_in_subprocess(setting, "time", args.threads)
        stock, multi = (
            {**_run_in_subprocess(setting, kind, args.threads), **timing[kind]} for kind in ("stock", "multi")
        )
        rows.append((setting, stock, multi))
        print(f"done {name}: stock {stock['step_s']:.3f}s, multi-token {multi['step_s']:.3f}s", file=sys.stderr)
    table = _table(rows)
    print(table)
    if args.no_write:
        return
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    command = "python benchmarks/bench_model.py" + (f" --settings {' '.join(args.settings)}" if args.settings else "")
    command += f" --threads {args.threads}" if args.threads else ""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# Multi-token model vs stock open_clip: one training step\n\n"
        f"Command: `{command}`\n\n"
        f"Machine: CPU {_cpu_model()} ({args.threads or torch.get_num_threads()} torch threads per worker), GPU {gpu}, "
        f"torch {torch.__version__}, Python {platform.python_version()}.\n\n"
        "One step = forward of both towers, symmetric cross-entropy, backward, AdamW step; best (minimum) of the "
        "timed steps after warm-up (median in brackets), the two models' steps interleaved in one process. "
        "Ratios are multi-token / stock (target: <= 1.05x).\n"
        "CPU memory is the increase of the process's peak RSS during the steps over its peak after building "
        "model, optimizer and batch (gradients, AdamW state, activations, allocator caching); GPU memory is "
        "`torch.cuda.max_memory_allocated` during the steps; for memory each model runs alone in its own process.\n\n"
        f"{table}\n"
    )
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
