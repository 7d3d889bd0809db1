"""``python -m manifold_align_train ...`` is ``manifold-align ...`` (``torchrun -m manifold_align_train train``)."""

import sys

from .cli import main

sys.exit(main())
