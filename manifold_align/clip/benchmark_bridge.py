"""clip_benchmark reads our models: the model in the form its evaluate functions take, and its command line.

clip_benchmark (``pip install clip_benchmark``) scores any model with ``encode_image(images) -> (B, D)`` and
``encode_text(tokens) -> (B, D)``: it L2-normalizes those vectors and ranks by their dot product.
:class:`ClipBenchmarkModel` gives it our features, projected onto the model's manifold and flattened to
``D = k * d``. On the geometries whose scores rank as that dot product does, ``cosine``, ``oblique`` (the sum of
the k cosines is the flattened dot product) and ``chordal`` (an affine function of it), clip_benchmark then ranks
exactly as our model does; for the others (``geodesic``, ``euclidean``, ``lorentz``) it scores our features its
own way, and :func:`for_clip_benchmark` warns.

Class prototypes: clip_benchmark's ``zeroshot_classification.evaluate`` builds its own, by the ``whole`` rule of
:mod:`manifold_align.clip.prototypes` (``eval.prototype=whole`` in our evaluation). To run clip_benchmark with
ours (the ``geometry`` rule, our default), write them with :func:`save_geometry_classifier` and pass the file as
its ``load_clfs=[path]``.

Command line: ``python -m manifold_align.clip.benchmark_bridge eval --model_type manifold_align --model NAME
--pretrained DIR ...`` is clip_benchmark's own ``clip_benchmark eval`` with our model type registered
(:func:`register`); ``DIR`` is a model exported with :func:`manifold_align.clip.save_pretrained`.
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import nullcontext
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from .tokenizer import trim_padding
from .zero_shot import Autocast, Template, _fill, build_zero_shot_classifier

__all__ = [
    "DOT_RANKED",
    "MODEL_TYPE",
    "ClipBenchmarkModel",
    "clip_benchmark_templates",
    "for_clip_benchmark",
    "load_for_clip_benchmark",
    "main",
    "register",
    "save_geometry_classifier",
]

#: geometries whose scores of projected features rank as the dot product of the flattened features does
DOT_RANKED = ("cosine", "oblique", "chordal")
#: the ``--model_type`` under which :func:`register` adds our models to clip_benchmark
MODEL_TYPE = "manifold_align"


class ClipBenchmarkModel(nn.Module):
    """A :class:`~manifold_align.clip.MultiTokenCLIP` as clip_benchmark's evaluate functions take it.

    Parameters
    ----------
    model : MultiTokenCLIP
        Held as a submodule (``.eval()``, ``.to()`` reach it).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> projected features flattened, (B, k * d)."""
        return self.model.encode_image(images).flatten(1)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> projected features flattened, (B, k * d); CPU padding cut first (exact)."""
        if text.device.type == "cpu":
            text = trim_padding(text)
        return self.model.encode_text(text).flatten(1)


def for_clip_benchmark(model: nn.Module) -> ClipBenchmarkModel:
    """Wrap ``model`` for clip_benchmark, in eval mode; warns when clip_benchmark's scoring is not the model's.

    Warns
    -----
    UserWarning
        The geometry is not one of :data:`DOT_RANKED`: clip_benchmark ranks by the cosine of the flattened
        features, not by the model's geometry.
    """
    name = model.geometry.name
    if name not in DOT_RANKED:
        warnings.warn(f"clip_benchmark ranks by the cosine of the flattened features; the model's geometry "
                      f"{name!r} ranks differently (same ranking only for {', '.join(DOT_RANKED)}), so its "
                      f"numbers are not the model's own", UserWarning, stacklevel=2)
    return ClipBenchmarkModel(model).eval()


def clip_benchmark_templates(classnames: Sequence[str], templates: Sequence[Template]) -> dict[str, list[str]]:
    """Our templates (``"{}"`` strings or callables, e.g. open_clip's) as clip_benchmark's class-specific prompts.

    clip_benchmark fills a list of templates with ``template.format(c=name)``; a dict of ready prompts per class
    name is its other accepted form, and takes any template.
    """
    return {name: [_fill(template, name) for template in templates] for name in classnames}


def save_geometry_classifier(model, tokenizer: Callable, classnames: Sequence[str], templates: Sequence[Template],
                             path: Union[str, os.PathLike], *, batch_size: int = 256,
                             autocast: Autocast = nullcontext) -> torch.Tensor:
    """Write our class prototypes (the ``geometry`` rule) as clip_benchmark's ``load_clfs`` reads a classifier.

    Returns
    -------
    torch.Tensor, shape (k * d, C)
        What was saved (``torch.save``): the flattened prototypes, one column per class, as clip_benchmark's
        ``zero_shot_classifier`` returns them.
    """
    classifier = build_zero_shot_classifier(model, tokenizer, classnames, templates, batch_size=batch_size,
                                            autocast=autocast)
    columns = classifier.flatten(1).T.contiguous()
    torch.save(columns, path)
    return columns


def load_for_clip_benchmark(model_name: Optional[str] = None, pretrained: Optional[str] = None,
                            cache_dir: Optional[str] = None, device: Union[str, torch.device] = "cpu"):
    """clip_benchmark's model loader for our models: ``(model, transform, tokenizer)``.

    Parameters
    ----------
    model_name : str, optional
        The model config (name or JSON), for a ``pretrained`` state-dict file; ignored for an export directory.
    pretrained : str
        A directory written by :func:`manifold_align.clip.save_pretrained`, or a local state-dict file.
    cache_dir : str, optional
        Unused (nothing is downloaded); clip_benchmark passes it.
    device : str or torch.device
    """
    from open_clip.transform import image_transform, image_transform_v2

    from .export import export_model_config, is_export_dir, load_pretrained_dir, preprocess_from_dir
    from .factory import create_model
    from .registry import load_model_config
    from .tokenizer import get_tokenizer

    if pretrained is not None and is_export_dir(pretrained):
        model = load_pretrained_dir(pretrained)
        transform = image_transform_v2(preprocess_from_dir(pretrained), is_train=False)
        tokenizer = get_tokenizer(export_model_config(pretrained))
    else:
        if model_name is None or pretrained is None:
            raise ValueError("`pretrained` must be an exported model directory, or a state-dict file with "
                             "`model_name` its config")
        model = create_model(model_name, pretrained=pretrained)
        image_size = load_model_config(model_name)["vision_cfg"].get("image_size", 224)
        transform = image_transform(image_size, is_train=False)
        tokenizer = get_tokenizer(model_name)
    return for_clip_benchmark(model.to(device)), transform, tokenizer


def register() -> None:
    """Add :data:`MODEL_TYPE` to clip_benchmark's model types (``clip_benchmark.models``); idempotent."""
    import clip_benchmark.models as models

    models.TYPE2FUNC[MODEL_TYPE] = load_for_clip_benchmark
    if MODEL_TYPE not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(MODEL_TYPE)  # the list clip_benchmark's command line offers as choices


def main(argv: Optional[Sequence[str]] = None) -> None:
    """clip_benchmark's command line with :data:`MODEL_TYPE` registered (``argv``: its arguments)."""
    register()
    from clip_benchmark import cli

    sys.argv = ["clip_benchmark", *(sys.argv[1:] if argv is None else argv)]
    cli.main()


if __name__ == "__main__":  # pragma: no cover
    main()
