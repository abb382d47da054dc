"""Calibrate on the shared NIH val split and flag its test split with the reference model."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
from click.testing import CliRunner

from conftest import NIH, REF_CARD, REF_MODEL, needs_shared
from informer_audit.cli import cli

pytestmark = [needs_shared, pytest.mark.shared, pytest.mark.slow]


def test_calibrate_on_val_and_flag_test(tmp_path):
    runner = CliRunner()
    monitor = tmp_path / "monitor.json"
    # 64 px patches: 2 x 2 per 128 px image, 8 forward passes each, to keep this test short.
    r = runner.invoke(
        cli,
        [
            "calibrate",
            str(REF_MODEL),
            "--model-card",
            str(REF_CARD),
            "--images",
            str(NIH),
            "--labels",
            str(NIH / "labels.csv"),
            "--split",
            "val",
            "--patch-size",
            "64",
            "-o",
            str(monitor),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(monitor.read_text())
    assert doc["binding"]["model_sha256"] == hashlib.sha256(REF_MODEL.read_bytes()).hexdigest()
    assert doc["binding"]["audited_classes"] == [
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Effusion",
    ]
    assert doc["calibration"]["n_images"] == 140 and doc["calibration"]["n_failed"] == 0
    positives = [c["calibration"]["n_pos"] for c in doc["monitor"]["classes"]]
    assert positives == [20, 11, 13, 4, 21]
    for c in doc["monitor"]["classes"]:
        cal = c["calibration"]
        assert cal["f1_after"] >= cal["f1_before"]  # tau = 0 (flag nothing) is a candidate
        assert 0 < c["prediction_threshold"] < 1

    # The test split, as an unlabelled folder of its own.
    audit = tmp_path / "audit"
    audit.mkdir()
    with (NIH / "labels.csv").open(newline="") as fh:
        test_rows = [row for row in csv.DictReader(fh) if row["split"] == "test"]
    for row in test_rows:
        (audit / row["path"].split("/")[-1]).symlink_to(NIH / row["path"])
    out = tmp_path / "flags.csv"
    f = runner.invoke(
        cli,
        [
            "flag",
            str(REF_MODEL),
            "--model-card",
            str(REF_CARD),
            "--monitor",
            str(monitor),
            "--images",
            str(audit),
            "-o",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert f.exit_code == 0, f.output
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(test_rows) == 140
    assert all(row["status"] == "ok" for row in rows)
    for c in doc["monitor"]["classes"]:
        name, tau = c["name"], c["flag_threshold"]
        for row in rows:
            assert int(row[f"flag_{name}"]) == (float(row[f"d_{name}"]) < tau)
            assert 0 <= float(row[f"d_{name}"]) <= 8


def test_calibrate_on_val_prints_and_stores_the_out_of_sample_estimate(tmp_path):
    """The margin baseline (no maps: one forward pass per image) on the real val split."""
    monitor = tmp_path / "margin.json"
    r = CliRunner().invoke(
        cli,
        [
            "calibrate", str(REF_MODEL), "--model-card", str(REF_CARD), "--images", str(NIH),
            "--labels", str(NIH / "labels.csv"), "--split", "val", "--method", "margin",
            "-o", str(monitor), "--device", "cpu", "--cv-repeats", "5",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "In-sample: calibration on 140 images" in r.output
    assert "Out-of-sample: expected effect on new images" in r.output
    doc = json.loads(monitor.read_text())
    estimates = doc["evidence"]["out_of_sample"]
    assert [e["n_pos"] for e in estimates] == [20, 11, 13, 4, 21]
    for e in estimates:
        assert e["verdict"] in (
            "expected to help",
            "no evidence",
            "expected to hurt",
            "flags nothing",
        )
        assert e["n_splits"] == min(5, e["n_pos"]) and e["n_repeats"] == 5
        if e["verdict"] != "flags nothing":
            assert e["delta_f1_low"] <= e["delta_f1"] <= e["delta_f1_high"]
    # Trained as 8-bit PIL bilinear resizes: the Effusion threshold is the one of that
    # preprocessing (0.267; float resizing gives 0.228).
    effusion = doc["monitor"]["classes"][4]["prediction_threshold"]
    assert effusion == pytest.approx(0.2668, abs=5e-4)
    # The margin score is a function of p: it adds nothing beyond p, by construction.
    assert all(
        i["cv_auroc_gain"] == 0.0 and i["p_value"] == 1.0 for i in doc["evidence"]["information"]
    )
