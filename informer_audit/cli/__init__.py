"""The ``informer-audit`` command: a thin boundary around the library.

Each command parses its options (:mod:`.options`, defined once), builds the library objects
(:mod:`.build`), makes one library call, renders the outcome (:mod:`.render`, the only place
rich is used) and exits with the code of the run's summary object. Only :func:`.app.handle_errors`
maps exceptions to exit codes:

* 0 -- done, every image scored;
* 1 -- done, but some image files failed (listed in the output and on the terminal);
* 2 -- bad invocation, or input refused (model, model card, labels, monitor mismatch);
* 3 -- the requested device cannot be used (e.g. ``--device cuda`` without a usable GPU);
* 130 -- interrupted (Ctrl-C): rerunning the same command resumes (``flag`` keeps its finished
  rows in ``OUT.journal``; ``calibrate`` and ``evaluate`` keep their scores with ``--cache``).
"""

from __future__ import annotations

from . import calibrate, evaluate, flag, info, report, shift  # noqa: F401  (register the commands)
from .app import EXIT_DEVICE, EXIT_INTERRUPTED, EXIT_REFUSED, cli, main

__all__ = ["EXIT_DEVICE", "EXIT_INTERRUPTED", "EXIT_REFUSED", "cli", "main"]
