"""Tower-level forward + backward of ViT-B-16 in bf16 on a GPU, stock against multi-token, and SDPA alone.

Run on a CUDA machine: ``python benchmarks/gpu_breakdown_towers.py``. Batch 128, realistic captions; the
multi-token image tower with and without its ``-log k`` group mask; then ``scaled_dot_product_attention``
(12 heads of 64) at 197 and 212 positions, with and without a float mask. Medians of
``torch.utils.benchmark``. Figures in ``benchmarks/results/model_gpu.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

from bench_model import make_captions  # benchmarks/ is on sys.path: scripts run from there
from manifold_align.clip import create_model, create_stock_model, get_tokenizer, load_model_config

BATCH = 128


def median_ms(fn) -> float:
    return tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=1.0).median * 1e3


def forward_backward(encode):
    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = encode()
        out.float().sum().backward()
    return run


def main() -> None:
    device = torch.device("cuda")
    cfg = load_model_config("ViT-B-16")
    cfg.pop("embed_cfg", None)
    stock = create_stock_model(cfg).to(device).train()
    multi = create_model(cfg, {"n_tokens": 16, "token_dim": 32, "geometry": "oblique",
                               "temperature": {"name": "learnable"}}).to(device).train()
    images = torch.randn(BATCH, 3, 224, 224, device=device)
    texts = get_tokenizer(cfg)(make_captions(BATCH, "realistic")).to(device)
    rows = {
        "stock image": forward_backward(lambda: stock.encode_image(images)),
        "multi image (mask)": forward_backward(lambda: multi.visual(images)),
        "stock text": forward_backward(lambda: stock.encode_text(texts)),
        "multi text": forward_backward(lambda: multi.text(texts)),
    }
    for name, fn in rows.items():
        print(f"{name:30s} {median_ms(fn):8.2f} ms", flush=True)
    multi.visual._attn_mask = lambda x: None
    print(f"{'multi image (no mask)':30s} {median_ms(forward_backward(lambda: multi.visual(images))):8.2f} ms")
    for length, masked in ((197, False), (212, False), (212, True)):
        q = torch.randn(BATCH, 12, length, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
        mask = torch.zeros(length, length, device=device, dtype=torch.bfloat16) if masked else None
        ms = median_ms(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=mask).sum().backward())
        print(f"sdpa L={length} mask={masked}: {ms:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
