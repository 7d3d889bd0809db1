"""A torchrun worker that is ``manifold-align`` with a fault injected on one rank (tests/test_faults.py).

``python fault_worker.py raise|hang RANK CALL train ...``: the real command, whose loss raises a ValueError
(``raise``) or never returns (``hang``, as a read from a dead filesystem would) on rank ``RANK`` at its
``CALL``-th call. The fault is injected; the processes, the collectives and torchrun around it are real.
"""

import os
import sys
import time

import manifold_align_train.builders as builders

MODE, RANK, CALL = sys.argv[1], sys.argv[2], int(sys.argv[3])


class FaultyLoss(builders.ContrastiveLoss):
    def forward(self, *args, **kwargs):
        self.calls = getattr(self, "calls", 0) + 1
        if os.environ.get("RANK") == RANK and self.calls == CALL:
            if MODE == "raise":
                raise ValueError(f"injected fault on rank {RANK} at call {CALL}")
            while True:
                time.sleep(1)
        return super().forward(*args, **kwargs)


builders.ContrastiveLoss = FaultyLoss

from manifold_align_train.cli import main  # noqa: E402  (after the loss is replaced)

sys.exit(main(sys.argv[4:]))
