"""Tests for manifold_align/clip/pretrained.py: a stock open_clip CLIP (model or local file) -> MultiTokenCLIP."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from manifold_align.clip import create_model, create_stock_model
from manifold_align.clip.pretrained import convert_stock_state_dict, from_open_clip, stock_config_from_model

from tiny_config import tiny_cfg

CAPTIONS = ["a photo of a cat", "two dogs playing in the snow", "x"]



@pytest.fixture(scope="module")
def stock() -> open_clip.model.CLIP:
    torch.manual_seed(0)
    return create_stock_model(tiny_cfg()).eval()


@pytest.fixture(scope="module")
def inputs():
    images = torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return images, open_clip.tokenizer.SimpleTokenizer(context_length=16)(CAPTIONS)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, stock):
    path = tmp_path_factory.mktemp("ckpt") / "stock.pt"
    torch.save(stock.state_dict(), path)
    return path


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding of unit vectors."""
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def per_block(features: torch.Tensor, k: int) -> torch.Tensor:
    """Stock unnormalized (B, k * d) -> (B, k, d) normalized per block."""
    return F.normalize(features.view(features.shape[0], k, -1), dim=-1)


@pytest.mark.parametrize("k", [4, 16])
@pytest.mark.parametrize("source", ["file", "model"])
def test_step0_embedding_is_the_stock_one_normalized_per_block(k, source, stock, checkpoint, inputs):
    images, tokens = inputs
    origin = checkpoint if source == "file" else stock
    embed = {"n_tokens": k, "token_dim": 128 // k}
    model = from_open_clip(origin, embed, model_name=tiny_cfg(), noise_std=0.0).eval()
    with torch.no_grad():
        close(model.encode_image(images), per_block(stock.encode_image(images), k))
        close(model.encode_text(tokens), per_block(stock.encode_text(tokens), k))


def test_config_is_read_off_a_stock_model(stock, inputs):
    cfg = stock_config_from_model(stock)
    assert cfg["embed_dim"] == 128 and cfg["vision_cfg"]["width"] == 64 and cfg["text_cfg"]["heads"] == 2
    images, tokens = inputs
    model = from_open_clip(stock, {"n_tokens": 8, "token_dim": 16}, noise_std=0.0).eval()  # no model_name
    with torch.no_grad():
        close(model.encode_image(images), per_block(stock.encode_image(images), 8))


def test_every_weight_is_copied_and_noise_breaks_symmetry(stock):
    model = from_open_clip(stock, {"n_tokens": 4, "token_dim": 32}, noise_std=0.02, seed=3)
    ours = model.state_dict()
    for key, value in stock.state_dict().items():
        if key in ("logit_scale",) or "class_embedding" in key or key.endswith("positional_embedding"):
            continue
        target = key if key.startswith("visual.") else f"text.{key}"
        torch.testing.assert_close(ours[target], value, atol=0, rtol=0)
    cls, original = model.visual.class_embedding, stock.visual.class_embedding
    torch.testing.assert_close(cls[0], original, atol=0, rtol=0)
    noise = cls[1:] - original
    assert 0.01 < noise.std().item() < 0.03
    assert torch.cdist(cls, cls)[~torch.eye(4, dtype=torch.bool)].min() > 0
    pos = model.visual.positional_embedding
    torch.testing.assert_close(pos[:4], stock.visual.positional_embedding[:1].expand(4, -1), atol=0, rtol=0)
    again = from_open_clip(stock, {"n_tokens": 4, "token_dim": 32}, noise_std=0.02, seed=3)
    torch.testing.assert_close(again.visual.class_embedding, cls, atol=0, rtol=0)  # seeded


def test_open_clip_checkpoint_dict_with_module_prefix(tmp_path, stock, inputs):
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in stock.state_dict().items()}}, path)
    model = from_open_clip(path, {"n_tokens": 2, "token_dim": 64}, model_name=tiny_cfg(), noise_std=0.0).eval()
    images, _ = inputs
    with torch.no_grad():
        close(model.encode_image(images), per_block(stock.encode_image(images), 2))


def test_create_model_with_a_stock_checkpoint_converts_it(checkpoint, stock, inputs):
    model = create_model(tiny_cfg(), {"n_tokens": 4, "token_dim": 32}, pretrained=checkpoint).eval()
    images, _ = inputs
    with torch.no_grad():
        cosines = (model.encode_image(images) * per_block(stock.encode_image(images), 4)).sum(-1)
    assert cosines.min() > 0.9  # noise 0.02 on the extra class tokens only


def test_width_mismatch_is_refused(stock):
    message = r"n_tokens \* token_dim = 4 \* 16 = 64 must equal the stock embedding width 128"
    with pytest.raises(ValueError, match=message):
        from_open_clip(stock, {"n_tokens": 4, "token_dim": 16})


def test_checkpoint_file_needs_model_name(checkpoint):
    with pytest.raises(ValueError, match="model_name"):
        from_open_clip(checkpoint, {"n_tokens": 4, "token_dim": 32})


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        from_open_clip(tmp_path / "nope.pt", {"n_tokens": 4, "token_dim": 32}, model_name=tiny_cfg())


def test_converted_state_dict_has_multi_token_shapes(stock):
    sd = convert_stock_state_dict(stock.state_dict(), 4, 32, noise_std=0.0)
    assert sd["visual.class_embedding"].shape == (4, 64)
    assert sd["visual.positional_embedding"].shape == (4 + 16, 64)
    assert sd["text.class_tokens"].abs().max() == 0
    assert "logit_scale" not in sd and "text.text_projection" in sd


def test_text_projection_with_bias_is_split_in_blocks(inputs):
    cfg = tiny_cfg()
    cfg["text_cfg"]["proj_bias"] = True
    torch.manual_seed(5)
    stock = create_stock_model(cfg).eval()
    torch.nn.init.normal_(stock.text_projection.bias)
    model = from_open_clip(stock, {"n_tokens": 4, "token_dim": 32}, model_name=cfg, noise_std=0.0).eval()
    _, tokens = inputs
    with torch.no_grad():
        close(model.encode_text(tokens), per_block(stock.encode_text(tokens), 4))
