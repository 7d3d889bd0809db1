"""CLIP's temperature as open_clip sets it: the independent reference for the "CLIP-like" configurations.

open_clip's ``CLIP`` starts ``logit_scale`` at ``init_logit_scale = log(1 / 0.07)`` and open_clip_train
clamps it at ``log(100)`` after each step; reading both from the installed packages keeps the tests from
restating the numbers.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import re
from pathlib import Path


def clip_temperature() -> dict:
    """``{"name": "learnable", "init": <CLIP's initial temperature>, "max_scale": <open_clip_train's cap>}``."""
    import open_clip

    init_logit_scale = inspect.signature(open_clip.CLIP).parameters["init_logit_scale"].default
    # read, not imported: open_clip_train.train imports its whole training stack
    source = Path(importlib.util.find_spec("open_clip_train.train").origin).read_text()
    cap = re.search(r"logit_scale\.clamp_\(0, math\.log\(([0-9.]+)\)\)", source)
    assert cap, "open_clip_train/train.py no longer clamps logit_scale with clamp_(0, math.log(<cap>))"
    return {"name": "learnable", "init": math.exp(-init_logit_scale), "max_scale": float(cap[1])}
