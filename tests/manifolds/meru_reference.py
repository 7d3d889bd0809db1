"""MERU's hyperboloid formulas (Desai et al., ICML 2023; its ``lorentz.py``), written out independently of the
library on space components (time derived), for the tests to compare against in float64."""

from __future__ import annotations

import math

import torch


def meru_expmap0(x, c):
    r = math.sqrt(c) * x.norm(dim=-1, keepdim=True)
    return torch.sinh(r) * x / r


def meru_pairwise_dist(x, y, c):
    xt = torch.sqrt(1 / c + (x**2).sum(-1, keepdim=True))
    yt = torch.sqrt(1 / c + (y**2).sum(-1, keepdim=True))
    inner = x @ y.T - xt @ yt.T
    return torch.acosh(torch.clamp(-c * inner, min=1 + 1e-8)) / math.sqrt(c)


def meru_half_aperture(x, c, min_radius=0.1, eps=1e-8):
    return torch.asin(torch.clamp(2 * min_radius / (x.norm(dim=-1) * math.sqrt(c) + eps), -1 + eps, 1 - eps))


def meru_exterior_angle(x, y, c, eps=1e-8):
    """MERU's ``oxy_angle``: the exterior angle at ``x`` of the triangle (origin, x, y)."""
    xt = torch.sqrt(1 / c + (x**2).sum(-1))
    yt = torch.sqrt(1 / c + (y**2).sum(-1))
    c_xyl = c * ((x * y).sum(-1) - xt * yt)
    numer = yt + c_xyl * xt
    denom = torch.sqrt(torch.clamp(c_xyl**2 - 1, min=eps))
    return torch.acos(torch.clamp(numer / (x.norm(dim=-1) * denom + eps), -1 + eps, 1 - eps))


def meru_entailment(text, image, c, min_radius=0.1, eps=1e-8):
    angle = meru_exterior_angle(text, image, c, eps)
    return torch.clamp(angle - meru_half_aperture(text, c, min_radius, eps), min=0).mean()
