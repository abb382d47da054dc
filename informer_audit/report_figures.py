"""Drawing for the HTML report: images as the model sees them, class-map overlays, plots.

Every picture is PNG bytes (:mod:`.png`: matplotlib ``Figure`` objects on the Agg backend, no
pyplot state, no ``Software`` entry; overlays composed with numpy and Pillow), written under
``OUTDIR/assets`` by :class:`Assets` with generated names only (CSV row numbers and class
indices). The same inputs give byte-identical files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import ImageReadError, ReportError
from .fileio import atomic_write_bytes
from .images import load_image, resize, to_channels
from .paths import safe_child
from .png import png_from_array, png_from_figure

if TYPE_CHECKING:
    from .flagsfile import FlagRow

ASSETS = "assets"
TILE = 192
"""Longest side, in pixels, of the image and overlay tiles."""
OVERLAY_ALPHA = 0.8
"""Opacity of the colour map where a class map reaches its largest absolute value."""
MAP_CMAP = "RdBu_r"
"""Diverging colour map of the class maps: blue negative, white 0, red positive."""
DIST_CMAP = "viridis"
"""Colour map of the K x K cosine distances, on [0, 2]."""
_ASSET_NAME = re.compile(r"^[a-z][a-z0-9_]*\.png$")
_FLAGGED = "#d95f02"
_UNFLAGGED = "#9e9e9e"


def model_view(path: Path, image_size: Sequence[int]) -> NDArray[np.float32]:
    """The image as the model sees it, in grey: shape (H, W) of the model input, 8-bit scale."""
    h, w = int(image_size[0]), int(image_size[1])
    return resize(to_channels(load_image(path), 1), (h, w))[:, :, 0]


def map_to_pixels(
    class_map: NDArray[np.floating], image_size: Sequence[int], patch_size: int | None = None
) -> NDArray[np.float64]:
    """One class map on the model's input pixel grid.

    Parameters
    ----------
    class_map : ndarray, shape (gh, gw), (H, W) or (C, H, W)
        A patch map (FD), a pixel map (LIME) or a per-channel map (exact gradients; summed over
        the channels).
    image_size : (H, W)
    patch_size : int, optional
        The FD patch side: patch (r, q) covers rows ``r*s:(r+1)*s`` and columns
        ``q*s:(q+1)*s``. Without it, a patch grid is spread evenly over the pixels.

    Returns
    -------
    ndarray, shape (H, W), float64
    """
    m = np.asarray(class_map, dtype=np.float64)
    if m.ndim == 3:
        m = m.sum(axis=0)
    if m.ndim != 2:
        raise ValueError(f"expected a class map of 2 or 3 dimensions, got shape {m.shape}")
    h, w = int(image_size[0]), int(image_size[1])
    gh, gw = m.shape
    if (gh, gw) == (h, w):
        return m
    s = patch_size
    if s and (gh, gw) == (-(-h // s), -(-w // s)):
        return np.repeat(np.repeat(m, s, axis=0), s, axis=1)[:h, :w]
    rows = np.arange(h) * gh // h
    cols = np.arange(w) * gw // w
    return m[rows][:, cols]


def tile_size(image_size: Sequence[int]) -> tuple[int, int]:
    h, w = int(image_size[0]), int(image_size[1])
    f = TILE / max(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


def grey_tile(view: NDArray[np.floating], size: tuple[int, int]) -> NDArray[np.float64]:
    """(H, W) grey image on the 8-bit scale -> (h, w) display tile in [0, 1] (bilinear)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(view, dtype=np.float32))
    tile = np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), np.float64)
    return np.clip(tile / 255.0, 0.0, 1.0)


def overlay(
    grey: NDArray[np.floating], pixels: NDArray[np.floating], cmap: Any
) -> NDArray[np.uint8]:
    """A class map over a grey tile, in a diverging colour map centred at 0.

    Parameters
    ----------
    grey : ndarray, shape (h, w), values in [0, 1]
    pixels : ndarray, shape (H, W)
        The class map on the model's pixel grid; nearest-neighbour upsampled to (h, w).
    cmap : matplotlib colormap

    Returns
    -------
    ndarray, shape (h, w, 3), uint8
        Limits are symmetric, +-max|map|; the colour's opacity grows with |map| (0 at 0, up to
        :data:`OVERLAY_ALPHA`), so the image stays visible where the map is near 0.
    """
    h, w = grey.shape
    ph, pw = pixels.shape
    m = pixels[(np.arange(h) * ph // h)][:, (np.arange(w) * pw // w)]
    lim = float(np.abs(m).max()) if m.size else 0.0
    t = m / lim if lim > 0 else np.zeros_like(m)
    # Half precision, as saved maps are stored: saved and recomputed maps look the same.
    t = t.astype(np.float16).astype(np.float64)
    rgb = np.asarray(cmap((t + 1.0) / 2.0))[:, :, :3]
    alpha = (OVERLAY_ALPHA * np.abs(t))[:, :, None]
    out = grey[:, :, None] * (1.0 - alpha) + rgb * alpha
    return np.asarray(np.clip(np.rint(out * 255.0), 0, 255), dtype=np.uint8)


def score_histogram(
    scores: NDArray[np.floating],
    flagged: NDArray[np.bool_],
    tau: float,
    *,
    direction: str,
    label: str,
) -> bytes:
    """Histogram of one class's score over the scored images, tau marked, as PNG bytes.

    Parameters
    ----------
    scores : ndarray, shape (N,)
    flagged : ndarray, shape (N,), bool
    tau : float
    direction : {"below", "above"}
        Which side of tau is flagged (shaded).
    label : str
        x-axis label (plain text; no class names, which could hold mathtext).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    s = np.asarray(scores, dtype=np.float64)
    lo = min(float(s.min()) if s.size else 0.0, tau)
    hi = max(float(s.max()) if s.size else 1.0, tau)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    edges = [float(v) for v in np.linspace(lo - pad, hi + pad, 25)]
    fig = Figure(figsize=(4.6, 2.5))
    ax = fig.add_subplot(1, 1, 1)
    if direction == "below":
        ax.axvspan(edges[0], tau, color=_FLAGGED, alpha=0.08, lw=0)
    else:
        ax.axvspan(tau, edges[-1], color=_FLAGGED, alpha=0.08, lw=0)
    ax.hist(
        [s[~flagged], s[flagged]],
        bins=edges,
        stacked=True,
        color=[_UNFLAGGED, _FLAGGED],
        label=[f"not flagged ({int((~flagged).sum())})", f"flagged ({int(flagged.sum())})"],
    )
    ax.axvline(tau, color="#b2182b", ls="--", lw=1.5, label=f"τ = {tau:.3f}")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel(label)
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, frameon=False, ncol=3, loc="lower left", bbox_to_anchor=(0.0, 1.0))
    fig.tight_layout()
    return png_from_figure(fig)


def colorbar_png() -> bytes:
    """The legend of the overlays: the diverging colour map from -max|S_k| to +max|S_k|."""
    from matplotlib import colormaps
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, 0.62))
    ax = fig.add_axes((0.12, 0.55, 0.76, 0.3))
    bar = ColorbarBase(
        ax, cmap=colormaps[MAP_CMAP], norm=Normalize(-1, 1), orientation="horizontal"
    )
    bar.set_ticks([-1, 0, 1])
    bar.set_ticklabels(["-max |S_k|", "0", "+max |S_k|"])
    ax.tick_params(labelsize=7)
    return png_from_figure(fig)


def dist_cells(dist: NDArray[np.float64]) -> list[list[dict[str, str]]]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps[DIST_CMAP]
    out = []
    for a in range(dist.shape[0]):
        row = []
        for b in range(dist.shape[1]):
            v = float(dist[a, b])
            rgba = cmap(min(max(v / 2.0, 0.0), 1.0))
            luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
            if a == b:  # d_kk = 0 by definition: no colour
                row.append({"text": "", "bg": "#eeeeee", "fg": "#000000"})
                continue
            row.append(
                {
                    "text": f"{v:.2f}",
                    "bg": to_hex(rgba),
                    "fg": "#000000" if luminance > 0.5 else "#ffffff",
                }
            )
        out.append(row)
    return out


def _asset_path(outdir: Path, name: str) -> Path:
    """``OUTDIR/assets/NAME`` for a generated name (row numbers and class indices only)."""
    if not _ASSET_NAME.match(name):
        raise ReportError(f"refusing asset name {name!r}: not a generated name")
    return safe_child(outdir, f"{ASSETS}/{name}")


class Assets:
    """Writes the generated PNGs under ``OUTDIR/assets`` and remembers them."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.written: list[Path] = []

    def put(self, name: str, data: bytes) -> str:
        """Write ``data`` as ``assets/NAME``; returns the page's relative reference."""
        path = _asset_path(self.outdir, name)
        atomic_write_bytes(path, data)
        self.written.append(path)
        return f"{ASSETS}/{name}"


@dataclass(frozen=True)
class Pictures:
    """How the shown images and their class maps are drawn."""

    image_size: tuple[int, int]
    patch_size: int | None
    tile: tuple[int, int]
    cmap: Any

    @classmethod
    def from_binding(cls, binding: Mapping[str, Any]) -> Pictures:
        from matplotlib import colormaps

        h, w = (int(v) for v in binding["preprocessing"]["image_size"])
        saliency = binding.get("saliency") or {}
        patch = saliency.get("patch_size") if saliency.get("name") == "fd" else None
        return cls((h, w), patch, tile_size((h, w)), colormaps[MAP_CMAP])


def draw_card(
    card: dict[str, Any],
    r: FlagRow,
    src: Path | None,
    maps: NDArray[np.float64] | None,
    source: str | None,
    pictures: Pictures,
    assets: Assets,
) -> None:
    """Write a shown image and its K overlays (maps of shape (K, ...)); fill in the card."""
    if src is None:
        card["image_note"] = "image not found"
        return
    try:
        seen = model_view(src, pictures.image_size)
    except ImageReadError as exc:
        card["image_note"] = f"cannot read the image: {exc}"
        return
    grey = grey_tile(seen, pictures.tile)
    grey8 = np.asarray(np.rint(grey * 255.0), dtype=np.uint8)
    card["image"] = assets.put(f"img_{r.row:05d}.png", png_from_array(grey8))
    if maps is None:
        return
    overlays = []
    for j, name in enumerate(card["class_names"]):
        pixels = map_to_pixels(maps[j], pictures.image_size, pictures.patch_size)
        png = png_from_array(overlay(grey, pixels, pictures.cmap))
        overlays.append(
            {
                "name": name,
                "src": assets.put(f"map_{r.row:05d}_{j}.png", png),
                "flagged": bool(r.flag[j]),
                "scale": f"{float(np.abs(maps[j]).max()):.3g}",
            }
        )
    card["overlays"] = overlays
    card["maps_note"] = (
        "maps saved at flag time" if source == "saved" else "maps recomputed for this report"
    )


__all__ = [
    "ASSETS",
    "DIST_CMAP",
    "MAP_CMAP",
    "OVERLAY_ALPHA",
    "TILE",
    "Assets",
    "Pictures",
    "colorbar_png",
    "dist_cells",
    "draw_card",
    "grey_tile",
    "map_to_pixels",
    "model_view",
    "overlay",
    "score_histogram",
    "tile_size",
]
