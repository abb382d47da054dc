"""Image files -> canonical arrays.

The one image convention of the package (checked here, at the boundary):

    a canonical image is a ``float32`` array of shape ``(H, W, C)``, ``C`` = 1 (grayscale) or 3
    (RGB), with values on the 8-bit scale ``[0, 255]``.

8-bit files keep their values; 16-bit files are scaled by 255/65535 *(ours)*, so that a model card's
``scale: 255`` means the same for both; alpha channels are dropped (medical images carry no
meaningful transparency); palette, CMYK, 1-bit and LA images are converted to RGB or grayscale.
Everything downstream (the model wrapper) resizes, converts channels and normalises from this
convention only.

DICOM files (read with pydicom; recognised by the ``DICM`` marker at byte 128 whatever their
name, or by a ``.dcm``/``.dicom`` suffix) go through the standard grayscale pipeline: the
modality LUT (rescale slope/intercept or Modality LUT Sequence), then the VOI transform (the
first VOI LUT, else the first window centre/width, as ``pydicom.pixels.apply_voi_lut``), then
the display range is mapped to ``[0, 255]`` and MONOCHROME1 is inverted so that bright means
dense, as in every other file. The display range is the VOI transform's own output range
(``[min, max]`` of the VOI LUT's entries; the window's output range as pydicom defines it);
without a VOI transform, the image's own ``[min, max]`` *(ours: a file that says nothing about
display leaves nothing better to use)*. RGB and YBR files become RGB (``BitsStored`` scaled to
the 8-bit range), PALETTE COLOR files go through their palette. Multi-frame files and pixel data
that no installed decoder can read are refused with the reason; a DICOM object without pixel
data (a report, a presentation state, a truncated file) is refused as "no pixel data".
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from .errors import ImageReadError

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
)
"""File suffixes (lower case) that :func:`find_images` collects (and any file with the DICOM
marker)."""

DICOM_SUFFIXES: frozenset[str] = frozenset({".dcm", ".dicom"})
"""Suffixes read as DICOM even without the ``DICM`` marker (data sets without a preamble)."""

MAX_PIXELS = 20_000 * 20_000
"""Images with more pixels than this are refused (decompression bombs)."""

CanonicalImage = NDArray[np.float32]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_PILLOW_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM")  # PNG, JPEG, BMP
_DICOM_MAGIC, _DICOM_MAGIC_AT = b"DICM", 128
_DICOM_GRAY = ("MONOCHROME1", "MONOCHROME2")
_DICOM_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR")


def find_images(root: str | Path) -> list[Path]:
    """All image files under ``root``, recursively, sorted by relative path (deterministic).

    Parameters
    ----------
    root
        A folder. Hidden files and folders (name starting with ``.``) are skipped.

    Returns
    -------
    list of Path
        Files whose suffix (any case) is in :data:`IMAGE_SUFFIXES`, and DICOM files of any
        other name (``DICM`` at byte 128: DICOM files are often named by UID, without suffix).
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageReadError(f"{root}: expected a folder of images, but it is not a folder")
    found = [p for p in _walk(root) if p.suffix.lower() in IMAGE_SUFFIXES or is_dicom(p)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def is_dicom(path: str | Path) -> bool:
    """Whether a file carries the DICOM marker (``DICM`` at byte 128); False if unreadable."""
    try:
        with Path(path).open("rb") as fh:
            fh.seek(_DICOM_MAGIC_AT)
            return fh.read(4) == _DICOM_MAGIC
    except OSError:
        return False


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
        PNG, JPEG, BMP or TIFF (8- or 16-bit; grayscale, RGB, RGBA, palette, CMYK), or DICOM
        (one frame; see the module docstring).

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
        head = fh.read(_DICOM_MAGIC_AT + len(_DICOM_MAGIC))
    # Decide by content, not suffix: a mislabelled extension must not change how a file reads.
    if head[_DICOM_MAGIC_AT:] == _DICOM_MAGIC:
        array = _read_dicom(path)
    elif head[:4] in _TIFF_MAGIC:
        array = _read_tiff(path)
    elif path.suffix.lower() in DICOM_SUFFIXES and not head.startswith(_PILLOW_MAGIC):
        array = _read_dicom(path, preamble=False)
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


def _read_dicom(path: Path, *, preamble: bool = True) -> NDArray[np.generic]:
    """A DICOM file's pixels: float64 in [0, 1] (grayscale, RGB > 8 bits) or uint8/16 RGB."""
    try:
        import pydicom
    except ImportError as exc:  # a dependency; only a broken install lacks it
        raise ImageReadError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from exc
    where = "" if preamble else " (a .dcm file without the 'DICM' marker at byte 128)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every odd element
            ds = pydicom.dcmread(path, force=not preamble)
    except Exception as exc:  # pydicom raises InvalidDicomError, ValueError, EOFError, ...
        raise ImageReadError(f"{path}: cannot read as DICOM{where}: {exc}") from exc
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        kind = f" (SOP class {getattr(sop, 'name', sop)})" if sop else ""
        raise ImageReadError(
            f"{path}: DICOM file{where} has no pixel data{kind}: not an image, or truncated"
        )
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(f"{path}: DICOM image size elements are malformed: {exc}") from exc
    if frames > 1:
        raise ImageReadError(
            f"{path}: multi-frame DICOM ({frames} frames) is not supported; expected one "
            "image per file (export the frame to audit as its own file)"
        )
    if rows * columns > MAX_PIXELS:
        raise ImageReadError(
            f"{path}: {columns}x{rows} pixels exceeds the limit of {MAX_PIXELS} pixels "
            "(possible decompression bomb)"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _DICOM_GRAY + _DICOM_COLOUR:
        raise ImageReadError(
            f"{path}: DICOM photometric interpretation {photometric or '(missing)'!r} is not "
            f"supported; expected one of {list(_DICOM_GRAY + _DICOM_COLOUR)}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = ds.pixel_array
    except Exception as exc:  # decoders raise RuntimeError, ValueError, NotImplementedError
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        hint = (
            "; compressed pixel data needs a decoder plug-in (e.g. pylibjpeg, python-gdcm), "
            "or convert the file to uncompressed DICOM"
            if getattr(syntax, "is_compressed", False)
            else ""
        )
        name = getattr(syntax, "name", syntax) or "unknown"
        raise ImageReadError(
            f"{path}: cannot decode the DICOM pixel data (transfer syntax {name}): {exc}{hint}"
        ) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if photometric in _DICOM_GRAY:
                return _dicom_gray(ds, raw, invert=photometric == "MONOCHROME1")
            return _dicom_colour(ds, raw, photometric)
    except Exception as exc:  # malformed LUTs, windows, bit depths, odd shapes
        raise ImageReadError(
            f"{path}: cannot apply the DICOM display transforms ({photometric}): {exc}"
        ) from exc


def _dicom_transforms() -> tuple[Any, Any, Any, Any]:
    """pydicom's apply_modality_lut, apply_voi_lut, apply_windowing, apply_color_lut (3.0+)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing

    return apply_modality_lut, apply_voi_lut, apply_windowing, apply_color_lut


def _dicom_gray(ds: Any, raw: NDArray[np.generic], *, invert: bool) -> NDArray[np.float64]:
    """Modality LUT, VOI LUT or window, display range -> [0, 1], MONOCHROME1 inverted."""
    modality_lut, voi_lut, windowing, _ = _dicom_transforms()
    if raw.ndim != 2:
        raise ValueError(f"expected one grayscale frame, got pixel data of shape {raw.shape}")
    values = np.asarray(voi_lut(modality_lut(raw, ds), ds), dtype=np.float64)
    lut = ds.get("VOILUTSequence")
    if lut and all(lut[0].get(name) is not None for name in ("LUTDescriptor", "LUTData")):
        # The LUT's own output range: every entry, looked up the way pydicom looks up pixels.
        descriptor = lut[0].LUTDescriptor
        first, entries = int(descriptor[1]), int(descriptor[0]) or 2**16
        ends = np.asarray(voi_lut(np.arange(first, first + entries), ds), dtype=np.float64)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        # The window's output range as pydicom defines it: what lies far below and far above.
        with np.errstate(over="ignore", invalid="ignore"):
            ends = np.asarray(windowing(np.array([-1e300, 1e300]), ds), dtype=np.float64)
    else:
        ends = values
    low, high = float(ends.min()), float(ends.max())
    if not (np.isfinite(low) and np.isfinite(high) and np.isfinite(values).all()):
        raise ValueError("the display transforms give non-finite values")
    unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
    unit = np.clip(unit, 0.0, 1.0)
    return 1.0 - unit if invert else unit


def _dicom_colour(ds: Any, raw: NDArray[np.generic], photometric: str) -> NDArray[np.generic]:
    """RGB (pydicom already turned YBR into RGB), or a palette looked up: (H, W, 3)."""
    if photometric == "PALETTE COLOR":
        raw = np.asarray(_dicom_transforms()[3](raw, ds))
    if raw.ndim != 3 or raw.shape[2] != 3:
        raise ValueError(f"expected one RGB frame, got pixel data of shape {raw.shape}")
    if photometric == "PALETTE COLOR" or raw.dtype == np.uint8:
        return raw  # 8- or 16-bit entries: the usual scales apply
    bits = int(ds.get("BitsStored") or raw.dtype.itemsize * 8)
    return np.clip(raw.astype(np.float64) / float(2**bits - 1), 0.0, 1.0)


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
