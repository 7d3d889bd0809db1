"""Weights & Biases logging (training/wandb_log.py): off by default; with ``log.wandb=true`` in W&B's offline mode
the run writes W&B's files, whose history rows are the rows of metrics.jsonl (TensorBoard's), and a resumed run
continues the same W&B run."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from manifold_align_train.checkpoint import find_latest_checkpoint, load_checkpoint
from manifold_align_train.config import load_config
from manifold_align_train.trainer import train
from manifold_align_train.wandb_log import RUN_ID_FILE

from labelled_digits import FAST

RUN = [*FAST, "train.warmup=1", "log.every=5", "eval.every=5"]


def _wandb_records(path: Path):
    """The records of a ``.wandb`` file: W&B's 7-byte header, then LevelDB-log blocks of 32 KiB whose chunks
    (7-byte header: crc, length, type full/first/middle/last) carry serialized ``wandb_internal_pb2.Record``s."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        payload, position = data[position + 7:position + 7 + length], position + 7 + length
        parts = payload if kind in (1, 2) else parts + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def _history(run_file: Path) -> dict[int, dict]:
    rows = {}
    for record in _wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows[row["_step"]] = row
    return rows


@pytest.mark.slow
def test_an_offline_run_writes_wandbs_files_with_the_rows_tensorboard_gets(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(load_config(None, [*RUN, "train.steps=10", "log.wandb=true"]), run)
    run_id = (run / RUN_ID_FILE).read_text().strip()
    [run_file] = (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    history = _history(run_file)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(history) == [5, 10] and {row["kind"] for row in rows} == {"train", "eval"}
    for row in rows:
        numbers = {k: v for k, v in row.items() if k not in ("step", "kind") and isinstance(v, (int, float))}
        assert numbers and {f"{row['kind']}/{k}": v for k, v in numbers.items()}.items() <= history[row["step"]].items()

    # resumed: the same W&B run continues
    state = load_checkpoint(find_latest_checkpoint(run / "checkpoints"))
    train(load_config(None, [*RUN, "train.steps=15", "log.wandb=true"]), run, resume_state=state)
    assert (run / RUN_ID_FILE).read_text().strip() == run_id
    assert 15 in set().union(*(_history(f) for f in (run / "wandb").glob(f"offline-run-*-{run_id}/run-*.wandb")))


def test_wandb_is_off_by_default(tmp_path):
    cfg = load_config(None, [*FAST, "train.steps=2", "train.warmup=1"])
    assert cfg.log.wandb is False
    train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "wandb").exists() and not (tmp_path / "run" / RUN_ID_FILE).exists()
