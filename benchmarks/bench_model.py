"""One training step (forward, backward, AdamW step) of the multi-token model against stock open_clip.

Step time: both models in one subprocess, their steps interleaved (stock, multi, multi, stock, ...) so
that load from other processes hits both alike; best (minimum) and median of the timed steps after
warm-up. Memory: each (setting, model) pair in its own subprocess so that its peak memory is its own:

- CPU: peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of the process, and its
  increase during two training steps over the RSS peak after building model, optimizer and batch (so: gradients,
  AdamW state, activations and allocator caching, not the weights). torch's CPU allocator returns memory to
  the OS lazily, so these are upper-bound style numbers, comparable between the two models.
- GPU: ``torch.cuda.max_memory_allocated`` over the steps (weights included), bf16 autocast.

Captions: the multi-token text tower runs only up to the batch's last end-of-text token (exact, see
``docs/model.md``; the batch is cut on the CPU with ``manifold_align.clip.trim_padding`` before it moves, as
the trainer does), stock open_clip always runs the full context. So the multi-token model is measured
twice: on *realistic* captions (seeded web-like sentences of 10-25 words, tokenized with the model's
tokenizer, padded to the context) and on *full-length* captions (every caption fills the context, the
worst case for trimming). The stock model's cost does not depend on the captions (realistic ones here).

Both models use the same loss (symmetric cross-entropy over the batch logits, each model scoring with
its own similarity: stock cosine with its ``logit_scale``, multi-token ``temperature(similarity)``), so
the difference is the towers. On a shared machine the minimum step time is the least contended
estimate; the median is printed alongside.

Usage::

    python benchmarks/bench_model.py                       # all settings that fit this machine
    python benchmarks/bench_model.py --settings tiny-cpu   # one setting
    python benchmarks/bench_model.py --no-write            # print only
    python benchmarks/bench_model.py --threads 1           # the recorded run
    python benchmarks/bench_model.py --flops               # FLOPs only, k = 1 ... 32, every setting

Writes ``benchmarks/results/model.md`` (table, command, machine), or ``model_flops.md`` with ``--flops``,
unless ``--no-write``. The timed table has a FLOP ratio column too (counted as ``--flops`` counts): a step
ratio close to the FLOP ratio means the multi-token towers cost what their extra positions compute, no more.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from machine_info import machine  # benchmarks/ is on sys.path: scripts run from there

RESULTS = Path(__file__).parent / "results" / "model.md"
FLOPS_RESULTS = RESULTS.with_name("model_flops.md")
#: token counts of the ``--flops`` table
FLOP_KS = (1, 2, 4, 8, 16, 32)


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
    "vit-b-16-cpu": Setting("vit-b-16-cpu", "ViT-B-16", 16, 32, 8, "cpu", "fp32", 1, 3),
    "vit-b-16-gpu": Setting("vit-b-16-gpu", "ViT-B-16", 16, 32, 128, "cuda", "bf16", 3, 10),
}


#: the models measured per setting: stock open_clip, multi-token on realistic / full-length captions
KINDS = ("stock", "multi-realistic", "multi-full")

#: words of web-like captions (alt text, titles); all are single BPE tokens or close to it
WORDS = (
    "a photo of the new red blue green black white small large old modern vintage wooden beautiful "
    "house car dog cat woman man child girl boy people group street city beach mountain lake river "
    "sunset garden kitchen table chair bed room office park tree flowers water snow sky night "
    "with and in on at near over under next to during for sale free shipping best quality "
    "design style home decor wedding dress shoes bag summer winter 2019 2020 image stock picture"
).split()


def make_captions(batch: int, mode: str, *, seed: int = 0) -> list[str]:
    """``batch`` captions: ``realistic`` = 10-25 random words each (seeded); ``full`` = 200 words each,
    truncated by the tokenizer so that every caption fills the context."""
    import random

    rng = random.Random(seed)
    if mode == "full":
        return [" ".join(rng.choices(WORDS, k=200)) for _ in range(batch)]
    return [" ".join(rng.choices(WORDS, k=rng.randint(10, 25))) for _ in range(batch)]


# ----------------------------------------------------------------------------------------------------
# worker: one model, one setting, in a fresh process


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _symmetric_ce(logits):
    import torch
    import torch.nn.functional as F

    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _build(setting: Setting, kind: str, *, trim: bool = True):
    """Model, loss closure and batch for one setting, on its device, in training mode.

    ``trim``: the multi-token model's captions lose their padding on the CPU, as the trainer's do (stock
    open_clip runs the whole context either way). On the ``meta`` device (FLOP counting) nothing is
    computed and autocast is off: a step's FLOPs do not depend on the precision.
    """
    from contextlib import nullcontext

    import torch
    import torch.nn.functional as F

    from manifold_align.clip import create_model, create_stock_model, get_tokenizer, load_model_config, trim_padding

    torch.manual_seed(0)
    device = torch.device(setting.device)
    cfg = load_model_config(setting.model)
    cfg.pop("embed_cfg", None)
    captions = "full" if kind == "multi-full" else "realistic"
    if kind == "stock":
        model = create_stock_model(cfg)

        def loss_fn(images, texts):
            image = F.normalize(model.encode_image(images), dim=-1)
            text = F.normalize(model.encode_text(texts), dim=-1)
            return _symmetric_ce(model.logit_scale.exp() * image.float() @ text.float().T)
    else:
        embed = {"n_tokens": setting.n_tokens, "token_dim": setting.token_dim, "geometry": "oblique",
                 "temperature": {"name": "learnable"}}
        model = create_model(cfg, embed)

        def loss_fn(images, texts):
            out = model(images, texts)
            scores = model.geometry.pairwise(out["image_features"], out["text_features"])
            return _symmetric_ce(model.temperature(scores))

    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = cfg["vision_cfg"]["image_size"]
    images = torch.randn(setting.batch, 3, size, size, device=device)
    texts = get_tokenizer(cfg)(make_captions(setting.batch, captions))
    if kind != "stock" and trim:  # cut on the CPU as the trainer does: the tower then needs no host-device sync
        texts = trim_padding(texts)
    text_positions = _text_positions(model, texts)
    texts = texts.to(device)
    if device.type == "meta":
        autocast = nullcontext()
    else:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting.precision == "bf16")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(images, texts)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step.text_positions = text_positions
    grid = cfg["vision_cfg"]["image_size"] // cfg["vision_cfg"]["patch_size"]
    step.image_positions = grid * grid + (1 if kind == "stock" else setting.n_tokens)
    return model, step


def _text_positions(model, texts) -> int:
    """Positions the text transformer runs: the captions as given for stock and k = 1; for k > 1 all but
    their last column (never read) plus the k queries."""
    k = getattr(getattr(model, "text", None), "n_tokens", 1)  # stock CLIP keeps its text tower flat
    return texts.shape[1] if k == 1 else max(1, texts.shape[1] - 1) + k


def time_worker(setting: Setting, threads: int | None) -> dict:
    """Both models in one process, their steps interleaved so that machine load hits both alike."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    steps = {kind: _build(setting, kind)[1] for kind in KINDS}
    for _ in range(setting.warmup):
        for step in steps.values():
            step()
    times = {kind: [] for kind in steps}
    for i in range(setting.steps):
        for kind in KINDS[i % len(KINDS):] + KINDS[: i % len(KINDS)]:  # rotate the order
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


def count_step(setting: Setting, kind: str) -> dict:
    """Floating-point operations of one step's forward and backward, and the positions each tower runs.

    Traced on the ``meta`` device (shapes only, nothing computed, so any setting counts on any machine)
    by torch's ``FlopCounterMode``. Attention runs on the math backend while counting (its batched matmuls
    are counted; the fused kernels are not), so masked and unmasked attention count alike, as the fused
    kernels with a float mask compute them. The optimizer's elementwise update is not counted.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    _, step = _build(dataclasses.replace(setting, device="meta"), kind)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step()
    return {"gflop": counter.get_total_flops() / 1e9, "image_positions": step.image_positions,
            "text_positions": step.text_positions}


# ----------------------------------------------------------------------------------------------------
# driver


def _run_in_subprocess(setting: Setting, kind: str, threads: int | None) -> dict:
    """``kind``: "time" (all models, interleaved) or one of ``KINDS`` (memory of one model)."""
    command = [sys.executable, __file__, "--worker", setting.name, kind]
    command += ["--threads", str(threads)] if threads else []
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _memory(result: dict, setting: Setting) -> tuple[float, str]:
    if setting.device == "cuda":
        return result["gpu_peak_mib"], "max_memory_allocated"
    return result["rss_step_delta_mib"], "RSS increase during steps"


def _table(rows: list[tuple[Setting, dict]]) -> str:
    lines = [
        "| setting | model | captions | image positions | text positions | batch | precision | params (M) | "
        "GFLOP / step | step (s), best (median) | memory (MiB) | memory measure | FLOP ratio | "
        "step ratio, best (median) | step ratio / FLOP ratio | memory ratio | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"stock": "stock open_clip {model}", "multi-realistic": "multi-token k={k}, d={d}",
             "multi-full": "multi-token k={k}, d={d}"}
    captions = {"stock": "any (full context)", "multi-realistic": "realistic (10-25 words)",
                "multi-full": "full-length"}
    for setting, results in rows:
        stock = results["stock"]
        for kind in KINDS:
            result = results[kind]
            memory, measure = _memory(result, setting)
            name = names[kind].format(model=setting.model, k=setting.n_tokens, d=setting.token_dim)
            flop_ratio = result["gflop"] / stock["gflop"]
            step_ratio = result["step_s"] / stock["step_s"]
            lines.append(
                f"| {setting.name} | {name} | {captions[kind]} | {result['image_positions']} | "
                f"{result['text_positions']} | {setting.batch} | {setting.precision} | {result['params_m']:.1f} | "
                f"{result['gflop']:.1f} | {result['step_s']:.3f} ({result['step_median_s']:.3f}) | {memory:.0f} | "
                f"{measure} | {flop_ratio:.3f}x | "
                f"{step_ratio:.3f}x ({result['step_median_s'] / stock['step_median_s']:.3f}x) | "
                f"{step_ratio / flop_ratio:.3f}x | {memory / _memory(stock, setting)[0]:.3f}x | "
                f"{result['rss_peak_mib']:.0f} |"
            )
    return "\n".join(lines)


def flops_table(names: list[str], ks: tuple[int, ...]) -> str:
    """FLOP ratio of one training step, multi-token / stock, against the number of tokens ``k``."""
    lines = [
        "| setting | batch | k | image positions (stock) | text positions, realistic / full (stock) | "
        "stock GFLOP / step | FLOP ratio, realistic captions | FLOP ratio, full-length captions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        stock = count_step(SETTINGS[name], "stock")
        for k in ks:
            setting = dataclasses.replace(SETTINGS[name], n_tokens=k)
            realistic, full = count_step(setting, "multi-realistic"), count_step(setting, "multi-full")
            lines.append(
                f"| {name} | {setting.batch} | {k} | {realistic['image_positions']} ({stock['image_positions']}) | "
                f"{realistic['text_positions']} / {full['text_positions']} ({stock['text_positions']}) | "
                f"{stock['gflop']:.1f} | {realistic['gflop'] / stock['gflop']:.3f}x | "
                f"{full['gflop'] / stock['gflop']:.3f}x |"
            )
        print(f"counted {name}", file=sys.stderr)
    return "\n".join(lines)


def _write_flops(table: str, args) -> None:
    command = "python benchmarks/bench_model.py --flops" + (f" --settings {' '.join(args.settings)}" if args.settings else "")
    FLOPS_RESULTS.write_text(
        "# Multi-token model vs stock open_clip: FLOPs of one training step\n\n"
        f"Command: `{command}` (any machine: traced on the `meta` device, nothing is computed)\n\n"
        "Forward and backward of both towers and the loss, counted by `torch.utils.flop_counter.FlopCounterMode` "
        "(attention on the math backend, so that it is counted; the optimizer's elementwise update is not). "
        "Same models, batches and captions as the timed table in `model.md`; the token dimension d stays 32. "
        "The ratio is the least step-time ratio that any implementation of the architecture running at "
        "stock's FLOP rate could reach: the k class tokens run through every layer of both towers.\n\n"
        f"{table}\n"
    )
    print(f"wrote {FLOPS_RESULTS}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="*", default=None, choices=sorted(SETTINGS))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker (default: torch's)")
    parser.add_argument("--flops", action="store_true",
                        help=f"count FLOPs only, for k in {FLOP_KS} (any setting, on any machine)")
    parser.add_argument("--worker", nargs=2, metavar=("SETTING", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        setting, kind = SETTINGS[args.worker[0]], args.worker[1]
        result = time_worker(setting, args.threads) if kind == "time" else memory_worker(setting, kind, args.threads)
        print(json.dumps(result))
        return
    if args.flops:
        table = flops_table(args.settings or list(SETTINGS), FLOP_KS)
        print(table)
        if not args.no_write:
            _write_flops(table, args)
        return

    import torch

    names = args.settings or [n for n, s in SETTINGS.items() if s.device == "cpu" or torch.cuda.is_available()]
    rows = []
    for name in names:
        setting = SETTINGS[name]
        timing = _run_in_subprocess(setting, "time", args.threads)
        results = {kind: {**_run_in_subprocess(setting, kind, args.threads), **timing[kind],
                          **count_step(setting, kind)} for kind in KINDS}
        rows.append((setting, results))
        print(f"done {name}: " + ", ".join(f"{kind} {r['step_s']:.3f}s" for kind, r in results.items()), file=sys.stderr)
    table = _table(rows)
    print(table)
    if args.no_write:
        return
    command = "python benchmarks/bench_model.py" + (f" --settings {' '.join(args.settings)}" if args.settings else "")
    command += f" --threads {args.threads}" if args.threads else ""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# Multi-token model vs stock open_clip: one training step\n\n"
        f"Command: `{command}`\n\n"
        f"Machine: {machine(threads=args.threads or torch.get_num_threads())} (torch threads per worker).\n\n"
        "One step = forward of both towers, symmetric cross-entropy, backward, AdamW step; best (minimum) of the "
        "timed steps after warm-up (median in brackets), the three models' steps interleaved in one process "
        "(order rotated each round). Ratios are multi-token / stock (target: <= 1.05x).\n"
        "Captions: *realistic* = seeded web-like sentences of 10-25 words, tokenized and padded to the context; "
        "*full-length* = every caption fills the context (the worst case). The multi-token text tower runs only up "
        "to the batch's last end-of-text token plus its k queries (*text positions*); stock open_clip always runs "
        "the full context.\n"
        "*FLOP ratio*: FLOPs of one step's forward and backward, multi-token / stock, traced on the meta device "
        "(see `model_flops.md`); it is the step ratio to expect at stock's FLOPs per second. *Step ratio / FLOP "
        "ratio* below 1 means the multi-token step computes more FLOPs per second than stock's.\n"
        "CPU memory is the increase of the process's peak RSS during the steps over its peak after building "
        "model, optimizer and batch (gradients, AdamW state, activations, allocator caching); GPU memory is "
        "`torch.cuda.max_memory_allocated` during the steps; for memory each model runs alone in its own process.\n\n"
        f"{table}\n"
    )
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
