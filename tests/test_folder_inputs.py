"""Every file under --images is audited or listed as skipped, and every format is read alike.

Tables: EXIF/TIFF orientations 1-8 (loaded as displayed); folder layouts (symlink loops, links
out of the folder, dangling links, hidden and non-image files) -> audited and skipped sets;
multi-frame files in every format -> the same refusal; the pixel limit in every format. Then
the principle, through ``flag``: for a folder of mixed files, the CSV rows and the skipped list
together name every file under it (``os.walk``), each once.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from conftest import calibrate, flag, labelled_folder, write_dicom, write_images
from informer_audit import images
from informer_audit.errors import ImageReadError
from informer_audit.images import load_image, scan_folder

RNG = np.random.default_rng(0)
UPRIGHT = RNG.integers(0, 256, (6, 10), dtype=np.uint8)  # 6 rows, 10 columns: not square
UPRIGHT_RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)
NOISE = RNG.integers(0, 256, (24, 24), dtype=np.uint8)

# What a file with orientation o stores so that it displays as UPRIGHT (EXIF: the stored
# image's 0th row/column are the displayed ...): the inverse of each display transform.
STORED: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, 1),  # displayed = rotated 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, -1),  # displayed = rotated 90 degrees counter-clockwise
}


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags


def as_loaded(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    return a[:, :, None] if a.ndim == 2 else a


# --- orientation: all 8 values, lossless formats exactly ------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["png", "webp", "tif-pillow", "tif-tifffile"])
def test_orientation_is_applied_as_displayed(tmp_path: Path, fmt: str, orientation: int) -> None:
    stored = np.ascontiguousarray(STORED[orientation](UPRIGHT_RGB))
    path = tmp_path / f"o{orientation}.{fmt.split('-')[0]}"
    if fmt == "tif-tifffile":  # read through tifffile: TIFF tag 274
        tifffile.imwrite(path, stored, photometric="rgb", extratags=[(274, "H", 1, orientation)])
    else:
        kw = {"lossless": True} if fmt == "webp" else {}
        Image.fromarray(stored).save(path, exif=exif(orientation), **kw)
    out = load_image(path)
    np.testing.assert_array_equal(out, as_loaded(UPRIGHT_RGB))
    with Image.open(path) as im:  # what every viewer shows
        np.testing.assert_array_equal(out, as_loaded(np.asarray(ImageOps.exif_transpose(im))))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_orientation_transposes_the_decoded_pixels(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(np.ascontiguousarray(STORED[orientation](UPRIGHT))).save(
        path, exif=exif(orientation), quality=95
    )
    with Image.open(path) as im:
        decoded = np.asarray(im)  # the stored pixels, as decoded (lossy)
        shown = np.asarray(ImageOps.exif_transpose(im))
    out = load_image(path)
    inverse = {6: 8, 8: 6}.get(orientation, orientation)  # each other transform is its own inverse
    np.testing.assert_array_equal(out, as_loaded(STORED[inverse](decoded)))
    np.testing.assert_array_equal(out, as_loaded(shown))
    assert out.shape[:2] == UPRIGHT.shape


@pytest.mark.parametrize("value", [0, 9, 300])
def test_orientation_outside_1_to_8_means_as_stored(tmp_path: Path, value: int) -> None:
    path = tmp_path / "odd.png"
    Image.fromarray(UPRIGHT).save(path, exif=exif(value))
    np.testing.assert_array_equal(load_image(path), as_loaded(UPRIGHT))


# --- folder layouts -> audited and skipped ----------------------------------------------------
def png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(
        path, format="PNG"
    )


def link(path: Path, target: str | Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.symlink_to(target)
    except OSError as exc:  # pragma: no cover - platforms without symlinks
        pytest.skip(f"cannot create a symlink here: {exc}")


class Layout(NamedTuple):
    id: str
    build: Callable[[Path], None]  # gets tmp_path; the audited folder is tmp_path / "root"
    audited: set[str]  # paths relative to the root
    skipped: dict[str, str]  # relative path -> fragment of the reason


def _loop_to_dot(t: Path) -> None:
    png(t / "root" / "a.png")
    link(t / "root" / "loop", ".")


def _loop_to_parent(t: Path) -> None:
    png(t / "root" / "sub" / "b.png")
    link(t / "root" / "sub" / "up", "..")
    link(t / "root" / "sub" / "deeper" / "up2", "../..")


def _alias_of_a_folder(t: Path) -> None:
    png(t / "root" / "z_real" / "c.png")
    link(t / "root" / "a_alias", "z_real")  # sorts first: the real folder keeps its path


def _link_out(t: Path) -> None:
    png(t / "outside" / "d.png")
    png(t / "root" / "e.png", 1)
    link(t / "root" / "ext", t / "outside")
    link(t / "root" / "ext_again", t / "outside")


def _link_to_an_ancestor(t: Path) -> None:
    png(t / "root" / "f.png")
    png(t / "sibling.png", 2)
    link(t / "root" / "top", t)  # contains root: following it would list root again


def _dangling(t: Path) -> None:
    png(t / "root" / "g.png")
    link(t / "root" / "gone.png", t / "root" / "missing.png")
    link(t / "root" / "self", "self")  # a link to itself: ELOOP


def _file_links(t: Path) -> None:
    png(t / "root" / "h.png")
    link(t / "root" / "copy.png", "h.png")  # two paths, same bytes: both listed


def _non_images(t: Path) -> None:
    root = t / "root"
    png(root / "i.png")
    (root / "labels.csv").write_text("path,A\ni.png,1\n")
    (root / "README.txt").write_text("images of ...\n")
    (root / "empty").write_bytes(b"")
    (root / "noise.bin").write_bytes(NOISE.tobytes())


def _hidden(t: Path) -> None:
    root = t / "root"
    png(root / "j.png")
    png(root / ".hidden.png")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    png(root / ".cache" / "k.png")
    png(root / ".cache" / "deep" / "l.png")


def _by_content(t: Path) -> None:
    root = t / "root"
    root.mkdir()
    Image.fromarray(NOISE).save(root / "anim_named.bin", format="GIF")
    Image.fromarray(NOISE).save(root / "uid.1.2.3", format="WEBP")
    write_dicom(root / "1.2.840.1", NOISE)
    (root / "broken.gif").write_bytes(b"not a gif")  # an image suffix: audited, then fails


def _fifo(t: Path) -> None:
    png(t / "root" / "m.png")
    if not hasattr(os, "mkfifo"):  # pragma: no cover
        pytest.skip("no FIFOs here")
    os.mkfifo(t / "root" / "pipe")


LAYOUTS = [
    Layout("symlink-to-dot", _loop_to_dot, {"a.png"}, {"loop": "contains the audited folder"}),
    Layout(
        "symlink-to-parent",
        _loop_to_parent,
        {"sub/b.png"},
        {"sub/up": "contains the audited folder", "sub/deeper/up2": "contains the audited"},
    ),
    Layout(
        "symlink-alias-of-a-folder",
        _alias_of_a_folder,
        {"z_real/c.png"},
        {"a_alias": "already listed"},
    ),
    Layout(
        "symlink-out-of-the-folder-followed-once",
        _link_out,
        {"e.png", "ext/d.png"},
        {"ext_again": "already listed"},
    ),
    Layout("symlink-to-an-ancestor", _link_to_an_ancestor, {"f.png"}, {"top": "contains"}),
    Layout(
        "dangling-symlinks",
        _dangling,
        {"g.png"},
        {"gone.png": "broken symlink", "self": "broken symlink"},
    ),
    Layout("file-symlink-listed-too", _file_links, {"h.png", "copy.png"}, {}),
    Layout(
        "non-images",
        _non_images,
        {"i.png"},
        {
            "labels.csv": "not an image",
            "README.txt": "not an image",
            "empty": "not an image (empty file)",
            "noise.bin": "not an image",
        },
    ),
    Layout(
        "hidden-counted",
        _hidden,
        {"j.png"},
        {
            ".hidden.png": "hidden file",
            ".DS_Store": "hidden file",
            ".cache/k.png": "in a hidden folder",
            ".cache/deep/l.png": "in a hidden folder",
        },
    ),
    Layout(
        "images-by-content",
        _by_content,
        {"anim_named.bin", "uid.1.2.3", "1.2.840.1", "broken.gif"},
        {},
    ),
    Layout("fifo", _fifo, {"m.png"}, {"pipe": "not a regular file"}),
]


@pytest.mark.parametrize("case", LAYOUTS, ids=[c.id for c in LAYOUTS])
def test_folder_layout(tmp_path: Path, case: Layout) -> None:
    case.build(tmp_path)
    root = tmp_path / "root"
    scan = scan_folder(root)
    audited = [p.relative_to(root).as_posix() for p in scan.images]
    assert sorted(audited) == audited and len(set(audited)) == len(audited)
    assert set(audited) == case.audited
    skipped = {p.relative_to(root).as_posix(): why for p, why in scan.skipped}
    assert set(skipped) == set(case.skipped), skipped
    for rel, fragment in case.skipped.items():
        assert fragment in skipped[rel]


# --- multi-frame files: one refusal in every format --------------------------------------------
def frames_gif(path: Path) -> None:
    Image.fromarray(NOISE).save(path, save_all=True, append_images=[Image.fromarray(255 - NOISE)])


def frames_png(path: Path) -> None:  # APNG
    Image.fromarray(NOISE).save(
        path, format="PNG", save_all=True, append_images=[Image.fromarray(255 - NOISE)]
    )


def frames_webp(path: Path) -> None:
    Image.fromarray(NOISE).save(
        path, save_all=True, append_images=[Image.fromarray(255 - NOISE)], lossless=True
    )


def frames_tiff(path: Path) -> None:
    with tifffile.TiffWriter(path) as tif:
        tif.write(NOISE)
        tif.write(255 - NOISE)


def frames_dicom(path: Path) -> None:
    write_dicom(path, np.vstack([NOISE, NOISE]), NumberOfFrames=2, Rows=24)


MULTI_FRAME = [
    ("cine.gif", frames_gif, "GIF"),
    ("cine.png", frames_png, "PNG"),
    ("cine.webp", frames_webp, "WEBP"),
    ("cine.tif", frames_tiff, "TIFF"),
    ("cine.dcm", frames_dicom, "DICOM"),
]


@pytest.mark.parametrize(("name", "write", "kind"), MULTI_FRAME, ids=[m[2] for m in MULTI_FRAME])
def test_multi_frame_is_refused_alike_in_every_format(
    tmp_path: Path, name: str, write: Callable[[Path], None], kind: str
) -> None:
    path = tmp_path / name
    write(path)
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert str(info.value) == (
        f"{path}: multi-frame {kind} (2 frames) is not supported; expected one image per file "
        "(export the frame to audit as its own file)"
    )


def test_a_tiff_thumbnail_page_is_no_frame(tmp_path: Path) -> None:
    path = tmp_path / "with_thumbnail.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(NOISE)
        tif.write(NOISE[::4, ::4], subfiletype=1)  # reduced-resolution image
    np.testing.assert_array_equal(load_image(path), as_loaded(NOISE))


SINGLE = [
    ("one.gif", lambda p: Image.fromarray(NOISE).save(p)),
    ("one.webp", lambda p: Image.fromarray(NOISE).save(p, lossless=True)),
    ("one.png", lambda p: Image.fromarray(NOISE).save(p)),
    ("one.tif", lambda p: tifffile.imwrite(p, NOISE)),
    ("one.dcm", lambda p: write_dicom(p, NOISE)),
]


@pytest.mark.parametrize(("name", "write"), SINGLE, ids=[s[0] for s in SINGLE])
def test_same_image_same_pixels_and_limit_in_every_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, write: Callable[[Path], None]
) -> None:
    path = tmp_path / name
    write(path)
    out = load_image(path)
    if name != "one.dcm":  # DICOM maps its own [min, max] to [0, 255]
        np.testing.assert_array_equal(out, as_loaded(NOISE))
    monkeypatch.setattr(images, "MAX_PIXELS", 500)  # 24 x 24 = 576 pixels
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert str(info.value) == (
        f"{path}: 24x24 pixels exceeds the limit of 500 pixels (possible decompression bomb)"
    )


def test_pillow_limit_applies_to_every_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application that lowers Pillow's limit gets it for TIFF and DICOM too."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    for name, write in SINGLE[3:]:
        write(tmp_path / name)
        with pytest.raises(ImageReadError, match="exceeds the limit of 500 pixels"):
            load_image(tmp_path / name)


# --- the principle, through flag: every file is a CSV row or a skipped entry -----------------
@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    e = labelled_folder(tmp_path_factory.mktemp("folder_inputs"), n_audit=0, labels_in_val=False)
    e["monitor"] = e["tmp"] / "monitor.json"
    r = calibrate(e, e["monitor"])
    assert r.exit_code == 0, r.output
    return e


def build_mixed(t: Path) -> Path:
    root = t / "mixed"
    write_images(root, 2, seed=3)
    write_images(root / "sub" / "deeper", 1, seed=4)
    Image.fromarray(NOISE).save(root / "frame.webp", lossless=True)
    Image.fromarray(255 - NOISE).save(root / "frame.gif")
    Image.fromarray(np.ascontiguousarray(STORED[6](NOISE))).save(root / "rot.jpg", exif=exif(6))
    write_dicom(root / "1.2.840.5", NOISE // 2)
    frames_gif(root / "cine.gif")  # an image that fails: a CSV row
    (root / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (root / "labels.csv").write_text("path,A\n")
    (root / "sub" / "README.txt").write_text("notes\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    png(root / ".thumbs" / "x.png")
    link(root / "loop", ".")
    link(root / "sub" / "up", "..")
    link(root / "again.png", "img_000.png")
    link(root / "dead.png", "nowhere.png")
    return root


def skipped_lines(output: str, root: Path) -> dict[str, str]:
    """The skipped list flag prints: the indented lines after its heading (failures follow)."""
    prefix, listed, inside = f"  {root}/", {}, False
    for line in output.splitlines():
        if not line.startswith("  "):
            inside = "under --images were skipped" in line
        elif inside and line.startswith(prefix):
            rel, reason = line[len(prefix) :].split(": ", 1)
            listed[rel] = reason
    return listed


def test_every_file_is_a_row_or_skipped_once(tmp_path: Path, monitor: dict[str, Path]) -> None:
    root = build_mixed(tmp_path)
    out = tmp_path / "out" / "flags.csv"
    r = flag(monitor, out, images=root)
    assert r.exit_code == 1, r.output  # two images failed; skipped files alone would be 0
    with out.open(newline="") as fh:
        rows = [Path(row["path"]).relative_to(root).as_posix() for row in csv.DictReader(fh)]
    listed = skipped_lines(r.output, root)
    walked = {  # every file os.walk sees, and the folder links it does not follow
        (Path(d) / n).relative_to(root).as_posix()
        for d, dirs, files in os.walk(root)
        for n in files + [x for x in dirs if (Path(d) / x).is_symlink()]
    }
    assert len(rows) == len(set(rows))  # each once
    assert not set(rows) & set(listed)
    assert set(rows) | set(listed) == walked
    assert "cine.gif" in rows and "truncated.png" in rows  # images that fail are failures
    assert listed == {
        ".DS_Store": "hidden file (name starts with '.')",
        ".thumbs/x.png": "in a hidden folder (a folder name starts with '.')",
        "dead.png": listed["dead.png"],
        "labels.csv": "not an image (its content is no image format that can be read)",
        "loop": listed["loop"],
        "sub/README.txt": "not an image (its content is no image format that can be read)",
        "sub/up": listed["sub/up"],
    }
    assert listed["dead.png"].startswith("broken symlink")
    assert "7 file(s) under --images were skipped" in r.output
    assert "2 file(s) failed" in r.output


def test_skipped_files_alone_keep_exit_code_0(tmp_path: Path, monitor: dict[str, Path]) -> None:
    root = tmp_path / "imgs"
    write_images(root, 2, seed=5)
    (root / "labels.csv").write_text("path,A\n")
    r = flag(monitor, tmp_path / "f.csv", images=root)
    assert r.exit_code == 0, r.output
    assert "1 file(s) under --images were skipped" in r.output and "1 not an image" in r.output
    assert f"{root}/labels.csv: not an image" in r.output


def test_a_folder_of_non_images_names_what_it_skipped(
    tmp_path: Path, monitor: dict[str, Path]
) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "notes.txt").write_text("no images here")
    r = flag(monitor, tmp_path / "f.csv", images=root)
    assert r.exit_code == 2 and "no images found" in r.output
    assert "1 file(s) skipped" in r.output and "notes.txt: not an image" in r.output
