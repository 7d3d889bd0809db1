"""Contrastive losses over a pluggable similarity and temperature.

``objective="softmax"``: symmetric cross-entropy (InfoNCE), open_clip's ``ClipLoss`` with the dot product
replaced by ``similarity.pairwise``. ``objective="sigmoid"``: SigLIP's pairwise sigmoid loss
(open_clip's ``SigLipLoss``) with a learnable bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_gather_with_grad, gather_features, is_distributed
from .similarity import Similarity, get_similarity
from .temperature import Temperature, get_temperature
from .validation import check_floating, check_nonempty, check_on_manifold, check_rank, describe_shape

__all__ = ["ContrastiveLoss", "ContrastiveLossOutput"]

_OBJECTIVES = ("softmax", "sigmoid")


@dataclass
class ContrastiveLossOutput:
    """Result of :class:`ContrastiveLoss`.

    Attributes
    ----------
    loss : torch.Tensor, 0-dim
        The loss to back-propagate (nats).
    scale : float
        The temperature's scale used for the logits.
    positive_similarity : float
        Mean similarity of matched pairs (before scaling), over the rows this rank scored.
    negative_similarity : float
        Mean similarity of unmatched pairs (before scaling); NaN when there are none (batch of 1).
    gap : float
        ``positive_similarity - negative_similarity``, the paper's equilibrium gap.
    """

    loss: torch.Tensor
    scale: float
    positive_similarity: float
    negative_similarity: float
    gap: float


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
                 deviations: Optional[Mapping[str, torch.Tensor]] = None,
                 ) -> tuple[float, float, dict[str, _FeatureStats]]:
    """Mean positive and negative similarity, the NaN and Inf counts of ``features`` and the ``deviations``.

    The similarity is an (n, m) block whose positives sit at (i, offset + i), read off the diagonal; the
    negative mean is NaN when there are none. ``features`` maps argument names to tensors whose NaN and Inf
    are counted, ``deviations`` argument names to 0-dim tensors (the similarity's ``manifold_deviation``).
    Everything comes to the host in one transfer (one device sync on a GPU).

    Returns
    -------
    positive, negative : float
    stats : dict of str to _FeatureStats
        Per name in ``features`` or ``deviations``.
    """
    n, m = similarity.shape
    positive_sum = similarity.diagonal(offset).sum()
    n_negative = n * m - n
    negative_sum = similarity.sum() - positive_sum
    dtype = similarity.dtype
    stats = [positive_sum / n, negative_sum / max(n_negative, 1)]
    for tensor in features.values():
        stats += [torch.isnan(tensor).sum().to(dtype), torch.isinf(tensor).sum().to(dtype)]
    deviations = dict(deviations or {})
    stats += [deviation.to(device=similarity.device, dtype=dtype) for deviation in deviations.values()]
    pos, neg, *values = torch.stack(stats).tolist()
    counts, measured = values[: 2 * len(features)], values[2 * len(features):]
    out = {name: _FeatureStats(int(counts[2 * i]), int(counts[2 * i + 1])) for i, name in enumerate(features)}
    for name, deviation in zip(deviations, measured):
        out[name] = out.get(name, _FeatureStats())._replace(deviation=deviation)
    return pos, (neg if n_negative else math.nan), out


class ContrastiveLoss(nn.Module):
    """Contrastive image-text loss on already projected features (it refuses raw ones: ``check_on_manifold``).

    Parameters
    ----------
    similarity : str or Similarity, default "oblique"
        See :func:`manifold_align.similarity.get_similarity`.
    temperature : str, dict, Temperature or None, default None
        See :func:`manifold_align.temperature.get_temperature`; None means scale 1. A Temperature instance
        (for example the model's) is used as is and shared.
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
        softmax only: gather with ``torch.distributed.nn.all_gather`` so gradients reach every rank. The
        sigmoid loss always gathers text features with gradient (open_clip's SigLipLoss exchanges them with
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
    ) -> None:
        super().__init__()
        if objective not in _OBJECTIVES:
            raise ValueError(f"`objective` must be one of {', '.join(_OBJECTIVES)}, got {objective!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
            raise ValueError(f"need integers world_size >= 1 and 0 <= rank < world_size, got rank={rank!r}, "
                             f"world_size={world_size!r}")
        self.similarity = get_similarity(similarity)
        self.temperature = get_temperature(temperature)
        self.objective = objective
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.check_finite = check_finite
        self.check_on_manifold = check_on_manifold
        self.rank, self.world_size = rank, world_size
        self._labels: dict = {}
        self.logit_bias = self._make_bias(logit_bias, bias_init)

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

    def _softmax_similarities(self, image, text, distributed: bool):
        """Return (sim_per_image (n, M), sim_per_text (n, M), positive offset)."""
        if not distributed:
            sim = self.similarity.pairwise(image, text)
            return sim, sim.T, 0
        all_image, all_text = gather_features(
            image, text, local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
            rank=self.rank, world_size=self.world_size,
        )
        if self.local_loss:
            # image-text order kept on both sides so asymmetric similarities stay correct
            per_image = self.similarity.pairwise(image, all_text)
            per_text = self.similarity.pairwise(all_image, text).T
            return per_image, per_text, image.shape[0] * self.rank
        sim = self.similarity.pairwise(all_image, all_text)
        return sim, sim.T, 0

    def _softmax_loss(self, image, text, distributed: bool):
        per_image, per_text, offset = self._softmax_similarities(image, text, distributed)
        labels = self._labels_for(per_image.shape[0], per_image.device)
        loss = (F.cross_entropy(self.temperature(per_image), labels)
                + F.cross_entropy(self.temperature(per_text), labels)) / 2
        return loss, per_image, offset

    # ---- sigmoid --------------------------------------------------------------------------------
    def _sigmoid_loss(self, image, text, distributed: bool):
        offset = 0
        if distributed:
            text = all_gather_with_grad(text)
            offset = image.shape[0] * self.rank
        sim = self.similarity.pairwise(image, text)
        logits = self.temperature(sim) + self.logit_bias
        labels = 2.0 * _positive_mask(sim.shape[0], sim.shape[1], offset, sim.device).to(logits.dtype) - 1.0
        loss = -F.logsigmoid(labels * logits).sum() / image.shape[0]
        return loss, sim, offset

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> ContrastiveLossOutput:
        """Loss of a batch of matched pairs.

        Parameters
        ----------
        image_features, text_features : torch.Tensor, shape (N, k, d) (or (N, D) for ``cosine``)
            Projected features (``similarity.project``), floating point, N >= 1; row i of each is a matched
            pair. Finite (see ``check_finite``) and on the similarity's manifold (see ``check_on_manifold``).

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
        distributed = is_distributed(self.world_size)
        if self.objective == "softmax":
            loss, sim, offset = self._softmax_loss(image_features, text_features, distributed)
        else:
            loss, sim, offset = self._sigmoid_loss(image_features, text_features, distributed)
        inputs = {"image_features": image_features, "text_features": text_features}
        deviations = {}
        if self.check_on_manifold:
            measured = {name: self.similarity.manifold_deviation(t) for name, t in inputs.items()}
            deviations = {name: d for name, d in measured.items() if d is not None}
        pos, neg, stats = _diagnostics(sim.detach(), offset, inputs if self.check_finite else {}, deviations)
        for name, found in stats.items():
            if found.n_nan or found.n_inf:
                raise ValueError(f"`{name}` must be finite, got {found.n_nan} NaN and {found.n_inf} Inf values in a "
                                 f"tensor of shape {describe_shape(inputs[name])}")
        for name, found in stats.items():
            if name in deviations:
                tolerance = self.similarity.manifold_tolerance(inputs[name].dtype)
                check_on_manifold(found.deviation, tolerance, name, self.similarity.manifold_text)
        return ContrastiveLossOutput(
            loss=loss, scale=self.temperature.value(), positive_similarity=pos,
            negative_similarity=neg, gap=pos - neg,
        )

    def extra_repr(self) -> str:  # noqa: D102
        return (f"similarity={self.similarity.name!r}, objective={self.objective!r}, local_loss={self.local_loss}, "
                f"gather_with_grad={self.gather_with_grad}, rank={self.rank}, world_size={self.world_size}")
