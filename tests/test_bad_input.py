"""The bad-input matrix: every case ends in a clear error or a recorded per-file failure.

Tables, one per kind of input, each row asserting the exact message fragment (exit code 2 for a
refused input) or the failure row's reason (exit code 1: the run finished, some files failed):

* image files in an audited folder (one ``flag`` run over all of them, then one row per case);
* ONNX models (``info`` and ``flag``);
* label CSVs (``calibrate``);
* monitor files (``flag``);
* the run itself (output, folder, resume journal).

All files are built here; a module-scoped fixture calibrates one monitor for all cases.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import pytest
import tifffile
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from pydicom.uid import JPEGBaseline8Bit

from conftest import (
    CARD,
    CLASSES,
    calibrate,
    flag,
    hidden_model,
    invoke,
    labelled_folder,
    read_rows,
    write_dicom,
    write_images,
    write_labels,
)
from informer_audit import model as model_module
from informer_audit.journal import journal_path
from informer_audit.paths import printable


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    e = labelled_folder(tmp_path_factory.mktemp("matrix"))
    e["monitor"] = e["tmp"] / "monitor.json"
    r = calibrate(e, e["monitor"])
    assert r.exit_code == 0, r.output
    return e


# -- 1. image files: one flag run over a folder of odd files, one failure row per bad one --------
def save(array: np.ndarray, mode: str | None = None, **kw: Any) -> Callable[[Path], None]:
    return lambda path: Image.fromarray(array, mode).save(path, **kw)


NOISE = np.random.default_rng(0).integers(0, 256, (24, 24), dtype=np.uint8)
RGB = np.dstack([NOISE, 255 - NOISE, NOISE // 2])


def png_bytes() -> bytes:
    from io import BytesIO

    buf = BytesIO()
    Image.fromarray(NOISE).save(buf, format="PNG")
    return buf.getvalue()


def truncated_png(path: Path) -> None:
    data = png_bytes()
    path.write_bytes(data[: len(data) // 2])


def bomb_png(path: Path) -> None:
    """A 100-byte PNG that claims 30000 x 30000 pixels (900 million: a decompression bomb)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def palette_png(path: Path) -> None:
    im = Image.fromarray((NOISE // 64).astype(np.uint8), "P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    im.save(path)


def cmyk_jpeg(path: Path) -> None:
    Image.fromarray(np.dstack([NOISE, NOISE // 2, 255 - NOISE, NOISE // 3]), "CMYK").save(path)


def dicom(pixels: np.ndarray | None, **kw: Any) -> Callable[[Path], None]:
    return lambda path: write_dicom(path, pixels, **kw) and None


def truncated_dicom(path: Path) -> None:
    write_dicom(path, NOISE.astype(np.uint16) * 16, bits_stored=12)
    path.write_bytes(path.read_bytes()[:-100])


class ImageCase(NamedTuple):
    id: str
    name: str  # file name in the audited folder (str: may hold non-UTF-8 bytes as surrogates)
    write: Callable[[Path], None]
    status: str  # "ok" or "failed"
    reason: str = ""  # fragment of the failure row's error


IMAGE_CASES = [
    ImageCase(
        "zero-byte", "empty.png", lambda p: p.write_bytes(b""), "failed", "file is empty (0 bytes)"
    ),
    ImageCase("truncated-png", "truncated.png", truncated_png, "failed", "cannot read as an image"),
    ImageCase(
        "text-as-png",
        "notes.png",
        lambda p: p.write_text("hello\n" * 50),
        "failed",
        "cannot read as an image (expected PNG, JPEG, BMP or TIFF)",
    ),
    ImageCase(
        "garbage-as-jpg",
        "noise.jpg",
        lambda p: p.write_bytes(NOISE.tobytes()),
        "failed",
        "cannot read as an image",
    ),
    ImageCase(
        "garbage-as-tif",
        "broken.tif",
        lambda p: p.write_bytes(b"II*\x00" + NOISE.tobytes()),
        "failed",
        "cannot read as a TIFF image",
    ),
    ImageCase("png-named-jpg", "really_png.jpg", save(NOISE, format="PNG"), "ok"),
    ImageCase("jpeg-named-png", "really_jpeg.png", save(RGB, format="JPEG"), "ok"),
    ImageCase("tiff-named-png", "really_tiff.png", lambda p: tifffile.imwrite(p, NOISE), "ok"),
    ImageCase("decompression-bomb", "bomb.png", bomb_png, "failed", "decompression bomb"),
    ImageCase(
        "too-small",
        "one_pixel.png",
        save(NOISE[:1, :1]),
        "failed",
        "image of 1x1 pixels is too small",
    ),
    ImageCase("16-bit", "gray16.png", save(NOISE.astype(np.uint16) * 257), "ok"),
    ImageCase(
        "16-bit-tiff",
        "gray16.tif",
        lambda p: tifffile.imwrite(p, NOISE.astype(np.uint16) * 257),
        "ok",
    ),
    ImageCase("rgba", "rgba.png", save(np.dstack([RGB, NOISE]), "RGBA"), "ok"),
    ImageCase("palette", "palette.png", palette_png, "ok"),
    ImageCase("cmyk", "cmyk.jpg", cmyk_jpeg, "ok"),
    ImageCase(
        "dicom-monochrome1-voi",
        "m1.dcm",
        dicom(
            NOISE.astype(np.uint16) * 16,
            photometric="MONOCHROME1",
            bits_stored=12,
            WindowCenter=2048,
            WindowWidth=4096,
        ),
        "ok",
    ),
    ImageCase("dicom-uid-named", "1.2.840.99.1", dicom(NOISE), "ok"),
    ImageCase("dicom-without-pixel-data", "report.dcm", dicom(None), "failed", "has no pixel data"),
    ImageCase(
        "dicom-multi-frame",
        "cine.dcm",
        dicom(np.vstack([NOISE, NOISE]), NumberOfFrames=2, Rows=24),
        "failed",
        "multi-frame DICOM (2 frames) is not supported",
    ),
    ImageCase(
        "dicom-compressed-undecodable",
        "jpeg.dcm",
        dicom(NOISE, transfer_syntax=JPEGBaseline8Bit),
        "failed",
        "needs a decoder plug-in",
    ),
    ImageCase(
        "dicom-truncated",
        "cut.dcm",
        truncated_dicom,
        "failed",
        "cannot decode the DICOM pixel data",
    ),
    ImageCase("name-not-utf8", os.fsdecode(b"caf\xe9.png"), save(NOISE), "ok"),
    ImageCase("name-with-newline-and-comma", 'line\nbreak, comma "q".png', save(NOISE), "ok"),
]


@pytest.fixture(scope="module")
def image_run(env: dict[str, Path]) -> tuple[Any, dict[str, dict[str, str]], Path]:
    folder = env["tmp"] / "odd_images"
    folder.mkdir()
    write_images(folder, 2, seed=9)  # two ordinary images too
    for case in IMAGE_CASES:
        case.write(folder / case.name)
    out = env["tmp"] / "odd" / "flags.csv"
    result = flag(env, out, images=folder)
    rows = {row["path"]: row for row in read_rows(out)}
    return result, rows, folder


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c.id for c in IMAGE_CASES])
def test_image_file_case(
    image_run: tuple[Any, dict[str, dict[str, str]], Path], case: ImageCase
) -> None:
    result, rows, folder = image_run
    key = printable(str(folder / case.name))
    row = rows[key]
    assert row["status"] == case.status, row["error"]
    if case.status == "ok":
        assert row["error"] == "" and row["prob_A"] and row["d_A"]
    else:
        assert case.reason in row["error"]
        assert key in row["error"]  # the reason names the file
        assert all(row[f"{c}_{k}"] == "" for c in ("prob", "d") for k in CLASSES)


def test_image_folder_run_reports_failures_with_exit_code_1(image_run) -> None:
    result, rows, folder = image_run
    n_failed = sum(case.status == "failed" for case in IMAGE_CASES)
    assert result.exit_code == 1
    assert len(rows) == len(IMAGE_CASES) + 2  # every file has exactly one row, none dropped
    assert sum(row["status"] == "failed" for row in rows.values()) == n_failed
    assert f"{n_failed} file(s) failed" in result.output
    # The CSV is valid UTF-8 whatever the file names, and nothing else was written.
    (folder.parent / "odd" / "flags.csv").read_bytes().decode("utf-8")
    assert sorted(p.name for p in (folder.parent / "odd").iterdir()) == ["flags.csv"]


# -- 2. ONNX models ------------------------------------------------------------------------------
def graph(path: Path, nodes: list, inputs: list, outputs: list, inits: list | None = None) -> Path:
    g = helper.make_graph(nodes, "odd", inputs, outputs, inits or [])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    entry = m.metadata_props.add()
    entry.key, entry.value = "informer_audit.model_card", json.dumps(CARD)
    onnx.save(m, str(path))
    return path


def info(name: str, shape: list, elem: int = TensorProto.FLOAT) -> Any:
    return helper.make_tensor_value_info(name, elem, shape)


IMAGE = ["N", 3, 16, 16]


def no_image_input(path: Path) -> Path:
    const = numpy_helper.from_array(np.zeros((1, 3), np.float32), "c")
    node = helper.make_node("Constant", [], ["scores"], value=const)
    return graph(path, [node], [], [info("scores", [1, 3])])


def two_inputs(path: Path) -> Path:
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("ReduceMean", ["s"], ["scores"], axes=[2, 3], keepdims=0),
    ]
    return graph(path, nodes, [info("a", IMAGE), info("b", IMAGE)], [info("scores", ["N", 3])])


def rank2_input(path: Path) -> Path:
    node = helper.make_node("Identity", ["image"], ["scores"])
    return graph(path, [node], [info("image", ["N", 3])], [info("scores", ["N", 3])])


def integer_input(path: Path) -> Path:
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["scores"], axes=[2, 3], keepdims=0),
    ]
    return graph(path, nodes, [info("image", IMAGE, TensorProto.INT64)], [info("scores", ["N", 3])])


def output_rank(rank: int) -> Callable[[Path], Path]:
    axes, shape = ([3], ["N", 3, 16]) if rank == 3 else ([1, 2, 3], ["N"])

    def build(path: Path) -> Path:
        node = helper.make_node("ReduceMean", ["image"], ["scores"], axes=axes, keepdims=0)
        return graph(path, [node], [info("image", IMAGE)], [info("scores", shape)])

    return build


def external(location: Callable[[Path], str]) -> Callable[[Path], Path]:
    """The linear model with its weights in an external file that ``location`` names."""

    def build(path: Path) -> Path:
        folder = path.parent / "ext"
        folder.mkdir(exist_ok=True)
        inline = onnx.load(str(hidden_model(path.parent / "inline.onnx")))
        target = folder / "model.onnx"
        onnx.save_model(
            inline, str(target), save_as_external_data=True, location="w.bin", size_threshold=0
        )
        outside = path.parent / "outside.bin"
        os.replace(folder / "w.bin", outside)
        proto = onnx.load(str(target), load_external_data=False)
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location(outside)
        onnx.save(proto, str(target))
        return target

    return build


class ModelCase(NamedTuple):
    id: str
    build: Callable[[Path], Path]
    message: str


MODEL_CASES = [
    ModelCase(
        "random-bytes", lambda p: p.write_bytes(NOISE.tobytes()) and p, "not a readable ONNX model"
    ),
    ModelCase("empty-file", lambda p: p.write_bytes(b"") and p or p, "not a readable ONNX model"),
    ModelCase(
        "text-file",
        lambda p: p.write_text("<html>not a model</html>") and p,
        "not a readable ONNX model",
    ),
    ModelCase("no-image-input", no_image_input, "expected exactly one image input, found 0"),
    ModelCase("two-inputs", two_inputs, "expected exactly one image input, found 2"),
    ModelCase("rank-2-input", rank2_input, "expected a rank-4 image batch"),
    ModelCase(
        "integer-input", integer_input, "has type tensor(int64); expected a float image tensor"
    ),
    ModelCase("rank-3-output", output_rank(3), "expected (batch, 3) scores, one per class"),
    ModelCase("rank-1-output", output_rank(1), "expected (batch, 3) scores, one per class"),
    ModelCase(
        "external-data-dotdot",
        external(lambda out: "../outside.bin"),
        "must be a relative path inside the model's folder",
    ),
    ModelCase(
        "external-data-absolute",
        external(lambda out: str(out.resolve())),
        "must be a relative path inside the model's folder",
    ),
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.id for c in MODEL_CASES])
def test_model_case(tmp_path: Path, case: ModelCase) -> None:
    path = case.build(tmp_path / "model.onnx")
    r = invoke("info", path, "--device", "cpu")
    assert r.exit_code == 2, r.output
    assert case.message in r.output.replace("\n", "")


def test_model_over_the_size_limit_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = hidden_model(tmp_path / "model.onnx")
    monkeypatch.setattr(model_module, "MAX_MODEL_BYTES", 1000)
    loads: list[str] = []
    monkeypatch.setattr(onnx, "load", lambda *a, **k: loads.append("load"))
    r = invoke("info", path, "--device", "cpu")
    assert r.exit_code == 2 and "exceeds the model size limit of 1000 bytes" in r.output
    assert loads == []  # refused before parsing anything


def test_model_with_a_fixed_batch_of_1_audits_every_image(env: dict[str, Path]) -> None:
    path = hidden_model(env["tmp"] / "batch1.onnx", batch=1)
    monitor = env["tmp"] / "batch1.json"
    assert calibrate(env, monitor, model=path).exit_code == 0
    out = env["tmp"] / "batch1.csv"
    r = flag(env, out, "--batch-size", 4, model=path, monitor=monitor)
    assert r.exit_code == 0, r.output
    assert [row["status"] for row in read_rows(out)] == ["ok"] * 3


def non_finite_model(path: Path, kind: str) -> Path:
    """z = x W + log(mean(x)) (NaN for dark images) or + log(relu(mean(x))) (-Inf for them)."""
    d = 3 * 16 * 16
    w = np.random.default_rng(0).normal(0, 0.05, (d, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("ReduceMean", ["flat"], ["m"], axes=[1], keepdims=1),
    ]
    if kind == "inf":
        nodes.append(helper.make_node("Relu", ["m"], ["m0"]))
    nodes += [
        helper.make_node("Log", ["m0" if kind == "inf" else "m"], ["lm"]),
        helper.make_node("Add", ["mm", "lm"], ["scores"]),
    ]
    inits = [numpy_helper.from_array(w, "W")]
    return graph(path, nodes, [info("image", IMAGE)], [info("scores", ["N", 3])], inits)


def textured(folder: Path, values: dict[str, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, value in values.items():
        arr = np.full((16, 16), value, dtype=np.uint8)
        arr[::3, ::2] = value - 8 - len(paths)  # texture, and distinct images
        Image.fromarray(arr).save(folder / name)
        paths.append(folder / name)
    return paths


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_model_returning_nan_or_inf_fails_those_images_only(tmp_path: Path, kind: str) -> None:
    path = non_finite_model(tmp_path / f"{kind}.onnx", kind)
    bright = textured(tmp_path / "val", {f"b{i}.png": 200 + 5 * i for i in range(6)})
    labels = write_labels(tmp_path / "val" / "labels.csv", [p.name for p in bright])
    monitor = tmp_path / "m.json"
    r = calibrate({}, monitor, model=path, images=tmp_path / "val", labels=labels)
    assert r.exit_code == 0, r.output
    textured(tmp_path / "audit", {"bright.png": 230, "dark.png": 20, "dark2.png": 40})
    out = tmp_path / "flags.csv"
    r = flag({}, out, model=path, monitor=monitor, images=tmp_path / "audit")
    assert r.exit_code == 1
    rows = {Path(row["path"]).name: row for row in read_rows(out)}
    assert rows["bright.png"]["status"] == "ok"
    for name in ("dark.png", "dark2.png"):
        assert rows[name]["status"] == "failed"
        assert "the model returned non-finite scores (NaN or Inf)" in rows[name]["error"]
        assert rows[name]["prob_A"] == "" and rows[name]["d_A"] == ""  # reported, not scored


# -- 3. label CSVs (calibrate) -------------------------------------------------------------------
class LabelCase(NamedTuple):
    id: str
    text: str  # the CSV; {img0}.. name real images of the calibration folder
    exit_code: int
    message: str
    extra: tuple[str, ...] = ()


LABEL_CASES = [
    LabelCase(
        "no-path-column",
        "file_name,A,B,C\n{img0},1,0,1\n",
        2,
        "no image-path column for the 'plain' format",
    ),
    LabelCase(
        "missing-class-column",
        "path,A,B\n{img0},1,0\n{img1},0,1\n",
        2,
        "no label column for model class 'C'",
    ),
    LabelCase(
        "unknown-class-name",
        "path,A,B,C\n{img0},1,0,1\n",
        2,
        "'Z' is not a class of the model",
        ("--classes", "A,Z"),
    ),
    LabelCase(
        "duplicate-paths",
        "path,A,B,C\n{img0},1,0,1\n{img0},0,1,0\n",
        2,
        "1 image paths appear more than once",
    ),
    LabelCase("value-2", "path,A,B,C\n{img0},1,0,2\n{img1},0,1,0\n", 2, "'2' is not a plain label"),
    LabelCase(
        "value-minus-1-in-plain",
        "path,A,B,C\n{img0},-1,0,1\n{img1},0,1,0\n",
        2,
        "'-1' is not a plain label",
    ),
    LabelCase(
        "blank-in-plain",
        "path,A,B,C\n{img0},,0,1\n{img1},0,1,0\n",
        2,
        "blank labels are not allowed in the plain format",
    ),
    LabelCase(
        "word-value", "path,A,B,C\n{img0},yes,0,1\n{img1},0,1,0\n", 2, "'yes' is not a plain label"
    ),
    LabelCase(
        "chexpert-value-2",
        "Path,Frontal/Lateral,A,B,C\n{img0},Frontal,1.0,,2.0\n{img1},Frontal,0.0,1.0,\n",
        2,
        "'2.0' is not a chexpert label",
    ),
    LabelCase("empty-file", "", 2, "the file is empty"),
    LabelCase("header-only", "path,A,B,C\n", 2, "has a header but no data rows"),
    LabelCase("blank-path", "path,A,B,C\n,1,0,1\n", 2, "the image path is blank"),
    LabelCase(
        "nih-class-that-is-no-finding",
        "Image Index,Finding Labels\n{img0},Atelectasis\n{img1},No Finding\n",
        2,
        "no NIH finding for model class 'C' (requested 'Unicorn')",
        ("--classes", "A=Atelectasis,B=Edema,C=Unicorn"),
    ),
]


def label_text(case: LabelCase, env: dict[str, Path]) -> str:
    names = sorted(p.name for p in env["val"].glob("*.png"))
    return case.text.format(**{f"img{i}": name for i, name in enumerate(names)})


@pytest.mark.parametrize("case", LABEL_CASES, ids=[c.id for c in LABEL_CASES])
def test_label_case(tmp_path: Path, env: dict[str, Path], case: LabelCase) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(label_text(case, env))
    r = calibrate(env, tmp_path / "m.json", *case.extra, labels=labels)
    assert r.exit_code == case.exit_code, r.output
    assert case.message in r.output.replace("\n", "")
    assert not (tmp_path / "m.json").exists()


def test_label_paths_that_do_not_exist_are_recorded_failures(
    tmp_path: Path, env: dict[str, Path]
) -> None:
    labels = tmp_path / "labels.csv"
    names = sorted(p.name for p in env["val"].glob("*.png"))
    rows = [f"{n},{i % 2},{(i // 2) % 2},1" for i, n in enumerate(names)]
    labels.write_text("path,A,B,C\n" + "\n".join(rows + ["gone.png,1,0,1", "sub/x.png,0,0,1"]))
    out = tmp_path / "m.json"
    r = calibrate(env, out, labels=labels)
    assert r.exit_code == 1, r.output
    calibration = json.loads(out.read_text())["calibration"]
    failed = {f["path"]: f["error"] for f in calibration["failures"]}
    assert set(failed) == {"gone.png", "sub/x.png"}
    assert all("file not found" in e for e in failed.values())
    assert calibration["n_images"] == len(names)


def test_label_unknown_finding_in_cells_is_reported(tmp_path: Path, env: dict[str, Path]) -> None:
    names = sorted(p.name for p in env["val"].glob("*.png"))
    findings = ["Atelectasis", "Edema|Unicorn", "No Finding", "Effusion|Atelectasis"]
    rows = [f"{n},{findings[i % 4]}" for i, n in enumerate(names)]
    labels = tmp_path / "labels.csv"
    labels.write_text("Image Index,Finding Labels\n" + "\n".join(rows) + "\n")
    classes = ("--classes", "A=Atelectasis,B=Edema,C=Effusion")
    r = calibrate(env, tmp_path / "m.json", *classes, labels=labels)
    assert r.exit_code == 0, r.output
    assert "holds 1 findings that are not NIH findings: 'Unicorn (3x)'" in r.output


def test_label_chexpert_uncertain_and_blank_cells_are_accepted(
    tmp_path: Path, env: dict[str, Path]
) -> None:
    names = sorted(p.name for p in env["val"].glob("*.png"))
    cells = ["1.0", "0.0", "", "-1.0"]
    rows = [f"{n},Frontal,{cells[i % 4]},{cells[(i + 1) % 3]},1.0" for i, n in enumerate(names)]
    labels = tmp_path / "labels.csv"
    labels.write_text("Path,Frontal/Lateral,A,B,C\n" + "\n".join(rows) + "\n")
    r = calibrate(env, tmp_path / "m.json", "--uncertain", "zero", labels=labels)
    assert r.exit_code == 0, r.output


# -- 4. monitor files (flag) ---------------------------------------------------------------------
def edit_json(change: Callable[[dict], None]) -> Callable[[str], str]:
    def edit(text: str) -> str:
        doc = json.loads(text)
        change(doc)
        return json.dumps(doc)

    return edit


def set_path(path: str, value: Any) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[int(key)] if key.isdigit() else doc[key]  # type: ignore[index]
        doc[last] = value

    return change


class MonitorCase(NamedTuple):
    id: str
    edit: Callable[[str], str]
    message: str
    extra: tuple[str, ...] = ()


MONITOR_CASES = [
    MonitorCase(
        "truncated", lambda t: t[: len(t) // 2], "not valid monitor JSON (truncated or edited?)"
    ),
    MonitorCase("empty", lambda t: "", "not valid monitor JSON"),
    MonitorCase("not-json-object", lambda t: "[1, 2, 3]", "not an informer-audit monitor"),
    MonitorCase(
        "other-format",
        edit_json(set_path("format", "something-else")),
        'expected "format": "informer-audit-monitor"',
    ),
    MonitorCase(
        "schema-version-2",
        edit_json(set_path("schema_version", 2)),
        "schema_version 2 is not supported",
    ),
    MonitorCase(
        "schema-version-string",
        edit_json(set_path("schema_version", "1")),
        "schema_version '1' is not supported",
    ),
    MonitorCase(
        "threshold-edited-to-text",
        edit_json(lambda d: d["monitor"]["classes"][0].update(flag_threshold="low")),
        "not a valid monitor",
    ),
    MonitorCase(
        "threshold-edited-to-nan",
        lambda t: t.replace('"flag_threshold": ', '"flag_threshold": NaN, "x": ', 1),
        "monitor.classes[0].flag_threshold: found NaN (number), expected a finite number",
    ),
    MonitorCase(
        "key-renamed",
        lambda t: t.replace('"prediction_threshold"', '"pred_threshold"', 1),
        "not a valid monitor",
    ),
    MonitorCase(
        "binding-field-removed",
        edit_json(lambda d: d["binding"].pop("model_sha256")),
        "the monitor's 'binding' must hold",
    ),
    MonitorCase(
        "classes-reordered",
        edit_json(lambda d: d["monitor"]["classes"].reverse()),
        "differ from the bound audited classes",
    ),
    MonitorCase(
        "unknown-direction",
        edit_json(set_path("monitor.direction", "sideways")),
        "direction must be one of",
    ),
    MonitorCase(
        "other-model",
        edit_json(set_path("binding.model_sha256", "0" * 64)),
        "model_sha256 is '0000",
    ),
    MonitorCase(
        "other-saliency-setting",
        lambda t: t,
        "saliency.patch_size is 8 in the monitor but 4 for this run",
        ("--patch-size", "4"),
    ),
    MonitorCase(
        "other-preprocessing",
        lambda t: t,
        "preprocessing.std is [0.25, 0.25, 0.25] in the monitor but [0.5, 0.5, 0.5]",
        ("--std", "0.5"),
    ),
    MonitorCase("other-class-list", lambda t: t, "the model", ("--class-names", "A,B,D")),
    MonitorCase(
        "other-adapter", lambda t: t, "was fitted with saliency 'fd'", ("--saliency", "lime")
    ),
    MonitorCase(
        "other-method", lambda t: t, "was fitted with --method informer", ("--method", "entropy")
    ),
]


@pytest.mark.parametrize("case", MONITOR_CASES, ids=[c.id for c in MONITOR_CASES])
def test_monitor_case(tmp_path: Path, env: dict[str, Path], case: MonitorCase) -> None:
    monitor = tmp_path / "monitor.json"
    monitor.write_text(case.edit(env["monitor"].read_text()))
    out = tmp_path / "flags.csv"
    r = flag(env, out, *case.extra, monitor=monitor)
    assert r.exit_code == 2, r.output
    assert case.message in r.output.replace("\n", "")
    assert not out.exists() and not journal_path(out).exists()


def test_monitor_class_list_mismatch_names_both_lists(tmp_path: Path, env: dict[str, Path]) -> None:
    r = flag(env, tmp_path / "f.csv", "--class-names", "A,B,D")
    assert r.exit_code == 2
    assert "['A', 'B', 'C']" in r.output and "['A', 'B', 'D']" in r.output


# -- 5. the run: output, folder, journal -----------------------------------------------------------
def test_output_that_is_a_folder_is_refused(tmp_path: Path, env: dict[str, Path]) -> None:
    (tmp_path / "out").mkdir()
    r = flag(env, tmp_path / "out")
    assert r.exit_code == 2 and "is a directory" in r.output


def test_folder_without_images_is_refused(tmp_path: Path, env: dict[str, Path]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    r = flag(env, tmp_path / "f.csv", images=tmp_path / "empty")
    assert r.exit_code == 2 and "no images found" in r.output and ".dcm" in r.output


def test_a_journal_of_another_run_is_refused_with_exit_2(
    tmp_path: Path, env: dict[str, Path]
) -> None:
    out = tmp_path / "f.csv"
    journal_path(out).write_text("path,status\nsomething else\n")
    r = flag(env, out)
    assert r.exit_code == 2
    assert "not an informer-audit flag journal" in r.output and "restart=True" in r.output
    assert "(command line: --restart)" in r.output
    assert flag(env, out, "--restart").exit_code == 0
