"""One progress-callback protocol for every long-running library call.

The library never prints (the CLI draws the bars); it reports progress by calling
``progress(done, total, stage)``:

* ``done``, ``total``: work units finished and planned (forward passes, images, ...);
* ``stage``: what is being counted, when a call has more than one stage (``"maps"``,
  ``"images"``, ``"test: informer_fd"``); callers with one stage may leave it out.

The arguments are positional, so a callback may name its parameters as it likes. A callback
that takes only ``(done, total)`` serves the calls that pass no stage (the saliency adapters,
TTA); a stage-aware one works everywhere.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """``progress(done, total, stage="")``: ``done`` of ``total`` units of ``stage`` finished."""

    def __call__(self, done: int, total: int, stage: str = "", /) -> None: ...


__all__ = ["Progress"]
