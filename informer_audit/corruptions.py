"""Documented, seeded image corruptions: the known truth of the shift benchmark.

Each corruption maps a canonical image (``float32``, shape ``(H, W, C)``, the 8-bit scale, as
:func:`~.images.load_image` returns it) to a corrupted copy on the same scale, rounded to the
nearest integer and clipped to ``[0, 255]``: a :class:`~.images.LoadedImage` with
``source_bits=8``, so that the model wrapper treats it exactly as it treats a real 8-bit file
(converted and resized in 8 bits, :mod:`.images`).

The corruptions follow Hendrycks & Dietterich's ImageNet-C (ICLR 2019: blur, noise, contrast,
JPEG), plus what hospitals meet in practice: an intensity-inverted (MONOCHROME1) image shown as
MONOCHROME2, scans rotated by 90 or 180 degrees or mirrored, a cropped and zoomed image, a part
of the image blacked out, a collimation border, burned-in text. Graded corruptions have three
severities; inversion, rotations and flips have one (there is nothing to grade). Parameters are
relative to the image's shorter side where they are lengths, so that a severity means the same
at every resolution. :data:`CORRUPTIONS` lists them; :func:`corruption_table` gives the table
of parameters the documentation shows.

Only ``gaussian_noise`` draws random numbers. Its generator is seeded from the image's content
(its values and shape), the corruption, the severity and a user seed
(:func:`corruption_seed`): the same image gets the same noise in every run and in any order,
and two images never share one noise field.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import EvaluationError
from .images import LoadedImage

Floats = NDArray[np.float64]
Apply = Callable[[Floats, Any, np.random.Generator], Floats]


@dataclass(frozen=True)
class Corruption:
    """One corruption and its parameter per severity.

    Attributes
    ----------
    name : str
    description : str
        What it does, in one line (the documentation's table).
    parameter : str
        What the level values mean (``"sigma / shorter side"``); empty for one-level ones.
    levels : tuple
        The parameter at severity 1, 2, ...; one entry (``None``) for a corruption that has
        one level.
    random : bool
        It draws random numbers (from :func:`corruption_seed`).
    """

    name: str
    description: str
    parameter: str
    levels: tuple[Any, ...]
    random: bool
    apply: Apply

    @property
    def severities(self) -> tuple[int, ...]:
        """The severities it has: ``(1, 2, 3)``, or ``(1,)`` for a one-level corruption."""
        return tuple(range(1, len(self.levels) + 1))

    @property
    def graded(self) -> bool:
        return len(self.levels) > 1

    def level(self, severity: int) -> Any:
        """The parameter at ``severity`` (1-based)."""
        if severity not in self.severities:
            raise EvaluationError(
                f"corruption {self.name!r} has severities {list(self.severities)}, "
                f"got {severity!r}",
                params=("severities",),
            )
        return self.levels[severity - 1]

    def parameter_text(self, severity: int) -> str:
        """The parameter at ``severity`` as the tables show it (``"sigma/side=0.02"``)."""
        value = self.level(severity)
        return "" if value is None else f"{self.parameter}={_text(value)}"


def _text(value: Any) -> str:
    if isinstance(value, tuple):  # burned_text: (height, *lines)
        return f"{value[0]:g}, {len(value) - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- the corruptions (x: float64 (H, W, C) on the 8-bit scale; rounding happens in corrupt) -----
def _side(x: Floats) -> int:
    return min(x.shape[0], x.shape[1])


def _gaussian_blur(x: Floats, fraction: float, rng: np.random.Generator) -> Floats:
    from scipy.ndimage import gaussian_filter

    sigma = fraction * _side(x)
    # reflect: a constant image stays constant (the weights sum to 1 at the edges too)
    return np.asarray(gaussian_filter(x, sigma=(sigma, sigma, 0.0), mode="reflect", truncate=4.0))


def _gaussian_noise(x: Floats, sigma: float, rng: np.random.Generator) -> Floats:
    # One noise field for all channels: a grey image stays grey, as detector noise would.
    return x + rng.normal(0.0, sigma, size=(x.shape[0], x.shape[1], 1))


def _contrast(x: Floats, factor: float, rng: np.random.Generator) -> Floats:
    mean = float(x.mean())
    return mean + factor * (x - mean)


def _to_pil(x: Floats) -> Any:
    from PIL import Image

    u8 = _round(x)
    return Image.fromarray(
        u8[:, :, 0] if u8.shape[2] == 1 else u8, "L" if u8.shape[2] == 1 else "RGB"
    )


def _from_pil(im: Any, channels: int) -> Floats:
    a = np.asarray(im, dtype=np.float64)
    return a[:, :, None] if a.ndim == 2 else a[:, :, :channels]


def _jpeg(x: Floats, quality: int, rng: np.random.Generator) -> Floats:
    from PIL import Image

    buf = io.BytesIO()
    _to_pil(x).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        im.load()
        return _from_pil(im, x.shape[2])


def _invert(x: Floats, level: None, rng: np.random.Generator) -> Floats:
    return 255.0 - x


def _rotate90(x: Floats, level: None, rng: np.random.Generator) -> Floats:
    return np.rot90(x, k=1, axes=(0, 1))  # counter-clockwise, as numpy (and Pillow) define it


def _rotate180(x: Floats, level: None, rng: np.random.Generator) -> Floats:
    return np.rot90(x, k=2, axes=(0, 1))


def _hflip(x: Floats, level: None, rng: np.random.Generator) -> Floats:
    return x[:, ::-1]


def _vflip(x: Floats, level: None, rng: np.random.Generator) -> Floats:
    return x[::-1]


def _crop_zoom(x: Floats, fraction: float, rng: np.random.Generator) -> Floats:
    from PIL import Image

    h, w = x.shape[:2]
    ch, cw = max(1, round(fraction * h)), max(1, round(fraction * w))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[top : top + ch, left : left + cw]
    # Bilinear on the 8-bit image, as the model wrapper resizes 8-bit files.
    return _from_pil(_to_pil(crop).resize((w, h), Image.Resampling.BILINEAR), x.shape[2])


def _occlude(x: Floats, fraction: float, rng: np.random.Generator) -> Floats:
    out = x.copy()
    out[:, : round(fraction * x.shape[1])] = 0.0
    return out


def _border(x: Floats, fraction: float, rng: np.random.Generator) -> Floats:
    out = x.copy()
    b = max(1, round(fraction * _side(x)))
    out[:b], out[-b:], out[:, :b], out[:, -b:] = 255.0, 255.0, 255.0, 255.0
    return out


BURNED_TEXT_HEIGHT = 11
"""Line height in pixels of Pillow's built-in bitmap font (``load_default_imagefont``)."""


def text_mask(shape: tuple[int, int], lines: Sequence[str], height: float) -> NDArray[np.bool_]:
    """Where :func:`corrupt`'s ``burned_text`` writes: ``lines`` in Pillow's bitmap font.

    The lines are drawn at the font's own size (:data:`BURNED_TEXT_HEIGHT` pixels a line) and
    enlarged by the integer factor ``max(1, round(height * shorter side / 11))`` with
    nearest-neighbour sampling (no font file is needed and the glyphs stay crisp, as burned-in
    annotations are), from a margin of 2 % of the shorter side at the top left; what falls
    outside the image is cut off.

    Parameters
    ----------
    shape : (H, W)
    lines : sequence of str
    height : float
        Line height as a fraction of the shorter side.

    Returns
    -------
    ndarray, shape (H, W), bool
    """
    from PIL import Image, ImageDraw, ImageFont

    h, w = shape
    side = min(h, w)
    font = ImageFont.load_default_imagefont()
    width = max(int(font.getbbox(line)[2]) for line in lines) + 2
    canvas = Image.new("L", (width, BURNED_TEXT_HEIGHT * len(lines) + 2), 0)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((1, 1 + BURNED_TEXT_HEIGHT * i), line, fill=255, font=font)
    factor = max(1, round(height * side / BURNED_TEXT_HEIGHT))
    glyphs = np.asarray(canvas) > 0
    glyphs = np.repeat(np.repeat(glyphs, factor, axis=0), factor, axis=1)
    margin = round(0.02 * side)
    mask = np.zeros((h, w), dtype=bool)
    gh, gw = min(glyphs.shape[0], max(0, h - margin)), min(glyphs.shape[1], max(0, w - margin))
    mask[margin : margin + gh, margin : margin + gw] = glyphs[:gh, :gw]
    return mask


def _burned_text(x: Floats, level: tuple[Any, ...], rng: np.random.Generator) -> Floats:
    height, *lines = level
    out = x.copy()
    out[text_mask(x.shape[:2], lines, float(height))] = 255.0
    return out


_TEXT_LINES = ("R", "AP PORTABLE", "SUPINE 08:14", "ID 0012345")

CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption(
            "gaussian_blur",
            "Gaussian blur (scipy.ndimage.gaussian_filter, reflecting edges, truncated at 4 sigma)",
            "sigma/side",
            (0.01, 0.02, 0.04),
            False,
            _gaussian_blur,
        ),
        Corruption(
            "gaussian_noise",
            "additive Gaussian noise, one field for all channels, seeded",
            "sigma",
            (10.0, 20.0, 40.0),
            True,
            _gaussian_noise,
        ),
        Corruption(
            "contrast",
            "contrast reduced towards the image mean: mean + c (x - mean)",
            "c",
            (0.5, 0.3, 0.15),
            False,
            _contrast,
        ),
        Corruption(
            "jpeg",
            "JPEG re-encoding (Pillow, 4:2:0 chroma subsampling for RGB)",
            "quality",
            (25, 12, 5),
            False,
            _jpeg,
        ),
        Corruption(
            "crop_zoom",
            "central crop enlarged back to the full size (Pillow bilinear on 8 bits)",
            "kept/side",
            (0.8, 0.6, 0.4),
            False,
            _crop_zoom,
        ),
        Corruption(
            "occlude",
            "the left part of the image set to 0 (black)",
            "covered/width",
            (0.25, 0.5, 0.75),
            False,
            _occlude,
        ),
        Corruption(
            "border",
            "a white (255) frame on all four sides, as a collimation edge",
            "width/side",
            (0.05, 0.1, 0.2),
            False,
            _border,
        ),
        Corruption(
            "burned_text",
            "white (255) text burned in at the top left (Pillow's bitmap font, enlarged)",
            "height/side, lines",
            (
                (0.05, *_TEXT_LINES[:1]),
                (0.07, *_TEXT_LINES[:2]),
                (0.1, *_TEXT_LINES),
            ),
            False,
            _burned_text,
        ),
        Corruption(
            "invert",
            "intensity inverted: 255 - x (MONOCHROME1 shown as MONOCHROME2)",
            "",
            (None,),
            False,
            _invert,
        ),  # fmt: skip
        Corruption(
            "rotate90", "rotated by 90 degrees counter-clockwise", "", (None,), False, _rotate90
        ),  # fmt: skip
        Corruption("rotate180", "rotated by 180 degrees", "", (None,), False, _rotate180),
        Corruption("hflip", "mirrored left-right", "", (None,), False, _hflip),
        Corruption("vflip", "mirrored top-bottom", "", (None,), False, _vflip),
    )
}
"""Every corruption by name, in the order the tables list them."""


def corruption_names() -> list[str]:
    return list(CORRUPTIONS)


def get_corruption(name: str) -> Corruption:
    """The corruption called ``name``; :class:`~.errors.EvaluationError` names the choices."""
    if name not in CORRUPTIONS:
        raise EvaluationError(
            f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}",
            params=("corruptions",),
        )
    return CORRUPTIONS[name]


def conditions(
    names: Sequence[str] | None = None, severities: Sequence[int] = (1, 2, 3)
) -> list[tuple[str, int]]:
    """The ``(corruption, severity)`` pairs of a benchmark, in table order.

    Graded corruptions run at each of ``severities``; one-level corruptions (inversion,
    rotations, flips) run once, at severity 1, whatever ``severities`` holds.

    Parameters
    ----------
    names : sequence of str, optional
        Corruptions (default: all, :data:`CORRUPTIONS` order); distinct.
    severities : sequence of int
        Distinct severities among 1, 2, 3.

    Raises
    ------
    EvaluationError
        Unknown or repeated names or severities, or none.
    """
    chosen = list(CORRUPTIONS) if names is None else list(names)
    if not chosen or len(set(chosen)) != len(chosen):
        raise EvaluationError(
            f"corruptions must be distinct names among {', '.join(CORRUPTIONS)}, got {chosen}",
            params=("corruptions",),
        )
    levels = sorted(set(severities))
    if not levels or len(levels) != len(severities) or not set(levels) <= {1, 2, 3}:
        raise EvaluationError(
            f"severities must be distinct values among 1, 2, 3, got {list(severities)}",
            params=("severities",),
        )
    out: list[tuple[str, int]] = []
    for name in chosen:
        c = get_corruption(name)
        out += [(name, s) for s in levels] if c.graded else [(name, 1)]
    return out


def _round(x: Floats) -> NDArray[np.uint8]:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def corruption_seed(image: NDArray[Any], name: str, severity: int, seed: int) -> int:
    """The seed of one corrupted copy: SHA-256 of the image's values and shape, the
    corruption, the severity and the user seed (first 8 bytes, as an unsigned integer)."""
    values = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
    h = hashlib.sha256()
    h.update(repr((values.shape, name, int(severity), int(seed))).encode())
    h.update(values.tobytes())
    return int.from_bytes(h.digest()[:8], "little")


def corrupt(image: NDArray[Any], name: str, severity: int = 1, seed: int = 0) -> LoadedImage:
    """A corrupted copy of a canonical image.

    Parameters
    ----------
    image : ndarray, shape (H, W, C)
        Canonical (the 8-bit scale; C = 1 or 3).
    name : str
        A corruption of :data:`CORRUPTIONS`.
    severity : int
        1, 2 or 3 (graded corruptions); 1 for the one-level ones.
    seed : int
        The user seed (with the image's content, the corruption and the severity it seeds
        the noise, :func:`corruption_seed`).

    Returns
    -------
    LoadedImage, shape (H', W', C)
        ``float32`` integer values in ``[0, 255]``, ``source_bits=8``; ``(W, H, C)`` for
        ``rotate90``, else the input's shape.

    Raises
    ------
    EvaluationError
        Unknown corruption or severity, or an image that is not (H, W, 1|3).
    """
    c = get_corruption(name)
    level = c.level(severity)
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] not in (1, 3) or min(x.shape[:2]) < 1:
        raise EvaluationError(f"expected a canonical (H, W, 1|3) image, got shape {x.shape}")
    rng = np.random.default_rng(corruption_seed(image, name, severity, seed) if c.random else 0)
    out = np.ascontiguousarray(c.apply(x, level, rng))
    return LoadedImage(_round(out), source_bits=8)


def corruption_table(severities: Sequence[int] = (1, 2, 3)) -> list[tuple[str, str, str]]:
    """``(corruption, description, parameter per severity)`` rows, as the docs show them."""
    rows = []
    for c in CORRUPTIONS.values():
        if c.graded:
            per = "; ".join(f"{s}: {_text(c.level(s))}" for s in severities)
            rows.append((c.name, c.description, f"{c.parameter} = {per}"))
        else:
            rows.append((c.name, c.description, "one level"))
    return rows


__all__ = [
    "CORRUPTIONS",
    "Corruption",
    "conditions",
    "corrupt",
    "corruption_names",
    "corruption_seed",
    "corruption_table",
    "get_corruption",
    "text_mask",
]
