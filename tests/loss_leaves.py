"""The leaf tensors of a loss-gradient test: a geometry moved off its initial values, raw features, a scale, a bias.

Shared by the tiled-loss and the class-id tests, which take every gradient for these leaves.
"""

import math

import torch

from manifold_align.geometries import get_geometry


def loss_leaves(name, n_all, *, n_tokens, token_dim, dtype=torch.float64, seed=0):
    """``(geometry, raw_image, raw_text, log_scale, bias)``; the raw features are (n_all, n_tokens, token_dim).

    The features are drawn in float64 and cast, so each dtype sees the same values; the geometry's parameters
    (curvature, modality scales, where it has them) are set away from their initial values, inside the clamps.
    """
    geometry = get_geometry(name, n_tokens=n_tokens, token_dim=token_dim).to(dtype)
    named = dict(geometry.named_parameters())
    with torch.no_grad():
        for key, value in (("log_curvature", math.log(0.6)), ("log_image_scale", -0.4), ("log_text_scale", -0.7)):
            if key in named:
                named[key].fill_(value)
    g = torch.Generator().manual_seed(seed)
    shape = (n_all, n_tokens, token_dim)
    raw_image = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    raw_text = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    log_scale = torch.tensor(math.log(2.5), dtype=dtype, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=dtype, requires_grad=True)
    return geometry, raw_image, raw_text, log_scale, bias
