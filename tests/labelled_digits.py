"""The held-out digits written as files, as a user's own labelled images would be, and a checkpoint to score.

The images are the embedded task's own held-out images (``make_digits(32)``, uint8 grey), saved losslessly as PNG:
read back through PIL they are the arrays the embedded evaluation reads, so both evaluations see the same pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from manifold_align_train.config import load_config
from manifold_align_train.data.digits import CLASSNAMES, ZERO_SHOT_TEMPLATES, make_digits
from manifold_align_train.trainer import train

STEPS = 60
FAST = ["data.batch_size=64", "log.progress=false", "log.tensorboard=false", "train.threads=1",
        f"train.steps={STEPS}", "train.warmup=6", "train.checkpoint_every=0"]


class DigitFiles(NamedTuple):
    folder: Path  # folder/<label>/<index>.png, label 0..9 (sorted folder order = label order)
    csv: Path  # filepath,label with the class name as label, rows in the embedded order
    classnames: Path  # one name per line, in label order
    templates: Path  # the embedded task's zero-shot templates, one per line
    pairs: Path  # filepath,title: each image with a caption of its own (retrieval)
    labels: np.ndarray  # (360,) in the embedded order


def train_checkpoint(folder: Path) -> Path:
    """Train the default configuration for ``STEPS`` steps; return its checkpoint."""
    train(load_config(None, FAST), folder / "run")
    return next((folder / "run" / "checkpoints").glob("step_*.pt"))


def write_digit_files(root: Path) -> DigitFiles:
    task = make_digits(32)
    folder = root / "tree"
    rows, pairs = ["filepath,label"], ["filepath,title"]
    for index, (image, label) in enumerate(zip(task.test_images, task.test_labels)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{index:03d}.png")
        rows.append(f"tree/{label}/{index:03d}.png,{CLASSNAMES[label]}")
        pairs.append(f"tree/{label}/{index:03d}.png,a handwritten {CLASSNAMES[label]} number {index}")
    (root / "digits.csv").write_text("\n".join(rows) + "\n")
    (root / "pairs.csv").write_text("\n".join(pairs) + "\n")
    (root / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (root / "templates.txt").write_text("\n".join(ZERO_SHOT_TEMPLATES) + "\n")
    return DigitFiles(folder, root / "digits.csv", root / "classnames.txt", root / "templates.txt",
                      root / "pairs.csv", np.asarray(task.test_labels))
