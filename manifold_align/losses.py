"""Contrastive losses over an embedding geometry.

``objective="softmax"``: symmetric cross-entropy (InfoNCE), open_clip's ``ClipLoss`` with the dot product replaced
by the geometry's ``pairwise``. ``objective="sigmoid"``: SigLIP's pairwise sigmoid loss (open_clip's
``SigLipLoss``). The loss is built from the model's geometry instance and follows open_clip's forward contract:
``loss(image_features, text_features, logit_scale, logit_bias)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_gather_no_grad, all_gather_with_grad, gather_features, is_distributed
from .geometries import Geometry, scale_scores
from .tiled import auto_tile_size, tiled_sigmoid_loss, tiled_softmax_loss
from .validation import check_class_ids, check_nonempty, check_on_manifold, describe_shape

__all__ = ["OBJECTIVES", "SIGLIP_BIAS_INIT", "ContrastiveLoss", "ContrastiveLossOutput"]

#: the contrastive objectives: InfoNCE (``softmax``) and SigLIP (``sigmoid``)
OBJECTIVES = ("softmax", "sigmoid")

#: SigLIP's initial logit bias (Zhai et al., 2023; open_clip's ``init_logit_bias``)
SIGLIP_BIAS_INIT = -10.0


@dataclass
class ContrastiveLossOutput:
    """Result of :class:`ContrastiveLoss`: tensors only, so that reading them is the caller's choice.

    Attributes
    ----------
    loss : torch.Tensor, 0-dim
        The loss to back-propagate (nats): the contrastive part plus every weighted extra term.
    contrastive : torch.Tensor, 0-dim
        The contrastive part alone (no gradient).
    scale : torch.Tensor, 0-dim
        The ``logit_scale`` used (no gradient).
    positive_similarity : torch.Tensor, 0-dim
        Mean score of matched pairs (before scaling), over the rows this process scored (no gradient).
    negative_similarity : torch.Tensor, 0-dim
        Mean score of unmatched pairs (before scaling); NaN when there are none (batch of 1).
    gap : torch.Tensor, 0-dim
        ``positive_similarity - negative_similarity``, the paper's equilibrium gap.
    extra : dict of str to torch.Tensor
        The geometry's extra terms before their weights (:meth:`Geometry.extra_losses`, e.g. ``entailment``),
        0-dim, no gradient.
    """

    loss: torch.Tensor
    contrastive: torch.Tensor
    scale: torch.Tensor
    positive_similarity: torch.Tensor
    negative_similarity: torch.Tensor
    gap: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """Every 0-dim value but ``loss`` by name (extra terms as ``<name>_loss``), for one host transfer."""
        out = {"contrastive_loss": self.contrastive, "temperature": self.scale,
               "positive_similarity": self.positive_similarity, "negative_similarity": self.negative_similarity,
               "gap": self.gap}
        out.update({f"{name}_loss": value for name, value in self.extra.items()})
        return out


def _positive_mask(n_rows: int, n_cols: int, offset: int, device) -> torch.Tensor:
    """Boolean (n_rows, n_cols) mask, True at (i, offset + i)."""
    mask = torch.zeros(n_rows, n_cols, dtype=torch.bool, device=device)
    rows = torch.arange(n_rows, device=device)
    mask[rows, rows + offset] = True
    return mask


def _dropped(row_ids: Optional[torch.Tensor], col_ids: Optional[torch.Tensor], offset: int) -> Optional[torch.Tensor]:
    """Boolean (n, m) mask of the same-class pairs other than the positives at (i, offset + i): the pairs left
    out of the negatives (None without class ids)."""
    if row_ids is None:
        return None
    same = row_ids[:, None] == col_ids[None, :]
    return same & ~_positive_mask(same.shape[0], same.shape[1], offset, same.device)


@torch.no_grad()
def _similarity_means(scores: torch.Tensor, offset: int,
                      dropped: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean positive and negative score of an (n, m) block whose positives sit at (i, offset + i), the pairs
    ``dropped`` from the negatives left out; 0-dim."""
    n, m = scores.shape
    positive_sum = scores.diagonal(offset).sum()
    if dropped is not None:
        scores = scores.masked_fill(dropped, 0.0)
        n_negative = (n * m - n) - dropped.sum()  # a tensor: no host read
        return positive_sum / n, torch.where(n_negative > 0, (scores.sum() - positive_sum) / n_negative.clamp(min=1),
                                             torch.full_like(positive_sum, float("nan")))
    n_negative = n * m - n
    negative = (scores.sum() - positive_sum) / n_negative if n_negative else torch.full_like(positive_sum, float("nan"))
    return positive_sum / n, negative


class ContrastiveLoss(nn.Module):
    """Contrastive image-text loss on projected features, scored by ``geometry``.

    Parameters
    ----------
    geometry : Geometry
        The model's geometry (``model.geometry``): the one instance that projects and scores. The loss keeps a
        reference, not a copy, and does not register it as a submodule (the model owns its parameters).
    objective : {"softmax", "sigmoid"}, default "softmax", keyword-only
    local_loss : bool, default False, keyword-only
        softmax only: score this rank's rows against all gathered columns instead of the full matrix (labels
        offset by ``rank * N``). The sigmoid loss is always local.
    gather_with_grad : bool, default False, keyword-only
        softmax only: gather with gradient (:func:`manifold_align.distributed.all_gather_with_grad`) so gradients
        reach every rank. The sigmoid loss always gathers text features with gradient.
    cache_labels : bool, default False, keyword-only
        Cache the softmax label vector per device.
    rank, world_size : int, keyword-only
        Features are gathered only when ``world_size > 1`` (a process group must then be initialized).
    check_finite : bool, default True, keyword-only
        Validate (see ``validate`` of :meth:`forward`) that the features hold no NaN or Inf.
    check_on_manifold : bool, default True, keyword-only
        Validate that the features lie on the geometry's space (:meth:`Geometry.manifold_deviation` within
        :meth:`Geometry.manifold_tolerance`): raw, unprojected features would give a plausible but wrong loss (38
        nats off for standard normal (8, 16, 32) features on OB). Geometries without a constraint skip it.
    tile_size : "auto", int or None, default "auto", keyword-only
        Score the pairs in (T, T) tiles (:mod:`manifold_align.tiled`: memory linear in the batch, the same loss and
        gradients to rounding) instead of materializing the (N, M) scores. ``"auto"``: tiles once the scores
        (times the geometry's :meth:`~Geometry.score_grid`) exceed 2^24 values (oblique from N = 4097, lorentz
        at k = 16 from N = 1025; :func:`manifold_align.tiled.auto_tile_size`); an int: always tiles of that side;
        None: always materialized.

    Notes
    -----
    With ``world_size > 1`` each rank's loss equals (non-local softmax) or averages over ranks to (local softmax,
    sigmoid) the single-process loss on the concatenated batch; gradients w.r.t. each rank's features, summed over
    ranks by all_gather's backward and averaged by DDP, match the single-process ones.
    """

    def __init__(self, geometry: Geometry, *, objective: str = "softmax", local_loss: bool = False,
                 gather_with_grad: bool = False, cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 check_finite: bool = True, check_on_manifold: bool = True, tile_size="auto") -> None:
        super().__init__()
        if not isinstance(geometry, Geometry):
            raise ValueError(f"`geometry` must be a Geometry (e.g. manifold_align.get_geometry('oblique', n_tokens=16, "
                             f"token_dim=32) or model.geometry), got {type(geometry).__name__}")
        if objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        for name, value in (("local_loss", local_loss), ("gather_with_grad", gather_with_grad),
                            ("cache_labels", cache_labels), ("check_finite", check_finite),
                            ("check_on_manifold", check_on_manifold)):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True or False, got {value!r}")
        if not (tile_size is None or tile_size == "auto"
                or (isinstance(tile_size, int) and not isinstance(tile_size, bool) and tile_size >= 1)):
            raise ValueError(f"`tile_size` must be 'auto', None or an int >= 1, got {tile_size!r}")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"`world_size` must be an int >= 1, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be an int in [0, world_size = {world_size}), got {rank!r}")
        # a plain attribute, not a submodule: the model owns the geometry's parameters
        self.__dict__["geometry"] = geometry
        self.objective = objective
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.check_finite = check_finite
        self.check_on_manifold = check_on_manifold
        self.tile_size = tile_size
        self._labels: dict = {}

    # ---- validation -----------------------------------------------------------------------------------
    def _check_inputs(self, image_features: torch.Tensor, text_features: torch.Tensor,
                      logit_scale: torch.Tensor, logit_bias: Optional[torch.Tensor]) -> None:
        """Shapes, dtypes and the scalars: checks that need no device read."""
        self.geometry.check_inputs(image_features, text_features, names=("image_features", "text_features"))
        for name, tensor in (("image_features", image_features), ("text_features", text_features)):
            # an empty batch would give a NaN loss and NaN diagnostics without a word
            check_nonempty(tensor, name, "(N, k, d) with N >= 1")
        if image_features.shape != text_features.shape:
            raise ValueError(f"`image_features` and `text_features` must have the same shape, got "
                             f"{describe_shape(image_features)} and {describe_shape(text_features)}")
        for name, value in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
            if value is None and name == "logit_bias":
                continue
            if not (isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()):
                shape = describe_shape(value) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"`{name}` must be a one-element floating-point tensor (the model's output), "
                                 f"got {shape}")
        if self.objective == "sigmoid" and logit_bias is None:
            raise ValueError("`logit_bias` is required with objective='sigmoid' (the model's `logit_bias` output), "
                             "got None")
        if self.objective == "softmax" and logit_bias is not None:
            raise ValueError("`logit_bias` is only used with objective='sigmoid' (a constant bias does not change a "
                             "softmax), got one with 'softmax'")

    @torch.no_grad()
    def _validate(self, inputs: dict[str, torch.Tensor]) -> None:
        """Finite and on-manifold checks of ``inputs`` in one host transfer; ``ValueError`` naming the argument."""
        checks: list[torch.Tensor] = []
        if self.check_finite:
            for tensor in inputs.values():
                checks += [torch.isnan(tensor).sum(), torch.isinf(tensor).sum()]
        deviations = {}
        if self.check_on_manifold:
            for name, tensor in inputs.items():
                deviation = self.geometry.manifold_deviation(tensor)
                if deviation is not None:
                    deviations[name] = deviation
        if not checks and not deviations:
            return
        device = next(iter(inputs.values())).device
        values = torch.stack([t.to(device, torch.float64).reshape(()) for t in [*checks, *deviations.values()]]).tolist()
        if self.check_finite:
            for i, (name, tensor) in enumerate(inputs.items()):
                n_nan, n_inf = int(values[2 * i]), int(values[2 * i + 1])
                if n_nan or n_inf:
                    raise ValueError(f"`{name}` must be finite, got {n_nan} NaN and {n_inf} Inf values in a tensor "
                                     f"of shape {describe_shape(tensor)}")
        measured = values[len(checks):]
        for (name, _), deviation in zip(deviations.items(), measured):
            check_on_manifold(deviation, self.geometry.manifold_tolerance(inputs[name].dtype), name,
                              self.geometry.manifold_text)

    # ---- softmax ------------------------------------------------------------------------------------
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

    def _tile(self, n_rows: int, n_cols: int) -> Optional[int]:
        """The tile side for an (n_rows, n_cols) score block, or None to materialize it."""
        if self.tile_size == "auto":
            return auto_tile_size(n_rows, n_cols, self.geometry.score_grid())
        return self.tile_size

    def _softmax_loss(self, image, text, distributed: bool, logit_scale, ids, all_ids):
        """Return (loss, positive mean, negative mean) over this rank's image rows."""
        all_image = all_text = None
        if distributed:
            all_image, all_text = gather_features(image, text, local_loss=self.local_loss,
                                                  gather_with_grad=self.gather_with_grad, rank=self.rank,
                                                  world_size=self.world_size)
            if not self.local_loss:
                image, text, all_image, all_text, ids = all_image, all_text, None, None, all_ids
        local = all_image is not None
        offset = image.shape[0] * self.rank if local else 0
        tile = self._tile(image.shape[0], all_text.shape[0] if local else text.shape[0])
        if tile is not None:
            return tiled_softmax_loss(image, text, self.geometry, logit_scale=logit_scale, image_all=all_image,
                                      text_all=all_text, offset=offset, tile_size=tile, class_ids=ids,
                                      class_ids_all=all_ids if local else None)
        pairwise = self.geometry.pairwise
        if local:
            # image-text order kept on both sides so asymmetric geometries stay correct
            per_image, per_text = pairwise(image, all_text), pairwise(all_image, text).T
        else:
            per_image = pairwise(image, text)
            per_text = per_image.T
        labels = self._labels_for(per_image.shape[0], per_image.device)
        # rows are this rank's pairs, columns all gathered ones, in both directions: one mask
        dropped = _dropped(ids, all_ids if local else ids, offset)
        logits_image, logits_text = scale_scores(per_image, logit_scale), scale_scores(per_text, logit_scale)
        if dropped is not None:
            # out of the log-sum-exp: exp(-inf) = 0 in the softmax and in its gradient
            logits_image = logits_image.masked_fill(dropped, -math.inf)
            logits_text = logits_text.masked_fill(dropped, -math.inf)
        loss = (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels)) / 2
        return (loss, *_similarity_means(per_image.detach(), offset, dropped))

    # ---- sigmoid ------------------------------------------------------------------------------------
    def _sigmoid_loss(self, image, text, distributed: bool, logit_scale, logit_bias, ids, all_ids):
        """Return (loss, positive mean, negative mean) over this rank's image rows."""
        offset = 0
        if distributed:
            text = all_gather_with_grad(text)
            offset = image.shape[0] * self.rank
        tile = self._tile(image.shape[0], text.shape[0])
        if tile is not None:
            return tiled_sigmoid_loss(image, text, self.geometry, logit_scale=logit_scale, logit_bias=logit_bias,
                                      offset=offset, tile_size=tile, class_ids=ids,
                                      class_ids_all=all_ids if distributed else None)
        scores = self.geometry.pairwise(image, text)
        logits = scale_scores(scores, logit_scale, logit_bias)
        labels = 2.0 * _positive_mask(scores.shape[0], scores.shape[1], offset, scores.device).to(logits.dtype) - 1.0
        terms = -F.logsigmoid(labels * logits)
        dropped = _dropped(ids, all_ids, offset)
        if dropped is not None:
            terms = terms.masked_fill(dropped, 0.0)  # neither negative nor positive: no term, no gradient
        loss = terms.sum() / image.shape[0]
        return (loss, *_similarity_means(scores.detach(), offset, dropped))

    # ---- forward ------------------------------------------------------------------------------------
    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor] = None, *, class_ids: Optional[torch.Tensor] = None,
                validate: bool = True) -> ContrastiveLossOutput:
        """Loss of a batch of matched pairs.

        Parameters
        ----------
        image_features, text_features : torch.Tensor, shape (N, k, d)
            Projected features (``geometry.project``), floating point, N >= 1; row i of each is a matched pair.
        logit_scale : torch.Tensor, 0-dim
            The scale that multiplies scores into logits: the model's ``logit_scale`` output (its temperature's
            ``scale()``).
        logit_bias : torch.Tensor, 0-dim, optional
            ``sigmoid`` only, required there: the model's ``logit_bias`` output.
        class_ids : torch.Tensor, shape (N,), integer, optional, keyword-only
            Class of each pair (a SupCon-style label). Given, pairs of different rows with equal ids are left out
            of the negatives: with ``softmax`` their logits leave the log-sum-exp in both directions, with
            ``sigmoid`` their terms are dropped (neither negative nor positive); row i's own pair stays its
            positive. Exact in the materialized and the tiled loss; under ``world_size > 1`` gathered like the
            features (every rank must pass them, or none). The diagnostics' unmatched pairs are then the pairs
            counted as negatives.
        validate : bool, default True, keyword-only
            Run the finite and on-manifold checks the constructor enabled: one host transfer (a device sync on a
            GPU). A training loop that checks the loss itself passes False on most steps.

        Raises
        ------
        ValueError
            Naming the argument: wrong shape for the geometry, an integer dtype, an empty batch, shapes that
            differ, a missing or misplaced ``logit_bias``, ``class_ids`` that are not an integer (N,) tensor on
            the features' device; when validating, NaN/Inf values or features off the geometry's space.

        Returns
        -------
        ContrastiveLossOutput
            ``loss`` in nats (float32 under autocast) and 0-dim diagnostics without gradient.
        """
        self._check_inputs(image_features, text_features, logit_scale, logit_bias)
        if class_ids is not None:
            check_class_ids(class_ids, image_features.shape[0], image_features.device)
        inputs = {"image_features": image_features, "text_features": text_features}
        if validate:
            self._validate(inputs)
        distributed = is_distributed(self.world_size)
        # every rank's class ids, in the gathered features' order
        all_ids = all_gather_no_grad(class_ids) if distributed and class_ids is not None else class_ids
        if self.objective == "softmax":
            contrastive, positive, negative = self._softmax_loss(image_features, text_features, distributed,
                                                                 logit_scale, class_ids, all_ids)
        else:
            contrastive, positive, negative = self._sigmoid_loss(image_features, text_features, distributed,
                                                                 logit_scale, logit_bias, class_ids, all_ids)
        loss = contrastive
        extra = {}
        for name, term in self.geometry.extra_losses(image_features, text_features).items():
            loss = loss + term.weight * term.value
            extra[name] = term.value.detach()
        return ContrastiveLossOutput(
            loss=loss, contrastive=contrastive.detach(), scale=logit_scale.detach().reshape(()),
            positive_similarity=positive, negative_similarity=negative, gap=positive - negative, extra=extra,
        )

    def extra_repr(self) -> str:  # noqa: D102
        return (f"geometry={self.geometry.name!r}, objective={self.objective!r}, local_loss={self.local_loss}, "
                f"gather_with_grad={self.gather_with_grad}, rank={self.rank}, world_size={self.world_size}, "
                f"tile_size={self.tile_size!r}")
