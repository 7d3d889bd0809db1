"""Where the multi-token model's extra GPU step time goes: bench_model's ViT-B-16 bf16 step, in variants.

Run on a CUDA machine: ``python benchmarks/gpu_breakdown_step.py``. Prints, for stock open_clip and for the
multi-token model (k = 16, d = 32) as is and with the image tower's ``-log k`` group mask and/or the text
tower's trimming switched off, the best and median of 15 interleaved steps (after 3 warm-up rounds) and the
ratio of bests against stock. Figures in ``benchmarks/results/model_gpu.md``.
"""

from __future__ import annotations

import statistics
import time

import bench_model  # benchmarks/ is on sys.path: scripts run from there

ROUNDS, WARMUP = 15, 3


def _variant(no_image_mask: bool, no_text_trim: bool):
    model, step = bench_model._build(bench_model.SETTINGS["vit-b-16-gpu"], "multi-realistic", trim=not no_text_trim)
    if no_image_mask:
        model.visual._attn_mask = lambda x: None
    return step


def main() -> None:
    steps = {
        "stock": bench_model._build(bench_model.SETTINGS["vit-b-16-gpu"], "stock")[1],
        "multi": _variant(False, False),
        "multi, no image mask": _variant(True, False),
        "multi, no text trim": _variant(False, True),
        "multi, neither": _variant(True, True),
    }
    for _ in range(WARMUP):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(ROUNDS):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    base = min(times["stock"])
    for name, seconds in times.items():
        print(f"{name:28s} best {min(seconds) * 1e3:7.1f} ms  median {statistics.median(seconds) * 1e3:7.1f} ms  "
              f"ratio {min(seconds) / base:.3f}x", flush=True)


if __name__ == "__main__":
    main()
