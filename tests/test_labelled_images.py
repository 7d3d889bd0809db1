"""Zero-shot classification on any labelled images (training/data/labelled_images.py, training/eval_sets.py,
``manifold-align eval --images``): the held-out digits written as PNG files score exactly what the embedded
evaluation scores; bad images are counted and named; named sets are logged under their names during training;
the metrics are clip_benchmark's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from manifold_align.clip import classification_metrics
from manifold_align_train.cli import main
from manifold_align_train.config import ConfigError, load_config
from manifold_align_train.data.batch import BadDataError
from manifold_align_train.data.labelled_images import read_classnames, read_templates, zero_shot_task

from labelled_digits import FAST


def _eval(capsys, tmp_path, *args) -> dict:
    out = tmp_path / f"m{len(list(tmp_path.iterdir()))}.json"
    assert main(["eval", *args, "--json", str(out)]) == 0
    capsys.readouterr()
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def embedded(digits_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded") / "m.json"
    assert main(["eval", "--checkpoint", str(digits_checkpoint), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert 0.2 < metrics["zero_shot_top1"] < 1.0, metrics  # learned something: the comparison is not at chance
    return metrics


@pytest.mark.parametrize("layout", ["folder", "csv"])
def test_files_score_exactly_the_embedded_evaluation(layout, embedded, digits_checkpoint, digit_files, capsys,
                                                    tmp_path):
    path = digit_files.folder if layout == "folder" else digit_files.csv
    metrics = _eval(capsys, tmp_path, "--checkpoint", str(digits_checkpoint), "--images", str(path), "--name",
                    "digits", "--classnames", str(digit_files.classnames), "--templates", str(digit_files.templates))
    assert metrics["digits/zero_shot_images"] == 360 and metrics["digits/zero_shot_bad_images"] == 0
    for key in ("zero_shot_top1", "zero_shot_top5", "zero_shot_mean_per_class_recall"):
        assert metrics[f"digits/{key}"] == embedded[key], key
    assert "zero_shot_top1" not in metrics  # --images scores that set alone


def test_csv_labels_may_be_indices_and_names_default_to_the_labels(digit_files, tmp_path):
    import open_clip

    transform = open_clip.image_transform(32, is_train=False)
    rows = digit_files.csv.read_text().splitlines()
    words = read_classnames(str(digit_files.classnames))
    indexed = [rows[0]] + [f"{row.split(',')[0]},{words.index(row.split(',')[1])}" for row in rows[1:]]
    (digit_files.csv.parent / "indexed.tsv").write_text("\n".join(indexed).replace(",", "\t") + "\n")
    task = zero_shot_task(str(digit_files.csv.parent / "indexed.tsv"), transform,
                          classnames=str(digit_files.classnames))
    assert task.labels.tolist() == digit_files.labels.tolist() and task.classnames == words
    by_name = zero_shot_task(str(digit_files.csv), transform)  # names: the distinct labels, sorted
    assert by_name.classnames == sorted(words)
    assert [by_name.classnames[i] for i in by_name.labels] == [words[i] for i in digit_files.labels]
    with pytest.raises(ValueError, match="class indices"):
        zero_shot_task(str(digit_files.csv.parent / "indexed.tsv"), transform)


def test_bad_images_are_counted_and_named_never_a_crash(digits_checkpoint, digit_files, capsys, tmp_path):
    tree = tmp_path / "tree"
    for label in range(3):
        (tree / f"class{label}").mkdir(parents=True)
        for source in sorted((digit_files.folder / str(label)).glob("*.png"))[:4]:
            (tree / f"class{label}" / source.name).write_bytes(source.read_bytes())
    (tree / "class1" / "truncated.png").write_bytes((digit_files.folder / "1").glob("*.png").__next__()
                                                    .read_bytes()[:40])
    (tree / "class2" / "not-an-image.jpg").write_text("hello")
    assert main(["eval", "--checkpoint", str(digits_checkpoint), "--images", str(tree), "--templates", "simple",
                 "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["tree/zero_shot_images"] == 12 and metrics["tree/zero_shot_bad_images"] == 2
    assert "2 bad item(s) left out" in out and "truncated.png" in out and "not-an-image.jpg" in out
    assert "2 unreadable left out" in out

    only_bad = tmp_path / "only-bad"
    (only_bad / "a").mkdir(parents=True)
    (only_bad / "a" / "x.png").write_text("not a png")
    with pytest.raises(BadDataError, match="x.png"):
        main(["eval", "--checkpoint", str(digits_checkpoint), "--images", str(only_bad)])


def test_named_sets_are_scored_and_logged_under_their_names_during_training(digit_files, tmp_path):
    from manifold_align_train.trainer import train

    sets = [f"eval.datasets.png.path={digit_files.folder}", f"eval.datasets.png.classnames={digit_files.classnames}",
            f"eval.datasets.png.templates={digit_files.templates}",
            f"eval.datasets.listed.path={digit_files.csv}", "eval.datasets.listed.templates=simple",
            f"eval.datasets.pairs.path={digit_files.pairs}", "eval.datasets.pairs.task=retrieval"]
    cfg = load_config(None, [*FAST, "train.steps=10", "train.warmup=1", "eval.every=5", *sets])
    summary = train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if row["kind"] == "eval"]
    assert [row["step"] for row in evals] == [5, 10]
    for row in evals:
        # the same images and prompts as the embedded task: the same numbers, at every evaluation
        assert row["png/zero_shot_top1"] == row["zero_shot_top1"]
        assert row["png/zero_shot_mean_per_class_recall"] == row["zero_shot_mean_per_class_recall"]
        assert 0.0 <= row["listed/zero_shot_top1"] <= 1.0 and row["listed/zero_shot_images"] == 360
        assert row["pairs/retrieval_pairs"] == 360 and "pairs/text_to_image_R@1" in row
    assert summary["final_metrics"]["png/zero_shot_top1"] == evals[-1]["png/zero_shot_top1"]


def test_templates_and_classnames_come_from_open_clip_or_files(tmp_path):
    from open_clip import zero_shot_metadata as metadata

    openai = read_templates("openai")
    assert len(openai) == len(metadata.OPENAI_IMAGENET_TEMPLATES)
    assert all(a is b for a, b in zip(openai, metadata.OPENAI_IMAGENET_TEMPLATES))  # open_clip's own objects
    assert all(a is b for a, b in zip(read_templates("simple"), metadata.SIMPLE_IMAGENET_TEMPLATES))
    assert read_classnames("imagenet") == list(metadata.IMAGENET_CLASSNAMES)
    (tmp_path / "t.txt").write_text("# comment\na photo of a {}.\n\n{}\n")
    assert read_templates(str(tmp_path / "t.txt")) == ["a photo of a {}.", "{}"]
    (tmp_path / "cb.txt").write_text("a photo of a {c}.\n")  # clip_benchmark's placeholder
    with pytest.raises(ValueError, match=r"\{c\}"):
        read_templates(str(tmp_path / "cb.txt"))


def test_bad_sets_fail_at_load_naming_the_key(digit_files, tmp_path):
    with pytest.raises(ConfigError, match=r"'eval.datasets.x.path'.*no such folder"):
        load_config(None, [f"eval.datasets.x.path={tmp_path / 'missing'}"])
    (tmp_path / "t.txt").write_text("no placeholder\n")
    with pytest.raises(ConfigError, match=r"'eval.datasets.x.templates'.*openai, simple"):
        load_config(None, [f"eval.datasets.x.path={digit_files.folder}", f"eval.datasets.x.templates={tmp_path / 't.txt'}"])
    with pytest.raises(ConfigError, match="did you mean 'classnames'"):
        load_config(None, [f"eval.datasets.x.path={digit_files.folder}", "eval.datasets.x.classname=imagenet"])
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    import open_clip

    with pytest.raises(ValueError, match="3 names for the 10 classes"):
        zero_shot_task(str(digit_files.folder), open_clip.image_transform(32, is_train=False),
                       classnames=str(tmp_path / "three.txt"))


def test_metrics_equal_clip_benchmarks_own_functions():
    from clip_benchmark.metrics.zeroshot_classification import accuracy
    from sklearn.metrics import balanced_accuracy_score

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 12, generator=generator)
    labels = torch.randint(0, 12, (500,), generator=generator)
    labels[labels == 3] = 4  # a class without images: clip_benchmark's recall leaves it out
    ours = classification_metrics(logits, labels)
    top1, top5 = accuracy(logits, labels, topk=(1, 5))
    assert ours["top1"] == top1 and ours["top5"] == top5
    with pytest.warns(UserWarning):
        expected = balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy())
    assert ours["mean_per_class_recall"] == pytest.approx(expected, abs=1e-12)
    per_class = [np.mean(logits.argmax(1)[labels == c].numpy() == c) for c in labels.unique().tolist()]
    assert ours["mean_per_class_recall"] == pytest.approx(np.mean(per_class), abs=1e-12)


def test_the_prototype_rule_reaches_the_trainers_evaluation(digits_checkpoint, embedded, tmp_path, capsys):
    """``eval.prototype=whole`` in training scores what ``manifold-align eval --prototype whole`` scores (and not
    what the default rule scores)."""
    from manifold_align_train.checkpoint import load_checkpoint
    from manifold_align_train.trainer import Trainer

    whole = _eval(capsys, tmp_path, "--checkpoint", str(digits_checkpoint), "--prototype", "whole")
    rule = ("zero_shot_top1", "zero_shot_top5", "zero_shot_mean_per_class_recall")
    assert [whole[key] for key in rule] != [embedded[key] for key in rule]  # the rules differ on OB(32, 16)
    trainer = Trainer(load_config(None, [*FAST, "eval.prototype=whole"]), tmp_path / "run")
    trainer.model.load_state_dict(load_checkpoint(digits_checkpoint)["model"])
    found = trainer.evaluate()
    assert [found[key] for key in rule] == [whole[key] for key in rule]
