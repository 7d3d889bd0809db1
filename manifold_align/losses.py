"""Contrastive losses over a pluggable similarity and temperature.

``objective="softmax"``: symmetric cross-entropy (InfoNCE), open_clip's ``ClipLoss`` with the dot product
replaced by ``similarity.pairwise``. ``objective="sigmoid"``: SigLIP's pairwise sigmoid loss
(open_clip's ``SigLipLoss``) with a learnable bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_gather_with_grad, gather_features, is_distributed
from .manifolds.lorentz.cone import entailment_loss
from .similarity import Similarity, get_similarity
from .temperature import Temperature, get_temperature
from .validation import check_floating, check_nonempty, check_on_manifold, check_rank, describe_shape

__all__ = ["OBJECTIVES", "ContrastiveLoss", "ContrastiveLossOutput"]

#: the contrastive objectives: InfoNCE (``softmax``) and SigLIP (``sigmoid``)
OBJECTIVES = ("softmax", "sigmoid")


@dataclass
class ContrastiveLossOutput:
    """Result of :class:`ContrastiveLoss`.

    Attributes
    ----------
    loss : torch.Tensor, 0-dim
        The loss to back-propagate (nats).
    scale : float
        The scale used for the logits: the ``logit_scale`` passed to ``forward``, else the loss's temperature.
    positive_similarity : float
        Mean similarity of matched pairs (before scaling), over the rows this rank scored.
    negative_similarity : float
        Mean similarity of unmatched pairs (before scaling); NaN when there are none (batch of 1).
    gap : float
        ``positive_similarity - negative_similarity``, the paper's equilibrium gap.
    entailment : float or None
        MERU's entailment loss (radians, before its weight; see :mod:`manifold_align.entailment`) when
        ``entailment_weight > 0``, else None. ``loss`` already includes ``entailment_weight * entailment``.
    """

    loss: torch.Tensor
    scale: float
    positive_similarity: float
    negative_similarity: float
    gap: float
    entailment: Optional[float] = None


def _positive_mask(n_rows: int, n_cols: int, offset: int, device) -> torch.Tensor:
    """Boolean (n_rows, n_cols) mask, True at (i, offset + i)."""
    mask = torch.zeros(n_rows, n_cols, dtype=torch.bool, device=device)
    rows = torch.arange(n_rows, device=device)
    mask[rows, rows + offset] = True
    return mask


class _FeatureStats(NamedTuple):
    """What :func:`_diagnostics` read off one feature tensor."""

    n_nan: int = 0
    n_inf: int = 0
    #: the similarity's ``manifold_deviation``; NaN when not measured (or for non-finite features)
    deviation: float = math.nan


@torch.no_grad()
def _diagnostics(similarity: torch.Tensor, offset: int, features: Mapping[str, torch.Tensor],
                 scale: torch.Tensor, deviations: Optional[Mapping[str, torch.Tensor]] = None,
                 ) -> tuple[float, float, float, dict[str, _FeatureStats]]:
    """Mean positive and negative similarity, the scale used, the NaN and Inf counts of ``features`` and the
    ``deviations``.

    The similarity is an (n, m) block whose positives sit at (i, offset + i), read off the diagonal; the
    negative mean is NaN when there are none. ``features`` maps argument names to tensors whose NaN and Inf
    are counted, ``deviations`` argument names to 0-dim tensors (the similarity's ``manifold_deviation``).
    Everything comes to the host in one transfer (one device sync on a GPU).

    Returns
    -------
    positive, negative, scale : float
    stats : dict of str to _FeatureStats
        Per name in ``features`` or ``deviations``.
    """
    n, m = similarity.shape
    positive_sum = similarity.diagonal(offset).sum()
    n_negative = n * m - n
    negative_sum = similarity.sum() - positive_sum
    dtype = similarity.dtype
    stats = [positive_sum / n, negative_sum / max(n_negative, 1), scale.detach().reshape(()).to(similarity)]
    for tensor in features.values():
        stats += [torch.isnan(tensor).sum().to(dtype), torch.isinf(tensor).sum().to(dtype)]
    deviations = dict(deviations or {})
    stats += [deviation.to(device=similarity.device, dtype=dtype) for deviation in deviations.values()]
    pos, neg, scale_value, *values = torch.stack(stats).tolist()
    counts, measured = values[: 2 * len(features)], values[2 * len(features):]
    out = {name: _FeatureStats(int(counts[2 * i]), int(counts[2 * i + 1])) for i, name in enumerate(features)}
    for name, deviation in zip(deviations, measured):
        out[name] = out.get(name, _FeatureStats())._replace(deviation=deviation)
    return pos, (neg if n_negative else math.nan), scale_value, out


class ContrastiveLoss(nn.Module):
    """Contrastive image-text loss on already projected features (it refuses raw ones: ``check_on_manifold``).

    Parameters
    ----------
    similarity : str or Similarity, default "oblique"
        See :func:`manifold_align.similarity.get_similarity`.
    temperature : str, dict, Temperature or None, default None
        See :func:`manifold_align.temperature.get_temperature`; None means scale 1, ``"auto"`` the
        similarity's own default. A Temperature instance (for example the model's) is used as is and shared.
    objective : {"softmax", "sigmoid"}, default "softmax"
    logit_bias : nn.Parameter, optional, keyword-only
        External bias (owned by the model) for ``sigmoid``. When None and ``objective == "sigmoid"`` the loss
        creates its own, initialized at ``bias_init``. Not allowed with ``softmax`` (a constant bias does not
        change a softmax).
    bias_init : float, default -10.0, keyword-only
    local_loss : bool, default False, keyword-only
        softmax only: score this rank's rows against all gathered columns instead of the full matrix
        (labels offset by ``rank * N``). The sigmoid loss is always local.
    gather_with_grad : bool, default False, keyword-only
        softmax only: gather with gradient (:func:`manifold_align.distributed.all_gather_with_grad`) so
        gradients reach every rank. The sigmoid loss always gathers text features with gradient (open_clip's SigLipLoss exchanges them with
        gradient too; we all_gather instead of its neighbour exchange -- same sum, same gradients).
    cache_labels : bool, default False, keyword-only
        Cache the softmax label vector per device.
    check_finite : bool, default True, keyword-only
        Raise ``ValueError`` naming the argument when the features hold NaN or Inf. Checked together with
        the diagnostics, in the one host transfer of a forward. False lets them through (the loss is then
        non-finite), for a caller that handles that, such as the trainer with ``train.skip_nonfinite``.
    check_on_manifold : bool, default True, keyword-only
        Raise ``ValueError`` naming the argument and its largest deviation when the features are not on
        the similarity's manifold (:meth:`~manifold_align.similarity.Similarity.manifold_deviation` above
        :meth:`~manifold_align.similarity.Similarity.manifold_tolerance`; for the oblique family, a token
        whose norm is off 1 by more than 1e-2): raw, unprojected features would give a plausible but wrong
        loss (38 nats off for standard normal (8, 16, 32) features). The loss refuses them instead of projecting them,
        so that a missing ``project`` in the caller shows up instead of being papered over with a second
        normalization. Read in the same host transfer as ``check_finite`` (no extra device sync); the
        measurement is one norm pass over the features. Non-finite features pass this check (their
        deviation is NaN): ``check_finite`` covers them. Similarities without a constraint skip it.
    rank, world_size : int, keyword-only
        Features are gathered only when ``world_size > 1`` (a process group must then be initialized).
    entailment_weight : float, default 0.0, keyword-only
        Weight of MERU's entailment loss (text entails image, :func:`manifold_align.entailment.entailment_loss`,
        on this rank's pairs), added to the contrastive loss; 0 (default) leaves it out. Only for the
        ``lorentz`` similarity (MERU's runs use 0.2).
    entailment_min_radius : float, default 0.1, keyword-only
        The cone's ``min_radius`` (MERU's).

    Notes
    -----
    With ``world_size > 1`` each rank's loss equals (non-local softmax) or averages over ranks to
    (local softmax, sigmoid) the single-process loss on the concatenated batch; gradients w.r.t. each rank's
    features, summed over ranks by all_gather's backward and averaged by DDP, match the single-process ones.
    """

    def __init__(
        self,
        similarity: Union[str, Similarity] = "oblique",
        temperature: Union[str, Mapping[str, Any], Temperature, None] = None,
        objective: str = "softmax",
        *,
        logit_bias: Optional[torch.Tensor] = None,
        bias_init: float = -10.0,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        check_finite: bool = True,
        check_on_manifold: bool = True,
        rank: int = 0,
        world_size: int = 1,
        entailment_weight: float = 0.0,
        entailment_min_radius: float = 0.1,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
            raise ValueError(f"need integers world_size >= 1 and 0 <= rank < world_size, got rank={rank!r}, "
                             f"world_size={world_size!r}")
        self.similarity = get_similarity(similarity)
        self.temperature = get_temperature(temperature, similarity=self.similarity)
        self.objective = objective
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.check_finite = check_finite
        self.check_on_manifold = check_on_manifold
        self.rank, self.world_size = rank, world_size
        self._labels: dict = {}
        self.logit_bias = self._make_bias(logit_bias, bias_init)
        self.entailment_weight, self.entailment_min_radius = self._check_entailment(
            entailment_weight, entailment_min_radius)

    def _check_entailment(self, weight, min_radius) -> tuple[float, float]:
        try:
            weight, min_radius = float(weight), float(min_radius)
        except (TypeError, ValueError):
            raise ValueError(f"`entailment_weight` and `entailment_min_radius` must be numbers, got {weight!r} "
                             f"and {min_radius!r}") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"`entailment_weight` must be a finite number >= 0, got {weight!r}")
        if not (math.isfinite(min_radius) and min_radius > 0):
            raise ValueError(f"`entailment_min_radius` must be a positive number, got {min_radius!r}")
        if weight > 0 and self.similarity.name != "lorentz":
            raise ValueError(f"`entailment_weight` > 0 needs the hyperboloid (similarity 'lorentz'), got "
                             f"similarity {self.similarity.name!r}")
        return weight, min_radius

    def _make_bias(self, logit_bias, bias_init: float) -> Optional[torch.Tensor]:
        if self.objective == "softmax":
            if logit_bias is not None:
                raise ValueError("`logit_bias` is only used with objective='sigmoid', got one with 'softmax'")
            return None
        if logit_bias is None:
            return nn.Parameter(torch.tensor(float(bias_init)))
        if not isinstance(logit_bias, torch.Tensor) or logit_bias.numel() != 1:
            raise ValueError(f"`logit_bias` must be a one-element tensor or nn.Parameter, got {logit_bias!r}")
        return logit_bias

    # ---- checks ---------------------------------------------------------------------------------
    def _check_inputs(self, image_features: torch.Tensor, text_features: torch.Tensor) -> None:
        """Shapes and dtypes, in the caller's argument names (Python only: no device work)."""
        expected = self.similarity.expected_shape
        for tensor, name in ((image_features, "image_features"), (text_features, "text_features")):
            check_rank(tensor, name, 2, expected)
            check_floating(tensor, name)
            # an empty batch would give a NaN loss and NaN diagnostics without a word
            check_nonempty(tensor, name, f"{expected} with every size >= 1")
        if image_features.shape != text_features.shape:
            raise ValueError(
                f"`image_features` and `text_features` must have the same shape, got "
                f"{describe_shape(image_features)} and {describe_shape(text_features)}"
            )
        self.similarity.check_inputs(image_features, text_features, names=("image_features", "text_features"))

    # ---- softmax --------------------------------------------------------------------------------
    def _labels_for(self, n: int, device) -> torch.Tensor:
        key = (device, n)
        if self.cache_labels and key in self._labels:
            return self._labels[key]
        labels = torch.arange(n, device=device, dtype=torch.long)
        if self.world_size > 1 and self.local_loss:
            labels = labels + n * self.rank
        if self.cache_labels:
            self._labels = {key: labels}
        return labels

    def _softmax_similarities(self, image, text, distributed: bool, geometry=None):
        """Return (sim_per_image (n, M), sim_per_text (n, M), positive offset)."""
        pairwise = self.similarity.pairwise if geometry is None else \
            (lambda a, b: self.similarity.pairwise(a, b, geometry=geometry))
        if not distributed:
            sim = pairwise(image, text)
            return sim, sim.T, 0
        all_image, all_text = gather_features(
            image, text, local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
            rank=self.rank, world_size=self.world_size,
        )
        if self.local_loss:
            # image-text order kept on both sides so asymmetric similarities stay correct
            per_image = pairwise(image, all_text)
            per_text = pairwise(all_image, text).T
            return per_image, per_text, image.shape[0] * self.rank
        sim = pairwise(all_image, all_text)
        return sim, sim.T, 0

    def _softmax_loss(self, image, text, distributed: bool, scale: Callable, geometry=None):
        per_image, per_text, offset = self._softmax_similarities(image, text, distributed, geometry)
        labels = self._labels_for(per_image.shape[0], per_image.device)
        loss = (F.cross_entropy(scale(per_image), labels) + F.cross_entropy(scale(per_text), labels)) / 2
        return loss, per_image, offset

    # ---- sigmoid --------------------------------------------------------------------------------
    def _sigmoid_loss(self, image, text, distributed: bool, scale: Callable, bias, geometry=None):
        offset = 0
        if distributed:
            text = all_gather_with_grad(text)
            offset = image.shape[0] * self.rank
        sim = self.similarity.pairwise(image, text) if geometry is None else \
            self.similarity.pairwise(image, text, geometry=geometry)
        logits = scale(sim) + bias
        labels = 2.0 * _positive_mask(sim.shape[0], sim.shape[1], offset, sim.device).to(logits.dtype) - 1.0
        loss = -F.logsigmoid(labels * logits).sum() / image.shape[0]
        return loss, sim, offset

    # ---- forward --------------------------------------------------------------------------------
    @staticmethod
    def _check_scalar(value, name: str) -> None:
        if value is not None and not (isinstance(value, torch.Tensor) and value.numel() == 1
                                      and value.is_floating_point()):
            shape = describe_shape(value) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"`{name}` must be None or a one-element floating-point tensor (e.g. the model's "
                             f"output), got {shape}")

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, *,
                logit_scale: Optional[torch.Tensor] = None, logit_bias: Optional[torch.Tensor] = None,
                geometry: Optional[nn.Module] = None) -> ContrastiveLossOutput:
        """Loss of a batch of matched pairs.

        Parameters
        ----------
        image_features, text_features : torch.Tensor, shape (N, k, d) (or (N, D) for ``cosine``)
            Projected features (``similarity.project``), floating point, N >= 1; row i of each is a matched
            pair. Finite (see ``check_finite``) and on the similarity's manifold (see ``check_on_manifold``).
        logit_scale : torch.Tensor, 0-dim, optional, keyword-only
            The scale that multiplies similarities into logits (open_clip style: the model owns it and
            passes its forward output here, clamped by the model's temperature). None: the loss's own
            ``temperature``.
        logit_bias : torch.Tensor, 0-dim, optional, keyword-only
            ``sigmoid`` only: overrides the loss's own bias. Not allowed with ``softmax``.
        geometry : nn.Module, optional, keyword-only
            The similarity's learnable geometry (``similarity.make_geometry``), passed to
            ``similarity.pairwise``; required for ``lorentz``, None for the others.

        Raises
        ------
        ValueError
            Naming ``image_features`` or ``text_features``: wrong rank or shape for the similarity, an
            integer dtype, an empty batch, shapes that differ; NaN/Inf values (``check_finite``), features
            off the manifold (``check_on_manifold``).

        Returns
        -------
        ContrastiveLossOutput
            ``loss`` in nats (float32 under autocast), and diagnostics computed without gradient.
        """
        self._check_inputs(image_features, text_features)
        self._check_scalar(logit_scale, "logit_scale")
        self._check_scalar(logit_bias, "logit_bias")
        if logit_bias is not None and self.objective == "softmax":
            raise ValueError("`logit_bias` is only used with objective='sigmoid', got one with 'softmax'")
        scale = self.temperature if logit_scale is None else (lambda s: s * logit_scale.reshape(()))
        distributed = is_distributed(self.world_size)
        if self.objective == "softmax":
            loss, sim, offset = self._softmax_loss(image_features, text_features, distributed, scale, geometry)
        else:
            bias = self.logit_bias if logit_bias is None else logit_bias.reshape(())
            loss, sim, offset = self._sigmoid_loss(image_features, text_features, distributed, scale, bias, geometry)
        entailment = None
        if self.entailment_weight > 0:
            value = self._entailment(image_features, text_features, geometry)
            loss = loss + self.entailment_weight * value
            entailment = float(value.detach())
        inputs = {"image_features": image_features, "text_features": text_features}
        deviations = {}
        if self.check_on_manifold:
            measured = {name: self.similarity.manifold_deviation(t) for name, t in inputs.items()}
            deviations = {name: d for name, d in measured.items() if d is not None}
        used_scale = self.temperature.scale() if logit_scale is None else logit_scale
        pos, neg, scale_value, stats = _diagnostics(sim.detach(), offset, inputs if self.check_finite else {},
                                                    used_scale, deviations)
        for name, found in stats.items():
            if found.n_nan or found.n_inf:
                raise ValueError(f"`{name}` must be finite, got {found.n_nan} NaN and {found.n_inf} Inf values in a "
                                 f"tensor of shape {describe_shape(inputs[name])}")
        for name, found in stats.items():
            if name in deviations:
                tolerance = self.similarity.manifold_tolerance(inputs[name].dtype)
                check_on_manifold(found.deviation, tolerance, name, self.similarity.manifold_text)
        return ContrastiveLossOutput(
            loss=loss, scale=scale_value, positive_similarity=pos,
            negative_similarity=neg, gap=pos - neg, entailment=entailment,
        )

    def _entailment(self, image, text, geometry) -> torch.Tensor:
        """MERU's entailment loss on this rank's pairs (text entails image), 0-dim."""
        if geometry is None:
            raise ValueError("`geometry` is required for the entailment loss (it holds the curvature), got None")
        return entailment_loss(text, image, geometry.curvature(), min_radius=self.entailment_min_radius)

    def extra_repr(self) -> str:  # noqa: D102
        return (f"similarity={self.similarity.name!r}, objective={self.objective!r}, local_loss={self.local_loss}, "
                f"gather_with_grad={self.gather_with_grad}, rank={self.rank}, world_size={self.world_size}")
