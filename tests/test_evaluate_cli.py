"""`informer-audit evaluate`, `--method` for calibrate/flag, and the score cache, end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import conftest
from conftest import (
    NIH,
    REF_CARD,
    REF_MODEL,
    flag,
    invoke,
    needs_shared,
    read_rows,
    write_images,
    write_labels,
)
from informer_audit.adapters.fd import FiniteDifferenceIxG
from informer_audit.model import OnnxClassifier

CLASSES = ("A", "B", "C")
REPORT = ("table1.csv", "bootstrap.csv", "failure_metrics.csv", "report.md")


def _labelled(folder: Path, n: int, seed: int) -> Path:
    paths = write_images(folder / "imgs", n, size=20, seed=seed)
    return write_labels(folder / "labels.csv", [f"imgs/{p.name}" for p in paths], seed=seed + 100)


@pytest.fixture
def setup(tmp_path, tiny_model):
    model, _ = tiny_model(classes=CLASSES, size=16, hidden=5, seed=1)
    s = {
        "model": model,
        "calib": tmp_path / "calib",
        "calib_labels": _labelled(tmp_path / "calib", 24, 2),
        "test": tmp_path / "test",
        "test_labels": _labelled(tmp_path / "test", 20, 7),
        "out": tmp_path / "out",
        "tmp": tmp_path,
    }
    # calibrate on calib, flag the test images (conftest's calibrate and flag)
    return dict(s, val=s["calib"], labels=s["calib_labels"], audit=s["test"],
                monitor=tmp_path / "monitor.json")  # fmt: skip


def evaluate(s, *extra, out=None):
    return invoke(
        "evaluate",
        s["model"],
        "--calib-images",
        s["calib"],
        "--calib-labels",
        s["calib_labels"],
        "--test-images",
        s["test"],
        "--test-labels",
        s["test_labels"],
        "-o",
        out or s["out"],
        "--device",
        "cpu",
        *extra,
    )


def header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


@pytest.fixture
def counting(monkeypatch):
    """Counts the images the FD adapter explains and the images the model scores."""
    counts = {"explained": 0, "forward": 0}
    explain, logits = FiniteDifferenceIxG.explain, OnnxClassifier.logits

    def counted_explain(self, model, x, **kw):
        counts["explained"] += len(x)
        return explain(self, model, x, **kw)

    def counted_logits(self, x):
        counts["forward"] += len(x)
        return logits(self, x)

    monkeypatch.setattr(FiniteDifferenceIxG, "explain", counted_explain)
    monkeypatch.setattr(OnnxClassifier, "logits", counted_logits)
    return counts


def test_evaluate_writes_every_file_and_a_rerun_comes_from_the_cache(setup, counting):
    r = evaluate(setup, "--patch-size", 8)
    assert r.exit_code == 0, r.output
    out = setup["out"]
    for name in (
        *REPORT,
        "sensitivity.csv",
        "specificity.csv",
        "flags.csv",
        "thresholds.csv",
        "ttests.csv",
        "bootstrap_boxplot.png",
        "risk_coverage.png",
        "paired_bootstrap.csv",
        "information.csv",
        *(
            f"monitor_{m}.json"
            for m in ("informer_fd", "learned_fd", "entropy", "tta", "msp", "margin")
        ),
    ):
        assert (out / name).is_file(), name
    rows = ["no_audit", "retuned", "informer_fd", "learned_fd", "entropy", "tta", "msp", "margin"]
    assert header(out / "table1.csv") == ["method", *CLASSES, "mean_f1"]
    assert [row["method"] for row in read_rows(out / "table1.csv")] == rows
    assert header(out / "bootstrap.csv") == ["bootstrap", "method", "mean_f1"]
    assert len(read_rows(out / "bootstrap.csv")) == 30 * len(rows)
    assert header(out / "failure_metrics.csv") == ["method", "class", "auroc", "aurc", "augrc"]
    assert header(out / "ttests.csv")[:2] == ["informer", "baseline"]
    report = (out / "report.md").read_text()
    assert "## Table 1" in report and "informer_fd" in report and "tta" in report
    assert "Table 1: F1 after swapping on 20 test images" in r.output  # the terminal table
    assert list((out / "cache").rglob("*.npz"))
    assert counting["explained"] == 24 + 20  # each image explained once
    before = {name: (out / name).read_bytes() for name in (*REPORT, "bootstrap_boxplot.png")}
    monitors = {p.name: p.read_bytes() for p in out.glob("monitor_*.json")}

    counting.update(explained=0, forward=0)
    again = evaluate(setup, "--patch-size", 8)
    assert again.exit_code == 0, again.output
    assert counting == {"explained": 0, "forward": 0}  # no saliency map, no forward pass
    assert "0 computed" in again.output
    for name, data in before.items():
        assert (out / name).read_bytes() == data, name
    for name, data in monitors.items():
        assert (out / name).read_bytes() == data, name


def test_evaluate_a_subset_of_methods_needs_no_saliency(setup, counting):
    r = evaluate(setup, "--methods", "msp,entropy", "--no-plots", "--no-cache", "--bootstrap", 5)
    assert r.exit_code == 0, r.output
    out = setup["out"]
    assert [row["method"] for row in read_rows(out / "table1.csv")] == [
        "no_audit",
        "retuned",
        "msp",
        "entropy",
    ]
    assert sorted(p.name for p in out.glob("monitor_*")) == [
        "monitor_entropy.json",
        "monitor_msp.json",
    ]
    assert not list(out.glob("*.png")) and not (out / "cache").exists()
    assert counting["explained"] == 0
    assert counting["forward"] == 24 + 20  # one forward pass per image, nothing more
    assert len(read_rows(out / "bootstrap.csv")) == 5 * 4
    assert header(out / "ttests.csv") and len(read_rows(out / "ttests.csv")) == 0  # no informer


@pytest.mark.parametrize(
    "args, message",
    [
        (("--methods", "entropy,nope"), "expected distinct names"),
        (("--methods", "entropy,entropy"), "expected distinct names"),
        (("--methods", "entropy", "--saliency", "fd"), "leaves out"),
        (("--methods", "entropy", "--patch-size", 8), "--patch-size applies to --saliency fd"),
        (("--saliency", "fd", "--lime-samples", 20), "--lime-samples applies to --saliency lime"),
        (("--saliency", "fd,nope"), "unknown adapter"),
        (("--methods", "informer,msp", "--tta-copies", 3), "--tta-copies/--tta-seed apply"),
    ],
)
def test_evaluate_refuses_bad_combinations(setup, args, message):
    r = evaluate(setup, *args)
    assert r.exit_code == 2
    assert message in r.output
    assert not (setup["out"] / "table1.csv").exists()


def test_evaluate_with_two_adapters_gives_two_informer_rows(setup):
    r = evaluate(
        setup,
        "--methods",
        "informer,entropy",
        "--saliency",
        "fd,lime",
        "--patch-size",
        8,
        "--lime-samples",
        12,
        "--bootstrap",
        4,
        "--no-plots",
    )
    assert r.exit_code == 0, r.output
    out = setup["out"]
    table = [row["method"] for row in read_rows(out / "table1.csv")]
    assert table == ["no_audit", "retuned", "informer_fd", "informer_lime", "entropy"]
    tests = [(t["informer"], t["baseline"]) for t in read_rows(out / "ttests.csv")]
    assert ("informer_lime", "entropy") in tests and ("informer_fd", "no_audit") in tests
    lime = json.loads((out / "monitor_informer_lime.json").read_text())["binding"]["saliency"]
    assert lime["name"] == "lime" and lime["num_samples"] == 12
    assert lime["seed"] == 0  # --seed, as no --lime-seed was given


def test_evaluate_records_a_failed_image_and_exits_1(setup):
    (setup["test"] / "imgs" / "img_004.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = evaluate(setup, "--patch-size", 8, "--no-plots")
    assert r.exit_code == 1, r.output
    assert "img_004.png" in r.output and "1 file(s) failed" in r.output
    report = (setup["out"] / "report.md").read_text()
    assert "img_004.png" in report and '"scored": 19' in report
    assert (setup["out"] / "table1.csv").is_file()


def test_monitors_written_by_evaluate_apply_with_flag(setup):
    assert evaluate(setup, "--patch-size", 8, "--no-plots").exit_code == 0
    out = setup["out"]
    flags_by_method = {row["method"]: row for row in read_rows(out / "flags.csv")}
    for row, column in (
        ("informer_fd", "d"),
        ("entropy", "entropy"),
        ("tta", "tta"),
        ("msp", "msp"),
    ):
        csv_out = setup["tmp"] / f"flags_{row}.csv"
        f = flag(setup, csv_out, monitor=out / f"monitor_{row}.json")
        assert f.exit_code == 0, f.output
        rows = read_rows(csv_out)
        assert len(rows) == 20
        assert list(rows[0])[3:8] == ["prob_A", "pred_A", f"{column}_A", "flag_A", "audited_A"]
        # flag on the test images flags exactly what evaluate counted
        for c in CLASSES:
            n_flags = sum(int(r[f"flag_{c}"]) for r in rows)
            assert n_flags == int(flags_by_method[row][c]), (row, c)
        monitor = json.loads((out / f"monitor_{row}.json").read_text())["monitor"]
        for spec in monitor["classes"]:
            name, tau = spec["name"], spec["flag_threshold"]
            for r in rows:
                s = float(r[f"{column}_{name}"])
                flagged = s < tau if monitor["direction"] == "below" else s > tau
                assert int(r[f"flag_{name}"]) == flagged


def test_flag_refuses_a_method_other_than_the_monitors(setup):
    assert (
        evaluate(setup, "--methods", "entropy,tta", "--no-plots", "--tta-copies", 3).exit_code == 0
    )
    out = setup["out"]

    def flag_with(monitor, *extra):
        return flag(setup, setup["tmp"] / "f.csv", *extra, monitor=out / monitor)

    r = flag_with("monitor_entropy.json", "--method", "informer")
    assert r.exit_code == 2
    assert "--method entropy" in r.output and "--method informer" in r.output
    assert flag_with("monitor_entropy.json", "--method", "entropy").exit_code == 0
    r = flag_with("monitor_tta.json", "--tta-copies", 5)
    assert r.exit_code == 2 and "method.copies is 3 in the monitor but 5" in r.output
    r = flag_with("monitor_entropy.json", "--patch-size", 4)
    assert r.exit_code == 2 and "--patch-size applies to --method informer" in r.output
    r = flag_with("monitor_entropy.json", "--with-matrix")
    assert r.exit_code == 2 and "--with-matrix needs saliency maps" in r.output


def calibrate(s, *extra, out="monitor.json"):
    return conftest.calibrate(s, s["tmp"] / out, *extra, saliency=())


def test_calibrate_method_entropy_needs_no_saliency(setup, counting):
    # A given input direction: no probe copies to score (auto would add 3 x 8 forward passes).
    r = calibrate(
        setup, "--method", "entropy", "--scores-csv", setup["tmp"] / "scores.csv",
        "--input-direction", "high",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert counting["explained"] == 0 and counting["forward"] == 24
    doc = json.loads((setup["tmp"] / "monitor.json").read_text())
    assert (doc["monitor"]["method"], doc["monitor"]["direction"]) == ("entropy", "above")
    assert doc["binding"]["saliency"] is None
    assert doc["binding"]["method"] == {"name": "entropy"}
    scores = read_rows(setup["tmp"] / "scores.csv")
    assert "entropy_A" in scores[0] and "d_A" not in scores[0]
    assert not any(k.startswith("dist_") for k in scores[0])
    assert all(0 <= float(row["entropy_B"]) <= 1 for row in scores)
    assert "entropy, score > τ flags" in r.output


def test_calibrate_method_tta_binds_its_settings(setup):
    r = calibrate(setup, "--method", "tta", "--tta-copies", 4, "--tta-seed", 7)
    assert r.exit_code == 0, r.output
    doc = json.loads((setup["tmp"] / "monitor.json").read_text())
    method = doc["binding"]["method"]
    assert (method["name"], method["copies"], method["seed"]) == ("tta", 4, 7)
    assert doc["monitor"]["direction"] == "above"
    f = flag(setup, setup["tmp"] / "f.csv")
    assert f.exit_code == 0, f.output
    assert "tta_C" in read_rows(setup["tmp"] / "f.csv")[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (("--method", "msp", "--patch-size", 8), "--patch-size applies to --method informer"),
        (("--method", "msp", "--saliency", "fd"), "--saliency applies to --method informer"),
        (("--method", "entropy", "--tta-copies", 4), "apply to the tta method only"),
        (("--tta-seed", 1), "apply to the tta method only"),
    ],
)
def test_calibrate_refuses_options_of_another_method(setup, args, message):
    r = calibrate(setup, *args)
    assert r.exit_code == 2 and message in r.output


def test_calibrate_and_flag_use_the_cache_when_asked(setup, counting):
    cache = setup["tmp"] / "cache"
    # A given input direction: auto's probe copies are scored on every run (never cached).
    given = ("--input-direction", "high")
    assert calibrate(setup, "--patch-size", 8, "--cache", cache, *given).exit_code == 0
    first = (setup["tmp"] / "monitor.json").read_bytes()
    assert counting["explained"] == 24
    assert calibrate(setup, "--patch-size", 8, "--cache", cache, *given).exit_code == 0
    assert counting["explained"] == 24  # the second run explained nothing
    assert (setup["tmp"] / "monitor.json").read_bytes() == first
    # flag reads the entries calibrate stored (same model, images, settings: same keys)
    f = flag(setup, setup["tmp"] / "f.csv", "--cache", cache, images=setup["calib"])
    assert f.exit_code == 0, f.output
    assert counting["explained"] == 24


def test_an_informer_monitor_without_method_in_its_binding_still_applies(setup):
    """Monitor files written before the baselines have no binding 'method': INFORMER."""
    assert calibrate(setup, "--patch-size", 8).exit_code == 0
    doc = json.loads((setup["tmp"] / "monitor.json").read_text())
    assert "method" not in doc["binding"]
    f = flag(setup, setup["tmp"] / "f.csv", "--method", "informer")
    assert f.exit_code == 0, f.output
    doc["binding"]["method"] = {"name": "entropy"}  # contradicts the monitor's method
    (setup["tmp"] / "bad.json").write_text(json.dumps(doc))
    g = flag(setup, setup["tmp"] / "g.csv", monitor=setup["tmp"] / "bad.json")
    assert g.exit_code == 2 and "does not name the monitor's method" in g.output


def test_evaluate_says_when_test_images_are_calibration_images(setup):
    r = invoke(
        "evaluate",
        setup["model"],
        "--calib-images",
        setup["calib"],
        "--calib-labels",
        setup["calib_labels"],
        "--test-images",
        setup["calib"],
        "--test-labels",
        setup["calib_labels"],
        "-o",
        setup["out"],
        "--methods",
        "entropy",
        "--no-plots",
        "--bootstrap",
        3,
    )
    assert r.exit_code == 0, r.output
    assert "24 test image(s) are also calibration images" in r.output
    report = (setup["out"] / "report.md").read_text()
    assert "| test images also in the calibration set | 24 |" in report


def test_evaluate_refuses_label_sets_of_other_classes(setup):
    text = setup["test_labels"].read_text().replace("path,A,B,C", "path,A,B,X")
    setup["test_labels"].write_text(text)
    r = evaluate(setup, "--methods", "entropy", "--no-plots")
    assert r.exit_code == 2 and "test" in r.output and "'C'" in r.output
    ok = evaluate(setup, "--methods", "entropy", "--classes", "A,B", "--no-plots")
    assert ok.exit_code == 0, ok.output
    assert header(setup["out"] / "table1.csv") == ["method", "A", "B", "mean_f1"]


@needs_shared
@pytest.mark.shared
@pytest.mark.slow
def test_evaluate_on_the_shared_nih_val_split_in_two_halves(tmp_path):
    """The worked example's setup, small: 10 + 10 val images, cheap methods only."""
    with (NIH / "labels.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames
        rows = sorted((r for r in reader if r["split"] == "val"), key=lambda r: r["path"])[:20]
    for i, row in enumerate(rows):
        row["split"] = "calibration" if i < 10 else "evaluation"
    halves = tmp_path / "halves.csv"
    with halves.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    common = ("--calib-images", NIH, "--calib-labels", halves, "--test-images", NIH)
    r = invoke(
        "evaluate",
        REF_MODEL,
        "--model-card",
        REF_CARD,
        *common,
        "--test-labels",
        halves,
        "--calib-split",
        "calibration",
        "--test-split",
        "evaluation",
        "--methods",
        "informer,entropy,msp",
        "--patch-size",
        64,
        "--bootstrap",
        5,
        "-o",
        tmp_path / "out",
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.output
    table = read_rows(tmp_path / "out" / "table1.csv")
    assert [row["method"] for row in table] == [
        "no_audit", "retuned", "informer_fd", "entropy", "msp"
    ]  # fmt: skip
    assert list(table[0])[1:6] == [
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Effusion",
    ]
    report = (tmp_path / "out" / "report.md").read_text()
    assert '"calibration": {"listed": 10, "scored": 10}' in report
    assert "| test images also in the calibration set | 0 |" in report
