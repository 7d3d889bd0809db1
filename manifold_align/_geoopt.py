"""geoopt, imported once for the package without its import-time FutureWarning.

geoopt 0.5.1 decorates functions with ``torch.jit.script``, which torch >= 2.10 marks deprecated with a
FutureWarning at import. Our users cannot act on it, so it is silenced here, for that one message and for
the duration of the import only; every other warning, and this one from any other import, still shows.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning)
    import geoopt  # noqa: F401

__all__ = ["geoopt"]
