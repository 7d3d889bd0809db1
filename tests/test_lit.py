"""Locked towers (LiT): the ``model.lock_*`` keys (training/config.py, builders.lock_towers) lock what open_clip's
``--lock-*`` flags lock; locked parameters stay out of the optimizer and bit-identical through training; a fully
locked tower's forward records no graph."""

from __future__ import annotations

import pytest
import torch

from manifold_align.clip import create_model, create_stock_model
from manifold_align_train.builders import lock_towers
from manifold_align_train.config import ConfigError, load_config
from manifold_align_train.trainer import Trainer

from labelled_digits import FAST


def _trainable(module: torch.nn.Module) -> set[str]:
    return {name for name, param in module.named_parameters() if param.requires_grad}


@pytest.mark.parametrize("groups", [0, 1, 2, 3, 4])
def test_image_lock_frees_what_open_clips_lock_frees(groups):
    stock, ours = create_stock_model("digits-fast"), create_model("digits-fast", {"n_tokens": 1, "token_dim": 512})
    stock.lock_image_tower(unlocked_groups=groups)
    lock_towers(ours, load_config(None, ["model.lock_image=true", f"model.lock_image_unlocked_groups={groups}"]).model)
    assert _trainable(ours.visual) == _trainable(stock.visual)
    assert _trainable(ours.text) == {name for name, p in ours.text.named_parameters()}  # text untouched


@pytest.mark.parametrize("layers", [0, 1, 2, 3])
def test_text_lock_frees_what_open_clips_lock_frees(layers):
    stock, ours = create_stock_model("digits-fast"), create_model("digits-fast", {"n_tokens": 1, "token_dim": 512})
    stock.lock_text_tower(unlocked_layers=layers, freeze_layer_norm=True)
    overrides = ["model.lock_text=true", f"model.lock_text_unlocked_layers={layers}",
                 "model.lock_text_freeze_layer_norm=true"]
    lock_towers(ours, load_config(None, overrides).model)
    text_names = {name for name, _ in ours.text.named_parameters()}
    assert {f"text.{n}" for n in _trainable(ours.text)} == {f"text.{n}" for n in _trainable(stock) & text_names}
    assert _trainable(ours.visual) == {name for name, _ in ours.visual.named_parameters()}


def test_text_lock_without_freezing_layer_norm_leaves_the_locked_norms_trainable():
    model = create_model("digits-fast")
    lock_towers(model, load_config(None, ["model.lock_text=true"]).model)  # freeze_layer_norm false, as the flag
    norms = {name for name, module in model.text.named_modules() if isinstance(module, torch.nn.LayerNorm)}
    expected = {f"{norm}.{p}" for norm in norms for p in ("weight", "bias")}
    assert _trainable(model.text) == expected and len(expected) == 2 * (2 * 2 + 1)  # 2 per block, and ln_final
    assert not model.text.class_tokens.requires_grad and not model.text.text_projection.requires_grad


def test_lock_options_without_their_lock_are_refused():
    for option in ("model.lock_image_unlocked_groups=1", "model.lock_image_freeze_bn_stats=true",
                   "model.lock_text_unlocked_layers=1", "model.lock_text_freeze_layer_norm=true"):
        with pytest.raises(ConfigError, match="applies only with model.lock_"):
            load_config(None, [option])


@pytest.mark.slow
def test_locked_parameters_are_out_of_the_optimizer_and_bit_identical_after_training(tmp_path):
    cfg = load_config(None, [*FAST, "train.steps=6", "train.warmup=1", "model.lock_image=true",
                             "model.lock_text=true", "model.lock_text_unlocked_layers=2",
                             "model.lock_text_freeze_layer_norm=true"])
    trainer = Trainer(cfg, tmp_path / "run")
    model = trainer.model
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    locked = {name for name, param in model.named_parameters() if not param.requires_grad}
    assert {name for name in before if name.startswith("visual.")} <= locked
    assert "text.transformer.resblocks.0.attn.in_proj_weight" in locked
    assert "text.transformer.resblocks.1.attn.in_proj_weight" not in locked
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    batches = iter(trainer.data.train)
    for _ in range(cfg.train.steps):
        trainer.train_step([next(batches)])
    after = dict(model.named_parameters())
    for name in locked:
        assert torch.equal(after[name], before[name]), name  # bit for bit
    changed = [name for name in before if name not in locked and not torch.equal(after[name], before[name])]
    assert "text.transformer.resblocks.1.attn.in_proj_weight" in changed and "text.text_projection" in changed


def test_a_fully_locked_tower_runs_without_a_graph():
    model = create_model("digits-fast")
    images = torch.randn(4, 3, 32, 32)

    def saved_tensors(forward) -> int:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = forward()
        return len(saved), out

    unlocked, _ = saved_tensors(lambda: model.encode_image(images))
    assert unlocked > 0  # the hook sees what autograd keeps for backward
    model.lock_image_tower()
    kept, features = saved_tensors(lambda: model.encode_image(images))
    assert kept == 0 and features.grad_fn is None and not features.requires_grad
