"""Tests for training/config.py and the command line (training/cli.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from clip_reference import clip_temperature

from manifold_align_train.cli import build_parser, main
from manifold_align_train.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


# -- defaults and shipped files ----------------------------------------------------------------
def test_default_yaml_equals_dataclass_defaults():
    assert load_config(CONFIGS / "digits-oblique.yaml") == load_config(None) == config_from_dict(
        config_to_dict(RunConfig()))


SHIPPED = sorted(path.name for path in CONFIGS.glob("*.yaml"))


def test_every_config_is_tested():
    assert {"digits-lorentz.yaml", "digits-euclidean.yaml", "vit-b-16-lorentz-webdataset.yaml",
            "vit-b-16-euclidean-webdataset.yaml", "vit-b-16-webdataset.yaml"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, RunConfig)


def test_sphere_baseline_is_clip_like():
    cfg = load_config(CONFIGS / "digits-sphere.yaml")
    assert (cfg.model.geometry, cfg.model.n_tokens, cfg.model.token_dim) == ("cosine", 1, 512)
    temperature = cfg.loss.temperature
    clip = clip_temperature()  # open_clip's initial temperature and cap
    assert (temperature.name, temperature.init, temperature.max_scale) == pytest.approx(
        (clip["name"], clip["init"], clip["max_scale"]))
    # everything but the geometry matches the default run
    assert cfg.train == RunConfig().train and cfg.data == RunConfig().data


def test_dump_and_load_round_trip(tmp_path):
    cfg = load_config(None, ["model.geometry=cosine", "train.grad_clip=null", "seed=3"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


# -- overrides -----------------------------------------------------------------------------------
def test_overrides_from_the_issue():
    cfg = load_config(None, ["model.geometry=cosine", "loss.temperature.name=learnable",
                             "data.caption_noise=0.4", "train.steps=500", "seed=1"])
    assert cfg.model.geometry == "cosine"
    assert cfg.loss.temperature.name == "learnable"
    assert cfg.data.caption_noise == 0.4
    assert cfg.train.steps == 500 and cfg.seed == 1


def test_override_values_are_yaml_and_ints_widen_to_float():
    cfg = load_config(None, ["train.lr=1", "train.grad_clip=null", "log.tensorboard=false"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.grad_clip is None and cfg.log.tensorboard is False


def test_apply_overrides_does_not_modify_input():
    base = {"train": {"steps": 3}}
    merged = apply_overrides(base, ["train.steps=5"])
    assert base == {"train": {"steps": 3}} and merged == {"train": {"steps": 5}}


def test_temperature_spec_only_passes_used_fields():
    scheduled = ["loss.temperature.start=2", "loss.temperature.end=4", "loss.temperature.warmup=3",
                 "loss.temperature.init=0.5", "loss.temperature.scale=7"]  # the last two: not a schedule's
    cfg = load_config(None, ["loss.temperature.name=cosine", *scheduled])
    assert cfg.loss.temperature.to_kwargs(100) == {"name": "cosine", "start": 2.0, "end": 4.0,
                                                   "steps": 100, "warmup": 3}
    assert load_config(None, ["loss.temperature.name=none", *scheduled]).loss.temperature.to_kwargs(100) == {
        "name": "none"}


# -- errors ---------------------------------------------------------------------------------------
def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"'model\.geometri'.*did you mean 'geometry'"):
        load_config(None, ["model.geometri=cosine"])
    # the keys that moved to `model` are gone from `loss`
    with pytest.raises(ConfigError, match=r"'loss\.similarity'"):
        load_config(None, ["loss.similarity=cosine"])
    with pytest.raises(ConfigError, match=r"'loss\.entailment_weight'"):
        load_config(None, ["loss.entailment_weight=0.2"])


def test_unknown_section_suggests():
    with pytest.raises(ConfigError, match=r"'trian'.*did you mean 'train'"):
        config_from_dict({"trian": {"steps": 3}})


def test_bad_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"'train\.steps'.*expected int"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match=r"'train\.steps'.*expected int"):
        load_config(None, ["train.steps=true"])  # bool is not an int here
    with pytest.raises(ConfigError, match=r"'train\.steps'.*expected int"):
        load_config(None, ["train.steps=1.5"])


def test_bad_choice_suggests():
    with pytest.raises(ConfigError, match=r"'train\.precision'.*did you mean 'bf16'"):
        load_config(None, ["train.precision=bf61"])
    with pytest.raises(ConfigError, match=r"'model\.geometry'.*did you mean 'cosine'"):
        load_config(None, ["model.geometry=cosin"])


def test_bad_range():
    with pytest.raises(ConfigError, match=r"'data\.caption_noise'.*\[0, 1\]"):
        load_config(None, ["data.caption_noise=1.5"])
    with pytest.raises(ConfigError, match=r"'train\.warmup'"):
        load_config(None, ["train.steps=10", "train.warmup=10"])


def test_class_tokens_must_divide_n_tokens():
    assert load_config(None, []).model.class_tokens is None
    assert load_config(None, ["model.class_tokens=4"]).model.class_tokens == 4
    with pytest.raises(ConfigError, match=r"'model\.class_tokens'.*must divide n_tokens = 12"):
        load_config(None, ["model.n_tokens=12", "model.class_tokens=5"])
    with pytest.raises(ConfigError, match=r"'model\.class_tokens'.*>= 1, got 0"):
        load_config(None, ["model.class_tokens=0"])


def test_geometry_keys():
    cfg = load_config(None, ["model.geometry=euclidean", "model.geometry_options.squared=false"])
    assert cfg.model.geometry_options == {"squared": False}
    from manifold_align_train.config import embed_config

    assert embed_config(cfg).make_geometry().squared is False
    cfg = load_config(None, ["model.geometry=lorentz", "model.geometry_options.entailment_weight=0.2",
                             "model.geometry_options={curvature_init: 0.5, learn_curvature: false, "
                             "entailment_weight: 0.2}"])
    assert cfg.model.geometry_options["curvature_init"] == 0.5
    geometry = embed_config(cfg).make_geometry()
    assert geometry.entailment_weight == 0.2 and not geometry.log_curvature.requires_grad


@pytest.mark.parametrize("geometry", ["oblique", "cosine", "euclidean", "lorentz"])
def test_auto_temperature_is_resolved_once_into_the_config(geometry):
    """The saved configuration names the temperature the run trains with: a later default cannot change it."""
    from manifold_align import get_geometry

    cfg = load_config(None, [f"model.geometry={geometry}"])
    spec = get_geometry(geometry, n_tokens=2, token_dim=4).default_temperature
    assert cfg.loss.temperature.name == spec["name"] != "auto"
    assert cfg.loss.temperature.to_kwargs(cfg.train.steps) == {**cfg.loss.temperature.to_kwargs(1), **spec}
    assert config_to_dict(cfg)["loss"]["temperature"]["name"] == spec["name"]


@pytest.mark.parametrize("overrides, match", [
    (["model.geometry_options.entailment_weight=0.2"],
     r"'model\.geometry_options'.*'oblique' takes no option\(s\) \['entailment_weight'\]"),
    (["model.geometry=euclidean", "model.geometry_options.sqared=false"],
     r"'model\.geometry_options'.*accepted: squared"),
    (["model.geometry_options=3"], r"'model\.geometry_options'.*mapping"),
])
def test_bad_geometry_keys_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides, match", [
    (["model.geometry=lorentz", "model.geometry_options.entailment_weight=-1"],
     r"'model\.geometry_options'.*`entailment_weight` must be a finite number >= 0"),
    (["model.geometry=lorentz", "model.geometry_options.curvature_init=0"],
     r"'model\.geometry_options'.*`curvature_init` must be a positive"),
    (["model.geometry=euclidean", "model.geometry_options.squared=maybe"],
     r"'model\.geometry_options'.*`squared` must be True or False"),
])
def test_bad_geometry_option_values_stop_the_cli_before_anything_runs(tmp_path, monkeypatch, capsys, overrides,
                                                                      match):
    monkeypatch.chdir(tmp_path)
    argv = ["train", *[a for o in overrides for a in ("--set", o)], "--set", "name=bad"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert not (tmp_path / "runs").exists()


def test_section_given_a_value():
    with pytest.raises(ConfigError, match=r"'train'"):
        config_from_dict({"train": 3})
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])


def test_yaml_file_error_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stpes: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'train\.stpes'.*did you mean 'steps'"):
        load_config(path)


def test_config_to_dict_is_plain():
    cfg = load_config(None, [])
    values = config_to_dict(cfg)
    assert type(values["loss"]["temperature"]) is dict
    json.loads(json.dumps(values))  # plain containers and scalars only
    assert config_from_dict(values) == cfg


# -- command line -------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: manifold-align" in out


def test_cli_config_error_exit_code(capsys):
    assert main(["train", "--set", "train.stesp=3"]) == 2
    assert "did you mean 'steps'" in capsys.readouterr().err


def test_console_script_help():
    # `python -m manifold_align_train` is what torchrun launches; it must reach the same parser.
    out = subprocess.run([sys.executable, "-m", "manifold_align_train", "train", "--help"], capture_output=True,
                         text=True, check=True, cwd=REPO).stdout
    assert "--resume" in out and "--set" in out
