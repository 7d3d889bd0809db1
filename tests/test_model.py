"""Tests for manifold_align/clip/model.py and towers.py: the multi-token CLIP on open_clip towers."""

from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch

from manifold_align.clip import (
    CONFIG_DIR,
    EmbedConfig,
    MultiTokenCLIP,
    caption_length,
    create_model,
    create_stock_model,
    get_tokenizer,
    load_model_config,
    trim_padding,
)
from manifold_align.clip.pretrained import convert_stock_state_dict
from manifold_align.clip.towers import PrefixPatchDropout

from manifold_align import ContrastiveLoss, Geometry
from manifold_align.optim import parameter_groups
from geometries.test_lorentz import meru_loss
from tiny_config import tiny_cfg

CAPTIONS = ["a photo of a cat", "two dogs playing in the snow!", "x", "a red car parked next to a tree"]



def embed(k: int, d: int, geometry: str = "oblique", **kwargs) -> EmbedConfig:
    return EmbedConfig(n_tokens=k, token_dim=d, geometry=geometry, **kwargs)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return open_clip.tokenizer.SimpleTokenizer(context_length=16)(CAPTIONS)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------
# shapes, dtypes, outputs


@pytest.mark.parametrize("k, d", [(1, 128), (4, 32), (16, 8)])
def test_forward_shapes_dtypes_and_manifold(k, d, images, tokens):
    torch.manual_seed(0)
    model = create_model(tiny_cfg(), embed(k, d))
    out = model(images, tokens)
    assert out["image_features"].shape == (len(CAPTIONS), k, d)
    assert out["text_features"].shape == (len(CAPTIONS), k, d)
    assert out["image_features"].dtype == out["text_features"].dtype == torch.float32
    assert out["logit_scale"].dim() == 0
    assert "logit_bias" not in out
    for features in (out["image_features"], out["text_features"]):
        torch.testing.assert_close(features.norm(dim=-1), torch.ones(len(CAPTIONS), k))


def test_cosine_projects_whole_vector_and_keeps_token_shape(images):
    model = create_model(tiny_cfg(), embed(4, 32, "cosine"))
    features = model.encode_image(images)
    assert features.shape == (len(images), 4, 32)
    torch.testing.assert_close(features.flatten(1).norm(dim=-1), torch.ones(len(images)))
    raw = model.encode_image(images, normalize=False)
    torch.testing.assert_close(features, torch.nn.functional.normalize(raw.flatten(1), dim=-1).view_as(raw))


def test_sigmoid_objective_outputs_logit_bias(images, tokens):
    model = create_model(tiny_cfg(), embed(4, 32, objective="sigmoid", bias_init=-5.0))
    out = model(images, tokens)
    assert out["logit_bias"].dim() == 0 and out["logit_bias"].item() == -5.0


def test_forward_with_one_modality(images):
    out = create_model(tiny_cfg(), embed(4, 32))(image=images)
    assert out["text_features"] is None and out["image_features"].shape == (len(images), 4, 32)


def test_learnable_temperature_is_the_logit_scale(images, tokens):
    model = create_model(tiny_cfg(), embed(4, 32, temperature={"name": "learnable", "init": 0.07}))
    torch.testing.assert_close(model(images, tokens)["logit_scale"], model.temperature.scale())
    assert model(images, tokens)["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# k = 1 reproduces stock open_clip


def test_k1_cosine_reproduces_stock_open_clip(images, tokens):
    torch.manual_seed(1)
    stock = create_stock_model(tiny_cfg()).eval()
    model = create_model(tiny_cfg(), embed(1, 128, "cosine")).eval()
    model.load_state_dict(convert_stock_state_dict(stock.state_dict(), 1, 128, noise_std=0.0), strict=False)
    with torch.no_grad():
        image, text = model.encode_image(images), model.encode_text(tokens)
        torch.testing.assert_close(image[:, 0], stock.encode_image(images, normalize=True), atol=1e-6, rtol=0)
        torch.testing.assert_close(text[:, 0], stock.encode_text(tokens, normalize=True), atol=1e-6, rtol=0)


def test_k1_state_dict_is_the_stock_one_up_to_layout():
    model = create_model(tiny_cfg(), embed(1, 128, "cosine"))
    stock = create_stock_model(tiny_cfg())
    converted = convert_stock_state_dict(stock.state_dict(), 1, 128, noise_std=0.0)
    ours = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("temperature.")}
    assert ours == {k: v.shape for k, v in converted.items()}


# ---------------------------------------------------------------------------------------------------
# text tower: padding


@pytest.mark.parametrize("k", [1, 4])
def test_text_features_ignore_padding(k):
    model = create_model(tiny_cfg(context_length=24), embed(k, 128 // k)).eval()
    short = open_clip.tokenizer.SimpleTokenizer(context_length=12)(CAPTIONS[:3])
    long = open_clip.tokenizer.SimpleTokenizer(context_length=24)(CAPTIONS[:3])
    garbage = long.clone()
    after_eot = torch.arange(24)[None] > long.argmax(dim=1, keepdim=True)
    garbage[after_eot] = torch.randint(1, 40000, (int(after_eot.sum()),))
    with torch.no_grad():
        reference = model.encode_text(long)
        torch.testing.assert_close(model.encode_text(short), reference, atol=1e-6, rtol=0)
        torch.testing.assert_close(model.encode_text(garbage), reference, atol=1e-6, rtol=0)


def _text_features_and_grads(model, text):
    model.zero_grad()
    features = model.encode_text(text)  # on the manifold, unit norm per token
    (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.text.named_parameters() if p.grad is not None}
    return features.detach(), grads


@pytest.mark.parametrize("k", [1, 4])
def test_trimmed_text_equals_untrimmed_features_and_grads(k):
    """Running the text transformer only up to the batch's last end-of-text token is exact."""
    torch.manual_seed(4)
    model = create_model(tiny_cfg(context_length=24), embed(k, 128 // k))
    text = open_clip.tokenizer.SimpleTokenizer(context_length=24)(CAPTIONS)
    assert trim_padding(text).shape[1] < 24  # the captions are short: trimming drops columns
    trimmed, trimmed_grads = _text_features_and_grads(model, trim_padding(text))
    full, full_grads = _text_features_and_grads(model, text)
    torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=0)
    assert trimmed_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(trimmed_grads[name], full_grads[name], atol=1e-5, rtol=1e-4)  # float32 order


@pytest.mark.parametrize("k", [1, 4])
def test_the_tower_runs_the_positions_it_is_given(k):
    model = create_model(tiny_cfg(context_length=24), embed(k, 128 // k)).eval()
    text = open_clip.tokenizer.SimpleTokenizer(context_length=24)(CAPTIONS)
    last_eot = int(text.argmax(dim=1).max())
    seen = []
    model.text.transformer.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        model.encode_text(trim_padding(text))
        model.encode_text(text)
    # k = 1 reads the end-of-text output (positions <= eot); k > 1 queries read positions < eot
    expected_trimmed = last_eot + 1 if k == 1 else last_eot + k
    # untrimmed: the whole context for k = 1; k > 1 drops the last column, which no query reads
    assert seen == [expected_trimmed, 24 if k == 1 else 23 + k]


@pytest.mark.parametrize("k", [1, 4])
def test_a_caption_that_fills_its_columns_matches_wider_padding(k):
    """Dropping the last column without looking at the data is exact even when it holds an end-of-text."""
    torch.manual_seed(8)
    model = create_model(tiny_cfg(context_length=32), embed(k, 128 // k)).eval()
    full = open_clip.tokenizer.SimpleTokenizer(context_length=24)([" ".join(CAPTIONS)] + CAPTIONS[:2])
    eot = int(full[0].max())
    full[0, full[0].argmax()], full[0, 23] = 320, eot  # one more word, then end-of-text in the last column
    wider = torch.cat([full, torch.zeros(full.shape[0], 8, dtype=full.dtype)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(full), model.encode_text(wider), atol=1e-6, rtol=0)


def test_trimmed_k1_reproduces_stock_open_clip_on_short_captions(images):
    """k = 1 on trimmed captions against stock open_clip, which runs the whole context."""
    torch.manual_seed(5)
    stock = create_stock_model(tiny_cfg(context_length=24)).eval()
    model = create_model(tiny_cfg(context_length=24), embed(1, 128, "cosine")).eval()
    model.load_state_dict(convert_stock_state_dict(stock.state_dict(), 1, 128, noise_std=0.0), strict=False)
    text = open_clip.tokenizer.SimpleTokenizer(context_length=24)(CAPTIONS)
    assert trim_padding(text).shape[1] < 24  # trimming is active
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(trim_padding(text))[:, 0],
                                   stock.encode_text(text, normalize=True), atol=1e-6, rtol=0)


def test_caption_length_keeps_every_column_up_to_the_last_end_of_text():
    text = open_clip.tokenizer.SimpleTokenizer(context_length=24)(CAPTIONS)
    # independent of the code under test: the columns up to the last end-of-text (the largest id)
    last_eot = max(row.tolist().index(max(row.tolist())) for row in text)
    assert caption_length(text) == last_eot + 1
    assert torch.equal(trim_padding(text), text[:, : last_eot + 1])
    # id 0 (the pad id, also a BPE byte token) inside a caption is not padding: it precedes end-of-text
    assert caption_length(torch.tensor([[49406, 0, 0, 49407, 0, 0], [49406, 49407, 0, 0, 0, 0]])) == 4


def test_caption_length_of_a_cpu_batch_reads_no_tensor():
    """The trainer calls it on every batch it draws: it reads the CPU tokens without a tensor read."""
    from test_host_reads import counting_reads

    text = open_clip.tokenizer.SimpleTokenizer(context_length=24)(CAPTIONS)
    rows = text.tolist()
    last_eot = max(row.index(max(row)) for row in rows)
    strided = text.T.contiguous().T  # the same values in a column-major (non-contiguous) layout
    with counting_reads() as reads:
        lengths = [caption_length(text), caption_length(strided), caption_length(torch.zeros(3, 5, dtype=torch.long))]
    assert not reads, reads
    assert lengths == [last_eot + 1, last_eot + 1, 1]


@pytest.mark.parametrize("bad", [torch.zeros(24, dtype=torch.long), torch.zeros(2, 24),
                                 torch.zeros(0, 24, dtype=torch.long)])
def test_caption_length_rejects_what_is_not_a_batch_of_token_ids(bad):
    with pytest.raises(ValueError, match=r"`tokens`.*\(B, L\)"):
        caption_length(bad)


def test_trimming_keeps_eos_pooling_exact():
    """pool_type='eos' finds the end-of-text by id; the pad rule keeps it."""
    cfg = tiny_cfg(context_length=12)
    cfg["text_cfg"].update(pool_type="eos", eos_id=7, vocab_size=64)
    torch.manual_seed(6)
    model = create_model(cfg, embed(4, 32))
    text = torch.tensor([[1, 5, 9, 7, 0, 0, 0, 0, 0, 0, 0, 0], [1, 3, 3, 3, 3, 8, 7, 0, 0, 0, 0, 0]])
    assert trim_padding(text).shape[1] == 7
    trimmed, _ = _text_features_and_grads(model, trim_padding(text))
    full, _ = _text_features_and_grads(model, text)
    torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=0)


def test_text_longer_than_context_is_refused():
    model = create_model(tiny_cfg(context_length=8), embed(2, 64))
    with pytest.raises(ValueError, match="context_length"):
        model.encode_text(torch.zeros(1, 9, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------
# gradients


def test_gradients_reach_every_class_token_and_projection_block(images, tokens):
    torch.manual_seed(2)
    k, d = 4, 32
    model = create_model(tiny_cfg(), embed(k, d))
    out = model(images, tokens)
    weights = torch.randn(2, len(images), k, d)
    ((out["image_features"] * weights[0]).sum() + (out["text_features"] * weights[1]).sum()).backward()
    visual, text = model.visual, model.text
    assert (visual.class_embedding.grad.abs().sum(dim=1) > 0).all()
    assert (visual.positional_embedding.grad[:k].abs().sum(dim=1) > 0).all()
    assert (text.class_tokens.grad.abs().sum(dim=1) > 0).all()
    for projection in (visual.proj, text.text_projection):
        block_grads = projection.grad.view(projection.shape[0], k, d).abs().sum(dim=(0, 2))
        assert (block_grads > 0).all()


def test_grad_checkpointing_runs_and_matches(images, tokens):
    torch.manual_seed(3)
    model = create_model(tiny_cfg(), embed(4, 32))

    def grads():
        model.zero_grad()
        out = model(images, tokens)
        (out["image_features"].sum() + out["text_features"][:, :, 0].sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    assert model.visual.transformer.grad_checkpointing and model.text.transformer.grad_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# LiT locking, weight decay


def test_lock_image_tower_freezes_the_image_tower_only():
    model = create_model(tiny_cfg(), embed(4, 32))
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert all(p.requires_grad for p in model.text.parameters())
    model = create_model(tiny_cfg(), embed(4, 32))
    model.lock_image_tower(unlocked_groups=1)
    trainable = {n for n, p in model.visual.named_parameters() if p.requires_grad}
    assert trainable == {"proj"}


def test_lock_text_tower_freezes_class_tokens_too():
    model = create_model(tiny_cfg(), embed(4, 32))
    model.lock_text_tower()
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.visual.parameters())
    model = create_model(tiny_cfg(), embed(4, 32))
    model.lock_text_tower(unlocked_layers=100)
    assert all(p.requires_grad for p in model.text.parameters())


def test_no_weight_decay_names():
    model = create_model(tiny_cfg(), embed(4, 32, temperature={"name": "learnable"}, objective="sigmoid"))
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names <= params.keys()
    for expected in ("visual.class_embedding", "visual.positional_embedding", "text.positional_embedding",
                     "text.class_tokens", "logit_bias", "visual.ln_post.weight", "text.ln_final.bias"):
        assert expected in names
    assert any(n.startswith("temperature.") for n in names)
    biases = {n for n in params if n.endswith(".bias")}
    assert biases <= names
    for decayed in ("visual.proj", "text.text_projection", "visual.conv1.weight", "text.token_embedding.weight"):
        assert decayed not in names


# ---------------------------------------------------------------------------------------------------
# state dict, configs


def test_state_dict_round_trip(tmp_path, images, tokens):
    torch.manual_seed(4)
    model = create_model(tiny_cfg(), embed(4, 32, temperature={"name": "learnable", "init": 0.05})).eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    fresh = create_model(tiny_cfg(), embed(4, 32, temperature={"name": "learnable"}))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    fresh.eval()
    from_file = create_model(tiny_cfg(), embed(4, 32, temperature={"name": "learnable"}), pretrained=path).eval()
    with torch.no_grad():
        expected = model(images, tokens)
        for other in (fresh, from_file):
            got = other(images, tokens)
            for key in ("image_features", "text_features", "logit_scale"):
                torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0)


def test_create_model_from_name_json_and_dict(tmp_path):
    assert open_clip.get_model_config("tiny-vit-oblique")["embed_cfg"]["n_tokens"] == 16
    by_name = create_model("tiny-vit-oblique")
    assert (by_name.n_tokens, by_name.token_dim, by_name.geometry.name) == (16, 32, "oblique")
    sphere = create_model("tiny-vit-sphere")
    assert (sphere.n_tokens, sphere.geometry.name) == (1, "cosine") and sphere.temperature.value() > 1
    cfg = {**tiny_cfg(), "embed_cfg": {"n_tokens": 8, "token_dim": 16, "geometry": "geodesic"}}
    path = tmp_path / "my-model.json"
    path.write_text(json.dumps(cfg))
    for spec in (cfg, path, str(path)):
        model = create_model(spec)
        assert (model.n_tokens, model.token_dim, model.geometry.name) == (8, 16, "geodesic")
    assert create_model(cfg, {"n_tokens": 2, "token_dim": 4}).n_tokens == 2  # argument wins over the file
    assert get_tokenizer("tiny-vit-oblique")(["a cat"]).shape == (1, 20)


@pytest.mark.parametrize("name, width, patches", [("ViT-B-16", 768, 196), ("ViT-B-32", 768, 49), ("ViT-S-32", 384, 49)])
def test_open_clip_vit_configs_build(name, width, patches):
    with torch.device("meta"):  # shapes only, no memory
        model = create_model(name, {"n_tokens": 16, "token_dim": 8})
    assert model.visual.class_embedding.shape == (16, width)
    assert model.visual.positional_embedding.shape == (16 + patches, width)
    assert model.visual.proj.shape == (width, 128)
    assert model.text.text_projection.shape[1] == 128


def test_shipped_configs_load_and_are_registered():
    names = {path.stem for path in CONFIG_DIR.glob("*.json")}
    assert {"tiny-vit-oblique", "tiny-vit-sphere", "tiny-vit-concat", "digits-tiny"} <= names
    for name in names:
        assert name in open_clip.list_models()
        EmbedConfig.from_dict(load_model_config(name)["embed_cfg"])


@pytest.mark.parametrize(
    "cfg_change, match",
    [
        ({"embed": {"n_tokens": 0}}, r"n_tokens.*>= 1"),
        ({"embed": {"token_dim": 1}}, r"token_dim.*>= 2"),
        ({"embed": {"n_tokens": 4, "token_dim": 32, "embed_dim": 512}}, r"embed_dim.*4 \* 32"),
        ({"embed": {"geometry": "manhattan"}}, r"geometry.*manhattan.*oblique"),
        ({"embed": {"objective": "hinge"}}, r"objective.*softmax, sigmoid"),
        ({"embed": {"n_token": 4}}, r"unknown keys in `embed_cfg`.*n_tokens"),
        ({"vision": {"attentional_pool": True}}, r"vision_cfg.attentional_pool.*accepted: False"),
        ({"vision": {"pool_type": "avg"}}, r"vision_cfg.pool_type.*'tok'"),
        ({"vision": {"timm_model_name": "vit_base_patch16_224"}}, r"vision_cfg.timm_model_name"),
        ({"vision": {"layers": [2, 2, 2, 2]}}, r"vision_cfg.layers"),
        ({"text": {"pool_type": "last"}}, r"text_cfg.pool_type.*'argmax'"),
        ({"text": {"no_causal_mask": True}}, r"text_cfg.no_causal_mask.*False"),
        ({"text": {"embed_cls": True}}, r"text_cfg.embed_cls"),
        ({"top": {"multimodal_cfg": {}}}, r"unsupported keys \['multimodal_cfg'\]"),
    ],
)
def test_bad_configs_name_the_field_and_accepted_values(cfg_change, match):
    cfg = tiny_cfg()
    cfg["vision_cfg"].update(cfg_change.get("vision", {}))
    cfg["text_cfg"].update(cfg_change.get("text", {}))
    cfg.update(cfg_change.get("top", {}))
    with pytest.raises(ValueError, match=match):
        create_model(cfg, {"n_tokens": 4, "token_dim": 32, **cfg_change.get("embed", {})})


def test_unknown_model_name_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown model 'ViT-B-61'.*did you mean 'ViT-B-16'.*list_models"):
        create_model("ViT-B-61")
    with pytest.raises(ValueError, match=r"unknown model 'zzz' for `model_name_or_cfg` \(accepted"):
        create_model("zzz")


# ---------------------------------------------------------------------------------------------------
# image tower details


def test_patch_dropout_keeps_all_class_tokens():
    dropout = PrefixPatchDropout(0.5, num_prefix_tokens=3).train()
    x = torch.arange(2 * 11, dtype=torch.float32).view(2, 11, 1).expand(2, 11, 4)
    out = dropout(x)
    assert out.shape == (2, 3 + 4, 4)
    torch.testing.assert_close(out[:, :3], x[:, :3])
    model = create_model(tiny_cfg(patch_dropout=0.5), embed(4, 32)).train()
    assert isinstance(model.visual.patch_dropout, PrefixPatchDropout)
    assert model.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 4, 32)


def test_multi_token_clip_is_built_directly():
    cfg = tiny_cfg()
    model = MultiTokenCLIP(cfg["vision_cfg"], cfg["text_cfg"], {"n_tokens": 2, "token_dim": 64})
    assert model.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 2, 64)


def test_block_control_is_one_token_split_into_normalized_blocks(images, tokens):
    """class_tokens=1: the raw output of a single-token model (same weights), reshaped into k blocks of d,
    each block normalized on its own sphere."""
    single = create_model(tiny_cfg(), embed(1, 128, "cosine", temperature="none")).eval()
    block = create_model(tiny_cfg(), embed(4, 32, class_tokens=1)).eval()
    block.load_state_dict(single.state_dict())
    with torch.no_grad():
        for encode in ("encode_image", "encode_text"):
            inputs = images if encode == "encode_image" else tokens
            raw = getattr(single, encode)(inputs, normalize=False).reshape(-1, 4, 32)
            expected = torch.nn.functional.normalize(raw.double(), dim=-1)
            got = getattr(block, encode)(inputs)
            assert got.shape == (inputs.shape[0], 4, 32)
            torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("class_tokens", [0, 3])
def test_class_tokens_must_divide_n_tokens(class_tokens):
    with pytest.raises(ValueError, match="class_tokens"):
        embed(4, 32, class_tokens=class_tokens)


@pytest.mark.parametrize("k", [1, 4])
def test_compiled_model_reads_no_length_off_the_data(k, images):
    """The text tower never reads a length off the data (``int(eot.max())`` would be a graph break and,
    on a GPU, a sync; the trainer cuts every batch on the CPU first); the whole training forward compiles
    as one graph."""
    model = create_model(tiny_cfg(context_length=24), embed(k, 128 // k)).train()
    text = open_clip.tokenizer.SimpleTokenizer(context_length=24)(CAPTIONS)
    explanation = torch._dynamo.explain(model)(images, text)
    assert explanation.graph_break_count == 0, explanation.break_reasons


# ---------------------------------------------------------------------------------------------------
# the model's one geometry: its parameters, its loss, its options


@pytest.mark.parametrize("k, d", [(1, 128), (16, 8)])
@pytest.mark.parametrize("geometry", ["lorentz", "euclidean"])
def test_each_geometry_builds_and_runs_for_k1_and_k16(geometry, k, d, images, tokens):
    torch.manual_seed(0)
    model = create_model(tiny_cfg(), {"geometry": geometry, "n_tokens": k, "token_dim": d})
    out = model(images, tokens)
    assert out["image_features"].shape == out["text_features"].shape == (len(CAPTIONS), k, d)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    assert isinstance(model.geometry, Geometry) and model.geometry.name == geometry
    loss = ContrastiveLoss(model.geometry)(out["image_features"], out["text_features"], out["logit_scale"])
    loss.loss.backward()
    if geometry == "euclidean":
        assert list(model.geometry.parameters()) == []
        torch.testing.assert_close(out["image_features"], model.encode_image(images, normalize=False))
        return
    assert {"geometry.log_curvature", "geometry.log_image_scale", "geometry.log_text_scale"} <= model.state_dict().keys()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.geometry.parameters())
    # the scales start at 1 / sqrt(d), MERU's init for the token width
    assert model.geometry.values()["image_scale"].item() == pytest.approx(d**-0.5)


def test_geometry_parameters_get_no_weight_decay():
    model = create_model(tiny_cfg(), embed(4, 32, "lorentz"))
    names = {f"geometry.{n}" for n, _ in model.geometry.named_parameters()}
    assert len(names) == 3 and names <= model.no_weight_decay()
    groups = {g["name"]: g for g in parameter_groups(model, 0.1)}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    assert groups["no_decay"]["weight_decay"] == 0.0
    assert all(id(p) in no_decay for p in model.geometry.parameters())


def test_k1_lorentz_model_forward_and_loss_equal_merus_formula(images, tokens):
    """The model's own alpha and curvature, its raw tower outputs, MERU's loss written out in float64."""
    torch.manual_seed(3)
    model = create_model(tiny_cfg(), embed(1, 64, "lorentz", temperature={"name": "learnable", "init": 0.07}))
    with torch.no_grad():  # away from the initial values, so a swapped or ignored parameter shows
        model.geometry.log_curvature.fill_(math.log(0.6))
        model.geometry.log_image_scale.fill_(math.log(0.3))
        model.geometry.log_text_scale.fill_(math.log(0.45))
    out = model(images, tokens)
    got = ContrastiveLoss(model.geometry)(out["image_features"], out["text_features"], out["logit_scale"])
    raw_image = model.encode_image(images, normalize=False)[:, 0].double()
    raw_text = model.encode_text(tokens, normalize=False)[:, 0].double()
    expected = meru_loss(raw_image, raw_text, 0.6, 0.3, 0.45, out["logit_scale"].item())
    assert abs(got.loss.item() - expected.item()) < 1e-5


def test_lorentz_geometry_survives_the_state_dict_and_pretrained_loading(tmp_path, images, tokens):
    model = create_model(tiny_cfg(), embed(4, 32, "lorentz")).eval()
    with torch.no_grad():
        model.geometry.log_curvature.fill_(0.5)
        model.geometry.log_text_scale.fill_(-0.2)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    loaded = create_model(tiny_cfg(), embed(4, 32, "lorentz"), pretrained=path).eval()
    assert {k: v.item() for k, v in loaded.geometry.values().items()} == \
        {k: v.item() for k, v in model.geometry.values().items()}
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, tokens)["text_features"], model(images, tokens)["text_features"],
                                   atol=0, rtol=0)


def test_clamp_puts_temperature_and_geometry_back_in_range():
    # the ranges given here, not the defaults: c in [2 / 4, 2 * 4], modality scales <= 1, temperature scale <= 10
    model = create_model(tiny_cfg(), embed(2, 16, "lorentz", temperature={"name": "learnable", "max_scale": 10.0},
                                           geometry_options={"curvature_init": 2.0, "curvature_range": 4.0}))
    with torch.no_grad():
        model.geometry.log_curvature.fill_(10.0)
        model.geometry.log_image_scale.fill_(1.0)
        model.temperature.log_scale.fill_(5.0)
    model.clamp_()
    assert float(model.geometry.log_curvature) == pytest.approx(math.log(2.0 * 4.0))
    assert float(model.geometry.log_image_scale) == 0.0
    assert model.temperature.scale().item() == pytest.approx(10.0)
    create_model(tiny_cfg(), embed(2, 16)).clamp_()  # no geometry parameters: the temperature alone


def test_geometry_options_reach_the_model_and_bad_ones_name_the_field():
    model = create_model(tiny_cfg(), embed(2, 16, "euclidean", geometry_options={"squared": False}))
    assert model.geometry.squared is False
    model = create_model(tiny_cfg(), embed(2, 16, "lorentz", geometry_options={"curvature_init": 0.5,
                                                                                "learn_curvature": False,
                                                                                "entailment_weight": 0.2}))
    assert model.geometry.values()["curvature"].item() == pytest.approx(0.5)
    assert not model.geometry.log_curvature.requires_grad and model.geometry.entailment_weight == 0.2
    for options, match in (({"squard": True}, "accepted: squared"), ({"squared": "no"}, "True or False")):
        with pytest.raises(ValueError, match=match) as err:
            create_model(tiny_cfg(), embed(2, 16, "euclidean", geometry_options=options))
        assert err.value.field == "geometry_options"
    with pytest.raises(ValueError, match="curvature_init"):
        create_model(tiny_cfg(), embed(2, 16, "lorentz", geometry_options={"curvature_init": -1.0}))
    with pytest.raises(ValueError, match="geometry_options.*mapping"):
        embed(2, 16, "lorentz", geometry_options=3)
