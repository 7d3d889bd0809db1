"""Tests for training/evaluation.py: held-out data streamed in batches (memory bounded by the evaluation
batch, never the whole set), evaluation on rank 0 alone under torchrun, and the metrics the report shows.

The distributed test launches this very file under ``python -m torch.distributed.run`` (two gloo
processes); each worker records the ranks that evaluate and the metrics its run returns.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from manifold_align_train.config import DataConfig
from manifold_align_train.data import build_data
from manifold_align_train.evaluation import evaluate, format_metrics

from tiny_config import tiny_cfg

N_PAIRS = 24


class CountingTransform:
    """The validation transform, counting the image tensors it made that are still alive (``peak``: the
    most at once)."""

    def __init__(self, inner):
        self.inner, self.alive, self.peak, self.made = inner, 0, 0, 0

    def _died(self):
        self.alive -= 1

    def __call__(self, image):
        tensor = self.inner(image)
        self.made += 1
        self.alive += 1
        self.peak = max(self.peak, self.alive)
        weakref.finalize(tensor, self._died)
        return tensor


@pytest.fixture(scope="module")
def model_and_transforms():
    import open_clip

    from manifold_align.clip import create_model, get_tokenizer

    torch.manual_seed(0)
    model = create_model(tiny_cfg(), {"n_tokens": 4, "token_dim": 16, "geometry": "oblique",
                                      "temperature": {"name": "none"}})
    return model, get_tokenizer(tiny_cfg()), open_clip.image_transform(32, is_train=True), \
        open_clip.image_transform(32, is_train=False)


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), 9 * i % 255, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _held_out_files(dataset: str, folder: Path) -> str:
    """``N_PAIRS`` good pairs and one bad one, as a CSV or a shard; return ``data.val_data``."""
    if dataset == "csv":
        rows = ["filepath\ttitle"]
        for i in range(N_PAIRS):
            (folder / f"{i}.png").write_bytes(_png(i))
            rows.append(f"{i}.png\tsquare number {i}")
        rows.append("missing.png\ta missing image")
        (folder / "val.tsv").write_text("\n".join(rows) + "\n")
        return str(folder / "val.tsv")
    with tarfile.open(folder / "val.tar", "w") as tar:
        members = [(f"{i:05d}.png", _png(i)) for i in range(N_PAIRS)] + [("99999.png", b"not a png")]
        members += [(f"{i:05d}.txt", f"square number {i}".encode()) for i in range(N_PAIRS)]
        members += [("99999.txt", b"a corrupt image")]
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(folder / "val.tar")


@pytest.mark.parametrize("dataset, batch_size", [("csv", 4), ("webdataset", 4), ("digits", 16)])
def test_held_out_images_are_streamed_never_all_in_memory(dataset, batch_size, tmp_path, model_and_transforms):
    """The validation images alive at once, from building the data to the end of the evaluation, never
    exceed one evaluation batch (the whole set was loaded as float tensors: 24 or 360 at once)."""
    model, tokenizer, train_transform, val_transform = model_and_transforms
    counting = CountingTransform(val_transform)
    if dataset == "digits":
        cfg = DataConfig(dataset="digits", batch_size=32)
    else:
        val = _held_out_files(dataset, tmp_path)
        cfg = DataConfig(dataset=dataset, train_data=val, val_data=val, batch_size=4, num_samples=8)
    bundle = build_data(cfg, preprocess_train=train_transform, preprocess_val=counting, tokenizer=tokenizer, seed=0)
    metrics = evaluate(model, tokenizer, bundle, batch_size=batch_size)
    held_out = 360 if dataset == "digits" else N_PAIRS
    assert metrics["retrieval_pairs"] == held_out
    assert counting.made >= held_out and 1 <= counting.peak <= batch_size, (counting.made, counting.peak)
    if dataset != "digits":
        assert len(bundle.retrieval.bad) == 1  # the bad pair is left out and named


def test_streamed_evaluation_matches_scoring_the_whole_set_at_once(model_and_transforms):
    """Streaming changes the memory, not the numbers: the recalls equal those of the whole set encoded in one go."""
    from manifold_align.clip import encode_images, encode_texts, retrieval_metrics

    model, tokenizer, train_transform, val_transform = model_and_transforms
    bundle = build_data(DataConfig(dataset="digits", batch_size=32), preprocess_train=train_transform,
                        preprocess_val=val_transform, tokenizer=tokenizer, seed=0)
    streamed = evaluate(model, tokenizer, bundle, batch_size=64)
    pairs = bundle.retrieval.pairs
    images = torch.stack([pairs[i][0] for i in range(len(pairs))])
    texts = torch.stack([pairs[i][1] for i in range(len(pairs))])
    whole = retrieval_metrics(model, encode_images(model, images, batch_size=1000),
                              encode_texts(model, texts, batch_size=1000), labels=bundle.retrieval.labels)
    for key, value in whole.items():
        assert streamed[key] == pytest.approx(value, abs=1e-6), key


# -- the report -------------------------------------------------------------------------------------
CLASS_CAPTIONED = {f"{d}_{level}R@{k}": v for d in ("image_to_text", "text_to_image")
                   for level, v in (("", 0.025), ("class_", 0.9)) for k in (1, 5, 10)}


def test_report_shows_class_level_recall_for_class_captioned_data_and_says_why():
    """Digits captions repeat per class: index-level R@1 = R@5 = R@10 (image to text) and ~2.5% (text to
    image) mean nothing there; the report shows class-level recall and one line saying why."""
    text = format_metrics({**CLASS_CAPTIONED, "retrieval_pairs": 360})
    retrieval = [line for line in text.splitlines() if "retrieval" in line and "R@" in line]
    assert retrieval and all("class-level" in line for line in retrieval), text
    assert "2.5%" not in text
    assert "captions repeat per class" in text


def test_report_shows_index_level_recall_for_pairs_without_classes():
    index_only = {key: value for key, value in CLASS_CAPTIONED.items() if "class_" not in key}
    text = format_metrics({**index_only, "retrieval_pairs": 24})
    assert "retrieval image to text: R@1 2.5%" in text and "class-level" not in text


# -- torchrun: rank 0 evaluates, the others wait ----------------------------------------------------
@pytest.mark.slow
def test_only_rank_0_evaluates_under_torchrun(tmp_path):
    from test_train_distributed import SETTINGS, _torchrun

    settings = [s for s in SETTINGS if not s.startswith("train.steps")] + ["train.steps=4", "eval.every=2"]
    _torchrun(__file__, "--worker", str(tmp_path), *settings, cwd=tmp_path)
    evaluations = sorted(int(line) for line in (tmp_path / "evaluated").read_text().split())
    assert evaluations == [0, 0], evaluations  # step 2 and the end, rank 0 only
    finals = [json.loads((tmp_path / f"final{rank}.json").read_text()) for rank in (0, 1)]
    assert finals[0] == finals[1] and finals[0]["retrieval_pairs"] == 360


def _worker(folder: Path, settings: list[str]) -> None:
    """A torchrun worker: the train command, with every call of the evaluation recorded by rank."""
    import manifold_align_train.trainer as trainer_module
    from manifold_align_train.config import load_config

    inner = trainer_module.evaluate

    def recorded(*args, **kwargs):
        with open(folder / "evaluated", "a") as handle:
            handle.write(f"{os.environ['RANK']}\n")
        return inner(*args, **kwargs)

    trainer_module.evaluate = recorded
    summary = trainer_module.train(load_config(None, settings), folder / "run")
    (folder / f"final{os.environ['RANK']}.json").write_text(json.dumps(summary["final_metrics"]))


if __name__ == "__main__":  # python tests/test_evaluation.py --worker FOLDER SETTING ...
    sys.path.insert(0, str(Path(__file__).parent))
    at = sys.argv.index("--worker")
    _worker(Path(sys.argv[at + 1]), sys.argv[at + 2:])
