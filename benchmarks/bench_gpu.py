"""GPU rows: the logits' share of the GPU's matrix throughput, the loss against open_clip, manifold ops against geoopt.

Run on a machine with CUDA::

    python benchmarks/bench_gpu.py                # writes benchmarks/results/gpu.md
    python benchmarks/bench_gpu.py --no-write     # print only
    python benchmarks/bench_gpu.py --device cpu --quick --no-write   # smoke test of the script, no GPU

What is measured (k = 16, d = 32, so k * d = 512; torch.utils.benchmark medians, which synchronize CUDA):

- *Matrix peak*: an 8192 x 8192 x 8192 product in bf16 and in float32 (torch's default, TF32 off), measured
  in the same run. Each logits row reports its achieved TFLOP/s as a fraction of the peak of its dtype.
- *Logits*: ``ObliqueSimilarity.pairwise`` on (B, k, d) bf16 features (what the towers emit under bf16
  autocast). It upcasts to float32 and switches autocast off (logits of range [-k, k] need float32, see
  docs/geometries.md), so its baseline is the float32 product of the same shape; the bf16
  product that open_clip's ``ClipLoss`` runs under autocast is the other baseline. FLOPs = 2 B^2 k d.
- *Loss*: forward + backward of ``ContrastiveLoss("oblique", learnable temperature)`` against open_clip's
  ``ClipLoss`` on (B, k * d) features with the same bf16 inputs under autocast. FLOPs = 3 x 2 B^2 k d.
- *Manifold ops*: ``Oblique.dist/expmap/logmap`` against ``geoopt.ProductManifold`` of k spheres, float32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from machine_info import machine, median_s  # benchmarks/ is on sys.path: scripts run from there

RESULTS = Path(__file__).parent / "results" / "gpu.md"
K, D = 16, 32


def tokens(b: int, device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``b`` random points of OB(d, k), shape (b, k, d)."""
    g = torch.Generator(device=device).manual_seed(seed)
    return F.normalize(torch.randn(b, K, D, device=device, generator=g), dim=-1).to(dtype)


def matrix_peak_tflops(device: torch.device, dtype: torch.dtype, n: int, min_run_time: float) -> float:
    """Achieved TFLOP/s of an n x n x n product in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / median_s(lambda: a @ b, min_run_time) / 1e12


def logits_rows(device, batches, peaks, min_run_time) -> list[dict]:
    """One row per (B, implementation): time, TFLOP/s, fraction of the dtype's peak, ratio to ours."""
    from manifold_align import get_geometry

    oblique = get_geometry("oblique", n_tokens=K, token_dim=D)
    rows = []
    for b in batches:
        x, y = tokens(b, device, torch.bfloat16, 0), tokens(b, device, torch.bfloat16, 1)
        xf, yf = x.flatten(1), y.flatten(1)
        x32, y32 = xf.float(), yf.float()
        flops = 2 * b * b * K * D
        cases = [
            ("ours: oblique pairwise (bf16 in, float32 product)", "float32", lambda: oblique.pairwise(x, y)),
            ("float32 product of the same shape", "float32", lambda: x32 @ y32.T),
            ("bf16 product (open_clip under autocast)", "bf16", lambda: xf @ yf.T),
        ]
        ours = None
        for name, dtype, fn in cases:
            seconds = median_s(fn, min_run_time)
            ours = ours or seconds
            tflops = flops / seconds / 1e12
            rows.append({"B": b, "case": name, "ms": seconds * 1e3, "tflops": tflops,
                         "peak_fraction": tflops / peaks[dtype], "peak_dtype": dtype, "vs_ours": seconds / ours})
    return rows


def loss_rows(device, batches, min_run_time) -> list[dict]:
    """Forward + backward of our loss against open_clip's ClipLoss, same bf16 features, autocast on."""
    from open_clip.loss import ClipLoss

    from manifold_align import ContrastiveLoss, get_geometry, get_temperature

    ours_loss = ContrastiveLoss(get_geometry("oblique", n_tokens=K, token_dim=D))
    temperature = get_temperature({"name": "learnable", "init": 0.07, "max_scale": 100.0}).to(device)
    clip_loss = ClipLoss()
    logit_scale = torch.nn.Parameter(torch.tensor(1 / 0.07, device=device).log())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    rows = []
    for b in batches:
        x = tokens(b, device, torch.bfloat16, 0).requires_grad_()
        y = tokens(b, device, torch.bfloat16, 1).requires_grad_()
        xf = x.detach().flatten(1).requires_grad_()
        yf = y.detach().flatten(1).requires_grad_()

        def ours():
            with autocast:
                loss = ours_loss(x, y, temperature.scale()).loss
            loss.backward()

        def theirs():
            with autocast:
                loss = clip_loss(xf, yf, logit_scale.exp())
            loss.backward()

        t_ours, t_theirs = median_s(ours, min_run_time), median_s(theirs, min_run_time)
        flops = 3 * 2 * b * b * K * D
        rows.append({"B": b, "ours_ms": t_ours * 1e3, "theirs_ms": t_theirs * 1e3, "ratio": t_theirs / t_ours,
                     "ours_tflops": flops / t_ours / 1e12, "theirs_tflops": flops / t_theirs / 1e12})
    return rows


def manifold_rows(device, batches, min_run_time) -> list[dict]:
    """Oblique dist/expmap/logmap against geoopt's ProductManifold of k spheres, float32."""
    import geoopt

    from manifold_align.manifolds.oblique import Oblique

    ob = Oblique()
    product = geoopt.ProductManifold(*[(geoopt.Sphere(), D) for _ in range(K)])
    rows = []
    for b in batches:
        x, y = tokens(b, device, torch.float32, 0), tokens(b, device, torch.float32, 1)
        v = ob.logmap(x, y)
        xf, yf, vf = x.flatten(1), y.flatten(1), v.flatten(1)
        for op, ours, theirs in (
            ("dist", lambda: ob.dist(x, y), lambda: product.dist(xf, yf)),
            ("expmap", lambda: ob.expmap(x, v), lambda: product.expmap(xf, vf)),
            ("logmap", lambda: ob.logmap(x, y), lambda: product.logmap(xf, yf)),
        ):
            t_ours, t_theirs = median_s(ours, min_run_time), median_s(theirs, min_run_time)
            rows.append({"op": op, "B": b, "ours_ms": t_ours * 1e3, "theirs_ms": t_theirs * 1e3,
                         "ratio": t_theirs / t_ours})
    return rows


def render(device, peaks, peak_n, logits, losses, manifold, command) -> str:
    lines = [
        "# GPU rows: logits against the matrix peak, loss against open_clip, manifold ops against geoopt",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; timed on {device}  ",
        f"k = {K}, d = {D} (k * d = {K * D}). Times: torch.utils.benchmark medians (CUDA synchronized).",
        "",
        f"Matrix peak measured in this run ({peak_n} x {peak_n} x {peak_n} product): "
        f"bf16 {peaks['bf16']:.0f} TFLOP/s, float32 {peaks['float32']:.0f} TFLOP/s (TF32 off, torch's default).",
        "",
        "## Logits (B x B from (B, k, d) features)",
        "",
        "| B | implementation | ms | TFLOP/s | fraction of the dtype's peak | time / ours |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in logits:
        lines.append(f"| {r['B']} | {r['case']} | {r['ms']:.3f} | {r['tflops']:.1f} | "
                     f"{100 * r['peak_fraction']:.0f}% of {r['peak_dtype']} | {r['vs_ours']:.2f}x |")
    lines += [
        "",
        "## Loss forward + backward: ContrastiveLoss('oblique', learnable) against open_clip ClipLoss",
        "",
        "| B | ours (ms) | open_clip (ms) | open_clip / ours | ours TFLOP/s | open_clip TFLOP/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in losses:
        lines.append(f"| {r['B']} | {r['ours_ms']:.3f} | {r['theirs_ms']:.3f} | {r['ratio']:.2f}x | "
                     f"{r['ours_tflops']:.1f} | {r['theirs_tflops']:.1f} |")
    lines += [
        "",
        "## Manifold ops (float32) against geoopt ProductManifold of k Spheres",
        "",
        "| op | B | ours (ms) | geoopt (ms) | geoopt / ours |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in manifold:
        lines.append(f"| {r['op']} | {r['B']} | {r['ours_ms']:.3f} | {r['theirs_ms']:.3f} | {r['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda; cpu only to smoke-test)")
    parser.add_argument("--quick", action="store_true", help="small sizes and short timing windows")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file (default %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (torch.cuda.is_available() is False); use --device cpu to smoke-test",
              file=sys.stderr)
        return 2
    min_run_time = 0.02 if args.quick else 0.5
    peak_n = 512 if args.quick else 8192
    batches = (128, 256) if args.quick else (4096, 16384, 32768)
    peaks = {"bf16": matrix_peak_tflops(device, torch.bfloat16, peak_n, min_run_time),
             "float32": matrix_peak_tflops(device, torch.float32, peak_n, min_run_time)}
    print(f"[bench_gpu] peak bf16 {peaks['bf16']:.1f}, float32 {peaks['float32']:.1f} TFLOP/s", file=sys.stderr)
    logits = logits_rows(device, batches, peaks, min_run_time)
    losses = loss_rows(device, batches[:2], min_run_time)
    manifold = manifold_rows(device, (4096, 65536) if not args.quick else (256,), min_run_time)
    command = "python benchmarks/bench_gpu.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    text = render(device, peaks, peak_n, logits, losses, manifold, command)
    print(text, end="")
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"[bench_gpu] wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
