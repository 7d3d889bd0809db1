"""What a run and ``eval`` say about bad samples and about what they scored (training/run_summary.py).

A CSV run meets its few bad rows once per epoch: the report gives the distinct bad rows, by image file and
CSV line, apart from the number of encounters; bad validation rows are counted; caption noise, which only
the embedded datasets draw, is not reported for a CSV run; ``eval`` says how many pairs it scored.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from manifold_align_train.cli import main

FAST = ["log.progress=false", "log.tensorboard=false", "train.threads=1", "train.warmup=1", "data.batch_size=4",
        "data.caption_noise=0.2", "eval.every=0"]


def _csv_run(tmp_path):
    (tmp_path / "img").mkdir()
    lines = ["filepath\ttitle"]
    for i in range(6):
        Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(tmp_path / "img" / f"{i}.png")
        lines.append(f"img/{i}.png\ta grey square number {i}")
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    lines += ["img/corrupt.png\ta corrupt file", "img/missing.png\ta missing file", "img/0.png\t "]
    table = tmp_path / "pairs.tsv"
    table.write_text("\n".join(lines) + "\n")
    sets = FAST + ["data.dataset=csv", f"data.train_data={table}", f"data.val_data={table}", "train.steps=12"]
    return table, [arg for item in sets for arg in ("--set", item)]


def test_a_csv_run_reports_distinct_bad_rows_by_line_and_their_encounters(tmp_path, capsys):
    table, sets = _csv_run(tmp_path)
    assert main(["train", "--output", str(tmp_path / "run"), *sets]) == 0  # 12 steps = 6 epochs of 9 rows
    report = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # lines 8, 9, 10 of the file (header on line 1) hold the corrupt, missing and captionless rows
    expected = sorted(f"{tmp_path}/img/{name} ({table} line {line})"
                      for name, line in (("corrupt.png", 8), ("missing.png", 9), ("0.png", 10)))
    assert summary["bad_samples"] == {"distinct": 3, "names": expected}
    assert summary["skipped_samples"] > 3  # every encounter over the epochs
    assert summary["bad_validation_samples"]["distinct"] == 3
    assert f"bad training samples 3 ({', '.join(expected)}), met {summary['skipped_samples']} time(s)" in report
    assert "bad validation samples 3 (" in report
    assert "caption noise" not in report
    assert "retrieval scored on 6 held-out pairs" in report

    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--json", str(tmp_path / "m.json")]) == 0
    assert "retrieval scored on 6 held-out pairs" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["retrieval_pairs"] == 6


def test_an_embedded_run_still_reports_its_caption_noise(tmp_path, capsys):
    sets = FAST + ["data.dataset=synthetic", "train.steps=2"]
    assert main(["train", "--output", str(tmp_path / "run"), *[a for s in sets for a in ("--set", s)]]) == 0
    assert "caption noise 0.2" in capsys.readouterr().out
