"""clip_benchmark's own evaluate functions on our models (manifold_align/clip/benchmark_bridge.py, prototypes.py):
with the same class-prototype rule they give exactly our evaluation's numbers."""

from __future__ import annotations

import csv
import json
import warnings

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from manifold_align.clip import create_model, encode_texts, for_clip_benchmark, save_geometry_classifier
from manifold_align.clip.benchmark_bridge import MODEL_TYPE, clip_benchmark_templates, register
from manifold_align_train.builders import build_model
from manifold_align_train.checkpoint import load_checkpoint
from manifold_align_train.cli import main
from manifold_align_train.config import load_config
from manifold_align_train.data.digits import CLASSNAMES, ZERO_SHOT_TEMPLATES

# clip_benchmark is a test dependency (the `test` extra)
from clip_benchmark.datasets.builder import image_captions_collate_fn  # noqa: E402
from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval  # noqa: E402

BATCH = 256


@pytest.fixture(scope="module")
def trained(digits_checkpoint):
    state = load_checkpoint(digits_checkpoint)
    model, tokenizer, transforms = build_model(load_config(None, [], base=state["config"]), torch.device("cpu"))
    model.load_state_dict(state["model"])
    return model.eval(), tokenizer, transforms[1]


def _ours(capsys, tmp_path, checkpoint, *args) -> dict:
    out = tmp_path / "ours.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--name", "d", "--set", f"eval.batch_size={BATCH}",
                 *args, "--json", str(out)]) == 0
    capsys.readouterr()
    return {key.split("/", 1)[1]: value for key, value in json.loads(out.read_text()).items()}


def _folder_loader(folder, transform):
    import torchvision

    dataset = torchvision.datasets.ImageFolder(str(folder), transform=transform)  # what clip_benchmark builds
    assert dataset.classes == [str(i) for i in range(10)]
    return DataLoader(dataset, batch_size=BATCH, shuffle=False)


@pytest.mark.parametrize("rule", ["whole", "geometry"])
def test_clip_benchmark_zero_shot_equals_ours_with_the_same_prototypes(rule, trained, digits_checkpoint, digit_files,
                                                                        capsys, tmp_path):
    model, tokenizer, transform = trained
    load_clfs = []
    if rule == "geometry":  # ours, handed to clip_benchmark as a precomputed classifier
        save_geometry_classifier(model, tokenizer, CLASSNAMES, ZERO_SHOT_TEMPLATES, tmp_path / "clf.pt")
        load_clfs = [str(tmp_path / "clf.pt")]
    theirs = zeroshot_classification.evaluate(
        for_clip_benchmark(model), _folder_loader(digit_files.folder, transform), tokenizer, CLASSNAMES,
        clip_benchmark_templates(CLASSNAMES, ZERO_SHOT_TEMPLATES), "cpu", amp=False, load_clfs=load_clfs)
    ours = _ours(capsys, tmp_path, digits_checkpoint, "--images", str(digit_files.folder), "--classnames",
                 str(digit_files.classnames), "--templates", str(digit_files.templates), "--prototype", rule)
    assert 0.2 < theirs["acc1"] < 1.0, theirs
    assert ours["zero_shot_top1"] == theirs["acc1"]
    assert ours["zero_shot_top5"] == theirs["acc5"]
    assert ours["zero_shot_mean_per_class_recall"] == pytest.approx(theirs["mean_per_class_recall"], abs=1e-12)


class _Pairs(Dataset):
    """The pairs CSV as clip_benchmark's retrieval datasets yield it: (image, [captions])."""

    def __init__(self, path, transform):
        with open(path, newline="") as handle:
            self.rows = list(csv.DictReader(handle))
        self.root, self.transform = path.parent, transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        return self.transform(Image.open(self.root / row["filepath"]).convert("RGB")), [row["title"]]


def test_clip_benchmark_retrieval_equals_ours(trained, digits_checkpoint, digit_files, capsys, tmp_path):
    model, tokenizer, transform = trained
    loader = DataLoader(_Pairs(digit_files.pairs, transform), batch_size=BATCH, collate_fn=image_captions_collate_fn)
    theirs = zeroshot_retrieval.evaluate(for_clip_benchmark(model), loader, tokenizer, "cpu", amp=False,
                                         recall_k_list=[1, 5, 10])
    ours = _ours(capsys, tmp_path, digits_checkpoint, "--pairs", str(digit_files.pairs))
    assert ours["retrieval_pairs"] == 360
    assert theirs["image_retrieval_recall@10"] > 10 / 360  # above chance: the captions name the digit
    for k in (1, 5, 10):  # clip_benchmark's image retrieval is text -> image
        assert ours[f"text_to_image_R@{k}"] == pytest.approx(theirs[f"image_retrieval_recall@{k}"], abs=1e-6)
        assert ours[f"image_to_text_R@{k}"] == pytest.approx(theirs[f"text_retrieval_recall@{k}"], abs=1e-6)


def test_clip_benchmark_loads_an_exported_model_by_model_type(trained, tmp_path):
    from clip_benchmark.models import MODEL_TYPES, load_clip

    from manifold_align.clip import save_pretrained

    model, tokenizer, transform = trained
    save_pretrained(model, tmp_path / "export", "digits-fast")
    register()
    register()  # idempotent
    assert MODEL_TYPES.count(MODEL_TYPE) == 1
    wrapped, their_transform, their_tokenizer = load_clip(MODEL_TYPE, model_name="ignored",
                                                          pretrained=str(tmp_path / "export"), cache_dir=None,
                                                          device="cpu")
    image = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    assert torch.equal(their_transform(image), transform(image))
    captions = ["a handwritten seven", "nine"]
    assert torch.equal(their_tokenizer(captions), tokenizer(captions))
    with torch.no_grad():
        images = transform(image)[None]
        assert torch.equal(wrapped.encode_image(images), model.encode_image(images).flatten(1))
        # our evaluation's text features (padding cut, as the bridge cuts it)
        assert torch.equal(wrapped.encode_text(tokenizer(captions)),
                           encode_texts(model, tokenizer(captions)).flatten(1))


def test_the_bridge_warns_where_clip_benchmark_does_not_rank_as_the_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for_clip_benchmark(create_model("digits-fast", {"n_tokens": 4, "token_dim": 8, "geometry": "chordal"}))
    with pytest.warns(UserWarning, match="'lorentz' ranks differently"):
        for_clip_benchmark(create_model("digits-fast", {"n_tokens": 4, "token_dim": 8, "geometry": "lorentz"}))


def test_the_whole_vector_rule_is_clip_benchmarks_zero_shot_classifier(trained):
    from manifold_align.clip import whole_vector_classifier

    model, tokenizer, _ = trained
    theirs = zeroshot_classification.zero_shot_classifier(
        for_clip_benchmark(model), tokenizer, CLASSNAMES, clip_benchmark_templates(CLASSNAMES, ZERO_SHOT_TEMPLATES),
        "cpu", amp=False)  # (k * d, C)
    ours = whole_vector_classifier(model, tokenizer, CLASSNAMES, ZERO_SHOT_TEMPLATES)  # (C, k, d)
    torch.testing.assert_close(ours.flatten(1).T, theirs, atol=1e-6, rtol=0)
    per_token = torch.nn.functional.normalize(ours, dim=-1)
    assert (per_token - ours).abs().max() > 1e-3  # on OB(d, k) the rules differ
