"""The HTML report (``informer-audit report``, ``flag --report``) and the saved maps it reads."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image
from reportkit import CLASSES, HOSTILE_NAMES, make_run, parse_page

from conftest import invoke, read_rows
from informer_audit.audit import Auditor
from informer_audit.errors import MapStoreError, MonitorMismatchError
from informer_audit.flagsfile import image_candidates, read_flags_csv
from informer_audit.mapstore import MapStore, map_file_name
from informer_audit.model import OnnxClassifier
from informer_audit.report import build_report
from informer_audit.report_figures import map_to_pixels
from informer_audit.saliency import get_adapter
from informer_audit.scorers import InformerScorer


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small flag run (tiny model, 8 images with hostile names + a corrupt one) per module."""
    return make_run(tmp_path_factory.mktemp("report-run"))


def report(run: dict[str, Path], out: Path, *extra: object) -> object:
    return invoke("report", run["flags"], "--monitor", run["monitor"], "-o", out, *extra)


def local_refs(page_dir: Path, tags: list[tuple[str, dict[str, str | None]]]) -> list[str]:
    refs = []
    for _, attrs in tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is not None and not value.startswith("#"):
                refs.append(value)
    return refs


def check_page(out: Path, rows: list[dict[str, str]]) -> object:
    """Files exist, the HTML parses, no tag was injected, references resolve, counts match."""
    index = out / "index.html"
    assert index.is_file()
    page = parse_page(index)
    tags = [t for t, _ in page.tags]
    # No file name turned into markup: the template itself uses neither <b> nor <i>, and only
    # one (inline) script.
    assert "b" not in tags and "i" not in tags
    assert tags.count("script") == 1
    assert all(a.get("src") is None for t, a in page.tags if t == "script")
    text = "".join(page.text)
    for name in HOSTILE_NAMES:
        assert name in text, name
    raw = index.read_text(encoding="utf-8")
    assert "<b>" not in raw and "<script>alert" not in raw
    # Every local reference resolves to a file inside OUTDIR; nothing points outside.
    refs = local_refs(out, page.tags)
    assert refs
    root = out.resolve()
    for ref in refs:
        parts = urlsplit(ref)
        assert not parts.scheme and not parts.netloc, ref  # no CDN, no absolute URL
        target = (out / unquote(parts.path)).resolve()
        assert root in target.parents, ref
        assert target.is_file(), ref
    # Generated asset names only, never derived from the input names.
    for f in (out / "assets").iterdir():
        assert f.name.split("_")[0] in {"img", "map", "hist", "colorbar.png"}, f.name
    # Counts match the CSV.
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert page.by_id["count-images"] == str(len(rows))
    assert page.by_id["count-ok"] == str(len(ok))
    assert page.by_id["count-failed"] == str(len(failed))
    flagged_images = [r for r in ok if any(r[f"flag_{c}"] == "1" for c in CLASSES)]
    assert page.by_id["count-flagged-images"] == str(len(flagged_images))
    n_flags = sum(int(r[f"flag_{c}"]) for r in ok for c in CLASSES)
    assert page.by_id["count-flags"] == str(n_flags)
    counts = page.by_id["counts"]
    for c in CLASSES:
        assert f"{c}" in counts
    cells = [(a.get("data-class"), t) for t, a in page.tags if t == "tr" and a.get("data-class")]
    assert [c for c, _ in cells] == list(CLASSES)
    cards = [a for t, a in page.tags if t == "article"]
    gallery = [a for a in cards if "is-flagged" in (a.get("class") or "")]
    assert len(gallery) == len(flagged_images)
    assert {a["data-path"] for a in gallery} == {r["path"] for r in flagged_images}
    for r in failed:
        assert r["path"] in page.by_id["failure-table"]
    return page


def per_class_counts(page: object, out: Path) -> dict[str, tuple[int, int, int]]:
    """(predicted, flagged, audited) per class, read from the counts table's cells."""
    raw = (out / "index.html").read_text(encoding="utf-8")
    found = {}
    for c in CLASSES:
        row = raw.split(f'<tr data-class="{c}">', 1)[1].split("</tr>", 1)[0]
        values = [
            int(row.split(f'class="{cls}">', 1)[1].split("<", 1)[0])
            for cls in ("n-predicted", "n-flagged", "n-audited")
        ]
        found[c] = (values[0], values[1], values[2])
    return found


def test_report_from_saved_maps(run, tmp_path):
    out = tmp_path / "report"
    r = report(run, out, "--maps", run["maps"], "--labels", run["labels"], "--images", run["audit"])
    assert r.exit_code == 0, r.output
    rows = read_rows(run["flags"])
    page = check_page(out, rows)
    ok = [row for row in rows if row["status"] == "ok"]
    counts = per_class_counts(page, out)
    labels = {row["path"]: row for row in read_rows(run["labels"])}
    raw = (out / "index.html").read_text(encoding="utf-8")
    for c in CLASSES:
        assert counts[c] == tuple(
            sum(int(row[f"{p}_{c}"]) for row in ok) for p in ("pred", "flag", "audited")
        )
        # F1 before/after swapping, by hand from the CSV and the labels.
        y = np.array([int(labels[Path(row["path"]).name][c]) for row in ok])
        f1 = []
        for col in ("pred", "audited"):
            yhat = np.array([int(row[f"{col}_{c}"]) for row in ok])
            tp, fp, fn = (y & yhat).sum(), ((1 - y) & yhat).sum(), (y & (1 - yhat)).sum()
            f1.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else float("nan"))
        row_html = raw.split(f'<tr data-class="{c}">', 1)[1].split("</tr>", 1)[0]
        assert f"{f1[0]:.3f} → {f1[1]:.3f}" in row_html
    # One image and K overlays per shown image; maps from the maps folder.
    imgs = [a["src"] for t, a in page.tags if t == "img" and a.get("src")]
    shown = [a for t, a in page.tags if t == "article"]
    assert sum(s.startswith("assets/map_") for s in imgs) == len(CLASSES) * len(shown)
    assert sum(s.startswith("assets/img_") for s in imgs) == len(shown)
    assert "maps saved at flag time" in "".join(page.text)
    assert "F1 here before → after" in "".join(page.text)
    for c in CLASSES:
        assert (out / "assets" / f"hist_{CLASSES.index(c)}.png").is_file()
    # PNGs are real images of the expected tile size.
    with Image.open(out / "assets" / "colorbar.png") as im:
        assert im.format == "PNG"
    first = next(p for p in (out / "assets").iterdir() if p.name.startswith("map_"))
    with Image.open(first) as im:
        assert im.size == (192, 192) and im.mode == "RGB"


def test_report_is_byte_reproducible(run, tmp_path):
    for name in ("a", "b"):
        r = report(run, tmp_path / name, "--maps", run["maps"])
        assert r.exit_code == 0, r.output
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    assert files_a == files_b
    for rel in files_a:
        if (tmp_path / "a" / rel).is_file():
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_rebuilding_removes_stale_assets_only(run, tmp_path):
    out = tmp_path / "report"
    assert report(run, out, "--maps", run["maps"]).exit_code == 0
    stale = out / "assets" / "img_09999.png"
    stale.write_bytes(b"old")
    mine = out / "assets" / "notes.txt"
    mine.write_text("keep me")
    assert report(run, out, "--maps", run["maps"], "--max-gallery", "1").exit_code == 0
    assert not stale.exists() and mine.read_text() == "keep me"
    page = parse_page(out / "index.html")
    assert len([a for t, a in page.tags if t == "article" and "is-flagged" in a["class"]]) == 1
    assert "All flagged images" in "".join(page.text)  # the rest are listed


def test_report_recomputes_maps_of_shown_images_only(run, tmp_path):
    model = OnnxClassifier(run["model"], device="cpu")
    summary = build_report(
        run["flags"],
        run["monitor"],
        tmp_path / "recomputed",
        model=model,
        max_gallery=2,
        n_contrast=1,
    )
    assert summary.maps == "recomputed"
    assert (summary.n_gallery, summary.n_contrast) == (2, 1)
    # FD at 8 px patches on 16 px: 4 patches, 8 passes + 1 for the logits, per shown image.
    assert model.n_forward == 3 * (2 * 4 + 1)
    assert not summary.notes  # recomputed d agrees with the CSV
    saved = tmp_path / "saved"
    build_report(run["flags"], run["monitor"], saved, maps_dir=run["maps"], max_gallery=2,
                 n_contrast=1)  # fmt: skip
    maps = sorted(p.name for p in (saved / "assets").glob("map_*.png"))
    assert maps == sorted(p.name for p in (tmp_path / "recomputed" / "assets").glob("map_*.png"))
    for name in maps:
        a = np.asarray(Image.open(saved / "assets" / name), dtype=int)
        b = np.asarray(Image.open(tmp_path / "recomputed" / "assets" / name), dtype=int)
        assert np.abs(a - b).max() <= 1, name


def test_report_without_maps_or_model_says_so(run, tmp_path):
    out = tmp_path / "report"
    r = report(run, out)
    assert r.exit_code == 0, r.output
    assert "no class maps to show" in r.output
    assert not list((out / "assets").glob("map_*"))
    page = check_page(out, read_rows(run["flags"]))
    assert "give maps_dir (saved by flag_folder) or model" in "".join(page.text)


def test_flag_with_report(run, tmp_path):
    flags, out = tmp_path / "flags.csv", tmp_path / "report"
    r = invoke(
        "flag", run["model"], "--monitor", run["monitor"], "--images", run["audit"], "-o", flags,
        "--report", out,
    )  # fmt: skip
    assert r.exit_code == 1, r.output  # the corrupt file; the report is written all the same
    assert "report written to" in r.output
    page = check_page(out, read_rows(flags))
    assert list((out / "assets").glob("map_*.png"))
    assert "maps saved at flag time" in "".join(page.text)


def test_saved_maps_are_named_by_hash_and_round_trip(run, tmp_path):
    store = MapStore.open(run["maps"])
    names = sorted(p.name for p in run["maps"].iterdir())
    assert "manifest.json" in names
    for name in names:
        assert name == "manifest.json" or (len(name) == 36 and name.endswith(".npz")), name
    rows = read_rows(run["flags"])
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(names) == len(ok) + 1
    model = OnnxClassifier(run["model"], device="cpu")
    auditor = Auditor(model, InformerScorer(get_adapter("fd", patch_size=8)), keep_maps=True)
    for row in ok[:3]:
        stored = store.load(row["path"])
        assert stored is not None and stored.key == row["path"]
        assert store.path_for(row["path"]).name == map_file_name(row["path"])
        (result,) = auditor.run([(row["path"], Path(row["path"]))])
        assert result.maps is not None and result.dist is not None
        scale = np.abs(result.maps).reshape(len(CLASSES), -1).max(axis=1)
        err = np.abs(stored.maps - result.maps).reshape(len(CLASSES), -1).max(axis=1)
        assert (err <= scale * 2**-11).all()  # half precision, relative to each class's scale
        np.testing.assert_allclose(stored.dist, result.dist, atol=1e-9)
        np.testing.assert_allclose(stored.d, [float(row[f"d_{c}"]) for c in CLASSES], rtol=1e-7)
    assert store.load("not/an/image.png") is None


def test_maps_folder_refuses_other_settings_and_damage(run, tmp_path):
    maps = tmp_path / "maps"
    shutil.copytree(run["maps"], maps)
    store = MapStore.open(maps)
    other = {**store.binding, "saliency": {"name": "fd", "patch_size": 4}}
    with pytest.raises(MonitorMismatchError, match="saliency.patch_size"):
        MapStore.create(maps, other)
    key = read_rows(run["flags"])[0]["path"]
    store.path_for(key).write_bytes(b"not a zip")
    with pytest.raises(MapStoreError, match="cannot read saved maps"):
        store.load(key)
    with pytest.raises(MapStoreError, match="not a maps folder"):
        MapStore.open(tmp_path)
    # The folder of another run is refused by the report too (exit 2).
    doc = json.loads((maps / "manifest.json").read_text())
    doc["binding"]["model_sha256"] = "0" * 64
    (maps / "manifest.json").write_text(json.dumps(doc))
    r = report(run, tmp_path / "report", "--maps", maps)
    assert r.exit_code == 2 and "model_sha256" in r.output


def test_missing_images_are_noted_not_fatal(run, tmp_path):
    flags = tmp_path / "flags.csv"
    rows = read_rows(run["flags"])
    gone = next(
        r["path"]
        for r in rows
        if r["status"] == "ok"
        and any(r[f"flag_{c}"] == "1" for c in CLASSES)
        and Path(r["path"]).name.startswith("img_")
    )
    moved = str(tmp_path / "elsewhere" / "gone.png")
    flags.write_text(run["flags"].read_text(encoding="utf-8").replace(gone, moved))
    edited = read_rows(flags)
    out = tmp_path / "report"
    r = invoke("report", flags, "--monitor", run["monitor"], "-o", out, "--maps", run["maps"])
    assert r.exit_code == 1, r.output  # written, but an image it shows is missing
    assert "image not shown" in r.output
    page = parse_page(out / "index.html")
    text = "".join(page.text)
    assert "image not found" in text and moved in text
    assert page.by_id["count-images"] == str(len(edited))


def test_image_lookup_order(tmp_path):
    root = tmp_path / "imgs"
    cands = image_candidates("audit/sub/x.png", tmp_path / "csvdir", root)
    assert cands[:3] == [root / "audit/sub/x.png", root / "sub/x.png", root / "x.png"]
    assert cands[3:] == [Path("audit/sub/x.png"), tmp_path / "csvdir" / "audit/sub/x.png"]
    assert image_candidates("/abs/x.png", tmp_path, None) == [Path("/abs/x.png")]


def test_map_to_pixels_shapes():
    fd = np.arange(9.0).reshape(3, 3)  # 20 px with 8 px patches: the last patch is partial
    up = map_to_pixels(fd, (20, 20), patch_size=8)
    assert up.shape == (20, 20)
    assert up[0, 0] == 0 and up[7, 7] == 0 and up[8, 8] == 4 and up[19, 19] == 8
    grad = np.ones((3, 5, 6))
    np.testing.assert_array_equal(map_to_pixels(grad, (5, 6)), np.full((5, 6), 3.0))
    lime = np.random.default_rng(0).normal(size=(5, 6))
    np.testing.assert_array_equal(map_to_pixels(lime, (5, 6)), lime)
    spread = map_to_pixels(np.array([[1.0, 2.0]]), (2, 4))
    np.testing.assert_array_equal(spread, [[1, 1, 2, 2], [1, 1, 2, 2]])


def test_baseline_monitor_report_has_no_maps(tmp_path):
    run = make_run(tmp_path / "run", method="entropy")
    out = tmp_path / "report"
    r = invoke("report", run["flags"], "--monitor", run["monitor"], "-o", out)
    assert r.exit_code == 0, r.output
    page = parse_page(out / "index.html")
    text = "".join(page.text)
    assert "uses no saliency maps" in text
    assert not list((out / "assets").glob("map_*")) and not (out / "assets/colorbar.png").exists()
    assert list((out / "assets").glob("img_*.png"))
    r = invoke(
        "flag", run["model"], "--monitor", run["monitor"], "--images", run["audit"], "-o",
        tmp_path / "f.csv", "--save-maps", tmp_path / "maps",
    )  # fmt: skip
    assert r.exit_code == 2 and "--save-maps needs saliency maps" in r.output
    (tmp_path / "maps").mkdir()  # not the report folder: an output never is an input folder
    r = invoke(
        "report", run["flags"], "--monitor", run["monitor"], "-o", out, "--maps", tmp_path / "maps"
    )
    assert r.exit_code == 2 and "uses no saliency maps" in r.output


def test_bad_inputs_exit_2(run, tmp_path):
    out = tmp_path / "report"
    no_cols = tmp_path / "bad.csv"
    no_cols.write_text("file,score\na.png,1\n")
    r = invoke("report", no_cols, "--monitor", run["monitor"], "-o", out)
    assert r.exit_code == 2 and "not a flags CSV" in r.output and "missing column" in r.output
    rows = read_rows(run["flags"])
    short = tmp_path / "short.csv"
    with short.open("w", newline="", encoding="utf-8") as fh:
        cols = [c for c in rows[0] if not c.endswith("_C")]
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    r = invoke("report", short, "--monitor", run["monitor"], "-o", out)
    assert r.exit_code == 2 and "classes" in r.output  # CSV of A, B; monitor of A, B, C
    doc = json.loads(run["monitor"].read_text())
    doc["monitor"]["classes"][0]["flag_threshold"] = 0.0
    other = tmp_path / "other_monitor.json"
    other.write_text(json.dumps(doc))
    r = invoke("report", run["flags"], "--monitor", other, "-o", out)
    assert r.exit_code == 2 and "written with another monitor" in r.output
    bad = tmp_path / "bad_status.csv"
    bad.write_text(run["flags"].read_text(encoding="utf-8").replace(",ok,", ",maybe,", 1))
    r = invoke("report", bad, "--monitor", run["monitor"], "-o", out)
    assert r.exit_code == 2 and "expected 'ok' or 'failed'" in r.output
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = invoke("report", run["flags"], "--monitor", run["monitor"], "-o", a_file)
    assert r.exit_code == 2
    assert not out.exists()  # refused before anything was written


def test_read_flags_csv_reads_matrix_columns(run, tmp_path):
    flags = tmp_path / "m.csv"
    r = invoke(
        "flag", run["model"], "--monitor", run["monitor"], "--images", run["audit"], "-o", flags,
        "--with-matrix",
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    table = read_flags_csv(flags)
    assert table.classes == list(CLASSES) and table.score_name == "d"
    ok = table.ok_rows
    assert ok and all(row.dist is not None and row.dist.shape == (3, 3) for row in ok)
    d = np.array([row.dist.sum(axis=1) for row in ok if row.dist is not None])
    np.testing.assert_allclose(d, [row.score for row in ok], rtol=1e-6)
    assert len(table.failed_rows) == 1 and "cannot read" in table.failed_rows[0].error


def test_hostile_names_stay_text(run, tmp_path):
    """The names travel into attributes and JSON too; none breaks out of its context."""
    out = tmp_path / "report"
    assert report(run, out, "--maps", run["maps"]).exit_code == 0
    page = parse_page(out / "index.html")
    paths = {a.get("data-path") for t, a in page.tags if t == "article"}
    names = {os.path.basename(p) for p in paths if p}
    assert set(HOSTILE_NAMES) & names
    alts = [a.get("alt") or "" for t, a in page.tags if t == "img"]
    assert any(HOSTILE_NAMES[0] in alt for alt in alts)
