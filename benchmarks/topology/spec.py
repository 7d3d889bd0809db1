"""What the topology benchmark compares: topologies (a geometry by registry name, k, d, a temperature).

The bottom layer of the package: it imports nothing of the others but the geometry adapter. A topology
names its geometry by registry name and options, so one registered from another package runs by name:
``--topologies NAME`` is a predefined topology of :data:`TOPOLOGIES`, or any registered geometry (one 512-d
token, the geometry's own default temperature), or ``NAME-k<k>`` (k tokens of 512 / k dims). The default list
is :data:`TOPOLOGIES` plus one such topology for every registered geometry none of them uses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

from . import geometry as geometries

#: total embedding width ``k * d`` shared by every topology
WIDTH = 512

_CLIP_TEMPERATURE = {"name": "learnable", "init": 0.07, "max_scale": 100.0}
#: what `--set model.geometry=euclidean` trains with ("auto"): learnable from 1/20, written out here so
#: that the grid's rows do not change meaning if the library's default does
_EUCLIDEAN_OWN_TEMPERATURE = {"name": "learnable", "init": 20.0, "max_scale": 100.0}


@dataclass(frozen=True)
class Topology:
    """One embedding geometry at width ``k * d``, with its temperature.

    Attributes
    ----------
    name : str
    geometry : str
        Registry name of the geometry (``geometry.list_geometries()``).
    n_tokens, token_dim : int
        k and d, ``k * d = 512``.
    temperature : dict
        ``get_temperature`` arguments (``{"name": "learnable", "init": 0.07, "max_scale": 100}``).
    blocks : int
        Factors the score sums over (k for a per-token geometry, 1 for cosine on the flattened vector). The
        full mode divides the similarity gap by it to compare topologies.
    description : str
    class_tokens : int or None
        Full mode: class tokens per tower (``None``: ``n_tokens``). ``1`` with oblique ``k = 16, d = 32`` is
        the block control: one 512-d token split into 16 normalized blocks of 32.
    options : dict
        The geometry's options (``get_geometry(name, **options)``).
    """

    name: str
    geometry: str
    n_tokens: int
    token_dim: int
    temperature: dict = field(default_factory=lambda: {"name": "none"})
    blocks: int = 1
    description: str = ""
    class_tokens: Optional[int] = None
    options: dict = field(default_factory=dict)

    def overrides(self) -> list[str]:
        """``--set`` items that select this topology in a ``manifold-align train`` run."""
        items = [f"{geometries.CONFIG_KEY}={self.geometry}", f"model.n_tokens={self.n_tokens}",
                 f"model.token_dim={self.token_dim}"]
        items += [f"{geometries.OPTIONS_KEY}.{key}={value}" for key, value in self.options.items()]
        if self.class_tokens is not None:
            items.append(f"model.class_tokens={self.class_tokens}")
        items += [f"loss.temperature.{key}={value}" for key, value in self.temperature.items()]
        return items

    def temperature_label(self) -> str:
        """``none``, ``fixed 14.29`` or ``learnable <= 100``."""
        t = self.temperature
        if t["name"] == "fixed":
            return f"fixed {t['scale']:.4g}"
        if t["name"] == "learnable":
            return f"learnable <= {t['max_scale']:g}"
        return t["name"]

    @property
    def learnable_scale(self) -> bool:
        """Whether the temperature's scale is trained."""
        return self.temperature["name"] == "learnable"


TOPOLOGIES: dict[str, Topology] = {t.name: t for t in (
    Topology("sphere-learnable", "cosine", 1, 512, dict(_CLIP_TEMPERATURE), 1,
             "CLIP: one 512-d token on S^511, learnable scale from 1/0.07, capped at 100"),
    Topology("sphere-fixed", "cosine", 1, 512, {"name": "fixed", "scale": 1 / 0.07}, 1,
             "one 512-d token on S^511, scale fixed at 1/0.07 (CLIP's initial value)"),
    Topology("sphere-none", "cosine", 1, 512, {"name": "none"}, 1,
             "one 512-d token on S^511, scale 1: logits confined to [-1, 1]"),
    Topology("oblique-none", "oblique", 16, 32, {"name": "none"}, 16,
             "OB(32, 16): 16 tokens, each on S^31, similarity in [-16, 16], no scale"),
    Topology("oblique-learnable-3.95", "oblique", 16, 32,
             {"name": "learnable", "init": 0.07, "max_scale": 3.95}, 16,
             "OB(32, 16) with a learnable scale capped at 3.95 (the paper's reported setting)"),
    Topology("oblique-learnable-100", "oblique", 16, 32, dict(_CLIP_TEMPERATURE), 16,
             "OB(32, 16) with CLIP's learnable scale, capped at 100"),
    Topology("joint-control", "cosine", 16, 32, dict(_CLIP_TEMPERATURE), 1,
             "the same 16 tokens of 32, concatenated and normalized jointly on S^511; CLIP's scale"),
    Topology("block-control", "oblique", 16, 32, {"name": "none"}, 16,
             "one 512-d class token split into 16 blocks of 32, each normalized: OB(32, 16) without "
             "extra tokens; no scale", class_tokens=1),
    # EuCLIP and MERU use CLIP's learnable temperature; their scores are unbounded, so `blocks` only
    # divides the gap by k for the gap plot
    Topology("euclidean-k1", "euclidean", 1, 512, dict(_CLIP_TEMPERATURE), 1,
             "EuCLIP: minus the squared Euclidean distance of one 512-d token, CLIP's learnable scale"),
    Topology("euclidean-k16", "euclidean", 16, 32, dict(_CLIP_TEMPERATURE), 16,
             "minus the squared distance summed over 16 tokens of 32 (the same score as k = 1 on the "
             "flattened vector); CLIP's learnable scale"),
    Topology("euclidean-k1-own", "euclidean", 1, 512, dict(_EUCLIDEAN_OWN_TEMPERATURE), 1,
             "minus the squared distance of one 512-d token with the geometry's own temperature (learnable "
             "from 1/20, the trainer's default for euclidean): squared distances are ~1000 at the start"),
    Topology("lorentz-k1", "lorentz", 1, 512, dict(_CLIP_TEMPERATURE), 1,
             "MERU: one 512-d token on the hyperboloid, learnable curvature and modality scales, CLIP's scale"),
    Topology("lorentz-k16", "lorentz", 16, 32, dict(_CLIP_TEMPERATURE), 16,
             "16 tokens of 32, each on its own hyperboloid (shared curvature and scales), distances summed; "
             "CLIP's scale"),
)}

#: the topology every paired difference is taken against: the CLIP sphere
BASELINE = "sphere-learnable"
#: topology whose k is swept (at fixed k * d); its k = 16 runs are shared with the main grid
K_SWEEP_BASE = "oblique-none"
#: topologies of the fast mode's batch sweep (answer 1)
BATCH_TOPOLOGIES = ("sphere-none", "oblique-none", "sphere-learnable")
#: in fast mode an MLP's k * d outputs are the same whether read as k tokens or as one token cut into blocks,
#: so the two controls are their counterparts exactly, and so is euclidean at k = 16 (a sum of squared block
#: distances is the squared distance of the whole vector); they are reported as such, not trained twice
ALIASES = {"joint-control": "sphere-learnable", "block-control": "oblique-none", "euclidean-k16": "euclidean-k1"}

_K_SUFFIX = re.compile(r"^(?P<base>.+)-k(?P<k>\d+)$")


def _check_k(k: int) -> None:
    if k < 1 or WIDTH % k or WIDTH // k < 2:
        raise ValueError(f"k must divide the width {WIDTH} and leave d >= 2 (a power of 2 up to 256), got {k}")


def k_sweep_topology(k: int, base: str = K_SWEEP_BASE) -> Topology:
    """``base`` with ``k`` tokens of ``512 // k`` dims (``base`` itself when its k already is ``k``)."""
    topo = TOPOLOGIES[base]
    _check_k(k)
    if k == topo.n_tokens:
        return topo
    return Topology(f"{base}-k{k}", topo.geometry, k, WIDTH // k, dict(topo.temperature), k,
                    f"{topo.name} with k = {k}, d = {WIDTH // k}", class_tokens=topo.class_tokens,
                    options=dict(topo.options))


def k_name(k: int) -> str:
    """The k-sweep topology name of ``k`` (``oblique-none`` itself at its own k)."""
    return k_sweep_topology(k).name


def geometry_topology(geometry: str, k: int = 1) -> Topology:
    """A registered geometry at ``k`` tokens of ``512 // k`` with its own default temperature.

    Named ``geometry`` for k = 1, ``geometry-k<k>`` otherwise.
    """
    _check_k(k)
    return Topology(geometry if k == 1 else f"{geometry}-k{k}", geometry, k, WIDTH // k,
                    geometries.default_temperature(geometry), k,
                    f"geometry '{geometry}' with {k} token(s) of {WIDTH // k}, its default temperature")


def topology(name: str) -> Topology:
    """A topology by name: one of :data:`TOPOLOGIES`, a k-sweep variant ``oblique-none-k<k>``, a registered
    geometry ``NAME`` or ``NAME-k<k>``.

    Raises
    ------
    ValueError
        Naming the accepted forms and the registered geometries.
    """
    if name in TOPOLOGIES:
        return TOPOLOGIES[name]
    registered = geometries.list_geometries()
    match = _K_SUFFIX.match(name)
    if match and match["base"] == K_SWEEP_BASE:
        return k_sweep_topology(int(match["k"]))
    if name in registered:
        return geometry_topology(name)
    if match and match["base"] in registered:
        return geometry_topology(match["base"], int(match["k"]))
    raise ValueError(f"unknown topology {name!r}; expected one of {', '.join(TOPOLOGIES)}, "
                     f"{K_SWEEP_BASE}-k<k>, or a registered geometry NAME or NAME-k<k> "
                     f"(registered: {', '.join(registered)})")


def default_topologies() -> list[str]:
    """:data:`TOPOLOGIES`, then every registered geometry that none of them uses (at k = 1)."""
    used = {t.geometry for t in TOPOLOGIES.values()}
    return [*TOPOLOGIES, *(g for g in geometries.list_geometries() if g not in used)]


def fast_topologies() -> list[str]:
    """The default topologies of the fast mode: :func:`default_topologies` less the :data:`ALIASES`."""
    return [t for t in default_topologies() if t not in ALIASES]


def comma_floats(text: str) -> tuple[float, ...]:
    """``"0,0.2"`` -> ``(0.0, 0.2)``; empty items are skipped (``""`` -> ``()``)."""
    return tuple(float(x) for x in text.split(",") if x.strip())


def comma_ints(text: str) -> tuple[int, ...]:
    """``"1,16"`` -> ``(1, 16)``; empty items are skipped (``""`` -> ``()``)."""
    return tuple(int(x) for x in text.split(",") if x.strip())


def comma_names(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``; empty items are skipped."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


# --------------------------------------------------------------------------------------------------
# the fast grid's plan
# --------------------------------------------------------------------------------------------------
#: classes of the digit-pairs task
N_CLASSES = 100
#: what a batch counts as negatives of an anchor: every other pair ("all"), or the pairs of other classes only
#: ("other-class": ``ContrastiveLoss(class_ids=...)`` leaves the same-class pairs out)
NEGATIVES = ("all", "other-class")
#: the fast mode's two sweeps, each into its own results folder: ``main`` (the main grid, the k sweep and the
#: power extension, on the task's 50 pairs per class) and ``batch`` (the batch sweep: same-class pairs left out
#: of the negatives, on 800 pairs per class, so that N = 16384 is 20% of the training set)
SWEEPS: dict[str, dict] = {
    "main": dict(negatives="all", train_per_class=50),
    "batch": dict(negatives="other-class", train_per_class=800),
}
#: what a fast-mode row written before the ``negatives`` and ``train_pairs`` columns existed was trained with
FAST_ROW_DEFAULTS = {"negatives": "all", "train_pairs": 5000}
#: per-profile defaults; the GPU profile is the same grid at a wider tower and larger batch and seed chunks
PROFILES: dict[str, dict] = {
    "cpu": dict(device="cpu", hidden=128, steps=300, batch_size=128, seeds=5, max_seeds=80,
                batch_sizes=(32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384), time_budget=None,
                tile=(4096, 512)),
    "gpu": dict(device="cuda", hidden=1024, steps=300, batch_size=512, seeds=10, max_seeds=40,
                batch_sizes=(32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384), time_budget=540.0,
                tile=None),
}
NOISE = (0.0, 0.2, 0.4, 0.6, 0.8)
K_VALUES = (1, 2, 4, 8, 16, 32, 64)
K_NOISE = (0.4,)
#: the paired differences' target: 95% half-width in points of zero-shot top-1
TARGET = 1.5
#: the full mode's target (runs cost minutes there, so a wider one than the fast mode's); also the width above
#: which an interval that includes 0 leaves an agreement-table comparison "not resolved"
FULL_TARGET = 2.0


def target(mode: str) -> float:
    """The paired half-width target (points) of a mode: :data:`TARGET` for ``fast``, else :data:`FULL_TARGET`."""
    return TARGET if mode == "fast" else FULL_TARGET


def loss_floor(n: int, same_class: float = 0.0) -> float:
    """``log(1 + (N - 1 - m) / e)``: InfoNCE at scale 1 with positives at similarity 1 and the N - 1 - m negatives
    at 0, where ``m`` (``same_class``) same-class pairs per anchor are left out of the negatives (0: all counted).

    With masked negatives m varies from row to row; the mean of m inside the log is the mean floor to within
    var(m) / (2 (e + N - 1 - m)^2), under 1e-3 nats at every N of the sweep.
    """
    return math.log(1.0 + (n - 1 - same_class) / math.e)


def same_class_per_anchor(n: int, train_pairs: int, n_classes: int = N_CLASSES) -> float:
    """Expected other pairs of an anchor's class in a batch of ``n`` drawn without replacement from ``train_pairs``
    pairs, ``train_pairs / n_classes`` per class: ``(N - 1) (P - 1) / (n_pairs - 1)``."""
    per_class = train_pairs / n_classes
    return (n - 1) * (per_class - 1) / (train_pairs - 1)


def row_floor(n: int, negatives: str, train_pairs: int) -> float:
    """The loss floor of a run: :func:`loss_floor` with the same-class pairs left out when ``negatives`` is
    ``"other-class"``."""
    return loss_floor(n, same_class_per_anchor(n, train_pairs) if negatives == "other-class" else 0.0)


def tile_size(profile: str, n: int):
    """The loss's ``tile_size`` for a batch of ``n`` under ``profile``: the profile's ``tile`` = (from N, side)
    tiles of that side from that N on, else the library's ``"auto"``. On one CPU thread the materialized scores
    stop fitting in cache before the library's 2^24 threshold: at N = 4096, 5 seeds, tiles of 512 take
    less time a step than the materialized loss (benchmarks/batch_sweep_cost.py); the loss is the same to
    rounding."""
    tile = PROFILES[profile]["tile"]
    return tile[1] if tile is not None and n >= tile[0] else "auto"
