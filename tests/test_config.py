"""Tests for training/config.py and the command line (training/cli.py)."""

from __future__ import annotations

import json
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
    assert load_config(CONFIGS / "digits-oblique.yaml") == RunConfig()


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
    cfg = load_config(None, ["loss.similarity=cosine", "train.grad_clip=null", "seed=3"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


# -- overrides -----------------------------------------------------------------------------------
def test_overrides_from_the_issue():
    cfg = load_config(None, ["loss.similarity=cosine", "loss.temperature.name=learnable",
                             "data.caption_noise=0.4", "train.steps=500", "seed=1"])
    assert cfg.loss.similarity == "cosine"
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
    with pytest.raises(ConfigError, match=r"'loss\.similarty'.*did you mean 'similarity'"):
        load_config(None, ["loss.similarty=cosine"])


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
    with pytest.raises(ConfigError, match=r"'loss\.similarity'.*did you mean 'cosine'"):
        load_config(None, ["loss.similarity=cosin"])


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
    cfg = load_config(None, ["loss.similarity=euclidean", "loss.similarity_options.squared=false"])
    assert cfg.loss.similarity_options == {"squared": False} and cfg.loss.entailment_weight == 0.0
    from manifold_align_train.config import embed_config

    assert embed_config(cfg).make_similarity().squared is False
    cfg = load_config(None, ["loss.similarity=lorentz", "loss.entailment_weight=0.2",
                             "loss.similarity_options={curvature_init: 0.5, learn_curvature: false}"])
    assert cfg.loss.entailment_weight == 0.2 and cfg.loss.similarity_options["curvature_init"] == 0.5


@pytest.mark.parametrize("overrides, match", [
    (["loss.entailment_weight=0.2"], r"'loss\.entailment_weight'.*needs the hyperboloid.*'oblique'"),
    (["loss.similarity=lorentz", "loss.entailment_weight=-1"], r"'loss\.entailment_weight'.*non-negative"),
    (["loss.similarity=euclidean", "loss.similarity_options.sqared=false"],
     r"'loss\.similarity_options'.*accepted: squared"),
    (["loss.similarity=lorentz", "loss.similarity_options.curvature_init=0"], r"'loss\.similarity_options'.*positive"),
    (["loss.similarity_options=3"], r"'loss\.similarity_options'.*mapping"),
])
def test_bad_geometry_keys_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


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
