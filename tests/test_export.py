"""Sharing models the way open_clip does (manifold_align/clip/export.py, ``manifold-align export``): a directory in
open_clip's local-dir / Hub layout that our create_model loads back exactly and, for a k = 1 cosine model, that
stock open_clip loads with the same features."""

from __future__ import annotations

import dataclasses
import json
import os
import stat

import open_clip
import pytest
import torch
from PIL import Image

from manifold_align.clip import create_model, get_tokenizer, is_export_dir, save_pretrained
from manifold_align_train.cli import main

CAPTIONS = ["a handwritten seven", "the number two written by hand", "nine"]


def _perturbed(model):
    """Weights away from their init (and the temperature from its start), so a loader that re-initializes
    anything is caught."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=generator))
    return model.eval()


def _features(model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


@pytest.mark.parametrize("embed", [
    {"n_tokens": 16, "token_dim": 32, "geometry": "oblique"},
    {"n_tokens": 4, "token_dim": 8, "geometry": "lorentz"},  # a geometry with learnable parameters
    {"n_tokens": 1, "token_dim": 512, "geometry": "cosine", "objective": "sigmoid"},  # stock layout
], ids=["oblique", "lorentz", "cosine-sigmoid"])
def test_ours_to_a_directory_and_back_is_identical(embed, tmp_path):
    torch.manual_seed(0)
    model = _perturbed(create_model("digits-fast", embed))
    directory = save_pretrained(model, tmp_path / "export", "digits-fast")
    assert is_export_dir(directory) and is_export_dir(f"local-dir:{directory}")
    loaded = create_model(str(directory)).eval()
    assert dataclasses.asdict(loaded.embed_cfg) == dataclasses.asdict(model.embed_cfg)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images, tokens = torch.randn(3, 3, 32, 32), get_tokenizer("digits-fast")(CAPTIONS)
    for ours, theirs in zip(_features(model, images, tokens), _features(loaded, images, tokens)):
        assert torch.equal(ours, theirs)
    assert torch.equal(create_model(f"local-dir:{directory}").temperature.scale(), model.temperature.scale())


def test_a_k1_cosine_model_loads_in_stock_open_clip_with_our_features(tmp_path):
    torch.manual_seed(0)
    model = _perturbed(create_model("digits-fast", {"n_tokens": 1, "token_dim": 512, "geometry": "cosine"}))
    directory = save_pretrained(model, tmp_path / "export", "digits-fast")
    stock, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    stock.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{directory}")
    tokens = tokenizer(CAPTIONS)
    assert torch.equal(tokens, get_tokenizer("digits-fast")(CAPTIONS))
    image = Image.fromarray((torch.rand(50, 40, 3) * 255).byte().numpy())
    ours_preprocess = open_clip.image_transform(32, is_train=False)  # the trainer's validation transform
    assert torch.equal(preprocess(image), ours_preprocess(image))
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ours_image, ours_text = _features(model, images, tokens)
        torch.testing.assert_close(stock.encode_image(images, normalize=True), ours_image[:, 0], atol=1e-6, rtol=0)
        torch.testing.assert_close(stock.encode_text(tokens, normalize=True), ours_text[:, 0], atol=1e-6, rtol=0)
    assert stock.logit_scale.exp().item() == pytest.approx(model.temperature.scale().item(), rel=1e-6)


def test_the_directory_is_open_clips_layout_and_our_metadata(tmp_path):
    model = create_model("digits-fast")
    directory = save_pretrained(model, tmp_path / "export", "digits-fast")
    config = json.loads((directory / "open_clip_config.json").read_text())
    assert set(config) == {"model_cfg", "preprocess_cfg", "manifold_align"}
    assert config["model_cfg"]["vision_cfg"] == open_clip.get_model_config("digits-fast")["vision_cfg"]
    assert config["manifold_align"]["embed_cfg"] == dataclasses.asdict(model.embed_cfg)
    assert config["manifold_align"]["weights_layout"] == "manifold_align"
    assert sorted(os.listdir(directory)) == ["open_clip_config.json", "open_clip_model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(directory):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o666 & ~umask  # as open() creates files
    with pytest.raises(ValueError, match="does not describe this model"):
        save_pretrained(model, tmp_path / "other", "tiny-vit-oblique")
    assert not (tmp_path / "other" / "open_clip_model.safetensors").exists()


def test_an_export_is_a_pretrained_start_in_another_geometry(tmp_path):
    """``pretrained=DIR`` converts a k = 1 export into another geometry exactly as the stock checkpoint that
    open_clip reads from the same directory converts."""
    torch.manual_seed(0)
    sphere = _perturbed(create_model("digits-fast", {"n_tokens": 1, "token_dim": 512, "geometry": "cosine"}))
    directory = save_pretrained(sphere, tmp_path / "export", "digits-fast")
    torch.save(open_clip.create_model(f"local-dir:{directory}").state_dict(), tmp_path / "stock.pt")
    embed = {"n_tokens": 16, "token_dim": 32}
    from_dir = create_model("digits-fast", embed, pretrained=str(directory))
    from_file = create_model("digits-fast", embed, pretrained=str(tmp_path / "stock.pt"))
    assert from_dir.state_dict().keys() == from_file.state_dict().keys()
    for key, value in from_file.state_dict().items():
        assert torch.equal(from_dir.state_dict()[key], value), key


def test_the_export_command_writes_the_checkpoints_model(digits_checkpoint, tmp_path, capsys):
    from manifold_align_train.checkpoint import load_checkpoint

    assert main(["export", "--checkpoint", str(digits_checkpoint), "--output", str(tmp_path / "out")]) == 0
    assert "exported" in capsys.readouterr().out
    loaded = create_model(str(tmp_path / "out"))
    state = load_checkpoint(digits_checkpoint)["model"]
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in state.items())


def test_stock_or_foreign_directories_are_refused_clearly(tmp_path):
    (tmp_path / "stock").mkdir()
    (tmp_path / "stock" / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    with pytest.raises(ValueError, match="not written by manifold_align.clip.save_pretrained"):
        create_model(str(tmp_path / "stock"))
