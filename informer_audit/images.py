"""Image files -> canonical arrays.

The one image convention of the package (checked here, at the boundary):

    a canonical image is a ``float32`` array of shape ``(H, W, C)``, ``C`` = 1 (grayscale) or 3
    (RGB), with values on the 8-bit scale ``[0, 255]``.

8-bit files keep their values; 16-bit files are scaled by 255/65535 *(ours)*, so that a model card's
``scale: 255`` means the same for both; alpha channels are dropped (medical images carry no
meaningful transparency); palette, CMYK, 1-bit and LA images are converted to RGB or grayscale.
Everything downstream (the model wrapper) resizes, converts channels and normalises from this
convention only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from .errors import ImageReadError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
"""File suffixes (lower case) that :func:`find_images` collects."""

MAX_PIXELS = 20_000 * 20_000
"""Images with more pixels than this are refused (decompression bombs)."""

CanonicalImage = NDArray[np.float32]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def find_images(root: str | Path) -> list[Path]:
    """All image files under ``root``, recursively, sorted by relative path (deterministic).

    Parameters
    ----------
    root
        A folder. Hidden files and folders (name starting with ``.``) are skipped.

    Returns
    -------
    list of Path
        Files whose suffix (any case) is in :data:`IMAGE_SUFFIXES`.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageReadError(f"{root}: expected a folder of images, but it is not a folder")
    found = [p for p in _walk(root) if p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _walk(root: Path) -> Iterator[Path]:
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk(entry)
        elif entry.is_file():
            yield entry


def load_image(path: str | Path) -> CanonicalImage:
    """Read one image file into the canonical convention.

    Parameters
    ----------
    path
        PNG, JPEG, BMP or TIFF (8- or 16-bit; grayscale, RGB, RGBA, palette, CMYK).

    Returns
    -------
    ndarray, shape (H, W, C), float32
        ``C`` is 1 or 3; values in ``[0, 255]``.

    Raises
    ------
    ImageReadError
        The file is missing, empty, corrupt, too large, or of a pixel type that has no
        meaning as an X-ray intensity.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes), expected an image")
    with path.open("rb") as fh:
        magic = fh.read(4)
    # Decide by content, not suffix: a mislabelled extension must not change how a file reads.
    if magic in _TIFF_MAGIC:
        array = _read_tiff(path)
    else:
        array = _read_pillow(path)
    return _check(path, array)


def _read_pillow(path: Path) -> NDArray[np.generic]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageReadError(
                        f"{path}: {im.width}x{im.height} pixels exceeds the limit of "
                        f"{MAX_PIXELS} pixels (possible decompression bomb)"
                    )
                im.load()
                return _pil_to_array(im)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"{path}: refused as a possible decompression bomb ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports unreadable or truncated files as OSError (UnidentifiedImageError).
        raise ImageReadError(
            f"{path}: cannot read as an image (expected PNG, JPEG, BMP or TIFF): {exc}"
        ) from exc


def _pil_to_array(im: Image.Image) -> NDArray[np.generic]:
    mode = im.mode
    if mode in {"I;16", "I;16B", "I;16L", "I;16N"}:
        return np.asarray(im, dtype=np.uint16)
    if mode == "I":
        # 16-bit PNGs often open as 32-bit "I"; values above 65535 make no sense for them.
        return np.asarray(im, dtype=np.int64)
    if mode == "F":
        return np.asarray(im, dtype=np.float32)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in {"1", "CMYK", "YCbCr", "LAB", "HSV"}:
        im = im.convert("L" if mode == "1" else "RGB")
    elif mode == "LA" or mode == "La":
        im = im.convert("L")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    return np.asarray(im)


def _read_tiff(path: Path) -> NDArray[np.generic]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = cast("tifffile.TiffPage", tif.pages[0])  # the first IFD is never a frame
            # Count from the tags: page.shape starts with the samples for planar (separate) files.
            width, height = int(page.imagewidth), int(page.imagelength)
            if width * height > MAX_PIXELS:
                raise ImageReadError(
                    f"{path}: {width}x{height} pixels exceeds the limit of {MAX_PIXELS} "
                    "pixels (possible decompression bomb)"
                )
            array = page.asarray()
            photometric = getattr(page.photometric, "name", str(page.photometric))
            planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many types (TiffFileError, ValueError, ...)
        raise ImageReadError(f"{path}: cannot read as a TIFF image: {exc}") from exc
    if planar and array.ndim == 3:
        # Separate colour planes come as (S, H, W); make them (H, W, S) like every other file.
        array = np.moveaxis(array, 0, -1)
    if photometric == "MINISWHITE":
        # Inverted grayscale: white is 0. Flip so that bright = dense, like every other file.
        info_max = np.iinfo(array.dtype).max if array.dtype.kind in "ui" else 1.0
        array = info_max - array
    return array


def _check(path: Path, array: NDArray[np.generic]) -> CanonicalImage:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(
            f"{path}: expected a 2-D grayscale or colour image, got an array of shape {array.shape}"
        )
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise ImageReadError(
            f"{path}: image of {array.shape[1]}x{array.shape[0]} pixels is too small"
        )
    if array.shape[2] == 2:  # gray + alpha
        array = array[:, :, :1]
    elif array.shape[2] == 4:  # RGB + alpha
        array = array[:, :, :3]
    kind, bits = array.dtype.kind, array.dtype.itemsize * 8
    if kind == "b":
        out = array.astype(np.float32) * 255.0
    elif kind == "u" and bits == 8:
        out = array.astype(np.float32)
    elif kind in "ui":
        top = int(array.max()) if array.size else 0
        if int(array.min()) < 0 or top > 65535:
            raise ImageReadError(
                f"{path}: integer pixel values must lie in [0, 65535], got "
                f"[{int(array.min())}, {top}]"
            )
        out = (array.astype(np.float64) * (255.0 / 65535.0)).astype(np.float32)
    elif kind == "f":
        finite = np.isfinite(array)
        if not finite.all() or array.min() < 0.0 or array.max() > 1.0:
            raise ImageReadError(f"{path}: floating-point pixels must be finite and lie in [0, 1]")
        out = array.astype(np.float32) * 255.0
    else:
        raise ImageReadError(f"{path}: unsupported pixel type {array.dtype}")
    if (
        out.shape[2] == 3
        and np.array_equal(out[:, :, 0], out[:, :, 1])
        and np.array_equal(out[:, :, 0], out[:, :, 2])
    ):
        # A grayscale image stored as RGB: keep one channel; the model wrapper replicates it.
        out = out[:, :, :1]
    return np.ascontiguousarray(out)


def to_channels(image: CanonicalImage, channels: int) -> CanonicalImage:
    """Convert a canonical image to 1 or 3 channels.

    Grayscale is replicated to RGB; RGB is reduced to luminance with ITU-R 601-2 weights
    (as Pillow's ``convert("L")``).

    Parameters
    ----------
    image : ndarray, shape (H, W, C)
    channels : {1, 3}

    Returns
    -------
    ndarray, shape (H, W, channels), float32
    """
    c = image.shape[2]
    if c == channels:
        return image
    if channels == 3 and c == 1:
        return np.repeat(image, 3, axis=2)
    if channels == 1 and c == 3:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return (image @ weights)[:, :, None].astype(np.float32)
    raise ImageReadError(f"cannot convert a {c}-channel image to {channels} channels")


def resize(image: CanonicalImage, size: tuple[int, int]) -> CanonicalImage:
    """Resize with Pillow's bilinear filter (antialiased when shrinking), channel by channel.

    Parameters
    ----------
    image : ndarray, shape (H, W, C), float32
    size : (height, width)

    Returns
    -------
    ndarray, shape (height, width, C), float32
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[:, :, i], dtype=np.float32)).resize(
                (width, height), Image.Resampling.BILINEAR
            ),
            dtype=np.float32,
        )
        for i in range(image.shape[2])
    ]
    return np.stack(planes, axis=2)
