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
