"""informer-audit: flag the predictions a deployed image classifier cannot tell apart.

Data flows one way: image files (:mod:`.images`) -> model scores (:mod:`.model`) -> class
saliency maps (:mod:`.saliency` and the adapters in :mod:`informer_audit.adapters`) ->
distinctiveness (:mod:`.distinctiveness`) -> monitor (:mod:`.monitor`, baselines in
:mod:`.baselines`) -> audits (:mod:`.audit`, per-image score cache :mod:`.cache`) ->
evaluation (:mod:`.evaluation` on arrays, :mod:`.experiment` on image sets) -> CLI (:mod:`.cli`).
Importing the package loads none of the heavy dependencies (ONNX Runtime, torch).
"""

from __future__ import annotations

import logging

__version__ = "0.1.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
