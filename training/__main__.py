"""``python -m training ...`` is ``manifold-align ...`` (what torchrun launches: ``torchrun -m training train``)."""

import sys

from .cli import main

sys.exit(main())
