"""Tests of informer_audit.images: files -> canonical float32 (H, W, C) arrays on the 8-bit scale.

Every file is written by the tests themselves (Pillow / tifffile / numpy) under ``tmp_path``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import tifffile
from PIL import Image

from informer_audit import images
from informer_audit.errors import ImageReadError, InformerAuditError
from informer_audit.images import (
    IMAGE_SUFFIXES,
    find_images,
    load_image,
    resize,
    scan_folder,
    to_channels,
)

S16 = 255.0 / 65535.0  # the documented 16-bit -> 8-bit scale

# Small hand-made pixel tables, (H, W) = (3, 4) unless said otherwise.
GRAY8 = np.array([[0, 1, 2, 3], [100, 127, 128, 200], [252, 253, 254, 255]], dtype=np.uint8)
GRAY16 = np.array(
    [[0, 1, 257, 1000], [32767, 32768, 40000, 50000], [65280, 65534, 65535, 12345]],
    dtype=np.uint16,
)
RGB8 = np.stack([GRAY8, 255 - GRAY8, np.full_like(GRAY8, 7)], axis=2)  # three distinct channels
RGB16 = np.stack([GRAY16, 65535 - GRAY16, np.full_like(GRAY16, 300)], axis=2)
ALPHA8 = np.array([[0, 0, 255, 255], [1, 128, 200, 255], [0, 50, 100, 150]], dtype=np.uint8)
BITS = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 0, 0]], dtype=bool)
FLOAT01 = np.array(
    [[0.0, 0.25, 0.5, 1.0], [0.1, 0.2, 0.3, 0.4], [0.999, 0.001, 0.75, 0.6]], dtype=np.float32
)
# Palette: index 0 -> red, 1 -> green, 2 -> blue, 3 -> mid grey.
PALETTE = [255, 0, 0, 0, 255, 0, 0, 0, 255, 128, 128, 128]
INDICES = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [0, 0, 3, 3]], dtype=np.uint8)


def scaled16(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.float64) * S16).astype(np.float32)


def hwc(a: np.ndarray) -> np.ndarray:
    """Expected canonical array: float32, (H, W, C)."""
    a = np.asarray(a, dtype=np.float32)
    return a[:, :, None] if a.ndim == 2 else a


def blocks(values: list[list[int]], block: int = 8) -> np.ndarray:
    """Constant ``block`` x ``block`` tiles (JPEG-friendly: no edge inside a DCT block)."""
    return np.kron(np.array(values, dtype=np.uint8), np.ones((block, block), dtype=np.uint8))


def blocks_rgb(colours: list[list[tuple[int, int, int]]], block: int = 8) -> np.ndarray:
    arr = np.array(colours, dtype=np.uint8)  # (h, w, 3)
    return np.stack([blocks(arr[:, :, c].tolist(), block) for c in range(3)], axis=2)


# --- writers: each takes the target path and writes one file ---------------------------------


def save_pil(array: np.ndarray, mode: str | None = None, **kw) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        im = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
        im.save(path, **kw)

    return write


def save_tiff(array: np.ndarray, **kw) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        tifffile.imwrite(path, array, **kw)

    return write


def save_palette(gray_palette: bool = False, transparency: int | None = None):
    def write(path: Path) -> None:
        im = Image.fromarray(INDICES, "P")
        im.putpalette([v for i in range(4) for v in (i * 60,) * 3] if gray_palette else PALETTE)
        if transparency is None:
            im.save(path)
        else:
            im.save(path, transparency=transparency)

    return write


def save_cmyk_jpeg(path: Path) -> None:
    # 2 x 2 tiles: red, green / blue, black (CMYK), each 8 x 8 so JPEG blocks are constant.
    cmyk = [[(0, 255, 255, 0), (255, 0, 255, 0)], [(255, 255, 0, 0), (0, 0, 0, 255)]]
    arr = np.array(cmyk, dtype=np.uint8)
    tiles = np.stack([blocks(arr[:, :, c].tolist()) for c in range(4)], axis=2)
    Image.fromarray(tiles, "CMYK").save(path, quality=100)


def save_multipage_tiff(path: Path) -> None:
    with tifffile.TiffWriter(path) as tif:
        tif.write(GRAY16)
        tif.write(65535 - GRAY16)


# --- loading: one table of files that load, with the array they must give ---------------------


class Good(NamedTuple):
    name: str  # file name (its suffix picks the format)
    write: Callable[[Path], None]
    expected: np.ndarray  # canonical (H, W, C) float32
    atol: float = 0.0  # > 0 only for lossy formats and float rounding


CMYK_RGB = blocks_rgb([[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (0, 0, 0)]])
JPEG_GRAY = blocks([[0, 60, 120], [180, 240, 255]])
JPEG_RGB = blocks_rgb([[(250, 10, 10), (10, 250, 10)], [(10, 10, 250), (200, 200, 40)]])
PALETTE_RGB = np.array(PALETTE, dtype=np.uint8).reshape(4, 3)[INDICES]

GOOD = [
    # 8-bit grayscale keeps its values exactly, in every lossless container.
    Good("gray8.png", save_pil(GRAY8), hwc(GRAY8)),
    Good("gray8.bmp", save_pil(GRAY8), hwc(GRAY8)),
    Good("gray8.tif", save_tiff(GRAY8), hwc(GRAY8)),
    Good("gray8_upper.PNG", save_pil(GRAY8), hwc(GRAY8)),
    Good("gray8_upper.TIFF", save_tiff(GRAY8), hwc(GRAY8)),
    # 16-bit grayscale: x * 255 / 65535 (65535 -> 255, 0 -> 0).
    Good("gray16.png", save_pil(GRAY16), hwc(scaled16(GRAY16)), 1e-4),
    Good("gray16.tif", save_tiff(GRAY16), hwc(scaled16(GRAY16)), 1e-4),
    Good("gray16_big_endian.tif", save_tiff(GRAY16.astype(">u2")), hwc(scaled16(GRAY16)), 1e-4),
    # 16-bit RGB TIFF: three distinct channels, each scaled.
    Good("rgb16.tif", save_tiff(RGB16, photometric="rgb"), scaled16(RGB16), 1e-4),
    Good(
        "rgb16_planar.tif",
        save_tiff(np.moveaxis(RGB16, 2, 0), photometric="rgb", planarconfig="separate"),
        scaled16(RGB16),
        1e-4,
    ),
    Good("rgb8.tif", save_tiff(RGB8, photometric="rgb"), hwc(RGB8)),
    # Float TIFF in [0, 1] -> x 255.
    Good("float01.tif", save_tiff(FLOAT01), hwc(FLOAT01 * np.float32(255.0)), 1e-4),
    Good("float64.tif", save_tiff(FLOAT01.astype(np.float64)), hwc(FLOAT01 * 255.0), 1e-3),
    # MINISWHITE TIFF: inverted so that bright = dense.
    Good("white8.tif", save_tiff(GRAY8, photometric="miniswhite"), hwc(255 - GRAY8)),
    Good(
        "white16.tif",
        save_tiff(GRAY16, photometric="miniswhite"),
        hwc(scaled16(65535 - GRAY16)),
        1e-4,
    ),
    Good(
        "white_float.tif",
        save_tiff(FLOAT01, photometric="miniswhite"),
        hwc((1 - FLOAT01) * np.float32(255.0)),
        1e-4,
    ),
    Good("white1bit.tif", save_tiff(BITS, photometric="miniswhite"), hwc(~BITS * 255.0)),
    # RGB: distinct channels are kept; identical channels collapse to one.
    Good("rgb8.png", save_pil(RGB8), hwc(RGB8)),
    Good("rgb8.bmp", save_pil(RGB8), hwc(RGB8)),
    Good("rgb_gray.png", save_pil(np.stack([GRAY8] * 3, axis=2)), hwc(GRAY8)),
    Good("rgb_gray.tif", save_tiff(np.stack([GRAY8] * 3, axis=2), photometric="rgb"), hwc(GRAY8)),
    # Alpha is dropped, and the colour under alpha 0 is kept as stored (no premultiplying).
    Good("rgba.png", save_pil(np.dstack([RGB8, ALPHA8]), "RGBA"), hwc(RGB8)),
    Good("rgba_gray.png", save_pil(np.dstack([GRAY8] * 3 + [ALPHA8]), "RGBA"), hwc(GRAY8)),
    Good("la.png", save_pil(np.dstack([GRAY8, ALPHA8]), "LA"), hwc(GRAY8)),
    Good(
        "rgba16.tif",
        save_tiff(
            np.dstack([RGB16, RGB16[:, :, :1]]), photometric="rgb", extrasamples=["unassalpha"]
        ),
        scaled16(RGB16),
        1e-4,
    ),
    # Palette images -> RGB (a grey palette -> 1 channel; a transparent entry is dropped).
    Good("palette.png", save_palette(), hwc(PALETTE_RGB)),
    Good("palette.bmp", save_palette(), hwc(PALETTE_RGB)),
    Good("palette_gray.png", save_palette(gray_palette=True), hwc(INDICES * 60)),
    Good("palette_transparent.png", save_palette(transparency=0), hwc(PALETTE_RGB)),
    # 1-bit -> 0 / 255 grayscale.
    Good("bits.png", save_pil(BITS), hwc(BITS * 255.0)),
    Good("bits.bmp", save_pil(BITS), hwc(BITS * 255.0)),
    Good("bits.tif", save_tiff(BITS, photometric="minisblack"), hwc(BITS * 255.0)),
    Good("bits_pillow.tif", save_pil(BITS), hwc(BITS * 255.0)),
    # tifffile writes bool as MINISWHITE by default: a set bit is black there.
    Good("bits_default.tif", save_tiff(BITS), hwc(~BITS * 255.0)),
    # JPEG (lossy: constant 8 x 8 tiles at quality 100 come back within a few levels).
    Good("gray.jpg", save_pil(JPEG_GRAY, quality=100), hwc(JPEG_GRAY), 2.0),
    Good("rgb.jpeg", save_pil(JPEG_RGB, quality=100, subsampling=0), hwc(JPEG_RGB), 3.0),
    Good("cmyk.jpg", save_cmyk_jpeg, hwc(CMYK_RGB), 3.0),
    # Pillow reads by content, not by suffix: a PNG named .jpg loads as the PNG it is.
    Good("really_png.jpg", save_pil(RGB8, format="PNG"), hwc(RGB8)),
]


@pytest.mark.parametrize("case", GOOD, ids=[c.name for c in GOOD])
def test_load_image(tmp_path: Path, case: Good) -> None:
    path = tmp_path / case.name
    case.write(path)
    out = load_image(path)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    assert out.shape == case.expected.shape
    assert out.min() >= 0.0 and out.max() <= 255.0
    np.testing.assert_allclose(out, case.expected, rtol=0, atol=case.atol)
    if case.atol == 0.0:
        np.testing.assert_array_equal(out, case.expected)


def test_load_image_accepts_str_path(tmp_path: Path) -> None:
    path = tmp_path / "gray8.png"
    save_pil(GRAY8)(path)
    np.testing.assert_array_equal(load_image(str(path)), hwc(GRAY8))


@pytest.mark.parametrize("name", ["gray16.png", "gray16.tif"])
def test_16_bit_scale_endpoints(tmp_path: Path, name: str) -> None:
    """65535 -> 255.0 and 0 -> 0.0 exactly; a mid value is scaled by 255/65535."""
    path = tmp_path / name
    values = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    if name.endswith(".png"):
        Image.fromarray(values).save(path)
    else:
        tifffile.imwrite(path, values)
    out = load_image(path)[:, :, 0]
    assert out[0, 0] == 0.0
    assert out[0, 1] == 255.0
    assert out[1, 0] == pytest.approx(32768 * 255 / 65535, abs=1e-4)  # 127.5019...
    assert out[1, 1] == pytest.approx(1000 * 255 / 65535, abs=1e-4)  # 3.8910...


# --- refusals: ImageReadError naming the file ---------------------------------------------------


def write_bytes(data: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(data)

    return write


def truncated(writer: Callable[[Path], None]) -> Callable[[Path], None]:
    """The first half of the file ``writer`` makes."""

    def write(path: Path) -> None:
        writer(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return write


NOISE = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)  # does not compress


class Bad(NamedTuple):
    name: str
    write: Callable[[Path], None] | None  # None: no file at all
    fragment: str  # a piece of the message besides the path


BAD = [
    Bad("missing.png", None, "not found"),
    Bad("missing.tif", None, "not found"),
    Bad("empty.png", write_bytes(b""), "empty"),
    Bad("empty.tif", write_bytes(b""), "empty"),
    Bad("empty.jpg", write_bytes(b""), "empty"),
    Bad("truncated.png", truncated(save_pil(NOISE)), "cannot read"),
    Bad("truncated.jpg", truncated(save_pil(NOISE, quality=95)), "cannot read"),
    Bad("truncated.tif", truncated(save_tiff(NOISE)), "cannot read"),
    Bad("text.png", write_bytes(b"this is not an image\n" * 10), "cannot read"),
    Bad("text.tif", write_bytes(b"this is not an image\n" * 10), "cannot read"),
    Bad("one_pixel.png", save_pil(np.array([[7]], dtype=np.uint8)), "too small"),
    Bad("one_row.png", save_pil(np.zeros((1, 5), dtype=np.uint8)), "too small"),
    Bad("one_column.tif", save_tiff(np.zeros((5, 1), dtype=np.uint16)), "too small"),
    Bad("float_above_1.tif", save_tiff(FLOAT01 * np.float32(1.5)), "[0, 1]"),
    Bad("float_negative.tif", save_tiff(FLOAT01 - np.float32(0.5)), "[0, 1]"),
    Bad("float_nan.tif", save_tiff(np.where(FLOAT01 > 0.5, np.nan, FLOAT01)), "finite"),
    Bad("uint32_big.tif", save_tiff(GRAY16.astype(np.uint32) + 70000), "[0, 65535]"),
    Bad("int16_negative.tif", save_tiff(GRAY8.astype(np.int16) - 10), "[0, 65535]"),
    Bad("complex.tif", save_tiff(FLOAT01.astype(np.complex64)), "unsupported pixel type"),
    # Several frames are refused in every format (was: a TIFF's first page, silently).
    Bad("multipage.tif", save_multipage_tiff, "multi-frame TIFF (2 frames) is not supported"),
]


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_load_image_refuses(tmp_path: Path, case: Bad) -> None:
    path = tmp_path / case.name
    if case.write is not None:
        case.write(path)
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message
    assert case.fragment in message


def test_load_image_refuses_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageReadError, match="not found") as info:
        load_image(folder)
    assert str(folder) in str(info.value)


def test_image_read_error_is_a_value_error() -> None:
    assert issubclass(ImageReadError, ValueError)
    assert issubclass(ImageReadError, InformerAuditError)


@pytest.mark.parametrize(
    "name, writer",
    [
        ("big.png", save_pil(NOISE)),
        ("big.jpg", save_pil(NOISE)),
        ("big.bmp", save_pil(NOISE)),
        ("big.tif", save_tiff(NOISE)),
        ("big_rgb.tif", save_tiff(np.stack([NOISE] * 3, axis=2), photometric="rgb")),
        (
            "big_planar.tif",
            save_tiff(np.stack([NOISE] * 3), photometric="rgb", planarconfig="separate"),
        ),
    ],
)
def test_decompression_bomb_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, writer: Callable[[Path], None]
) -> None:
    """More pixels than MAX_PIXELS are refused before decoding (64 x 64 = 4096 > 1000)."""
    path = tmp_path / name
    writer(path)
    assert load_image(path).shape[:2] == (64, 64)  # fine under the real limit
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageReadError, match="decompression bomb") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "64x64" in str(info.value)


@pytest.mark.parametrize("limit", [3000, 1500])  # warning zone, then error zone (> 2 x limit)
def test_pillow_bomb_guard_is_an_image_read_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """Pillow's own guard (warning escalated to error, or its error) also becomes ImageReadError."""
    path = tmp_path / "big.png"
    save_pil(NOISE)(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageReadError, match="decompression bomb") as info:
        load_image(path)
    assert str(path) in str(info.value)
    # The warning filter is local to the loader: nothing leaks to the caller's filters.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not any(
            f[0] == "error" and f[2] is Image.DecompressionBombWarning for f in warnings.filters
        )


# --- find_images ----------------------------------------------------------------------------


def touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # In the format its suffix names (PNG content for the files that must be ignored).
    known = path.suffix.lower() in IMAGE_SUFFIXES
    Image.fromarray(GRAY8).save(path, format=None if known else "PNG")
    return path


def test_find_images_recursive_sorted_filtered(tmp_path: Path) -> None:
    root = tmp_path / "root"
    names = [
        "b.png",
        "a.JPG",
        "A_upper.PNG",
        "a/z.tif",
        "a/sub/deep.jpeg",
        "a.png",
        "c.bmp",
        "d.TIFF",
        "e.jpg",
    ]
    for name in names:
        touch_image(root / name)
    # Images by content whatever their names (PNG inside), as load_image reads them: the
    # folder audit decides like calibrate (was: skipped, silently, for their suffix).
    by_content = ["scan.nii", "archive.png.gz", "no_suffix"]
    for name in by_content:
        touch_image(root / name)
    hidden = [".hidden.png", ".hidden_dir/x.png", "a/.also_hidden.jpg"]
    for name in hidden:
        touch_image(root / name)
    (root / "notes.txt").write_text("not an image\n")
    found = find_images(root)
    rel = [p.relative_to(root).as_posix() for p in found]
    assert rel == sorted(names + by_content)  # sorted by relative path (posix, case-sensitive)
    assert rel == [
        "A_upper.PNG",
        "a.JPG",
        "a.png",
        "a/sub/deep.jpeg",
        "a/z.tif",
        "archive.png.gz",
        "b.png",
        "c.bmp",
        "d.TIFF",
        "e.jpg",
        "no_suffix",
        "scan.nii",
    ]
    skipped = {p.relative_to(root).as_posix(): why for p, why in scan_folder(root).skipped}
    assert sorted(skipped) == sorted([*hidden, "notes.txt"])  # every other file, with why
    assert skipped["notes.txt"].startswith("not an image")
    assert skipped[".hidden_dir/x.png"].startswith("in a hidden folder")
    assert skipped["a/.also_hidden.jpg"].startswith("hidden file")
    assert all(p.is_absolute() == root.is_absolute() and p.is_file() for p in found)
    assert find_images(str(root)) == found  # str accepted, same answer, deterministic
    for p in found:  # everything found loads
        assert load_image(p).shape == (3, 4, 1)


def test_find_images_suffixes() -> None:
    assert IMAGE_SUFFIXES == {
        *(".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom")
    }


def test_find_images_empty_folder(tmp_path: Path) -> None:
    assert find_images(tmp_path) == []


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_find_images_not_a_folder(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "nowhere"
    if kind == "file":
        target = touch_image(tmp_path / "single.png")
    with pytest.raises(ImageReadError, match="not a folder") as info:
        find_images(target)
    assert str(target) in str(info.value)


# --- to_channels ----------------------------------------------------------------------------


def test_to_channels_gray_to_rgb_replicates() -> None:
    gray = hwc(GRAY8)
    rgb = to_channels(gray, 3)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], gray[:, :, 0])


def test_to_channels_rgb_to_gray_weights() -> None:
    # 0.299 * 100 + 0.587 * 200 + 0.114 * 50 = 29.9 + 117.4 + 5.7 = 153.0
    # 0.299 * 255 = 76.245;  0.587 * 255 = 149.685;  0.114 * 255 = 29.07;  white stays 255.
    rgb = np.array(
        [[[100, 200, 50], [255, 0, 0]], [[0, 255, 0], [0, 0, 255]], [[255, 255, 255], [0, 0, 0]]],
        dtype=np.float32,
    )
    gray = to_channels(rgb, 1)
    assert gray.shape == (3, 2, 1) and gray.dtype == np.float32
    expected = np.array([[153.0, 76.245], [149.685, 29.07], [255.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(gray[:, :, 0], expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("channels", [1, 3])
def test_to_channels_identity(channels: int) -> None:
    image = np.zeros((2, 3, channels), dtype=np.float32)
    assert to_channels(image, channels) is image


@pytest.mark.parametrize("have, want", [(1, 2), (3, 4), (2, 3), (4, 1)])
def test_to_channels_refuses_other_counts(have: int, want: int) -> None:
    with pytest.raises(ImageReadError, match="channel"):
        to_channels(np.zeros((2, 2, have), dtype=np.float32), want)


# --- resize ---------------------------------------------------------------------------------

RESIZES = [
    ((20, 30), (10, 12)),  # shrink (antialiased)
    ((7, 9), (16, 20)),  # enlarge
    ((13, 17), (13, 40)),  # one axis only
    ((32, 32), (5, 5)),
]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("src, dst", RESIZES, ids=[f"{s}->{d}" for s, d in RESIZES])
def test_resize_matches_pillow_bilinear(
    channels: int, src: tuple[int, int], dst: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(src) + sum(dst) + channels)
    shape = (*src, channels) if channels == 3 else src
    u8 = rng.integers(0, 256, shape, dtype=np.uint8)
    ref = np.asarray(
        Image.fromarray(u8).resize((dst[1], dst[0]), Image.Resampling.BILINEAR), dtype=np.float32
    )
    out = resize(hwc(u8), dst)
    assert out.shape == (*dst, channels) and out.dtype == np.float32
    # Pillow's 8-bit path rounds in fixed point (and between its two passes), so the float
    # result may round to a neighbouring level: within one level, never more.
    assert np.abs(np.round(out) - hwc(ref)).max() <= 1.0
    assert np.abs(out - hwc(ref)).max() < 1.0
    # Against Pillow's float ("F") path, channel by channel, it is the same computation.
    for c in range(channels):
        plane = Image.fromarray(hwc(u8)[:, :, c].copy())
        f_ref = np.asarray(plane.resize((dst[1], dst[0]), Image.Resampling.BILINEAR))
        np.testing.assert_allclose(out[:, :, c], f_ref, rtol=0, atol=1e-4)


def test_resize_identity_when_size_matches() -> None:
    image = hwc(RGB8)
    assert resize(image, (3, 4)) is image


def test_resize_constant_stays_constant() -> None:
    image = np.full((9, 11, 3), 123.25, dtype=np.float32)
    out = resize(image, (4, 20))
    np.testing.assert_allclose(out, 123.25, rtol=0, atol=1e-3)
