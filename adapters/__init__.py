"""Built-in saliency adapters, one per level of access to the model.

Installed as ``informer_audit.adapters``. Importing this package registers every built-in
adapter that needs no optional dependency at import time.
"""

from __future__ import annotations

from .fd import FiniteDifferenceIxG
from .gradient import ExactGradientIxG
from .lime import LimeSaliency
from .lrp import LayerwiseRelevance

__all__ = ["ExactGradientIxG", "FiniteDifferenceIxG", "LayerwiseRelevance", "LimeSaliency"]
