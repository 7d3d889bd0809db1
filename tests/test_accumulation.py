"""Exact gradient accumulation (train.accumulation_mode=exact, GradCache): A micro-batches of B pairs give the loss
and every parameter's gradient of one batch of A x B pairs.

The reference is the trainer's own plain step on the batch of 128 (no accumulation: one forward, one loss, one
backward); the accumulated step sees the same 128 pairs as four batches of 32.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

BASE = ["log.progress=false", "log.tensorboard=false", "train.threads=1", "train.device=cpu", "train.steps=2",
        "train.warmup=1"]
GEOMETRIES = {
    "oblique": [],
    "cosine": ["model.geometry=cosine"],
    "lorentz-entailment": ["model.geometry=lorentz", "model.geometry_options.entailment_weight=0.2"],
}


def _gradients(tmp_path, settings, split, mode="exact"):
    """Loss and gradients of the trainer's first step on one batch of 128 pairs, as ``split`` micro-batches."""
    from manifold_align_train.config import load_config
    from manifold_align_train.trainer import Trainer

    cfg = load_config(None, BASE + settings + ["data.batch_size=128", f"train.accumulation={split}",
                                               f"train.accumulation_mode={mode}"])
    torch.set_num_threads(1)
    trainer = Trainer(cfg, tmp_path / f"run-{split}-{mode}")
    batch = next(trainer._batches())
    size = batch.images.shape[0] // split
    micro = [batch._replace(images=batch.images[i * size:(i + 1) * size], texts=batch.texts[i * size:(i + 1) * size])
             for i in range(split)]
    trainer.forward_model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    results, samples = trainer._gradients(micro, validate=True)
    assert samples == 128
    loss = torch.stack([r.loss.detach() for r in results]).mean()
    grads = {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return loss, grads, results


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("case", sorted(GEOMETRIES))
def test_four_micro_batches_of_32_equal_one_batch_of_128(case, tmp_path):
    ref_loss, ref_grads, ref_results = _gradients(tmp_path, GEOMETRIES[case], 1)
    loss, grads, results = _gradients(tmp_path, GEOMETRIES[case], 4)
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert grads.keys() == ref_grads.keys()
    worst = {name: _rel(grads[name], ref_grads[name]) for name in grads}
    assert max(worst.values()) < 1e-5, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    if case.startswith("lorentz"):
        assert "log_curvature" in "".join(grads)  # the geometry's parameters are among those compared
        assert float(results[0].extra["entailment"]) == pytest.approx(float(ref_results[0].extra["entailment"]),
                                                                     rel=1e-5)


def test_independent_mode_keeps_the_micro_batch_objective(tmp_path):
    """By name only: each micro-batch is its own contrastive problem (about log 32 at init, not log 128)."""
    loss, _, results = _gradients(tmp_path, [], 4, mode="independent")
    ref_loss, _, _ = _gradients(tmp_path, [], 1)
    assert len(results) == 4
    assert float(loss) < float(ref_loss) - 0.5
    assert abs(float(ref_loss) - math.log(128)) < abs(float(ref_loss) - math.log(32))


@pytest.mark.slow
def test_cli_step_one_with_accumulation_logs_the_big_batch_loss_and_gradient_norm(tmp_path):
    """``manifold-align train --set data.batch_size=32 --set train.accumulation=4`` logs at step 1 the loss and
    gradient norm of ``--set data.batch_size=128`` (same seed, same data)."""
    from manifold_align_train.cli import main

    common = ["--set", "train.steps=2", "--set", "train.warmup=1", "--set", "log.every=1", "--set", "log.progress=false",
              "--set", "log.tensorboard=false", "--set", "train.threads=1", "--set", "train.device=cpu"]
    rows = {}
    for name, settings in (("big", ["--set", "data.batch_size=128"]),
                           ("accumulated", ["--set", "data.batch_size=32", "--set", "train.accumulation=4"])):
        run = tmp_path / name
        assert main(["train", "--output", str(run), *common, *settings]) == 0
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rows[name] = next(row for row in lines if row["kind"] == "train")  # the first logged step
    big, accumulated = rows["big"], rows["accumulated"]
    assert big["step"] == accumulated["step"] == 1
    assert accumulated["loss"] == pytest.approx(big["loss"], rel=1e-5)
    assert accumulated["grad_norm"] == pytest.approx(big["grad_norm"], rel=1e-5)


@pytest.mark.slow
def test_resumed_run_with_exact_accumulation_ends_with_the_uninterrupted_weights(tmp_path):
    """A run stopped after its step-2 checkpoint and resumed ends at step 4 with the weights of the run that went
    straight through (the replayed random state of each micro-batch does not shift the run's generators)."""
    import shutil

    from manifold_align_train import checkpoint as ckpt
    from manifold_align_train.cli import main

    settings = ["data.batch_size=16", "train.accumulation=2", "train.steps=4", "train.warmup=1",
                "train.checkpoint_every=2", "log.progress=false", "log.tensorboard=false", "train.threads=1",
                "train.device=cpu", "model.geometry=lorentz", "model.geometry_options.entailment_weight=0.2"]
    sets = [arg for item in settings for arg in ("--set", item)]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["train", "--output", str(straight), *sets]) == 0
    # the stopped run: the straight run's folder as a kill after the step-2 checkpoint leaves it
    shutil.copytree(straight, stopped)
    (stopped / "summary.json").unlink()
    for step, path in ckpt.list_checkpoints(stopped / "checkpoints"):
        if step > 2:
            path.unlink()
    assert main(["train", "--output", str(stopped), "--resume", "latest", *sets]) == 0
    final = {run: ckpt.load_checkpoint(ckpt.find_latest_checkpoint(run / "checkpoints"))["model"]
             for run in (straight, stopped)}
    assert final[straight].keys() == final[stopped].keys()
    for name, value in final[straight].items():
        torch.testing.assert_close(final[stopped][name], value, atol=1e-6, rtol=0, msg=name)


def test_each_micro_batch_is_re_run_with_the_random_state_of_its_encoding(tmp_path):
    """With patch dropout (random per forward), the exact step's gradient is that of one graph over the four
    micro-batches encoded in sequence from the same generator state: the re-runs replay each encoding's draws.
    Without the replay the re-run would drop other patches and the gradient would differ."""
    from manifold_align.clip.towers import PrefixPatchDropout
    from manifold_align_train.config import load_config
    from manifold_align_train.trainer import Trainer

    cfg = load_config(None, BASE + ["data.batch_size=32", "train.accumulation=4"])
    torch.set_num_threads(1)
    trainer = Trainer(cfg, tmp_path / "run")
    towers = [m for m in trainer.model.modules() if hasattr(m, "patch_dropout") and hasattr(m, "n_tokens")]
    assert towers
    for tower in towers:
        tower.patch_dropout = PrefixPatchDropout(0.5, tower.n_tokens)
    batches = trainer._batches()
    micro = [next(batches) for _ in range(4)]
    trainer.forward_model.train()
    state = torch.get_rng_state()

    trainer.optimizer.zero_grad(set_to_none=True)
    (result,), _ = trainer._gradients(micro, validate=True)
    exact = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}

    torch.set_rng_state(state)
    trainer.optimizer.zero_grad(set_to_none=True)
    outs = [trainer.forward_model(image=b.images, text=b.texts) for b in micro]
    reference = trainer.loss_fn(torch.cat([o["image_features"] for o in outs]),
                                torch.cat([o["text_features"] for o in outs]), outs[0]["logit_scale"])
    reference.loss.backward()
    assert abs(float(result.loss.detach()) - float(reference.loss.detach())) <= 1e-5 * abs(float(reference.loss.detach()))
    for name, p in trainer.model.named_parameters():
        if p.grad is not None:
            assert _rel(exact[name], p.grad) < 1e-5, name
