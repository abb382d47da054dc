"""PNG bytes, reproducibly: from a uint8 array (Pillow) or from a matplotlib ``Figure``.

Figures are saved without the ``Software`` entry (it carries the matplotlib version), so the same
inputs give the same bytes on any installation.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from numpy.typing import NDArray


def png_from_array(array: NDArray[np.uint8]) -> bytes:
    """An image as PNG bytes; ``array`` of shape (H, W) (grey) or (H, W, 3) (RGB), uint8."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def png_from_figure(fig: Any) -> bytes:
    """A matplotlib ``Figure`` as PNG bytes at 100 dpi, without the ``Software`` entry."""
    buf = io.BytesIO()
    # No "Software" entry (it carries the matplotlib version): same inputs, same bytes.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


__all__ = ["png_from_array", "png_from_figure"]
