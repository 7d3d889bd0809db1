"""What a finished run leaves behind: ``summary.json`` and the report printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .atomic_write import atomic_write_text
from .config import config_to_dict
from .data import EMBEDDED_DATASETS
from .distributed_env import device_name
from .evaluation import format_metrics
from .metrics_log import json_value

__all__ = ["format_report", "geometry_values", "run_summary", "write_json"]

NAMES_SHOWN = 10  # bad samples named in summary.json and the report; the counts cover all of them


def geometry_values(geometry) -> dict[str, float]:
    """The geometry's learned values (``Geometry.values()``) as floats, in one host transfer."""
    import torch

    values = geometry.values()
    return dict(zip(values, torch.stack(list(values.values())).tolist())) if values else {}


def run_summary(trainer, final: dict[str, float], wall: float, resumed: Path | None) -> dict[str, Any]:
    """The ``summary.json`` of a finished :class:`manifold_align_train.trainer.Trainer` (``wall`` in seconds)."""
    import torch

    out = trainer.output_dir
    return {
        "final_metrics": final,
        "final_step": trainer.step,
        "final_loss": trainer.last_metrics.get("loss"),
        "final_temperature": trainer.model.temperature.value(),
        # the temperature the model was built with ("auto" resolved to the geometry's own)
        "temperature": trainer.model.embed_cfg.temperature,
        "final_geometry": geometry_values(trainer.model.geometry),
        "final_extra_losses": {key: value for key, value in trainer.last_metrics.items()
                               if key.endswith("_loss") and key != "contrastive_loss"},
        "wall_time_seconds": wall,
        "train_seconds_total": trainer.counters.train_seconds,
        "samples_seen": trainer.counters.samples,
        "skipped_samples": trainer.counters.skipped_samples,
        "bad_samples": _bad(trainer.counters.bad_samples),
        "bad_validation_samples": _bad(getattr(trainer.data.retrieval, "bad", [])),
        "bad_eval_samples": {s.name: _bad(s.task.bad) for s in getattr(trainer.data, "eval_sets", [])},
        "nonfinite_steps_skipped": trainer.counters.nonfinite_steps,
        "world_size": trainer.env.world_size,
        "device": str(trainer.device),
        # a seed's result depends on the machine and the install: what it ran on, and the torch that ran it
        "hardware": device_name(trainer.device),
        "torch_version": torch.__version__,
        "resumed_from": str(resumed) if resumed else None,
        "outputs": {
            "run_dir": str(out), "config": str(out / "config.yaml"),
            "metrics": str(out / "metrics.jsonl"),
            "tensorboard": str(out / "tensorboard") if trainer.cfg.log.tensorboard else None,
            "checkpoints": str(trainer.checkpoint_dir),
            "final_checkpoint": trainer.counters.last_checkpoint,
            "summary": str(out / "summary.json"),
        },
        "config": config_to_dict(trainer.cfg),
    }


def _bad(names: list[str]) -> dict[str, Any]:
    """``{"distinct": count, "names": the first NAMES_SHOWN}`` of a list of distinct bad-sample names."""
    return {"distinct": len(names), "names": list(names[:NAMES_SHOWN])}


def _bad_text(bad: dict[str, Any]) -> str:
    shown = ", ".join(bad["names"])
    more = f" and {bad['distinct'] - len(bad['names'])} more" if bad["distinct"] > len(bad["names"]) else ""
    return f"{bad['distinct']}" + (f" ({shown}{more})" if shown else "")


def _temperature_text(spec: Any) -> str:
    """The temperature the run trained with, e.g. ``learnable from 1/20``."""
    if isinstance(spec, dict) and spec.get("name") == "learnable":
        return f"learnable from 1/{spec['init']:g}"
    return spec.get("name") if isinstance(spec, dict) else str(spec)


def format_report(summary: dict[str, Any]) -> str:
    """The lines printed at the end of ``manifold-align train`` (from a :func:`run_summary`)."""
    cfg = summary["config"]
    tokens = cfg["model"].get("class_tokens")
    # caption noise is drawn into the embedded datasets only; a CSV or shard run has its captions as they are
    noise = cfg["data"]["caption_noise"] if cfg["data"]["dataset"] in EMBEDDED_DATASETS else None
    bad = summary.get("bad_samples", {"distinct": 0, "names": []})
    bad_val = summary.get("bad_validation_samples", {"distinct": 0, "names": []})
    lines = [
        f"manifold-align: trained {cfg['model']['name']} on {cfg['data']['dataset']} "
        f"({cfg['model']['geometry']}, k={cfg['model']['n_tokens']}, d={cfg['model']['token_dim']}"
        f"{f', {tokens} class token(s) per tower' if tokens is not None else ''}"
        f"{f', caption noise {noise}' if noise is not None else ''}) for {summary['final_step']} steps",
        format_metrics(summary["final_metrics"]),
        f"  final temperature scale {summary['final_temperature']:.4g} "
        f"({_temperature_text(summary['temperature'])})   final loss {_loss_text(summary['final_loss'])}",
        _geometry_text(summary, cfg),
        f"  bad training samples {_bad_text(bad)}, met {summary['skipped_samples']} time(s) in all and "
        f"replaced; bad validation samples {_bad_text(bad_val)}, left out",
        f"  non-finite steps skipped {summary['nonfinite_steps_skipped']}",
        f"  wall time {summary['wall_time_seconds']:.1f} s",
        f"  outputs in {summary['outputs']['run_dir']}/ (summary.json, metrics.jsonl, config.yaml, "
        f"checkpoints/{', tensorboard/' if summary['outputs']['tensorboard'] else ''})",
    ]
    return "\n".join(line for line in lines if line)


def _geometry_text(summary: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The geometry's final values and extra loss terms, or nothing for a geometry without either."""
    parts = [f"{name.replace('_', ' ')} {value:.4g}" for name, value in (summary.get("final_geometry") or {}).items()]
    options = cfg["model"].get("geometry_options") or {}
    for key, value in (summary.get("final_extra_losses") or {}).items():
        weight = options.get(f"{key[:-len('_loss')]}_weight")
        parts.append(f"{key.replace('_', ' ')} {value:.4f}" + (f" (weight {weight:g})" if weight is not None else ""))
    return f"  final {', '.join(parts)}" if parts else ""


def _loss_text(loss: Any) -> str:
    """``final_loss`` for the report: None when no step ran in this process (a finished run resumed)."""
    return "n/a (no step in this run)" if loss is None else f"{loss:.4f}"


def _valid_json(obj: Any) -> Any:
    """``obj`` with NaN/Inf floats (and tensors) made JSON-valid, recursively (see ``metrics_log.json_value``)."""
    if isinstance(obj, dict):
        return {key: _valid_json(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_valid_json(value) for value in obj]
    return json_value(obj)


def write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented, valid JSON, atomically (a temporary file renamed over ``path``)."""
    atomic_write_text(path, json.dumps(_valid_json(obj), indent=2, default=str, allow_nan=False) + "\n")
