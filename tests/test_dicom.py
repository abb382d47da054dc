"""DICOM input: modality LUT, VOI LUT / window, MONOCHROME1, colour, and what is refused.

Every file is written by the tests with pydicom (Explicit VR Little Endian unless said), and
every expected value is worked out by hand from the DICOM formulas (PS3.3 C.11.1, C.11.2).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from conftest import write_dicom
from informer_audit import images
from informer_audit.errors import ImageReadError
from informer_audit.images import find_images, is_dicom, load_image

GRAY12 = np.array([[0, 749, 1000], [1249, 1250, 4095]], dtype=np.uint16)
SIGNED = np.array([[0, 500], [1000, -3000]], dtype=np.int16)
RGB = (np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 13) % 251


def voi_lut(descriptor: list[int], data: list[int]) -> list[Dataset]:
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)  # LUT Descriptor: entries, first mapped, bits
    item.add_new(0x00283006, "US", data)  # LUT Data
    return [item]


def narrow_window(x: np.ndarray) -> np.ndarray:
    """LINEAR window, centre 1000, width 501: C11.2.1.2.1 with c - 0.5 and w - 1."""
    unit = (x.astype(np.float64) - 999.5) / 500 + 0.5
    unit = np.where(x <= 749.5, 0.0, np.where(x > 1249.5, 1.0, unit))
    return unit * 255


def rescaled_window(x: np.ndarray) -> np.ndarray:
    """Rescale 2x - 1000, then LINEAR window centre 0, width 2000 (output range irrelevant)."""
    v = 2.0 * x - 1000
    unit = (v + 0.5) / 1999 + 0.5
    unit = np.where(v <= -1000, 0.0, np.where(v > 999, 1.0, unit))
    return unit * 255


class Good(NamedTuple):
    id: str
    name: str
    write: Callable[[Path], Path]
    expected: np.ndarray  # canonical (H, W, C)
    atol: float = 1e-3


def dcm(pixels: np.ndarray | None, **kw) -> Callable[[Path], Path]:
    return lambda path: write_dicom(path, pixels, **kw)


GOOD = [
    Good(
        "full-window-is-identity",
        "a.dcm",
        dcm(GRAY12, bits_stored=12, WindowCenter=2048, WindowWidth=4096),
        (GRAY12 * (255 / 4095))[:, :, None],
    ),
    Good(
        "monochrome1-inverted",
        "inverted.dcm",
        dcm(GRAY12, photometric="MONOCHROME1", bits_stored=12, WindowCenter=2048, WindowWidth=4096),
        (255 - GRAY12 * (255 / 4095))[:, :, None],
    ),
    Good(
        "narrow-window",
        "window.dcm",
        dcm(GRAY12, bits_stored=12, WindowCenter=1000, WindowWidth=501),
        narrow_window(GRAY12)[:, :, None],
    ),
    Good(
        "rescale-then-window",
        "ct.dcm",
        dcm(SIGNED, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=2000),
        rescaled_window(SIGNED)[:, :, None],
    ),
    Good(
        # Entries 0, 50, 100, 200 for inputs 0..3 (4 and above take the last entry): the
        # display range is the LUT's own, 0..200.
        "voi-lut-sequence",
        "lut.dcm",
        dcm(
            np.array([[0, 1], [2, 3], [5, 1]], dtype=np.uint8),
            VOILUTSequence=voi_lut([4, 0, 8], [0, 50, 100, 200]),
        ),
        (np.array([[0, 50], [100, 200], [200, 50]]) * (255 / 200))[:, :, None],
    ),
    Good(
        # A VOI LUT wins over a window when both are present (pydicom's prefer_lut).
        "voi-lut-beats-window",
        "both.dcm",
        dcm(
            np.array([[0, 1], [2, 3]], dtype=np.uint8),
            VOILUTSequence=voi_lut([4, 0, 8], [0, 50, 100, 200]),
            WindowCenter=1,
            WindowWidth=2,
        ),
        (np.array([[0, 50], [100, 200]]) * (255 / 200))[:, :, None],
    ),
    Good(
        "no-voi-uses-image-range",
        "plain.dcm",
        dcm(np.array([[100, 300], [500, 200]], dtype=np.uint16)),
        ((np.array([[100, 300], [500, 200]]) - 100) * (255 / 400))[:, :, None],
    ),
    Good("rgb", "rgb.dcm", dcm(RGB, photometric="RGB"), RGB.astype(np.float32), 0.0),
    Good(
        # Found by content: a DICOM named .png is read as DICOM.
        "dicom-named-png",
        "really_dicom.png",
        dcm(GRAY12, bits_stored=12, WindowCenter=2048, WindowWidth=4096),
        (GRAY12 * (255 / 4095))[:, :, None],
    ),
    Good(
        # A .dcm data set without the 128-byte preamble and 'DICM' marker.
        "no-preamble",
        "bare.dcm",
        dcm(GRAY12, bits_stored=12, WindowCenter=2048, WindowWidth=4096, preamble=False),
        (GRAY12 * (255 / 4095))[:, :, None],
    ),
]


@pytest.mark.parametrize("case", GOOD, ids=[c.id for c in GOOD])
def test_dicom_reads_to_the_canonical_convention(tmp_path: Path, case: Good) -> None:
    path = case.write(tmp_path / case.name)
    image = load_image(path)
    assert image.dtype == np.float32
    assert image.shape == case.expected.shape
    np.testing.assert_allclose(image, case.expected, atol=case.atol)


def test_monochrome1_is_the_negative_of_monochrome2(tmp_path: Path) -> None:
    pixels = np.array([[0, 10, 20], [30, 40, 4000]], dtype=np.uint16)
    m2 = load_image(write_dicom(tmp_path / "m2.dcm", pixels))
    m1 = load_image(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    np.testing.assert_allclose(m1, 255 - m2, atol=1e-4)


class Bad(NamedTuple):
    id: str
    write: Callable[[Path], object]
    fragment: str


def truncated(path: Path) -> None:
    write_dicom(path, GRAY12)
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # the end of the pixel data is missing


def header_only(path: Path) -> None:
    write_dicom(path, GRAY12)
    path.write_bytes(path.read_bytes()[:200])  # cut inside the meta information


BAD = [
    Bad("no-pixel-data", dcm(None), "has no pixel data"),
    Bad("cut-before-pixels", header_only, "has no pixel data"),
    Bad("pixel-data-truncated", truncated, "cannot decode the DICOM pixel data"),
    Bad(
        "multi-frame",
        dcm(np.zeros((8, 4), dtype=np.uint8), NumberOfFrames=2, Rows=4),
        "multi-frame DICOM (2 frames) is not supported",
    ),
    Bad(
        "undecodable-jpeg",
        dcm(np.zeros((4, 4), dtype=np.uint8), transfer_syntax=JPEGBaseline8Bit),
        "needs a decoder plug-in",
    ),
    Bad(
        "undecodable-rle",
        dcm(np.zeros((4, 4), dtype=np.uint8), transfer_syntax=RLELossless),
        "cannot decode the DICOM pixel data (transfer syntax RLE Lossless)",
    ),
    Bad(
        "unsupported-photometric",
        dcm(np.zeros((4, 4), dtype=np.uint8), PhotometricInterpretation="HSV"),
        "photometric interpretation 'HSV' is not supported",
    ),
    Bad(
        "text-named-dcm",
        lambda path: path.write_text("PatientName,Doe^John\n" * 20),
        "has no pixel data",
    ),
    Bad(
        "zero-window-width",
        dcm(GRAY12, WindowCenter=100, WindowWidth=0),
        "cannot apply the DICOM display transforms",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_unreadable_dicom_is_refused_with_the_reason(tmp_path: Path, case: Bad) -> None:
    path = tmp_path / "x.dcm"
    case.write(path)
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert case.fragment in str(info.value)


def test_dicom_pixel_limit_is_checked_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_dicom(tmp_path / "big.dcm", np.zeros((40, 30), dtype=np.uint8))
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageReadError, match=r"30x40 pixels exceeds .* decompression bomb"):
        load_image(path)


def test_find_images_collects_dicom_by_suffix_and_by_marker(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", GRAY12)
    write_dicom(tmp_path / "B.DICOM", GRAY12)
    uid_named = write_dicom(tmp_path / "1.2.840.10008.5.1.4.1", GRAY12)  # suffix ".1"
    write_dicom(tmp_path / "noext", GRAY12)
    (tmp_path / "notes.txt").write_text("DICM, not at byte 128\n" * 20)
    found = [p.name for p in find_images(tmp_path)]
    assert found == ["1.2.840.10008.5.1.4.1", "B.DICOM", "a.dcm", "noext"]
    assert is_dicom(uid_named) and not is_dicom(tmp_path / "notes.txt")
    assert not is_dicom(tmp_path / "missing")
