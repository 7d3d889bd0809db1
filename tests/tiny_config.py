"""The small open_clip model config the model tests share."""

from __future__ import annotations


def tiny_cfg(context_length: int = 16, **vision) -> dict:
    """A small open_clip config: 32x32 images, patch 8, 2 layers of width 64 in each tower."""
    return {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32, **vision},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
