"""A run builds one geometry: the model's. The loss scores with that instance, nothing else builds another."""

from __future__ import annotations

import torch

from manifold_align.geometries import Geometry


def test_a_run_builds_one_geometry_and_the_loss_uses_the_models(tmp_path, monkeypatch):
    from manifold_align_train.config import load_config
    from manifold_align_train.trainer import Trainer

    built = []
    original = Geometry.__init__

    def counting(self, **kwargs):
        built.append(type(self).__name__)
        original(self, **kwargs)

    monkeypatch.setattr(Geometry, "__init__", counting)
    cfg = load_config(None, ["model.geometry=lorentz", "model.geometry_options.entailment_weight=0.2",
                             "data.batch_size=16", "train.steps=2", "train.warmup=1", "log.progress=false",
                             "log.tensorboard=false", "train.threads=1", "train.device=cpu"])
    torch.set_num_threads(1)
    trainer = Trainer(cfg, tmp_path / "run")
    batches = trainer._batches()
    before = trainer.model.geometry.log_curvature.detach().clone()
    trainer.train_step([next(batches)])
    trainer.evaluate()
    assert built == ["LorentzGeometry"]
    assert trainer.loss_fn.geometry is trainer.model.geometry
    # the loss does not own (register) the geometry's parameters: the model does, once
    assert list(trainer.loss_fn.parameters()) == []
    # and the optimizer steps them: the curvature moved
    assert not torch.equal(trainer.model.geometry.log_curvature.detach(), before)
