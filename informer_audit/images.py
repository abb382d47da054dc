"""Image files -> canonical arrays.

The one image convention of the package (checked here, at the boundary):

    a canonical image is a ``float32`` array of shape ``(H, W, C)``, ``C`` = 1 (grayscale) or 3
    (RGB), with values on the 8-bit scale ``[0, 255]``.

8-bit files keep their values; 16-bit files are scaled by 255/65535 *(ours)*, so that a model card's
``scale: 255`` means the same for both; alpha channels are dropped (medical images carry no
meaningful transparency); palette, CMYK, 1-bit and LA images are converted to RGB or grayscale.
Everything downstream (the model wrapper) resizes, converts channels and normalises from this
convention only.

:func:`load_image` returns a :class:`LoadedImage`: that float32 array, which also records the bit
depth of its source (:attr:`LoadedImage.source_bits`), so that the model wrapper can convert and
resize an 8-bit source in 8 bits, as PIL and torchvision pipelines do (:func:`is_8bit`,
:func:`to_channels_8bit`, :func:`resize_8bit`; the model card's ``resize`` field), and every other
source in float (:func:`to_channels`, :func:`resize`).

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

Every format gets the same treatment *(ours)*:

* the pixel limit :func:`pixel_limit` (against decompression bombs);
* one image per file: a file of several frames (multi-frame DICOM, multi-page TIFF, animated
  GIF, PNG (APNG) or WebP) is refused, naming the file and the frame count, as a stack of
  X-rays in one file is ambiguous. Not counted as frames: a TIFF's reduced-resolution pages
  (thumbnails) and an MPO JPEG's extra pictures (previews, depth maps; the first picture is
  the primary image by the format's definition);
* the orientation tag (EXIF ``Orientation``, 0x0112, in JPEG, PNG, WebP, ... as Pillow reads
  it, including from XMP; the TIFF ``Orientation`` tag 274 for files read with tifffile) is
  applied, for all 8 values, as every viewer and ``PIL.ImageOps.exif_transpose`` show the
  image; other values mean "as stored". DICOM has no such tag.

A folder is listed by :func:`scan_folder`: every file under it is either audited or skipped
with its reason (see there).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from .errors import ImageReadError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"}
)
"""File suffixes (lower case) that :func:`scan_folder` audits whatever their content (a broken
file so named is a failure, not a skip); files of other names are audited when their content
is an image."""

DICOM_SUFFIXES: frozenset[str] = frozenset({".dcm", ".dicom"})
"""Suffixes read as DICOM even without the ``DICM`` marker (data sets without a preamble)."""

MAX_PIXELS = 89_478_485
"""Images with more pixels than this are refused (decompression bombs); Pillow's own default
``Image.MAX_IMAGE_PIXELS``, so that every format has the same limit (:func:`pixel_limit`)."""

CanonicalImage = NDArray[np.float32]


class LoadedImage(np.ndarray[Any, np.dtype[np.float32]]):
    """A canonical image that records the bit depth of the file it was read from.

    What :func:`load_image` returns: a ``float32`` array of shape ``(H, W, C)`` on the 8-bit
    scale, usable wherever an ndarray is, with one attribute more. Views and copies keep
    :attr:`source_bits` (slices, transposes, ``copy``, ``astype``, ``np.repeat``); values
    computed from the image (arithmetic and every other ufunc) are plain ndarrays, as they are
    no longer the file's values.

    Parameters
    ----------
    array : array_like, shape (H, W, C)
        The canonical image (converted to ``float32``).
    source_bits : int or None
        See :attr:`source_bits`.

    Attributes
    ----------
    source_bits : int or None
        Bits per sample of the pixels decoded from the file, before they were put on the 8-bit
        scale: 1 (bilevel), 8, 16 (every integer type wider than 8 bits, which is scaled by
        255/65535), or the width of the floating-point type (16, 32 or 64) for float pixels
        (float TIFF; DICOM grayscale, and DICOM RGB of more than 8 bits, after the display
        transforms, in float64); ``None`` when unknown.
    """

    source_bits: int | None

    def __new__(cls, array: Any, source_bits: int | None) -> LoadedImage:
        obj = np.asarray(array, dtype=np.float32).view(cls)
        obj.source_bits = source_bits
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.source_bits = getattr(obj, "source_bits", None)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        # Computed values are no source's pixels: compute on plain arrays, return plain arrays.
        inputs = tuple(_plain(x) for x in inputs)
        if kwargs.get("out") is not None:
            kwargs["out"] = tuple(_plain(x) for x in kwargs["out"])
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __reduce__(self) -> Any:
        rebuild, args, state = cast("tuple[Any, ...]", super().__reduce__())[:3]
        return rebuild, args, (state, self.source_bits)

    def __setstate__(self, state: Any) -> None:
        array_state, self.source_bits = state
        super().__setstate__(array_state)


def _plain(value: Any) -> Any:
    """``value`` as a plain ndarray view when it is a :class:`LoadedImage`; else itself."""
    return value.view(np.ndarray) if isinstance(value, LoadedImage) else value


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_PILLOW_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM")  # PNG, JPEG, BMP
# Signatures that make a file an image whatever its name (a broken one is then a failure):
# PNG, JPEG, BMP, GIF, JPEG 2000 (codestream, JP2 box); WebP is RIFF....WEBP.
_IMAGE_MAGIC = (*_PILLOW_MAGIC, b"GIF87a", b"GIF89a", b"\xffO\xffQ", b"\x00\x00\x00\x0cjP  ")
_DICOM_MAGIC, _DICOM_MAGIC_AT = b"DICM", 128
_DICOM_GRAY = ("MONOCHROME1", "MONOCHROME2")
_DICOM_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR")


@dataclass
class FolderScan:
    """Every file under a folder, audited or skipped (:func:`scan_folder`).

    Attributes
    ----------
    images : list of Path
        The files to audit, sorted by path relative to the folder (deterministic).
    skipped : list of (Path, str)
        Everything else under the folder, with the reason it is not audited, sorted the same
        way: hidden files, files that are not images, broken symlinks, special files, folder
        links not followed, folders that cannot be listed.
    """

    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def scan_folder(root: str | Path) -> FolderScan:
    """List every file under ``root``, recursively: each is audited or skipped with its reason.

    A file is audited when its suffix (any case) is in :data:`IMAGE_SUFFIXES` (a broken file
    so named then fails, with its reason, instead of being skipped), or else when its content
    is an image :func:`load_image` reads: the DICOM marker at byte 128 (DICOM files are often
    named by UID), a TIFF, PNG, JPEG, BMP, GIF, WebP or JPEG 2000 signature, or any other
    format Pillow identifies. This is the decision ``calibrate`` makes for the files a labels
    CSV names. A file that cannot be opened to look is audited (its failure says why).

    Skipped, with the reason: files that are not images (``labels.csv``, ``README.txt``),
    hidden files and every file in a hidden folder (name starting with ``.``; walked to be
    counted, never audited), broken symlinks, FIFOs, sockets and devices, and folders that
    cannot be listed.

    Symlinks *(ours)*: a link to a file is listed under its own path (two paths with the same
    bytes are scored once, by content, downstream). A link to a folder is followed, also out
    of ``root`` (data is often linked in), but each real folder is listed once: real
    subfolders first, then links in path order, and a link to a folder already listed, or to
    a folder that contains ``root`` (``.``, ``..``), is skipped with that reason. A symlink
    loop therefore never multiplies rows.

    Parameters
    ----------
    root
        A folder.

    Returns
    -------
    FolderScan

    Raises
    ------
    ImageReadError
        ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageReadError(f"{root}: expected a folder of images, but it is not a folder")
    root_real = root.resolve()
    st = root.stat()
    seen: dict[tuple[int, int], Path] = {(st.st_dev, st.st_ino): root}
    # Folders still to list, with whether they lie in a hidden folder. Links to folders wait
    # until every real folder is listed, so that a real folder keeps its own path.
    folders: list[tuple[Path, bool]] = [(root, False)]
    links: list[tuple[Path, bool]] = []
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    while folders or links:
        if folders:
            folder, hidden = folders.pop()
        else:
            links.sort(key=lambda item: item[0].relative_to(root).as_posix(), reverse=True)
            folder, hidden = links.pop()
            reason = _folder_link_reason(folder, root_real, seen)
            if reason is not None:
                skipped.append((folder, reason))
                continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((folder, f"cannot list the folder ({exc.strerror or exc})"))
            continue
        for entry in entries:
            path = folder / entry.name
            in_hidden = hidden or entry.name.startswith(".")
            try:
                is_link = entry.is_symlink()
                st = os.stat(path)  # follows links
            except OSError as exc:
                skipped.append((path, _unreachable(path, exc)))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if is_link:
                    links.append((path, in_hidden))
                elif key in seen:  # a real folder reached again through a followed link
                    skipped.append((path, f"folder already listed (as {seen[key]})"))
                else:
                    seen[key] = path
                    folders.append((path, in_hidden))
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append((path, "not a regular file (a FIFO, socket or device)"))
            elif hidden:
                skipped.append((path, "in a hidden folder (a folder name starts with '.')"))
            elif in_hidden:
                skipped.append((path, "hidden file (name starts with '.')"))
            elif (reason := _not_an_image(path)) is not None:
                skipped.append((path, reason))
            else:
                images.append(path)

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    return FolderScan(sorted(images, key=rel), sorted(skipped, key=lambda item: rel(item[0])))


def find_images(root: str | Path) -> list[Path]:
    """The files :func:`scan_folder` audits under ``root``, sorted by relative path."""
    return scan_folder(root).images


def _folder_link_reason(
    link: Path, root_real: Path, seen: dict[tuple[int, int], Path]
) -> str | None:
    """Why a link to a folder is not followed; ``None`` to follow it (and mark it seen)."""
    try:
        target = link.resolve(strict=True)
        st = target.stat()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop, on older Pythons
        return f"broken symlink ({exc})"
    key = (st.st_dev, st.st_ino)
    if root_real == target or root_real.is_relative_to(target):
        return f"link to a folder that contains the audited folder ({target}): not followed"
    if key in seen:
        return f"link to a folder already listed (as {seen[key]}): not followed twice"
    seen[key] = link
    return None


def _unreachable(path: Path, exc: OSError) -> str:
    """Why a folder entry whose target cannot be reached is skipped."""
    try:
        target = os.readlink(path)
    except OSError:
        return f"cannot read the file's status ({exc.strerror or exc})"
    return f"broken symlink (to {target}: {exc.strerror or exc})"


def _not_an_image(path: Path) -> str | None:
    """Why a regular file is not audited; ``None`` when it is (see :func:`scan_folder`)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return None
    try:
        with path.open("rb") as fh:
            head = fh.read(_DICOM_MAGIC_AT + len(_DICOM_MAGIC))
    except OSError:
        return None  # loading it records why it cannot be read
    if not head:
        return "not an image (empty file)"
    if (
        head[_DICOM_MAGIC_AT:] == _DICOM_MAGIC
        or head[:4] in _TIFF_MAGIC
        or head.startswith(_IMAGE_MAGIC)
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    ):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path):  # reads the header only
                return None
    except Image.DecompressionBombError:
        return None  # an image, refused when loaded
    except Exception:  # UnidentifiedImageError, or whatever a plugin raises on other bytes
        return "not an image (its content is no image format that can be read)"


def pixel_limit() -> int:
    """The most pixels an image may have, the same in every format.

    :data:`MAX_PIXELS`, or Pillow's ``Image.MAX_IMAGE_PIXELS`` where an application set it
    lower (Pillow enforces that one on the files it reads).
    """
    pillow = Image.MAX_IMAGE_PIXELS
    return MAX_PIXELS if pillow is None else min(MAX_PIXELS, int(pillow))


def _too_many_pixels(path: Path, width: int, height: int) -> ImageReadError | None:
    limit = pixel_limit()
    if width * height <= limit:
        return None
    return ImageReadError(
        f"{path}: {width}x{height} pixels exceeds the limit of {limit} pixels "
        "(possible decompression bomb)"
    )


def _multi_frame(path: Path, kind: str, frames: int) -> ImageReadError:
    return ImageReadError(
        f"{path}: multi-frame {kind} ({frames} frames) is not supported; expected one image "
        "per file (export the frame to audit as its own file)"
    )


def _orient(array: NDArray[np.generic], orientation: object) -> NDArray[np.generic]:
    """Apply an EXIF/TIFF orientation (1-8) to an (H, W[, C]) array, as it is displayed.

    The same transposes as ``PIL.ImageOps.exif_transpose``; any other value means as stored.
    """
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(array, -1)
    if orientation == 7:
        return array[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(array, 1)
    return array


def is_dicom(path: str | Path) -> bool:
    """Whether a file carries the DICOM marker (``DICM`` at byte 128); False if unreadable."""
    try:
        with Path(path).open("rb") as fh:
            fh.seek(_DICOM_MAGIC_AT)
            return fh.read(4) == _DICOM_MAGIC
    except OSError:
        return False


def load_image(path: str | Path, data: bytes | None = None) -> LoadedImage:
    """Read one image file into the canonical convention.

    Parameters
    ----------
    path
        PNG, JPEG, BMP, TIFF, GIF, WebP or any other single-frame format Pillow reads (8- or
        16-bit; grayscale, RGB, RGBA, palette, CMYK; orientation tag applied), or DICOM (one
        frame; see the module docstring).
    data : bytes, optional
        The file's bytes, already read (e.g. sent to a worker of another machine): they are
        decoded instead of the file, and ``path`` only names the image in messages and decides
        as its suffix does (a ``.dcm`` without the DICOM marker).

    Returns
    -------
    LoadedImage, shape (H, W, C), float32
        An ndarray; ``C`` is 1 or 3; values in ``[0, 255]``; its
        :attr:`~LoadedImage.source_bits` says how many bits per sample the file's pixels had
        (8 for 8-bit files, whose values it keeps: the model wrapper then resizes them in 8 bits).

    Raises
    ------
    ImageReadError
        The file is missing, empty, corrupt, too large, has several frames, or is of a pixel
        type that has no meaning as an X-ray intensity.
    """
    path = Path(path)
    source: Path | io.BytesIO
    if data is None:
        if not path.is_file():
            raise ImageReadError(f"{path}: file not found")
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: file is empty (0 bytes), expected an image")
        with path.open("rb") as fh:
            head = fh.read(_DICOM_MAGIC_AT + len(_DICOM_MAGIC))
        source = path
    else:
        if not data:
            raise ImageReadError(f"{path}: file is empty (0 bytes), expected an image")
        head = bytes(data[: _DICOM_MAGIC_AT + len(_DICOM_MAGIC)])
        source = io.BytesIO(data)
    # Decide by content, not suffix: a mislabelled extension must not change how a file reads.
    if head[_DICOM_MAGIC_AT:] == _DICOM_MAGIC:
        array = _read_dicom(path, source)
    elif head[:4] in _TIFF_MAGIC:
        array = _read_tiff(path, source)
    elif path.suffix.lower() in DICOM_SUFFIXES and not head.startswith(_PILLOW_MAGIC):
        array = _read_dicom(path, source, preamble=False)
    else:
        array = _read_pillow(path, source)
    return _check(path, array)


def _as_file(exc: BaseException, path: Path, source: Path | io.BytesIO) -> str:
    """A decoder's message as if it had read the file: bytes read elsewhere name the file too.

    Pillow, tifffile and pydicom name what they read; for bytes that is a ``BytesIO`` object's
    repr, which would make a failure row differ with the backend that decoded the image.
    """
    text = str(exc)
    if isinstance(source, io.BytesIO):
        text = text.replace(repr(source), repr(str(path))).replace(str(source), str(path))
    return text


def _read_pillow(path: Path, source: Path | io.BytesIO) -> NDArray[np.generic]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                too_big = _too_many_pixels(path, im.width, im.height)
                if too_big is not None:
                    raise too_big
                frames = int(getattr(im, "n_frames", 1))
                if frames > 1 and im.format != "MPO":  # MPO: the first picture is the image
                    raise _multi_frame(path, str(im.format), frames)
                im.load()
                orientation = _exif_orientation(path, im)
                return _orient(_pil_to_array(im), orientation)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"{path}: refused as a possible decompression bomb ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports unreadable or truncated files as OSError (UnidentifiedImageError).
        raise ImageReadError(
            f"{path}: cannot read as an image (expected PNG, JPEG, BMP or TIFF): "
            f"{_as_file(exc, path, source)}"
        ) from exc


def _exif_orientation(path: Path, im: Image.Image) -> object:
    """The image's EXIF orientation (0x0112, also from XMP as Pillow reads it), or None."""
    try:
        return im.getexif().get(0x0112)
    except Exception as exc:  # a malformed EXIF block: Pillow raises many types
        # Viewers then show the pixels as stored; so do we, and say so.
        logger.warning("%s: unreadable EXIF block, orientation not applied: %s", path, exc)
        return None


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


def _read_tiff(path: Path, source: Path | io.BytesIO) -> NDArray[np.generic]:
    import tifffile

    try:
        with tifffile.TiffFile(source) as tif:
            page = cast("tifffile.TiffPage", tif.pages[0])  # the first IFD is never a frame
            # Count from the tags: page.shape starts with the samples for planar (separate) files.
            width, height = int(page.imagewidth), int(page.imagelength)
            too_big = _too_many_pixels(path, width, height)
            if too_big is not None:
                raise too_big
            if len(tif.pages) > 1:
                # Reduced-resolution pages (thumbnails, pyramids) are no frames of their own.
                frames = sum(not getattr(p, "is_reduced", False) for p in tif.pages)
                if frames > 1:
                    raise _multi_frame(path, "TIFF", frames)
            tag = page.tags.get(274)  # Orientation
            orientation = int(tag.value) if tag is not None else 1
            array = page.asarray()
            photometric = getattr(page.photometric, "name", str(page.photometric))
            planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many types (TiffFileError, ValueError, ...)
        raise ImageReadError(
            f"{path}: cannot read as a TIFF image: {_as_file(exc, path, source)}"
        ) from exc
    if planar and array.ndim == 3:
        # Separate colour planes come as (S, H, W); make them (H, W, S) like every other file.
        array = np.moveaxis(array, 0, -1)
    if photometric == "MINISWHITE":
        # Inverted grayscale: white is 0. Flip so that bright = dense, like every other file.
        info_max = np.iinfo(array.dtype).max if array.dtype.kind in "ui" else 1.0
        array = info_max - array
    return _orient(array, orientation)


def _read_dicom(
    path: Path, source: Path | io.BytesIO, *, preamble: bool = True
) -> NDArray[np.generic]:
    """A DICOM file's pixels: float64 in [0, 1] (grayscale, RGB > 8 bits) or uint8/16 RGB."""
    try:
        import pydicom
    except ImportError as exc:  # a dependency; only a broken install lacks it
        raise ImageReadError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from exc
    where = "" if preamble else " (a .dcm file without the 'DICM' marker at byte 128)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every odd element
            ds = pydicom.dcmread(source, force=not preamble)
    except Exception as exc:  # pydicom raises InvalidDicomError, ValueError, EOFError, ...
        raise ImageReadError(
            f"{path}: cannot read as DICOM{where}: {_as_file(exc, path, source)}"
        ) from exc
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
        raise _multi_frame(path, "DICOM", frames)
    too_big = _too_many_pixels(path, columns, rows)
    if too_big is not None:
        raise too_big
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


def _check(path: Path, array: NDArray[np.generic]) -> LoadedImage:
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
        out, bits = array.astype(np.float32) * 255.0, 1
    elif kind == "u" and bits == 8:
        out = array.astype(np.float32)
    elif kind in "ui":
        bits = 16  # scaled as 16-bit, whatever the integer type that holds the values
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
    return LoadedImage(np.ascontiguousarray(out), source_bits=bits)


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


def is_8bit(image: CanonicalImage) -> bool:
    """Whether a canonical image holds the pixels of an 8-bit (or bilevel) file, as read.

    True for a :class:`LoadedImage` whose :attr:`~LoadedImage.source_bits` is at most 8 and whose
    values are all integers in ``[0, 255]`` (an image edited in place after loading may no
    longer be). False for every other array: a plain ndarray says nothing about its source, and
    a 16-bit file's values are not 8-bit ones, even where they happen to be integers.
    """
    bits = getattr(image, "source_bits", None)
    return bits is not None and bits <= 8 and _as_uint8(image) is not None


def _as_uint8(image: CanonicalImage) -> NDArray[np.uint8] | None:
    """The image as uint8 when that is exact (integers in [0, 255]); else ``None``."""
    values = np.asarray(image)
    if not values.size or values.min() < 0 or values.max() > 255:
        return None
    u8 = values.astype(np.uint8)
    return u8 if np.array_equal(u8, values) else None


def _uint8_or_refuse(image: CanonicalImage, what: str) -> NDArray[np.uint8]:
    u8 = _as_uint8(image)
    if u8 is None:
        values = np.asarray(image)
        found = (
            "an empty image"
            if not values.size
            else f"values in [{values.min():g}, {values.max():g}]"
            if values.min() < 0 or values.max() > 255
            else "values that are not integers"
        )
        raise ValueError(
            f"{what}: expected 8-bit values (integers in [0, 255]), got {found}; "
            "such an image is converted and resized in float (to_channels, resize)"
        )
    return u8


def to_channels_8bit(image: CanonicalImage, channels: int) -> CanonicalImage:
    """Convert an image of 8-bit values to 1 or 3 channels as Pillow does on 8-bit images.

    RGB to grayscale is Pillow's ``convert("L")`` (ITU-R 601-2 weights in fixed point, rounded to
    an 8-bit level), what a PIL pipeline (``Image.open(f).convert("L")``) gives; grayscale is
    replicated to RGB, which is exact either way (:func:`to_channels` keeps the luminance
    unrounded).

    Parameters
    ----------
    image : ndarray, shape (H, W, C), float32
        Values integers in ``[0, 255]``.
    channels : {1, 3}

    Returns
    -------
    ndarray, shape (H, W, channels), float32
        Integer values in ``[0, 255]``.

    Raises
    ------
    ValueError
        ``image`` holds other values than integers in ``[0, 255]``.
    ImageReadError
        Another channel conversion than 1 <-> 3.
    """
    if image.shape[2] == 3 and channels == 1:
        u8 = _uint8_or_refuse(image, "to_channels_8bit")
        gray = Image.fromarray(np.ascontiguousarray(u8)).convert("L")
        return np.asarray(gray, dtype=np.float32)[:, :, None]
    return to_channels(image, channels)


def resize_8bit(image: CanonicalImage, size: tuple[int, int]) -> CanonicalImage:
    """Resize an image of 8-bit values with Pillow's bilinear filter on the 8-bit image.

    Mode ``"L"`` for grayscale, ``"RGB"`` for colour: bit for bit what PIL and torchvision
    pipelines give (``Image.open(f).convert("L").resize((W, H), Image.BILINEAR)``,
    ``torchvision.transforms.Resize`` on a PIL image), antialiased when shrinking, each output
    pixel rounded to an 8-bit level (Pillow computes in fixed point). :func:`resize` computes the
    same filter in float, without that rounding.

    Parameters
    ----------
    image : ndarray, shape (H, W, C), float32
        ``C`` is 1 or 3; values integers in ``[0, 255]``.
    size : (height, width)

    Returns
    -------
    ndarray, shape (height, width, C), float32
        Integer values in ``[0, 255]``; ``image`` itself when it already has that size.

    Raises
    ------
    ValueError
        ``image`` holds other values than integers in ``[0, 255]``, or has neither 1 nor 3
        channels.
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    if image.shape[2] not in (1, 3):
        raise ValueError(f"resize_8bit needs 1 or 3 channels, got {image.shape[2]}")
    u8 = _uint8_or_refuse(image, "resize_8bit")
    pil = Image.fromarray(np.ascontiguousarray(u8[:, :, 0] if u8.shape[2] == 1 else u8))
    out = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    return out[:, :, None] if out.ndim == 2 else out
