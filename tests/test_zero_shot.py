"""Tests for manifold_align/clip/zero_shot.py and retrieval.py: classifier on OB(d, k), zero-shot accuracy, retrieval recall."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from manifold_align.clip import create_model
from manifold_align.clip import (
    build_zero_shot_classifier,
    encode_images,
    encode_texts,
    retrieval_metrics,
    zero_shot_accuracy,
    zero_shot_logits,
)

from tiny_config import tiny_cfg

CLASSES = ["cat", "dog", "car", "tree", "boat", "house", "bird"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "{}", "a blurry photo of the {}!"]



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(tiny_cfg(), {"n_tokens": 4, "token_dim": 32, "temperature": {"name": "fixed", "scale": 3.0}})


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.tokenizer.SimpleTokenizer(context_length=16)


@pytest.fixture(scope="module")
def classifier(model, tokenizer):
    return build_zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES, batch_size=5)


def test_classifier_is_on_the_oblique_manifold(classifier):
    assert classifier.shape == (len(CLASSES), 4, 32)
    torch.testing.assert_close(classifier.norm(dim=-1), torch.ones(len(CLASSES), 4))


def test_classifier_averages_per_token_then_renormalizes_per_token(model, tokenizer, classifier):
    prompts = [t.format(c) for c in CLASSES for t in TEMPLATES]
    features = encode_texts(model, tokenizer(prompts)).view(len(CLASSES), len(TEMPLATES), 4, 32)
    expected = F.normalize(features.mean(dim=1), dim=-1)
    torch.testing.assert_close(classifier, expected, atol=1e-6, rtol=0)
    flat = F.normalize(features.mean(dim=1).flatten(1), dim=-1).view_as(expected)
    assert (classifier - flat).abs().max() > 1e-3  # not the flattened normalization


def test_classifier_is_invariant_to_template_order_and_callables(model, tokenizer, classifier):
    reordered = build_zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES[::-1])
    torch.testing.assert_close(reordered, classifier, atol=1e-6, rtol=0)
    callables = [lambda c, t=t: t.format(c) for t in TEMPLATES]
    from_callables = build_zero_shot_classifier(model, tokenizer, CLASSES, callables)
    torch.testing.assert_close(from_callables, classifier, atol=1e-6, rtol=0)


def test_logits_use_the_model_geometry_and_temperature(model, classifier):
    images = encode_images(model, torch.randn(5, 3, 32, 32))
    logits = zero_shot_logits(model, images, classifier)
    # the oblique score written out: sum over tokens of the inner products of unit tokens
    torch.testing.assert_close(logits, 3.0 * torch.einsum("itd,jtd->ij", images, classifier))
    torch.testing.assert_close(logits, model.geometry.logits(images, classifier, torch.tensor(3.0)))
    probs = logits.softmax(dim=1)
    assert probs.shape == (5, len(CLASSES))
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))
    assert logits.abs().max() <= 3.0 * 4 + 1e-5  # inside the scaled oblique range [-3k, 3k]


def test_zero_shot_accuracy_on_a_separable_task(model):
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    own_classes = encode_images(model, images)  # each image is its own class
    labels = torch.arange(6)
    result = zero_shot_accuracy(model, images, labels, own_classes, batch_size=4)
    assert result == {"top1": 1.0, "top5": 1.0, "mean_per_class_recall": 1.0}
    shuffled = zero_shot_accuracy(model, [(images[:3], None), (images[3:], None)], labels.roll(1), own_classes)
    assert shuffled["top1"] == 0.0  # every image scores its own class first, which is now the wrong label


def test_evaluation_restores_training_mode(model):
    model.train()
    encode_images(model, torch.randn(2, 3, 32, 32))
    assert model.training


def brute_force_recall(scores: torch.Tensor, text_to_image: torch.Tensor, k: int) -> tuple[float, float]:
    order_i2t = scores.argsort(dim=1, descending=True)[:, :k]
    i2t = [(text_to_image[order_i2t[i]] == i).any().item() for i in range(scores.shape[0])]
    order_t2i = scores.T.argsort(dim=1, descending=True)[:, :k]
    t2i = [(order_t2i[j] == text_to_image[j]).any().item() for j in range(scores.shape[1])]
    return sum(i2t) / len(i2t), sum(t2i) / len(t2i)


@pytest.mark.parametrize("geometry", ["oblique", "geodesic"])
def test_retrieval_matches_brute_force_with_several_captions_per_image(geometry):
    model = create_model(tiny_cfg(), {"n_tokens": 4, "token_dim": 32, "geometry": geometry})
    generator = torch.Generator().manual_seed(5)
    images = F.normalize(torch.randn(20, 4, 32, generator=generator), dim=-1)
    text_to_image = torch.arange(20).repeat_interleave(3)[torch.randperm(60, generator=generator)]
    texts = F.normalize(images[text_to_image] + 0.8 * torch.randn(60, 4, 32, generator=generator), dim=-1)
    metrics = retrieval_metrics(model, images, texts, text_to_image=text_to_image, chunk_size=7)
    scores = model.geometry.pairwise(images, texts)
    for k in (1, 5, 10):
        i2t, t2i = brute_force_recall(scores, text_to_image, k)
        assert metrics[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert metrics[f"text_to_image_R@{k}"] == pytest.approx(t2i)


def test_retrieval_one_caption_per_image(model):
    features = F.normalize(torch.randn(12, 4, 32), dim=-1)
    perfect = retrieval_metrics(model, features, features)
    assert all(value == 1.0 for value in perfect.values()) and len(perfect) == 6
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_metrics(model, features, features[:5])


def brute_force_class_recall(scores: torch.Tensor, query_labels, item_labels, k: int) -> float:
    """Share of queries (rows) with an item of their class scoring at least the K-th best score.

    Ties at the K-th score count in the query's favour; float64, one query at a time.
    """
    hits = []
    for row, label in zip(scores.tolist(), query_labels.tolist()):
        kth = sorted(row, reverse=True)[min(k, len(row)) - 1]
        hits.append(any(s >= kth and item == label for s, item in zip(row, item_labels.tolist())))
    return sum(hits) / len(hits)


@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_class_recall_matches_float64_brute_force_with_tied_captions(model, chunk_size):
    # Class-coded captions: every caption of a class is the same sentence, so its features are equal
    # and the scores of an image to them tie exactly.
    generator = torch.Generator().manual_seed(11)
    labels = torch.randint(0, 6, (40,), generator=generator)
    prototypes = F.normalize(torch.randn(6, 4, 32, generator=generator, dtype=torch.float64), dim=-1)
    texts = prototypes[labels]
    images = F.normalize(texts + 1.2 * torch.randn(40, 4, 32, generator=generator, dtype=torch.float64), dim=-1)
    metrics = retrieval_metrics(model, images.float(), texts.float(), labels=labels, chunk_size=chunk_size)
    scores = (images.flatten(1) @ texts.flatten(1).T)  # the oblique score, in float64
    for k in (1, 5, 10):
        assert metrics[f"image_to_text_class_R@{k}"] == pytest.approx(brute_force_class_recall(scores, labels, labels, k))
        assert metrics[f"text_to_image_class_R@{k}"] == pytest.approx(brute_force_class_recall(scores.T, labels, labels, k))
    # an image's own caption ties with every caption of its class: exact image->text recall counts the
    # tie in the image's favour, so it equals class-level recall; text->image has no such ties
    for k in (1, 5, 10):
        assert metrics[f"image_to_text_R@{k}"] == metrics[f"image_to_text_class_R@{k}"]
    assert metrics["text_to_image_R@1"] < metrics["text_to_image_class_R@1"]


def test_class_recall_with_several_captions_per_image_and_label_errors(model):
    generator = torch.Generator().manual_seed(2)
    images = F.normalize(torch.randn(10, 4, 32, generator=generator), dim=-1)
    text_to_image = torch.arange(10).repeat(2)
    texts = F.normalize(images[text_to_image] + 0.5 * torch.randn(20, 4, 32, generator=generator), dim=-1)
    labels = torch.arange(10) % 3
    metrics = retrieval_metrics(model, images, texts, text_to_image=text_to_image, labels=labels)
    scores = torch.einsum("itd,jtd->ij", images.double(), texts.double())  # the oblique score, written out
    for k in (1, 5, 10):
        assert metrics[f"image_to_text_class_R@{k}"] == pytest.approx(
            brute_force_class_recall(scores, labels, labels[text_to_image], k))
        assert metrics[f"text_to_image_class_R@{k}"] == pytest.approx(
            brute_force_class_recall(scores.T, labels[text_to_image], labels, k))
        assert metrics[f"image_to_text_class_R@{k}"] >= metrics[f"image_to_text_R@{k}"]
    assert "image_to_text_class_R@1" not in retrieval_metrics(model, images, texts, text_to_image=text_to_image)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(10,\)"):
        retrieval_metrics(model, images, texts, text_to_image=text_to_image, labels=labels[text_to_image])


def test_encoders_run_in_the_given_autocast_and_return_float32(model):
    entered = []

    class Recording:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    features = encode_images(model, torch.randn(5, 3, 32, 32), batch_size=2, autocast=Recording)
    assert features.dtype == torch.float32 and len(entered) == 3


# -- in the model's own geometry: lorentz and euclidean ------------------------------------------------
def _tangent_mean_float64(points: torch.Tensor, c: float) -> torch.Tensor:
    """exp_0(mean(log_0(x))) per token on the hyperboloid of curvature -c, space components, written out."""
    x = points.double()
    r = math.sqrt(c) * x.norm(dim=-1, keepdim=True)
    tangent = (torch.asinh(r) / r * x).mean(dim=1)
    s = math.sqrt(c) * tangent.norm(dim=-1, keepdim=True)
    return torch.sinh(s) / s * tangent


@pytest.fixture(scope="module")
def lorentz_model():
    torch.manual_seed(1)
    model = create_model(tiny_cfg(), {"n_tokens": 4, "token_dim": 32, "geometry": "lorentz",
                                      "temperature": {"name": "fixed", "scale": 2.0}})
    with torch.no_grad():  # curvature and text scale away from 1, so that they matter
        model.geometry.log_curvature.fill_(math.log(0.7))
        model.geometry.log_text_scale.fill_(math.log(0.8))
    return model


def test_lorentz_classifier_is_the_tangent_space_mean_per_token(lorentz_model, tokenizer):
    classifier = build_zero_shot_classifier(lorentz_model, tokenizer, CLASSES, TEMPLATES, batch_size=5)
    prompts = [t.format(c) for c in CLASSES for t in TEMPLATES]
    features = encode_texts(lorentz_model, tokenizer(prompts)).view(len(CLASSES), len(TEMPLATES), 4, 32)
    expected = _tangent_mean_float64(features, 0.7)
    assert classifier.shape == (len(CLASSES), 4, 32) and not classifier.requires_grad
    torch.testing.assert_close(classifier.double(), expected, atol=1e-5, rtol=1e-5)
    assert (classifier.double() - features.double().mean(dim=1)).abs().max() > 1e-3  # not the coordinate mean


def test_lorentz_logits_are_the_models_scaled_distances(lorentz_model, tokenizer):
    classifier = build_zero_shot_classifier(lorentz_model, tokenizer, CLASSES, TEMPLATES)
    images = encode_images(lorentz_model, torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    logits = zero_shot_logits(lorentz_model, images, classifier)
    x, y = images.double(), classifier.double()  # acosh(-c <x, y>_L) / sqrt(c), summed over the 4 tokens
    x0 = torch.sqrt(1 / 0.7 + (x**2).sum(-1))
    y0 = torch.sqrt(1 / 0.7 + (y**2).sum(-1))
    inner = torch.einsum("itd,jtd->ijt", x, y) - x0[:, None] * y0[None]
    expected = -2.0 * (torch.acosh(-0.7 * inner) / math.sqrt(0.7)).sum(-1)
    torch.testing.assert_close(logits.double(), expected, atol=1e-3, rtol=1e-5)


def test_euclidean_classifier_is_the_plain_mean(tokenizer):
    torch.manual_seed(2)
    model = create_model(tiny_cfg(), {"n_tokens": 4, "token_dim": 32, "geometry": "euclidean"})
    classifier = build_zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES)
    prompts = [t.format(c) for c in CLASSES for t in TEMPLATES]
    features = encode_texts(model, tokenizer(prompts)).view(len(CLASSES), len(TEMPLATES), 4, 32)
    torch.testing.assert_close(classifier, features.mean(dim=1), atol=1e-6, rtol=0)


def test_retrieval_ranks_with_the_models_geometry(lorentz_model):
    generator = torch.Generator().manual_seed(6)
    images = 0.5 * torch.randn(12, 4, 32, generator=generator)
    texts = images + 0.3 * torch.randn(12, 4, 32, generator=generator)
    metrics = retrieval_metrics(lorentz_model, images, texts, chunk_size=5)
    scores = lorentz_model.geometry.pairwise(images, texts)
    for k in (1, 5):
        i2t, t2i = brute_force_recall(scores, torch.arange(12), k)
        assert metrics[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert metrics[f"text_to_image_R@{k}"] == pytest.approx(t2i)
