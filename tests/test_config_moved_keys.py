"""Configurations and checkpoints from before geometries had their own section are refused in one line."""

from __future__ import annotations

import pytest

from manifold_align_train.config import ConfigError, config_from_dict, config_to_dict, load_config


def test_an_old_config_is_refused_with_where_its_keys_went():
    old = config_to_dict(load_config())
    old["loss"].update(similarity="lorentz", similarity_options={}, entailment_weight=0.2)
    with pytest.raises(ConfigError) as error:
        config_from_dict(old)
    message = str(error.value)
    assert "\n" not in message
    for before, after in (("loss.similarity", "model.geometry"), ("loss.entailment_weight",
                                                                  "model.geometry_options.entailment_weight")):
        assert before in message and after in message


def test_auto_is_resolved_once_into_the_saved_config(monkeypatch):
    cfg = load_config(None, ["model.geometry=euclidean"])
    saved = config_to_dict(cfg)["loss"]["temperature"]
    assert saved["name"] == "learnable"  # not "auto": a resumed run rebuilds exactly this temperature
    from manifold_align.geometries import geometry_class

    spec = geometry_class("euclidean").default_temperature
    assert {key: saved[key] for key in spec} == spec
    # resuming from the saved config keeps it even after the geometry's default changed
    monkeypatch.setattr(geometry_class("euclidean"), "default_temperature", {"name": "fixed", "scale": 3.0})
    assert config_to_dict(config_from_dict(config_to_dict(cfg)))["loss"]["temperature"] == saved
    assert config_to_dict(load_config(None, ["model.geometry=euclidean"]))["loss"]["temperature"]["name"] == "fixed"
