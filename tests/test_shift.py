"""The shift benchmark (`informer-audit shift`): scoring in memory, tables, reports, exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

import conftest
from conftest import invoke, read_rows, write_images
from informer_audit.adapters.fd import FiniteDifferenceIxG
from informer_audit.audit import Auditor
from informer_audit.corruptions import corrupt
from informer_audit.images import load_image
from informer_audit.model import OnnxClassifier
from informer_audit.monitorfile import load_monitor
from informer_audit.scorers import InformerScorer
from informer_audit.shift import SCORE_DIRECTIONS, _auroc, clopper_pearson

FEW = "invert,occlude,gaussian_noise"
"""A quick subset: one one-level corruption and two graded ones."""


@pytest.fixture
def env(tmp_path):
    """A tiny model, 30 labelled images calibrating a monitor (input check at alpha 0.1, so
    that it can flag with 30 images), 3 more images of another size."""
    e = conftest.labelled_folder(tmp_path, n_val=30, n_audit=3, audit_size=28)
    monitor = tmp_path / "monitor.json"
    result = conftest.calibrate(e, monitor, "--input-direction", "high", "--input-alpha", "0.1")
    assert result.exit_code == 0, result.output
    return {**e, "monitor": monitor}


def shift_args(env, out, *extra):
    return [
        "shift", env["model"], "--monitor", env["monitor"], "--images", env["val"],
        "--labels", env["labels"], "--device", "cpu", "-o", out, *extra,
    ]  # fmt: skip


def test_score_arrays_gives_what_run_gives_for_the_file(tmp_path, tiny_model):
    model_path, _ = tiny_model(size=16, hidden=5, seed=1)
    model = OnnxClassifier(model_path, device="cpu")
    auditor = Auditor(model, InformerScorer(FiniteDifferenceIxG(patch_size=8)))
    paths = write_images(tmp_path / "imgs", 3, size=20, seed=2)
    from_files = list(auditor.run([(p.name, p) for p in paths]))
    in_memory = auditor.score_arrays([p.name for p in paths], [load_image(p) for p in paths])
    for a, b in zip(from_files, in_memory, strict=True):
        assert a.ok and b.ok and a.key == b.key
        assert np.array_equal(a.logits, b.logits) and np.array_equal(a.dist, b.dist)
        assert np.array_equal(a.score, b.score)
    bad = auditor.score_arrays(["flat"], [np.zeros((4, 4), dtype=np.float32)])
    assert not bad[0].ok and "flat" in bad[0].error


def test_auroc_and_binomial_interval_hand_computed():
    # pairs (pos, neg): 3>1, 3>2, 2>1, 2=2 (one half): 3.5 of 4
    assert _auroc(np.array([1.0, 2.0]), np.array([3.0, 2.0])) == pytest.approx(0.875)
    assert _auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    assert math.isnan(_auroc(np.array([]), np.array([1.0])))
    low, high = clopper_pearson(0, 140)
    assert low == 0 and high == pytest.approx(1 - 0.025 ** (1 / 140))
    low, high = clopper_pearson(1, 2)  # 1 - (1 - p)^2 = 0.025 and 1 - p^2 = 0.025
    assert low == pytest.approx(1 - math.sqrt(0.975)) and high == pytest.approx(math.sqrt(0.975))


def test_tables_agree_with_the_per_image_scores_and_the_model(env, tmp_path):
    out = tmp_path / "out"
    result = invoke(*shift_args(env, out, "--corruptions", FEW, "--other-images", env["audit"]))
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "auroc.csv", "flag_rate.csv", "f1.csv", "scores.csv", "failures.csv",
        "shift_auroc.png", "report.md",
    }  # fmt: skip
    scores = read_rows(out / "scores.csv")
    auroc = read_rows(out / "auroc.csv")
    conditions = [(r["corruption"], r["severity"]) for r in auroc]
    assert conditions == [
        ("invert", "1"), ("occlude", "1"), ("occlude", "2"), ("occlude", "3"),
        ("gaussian_noise", "1"), ("gaussian_noise", "2"), ("gaussian_noise", "3"),
        ("other_images", "0"),
    ]  # fmt: skip
    clean = [r for r in scores if r["corruption"] == "clean"]
    assert len(clean) == 30
    for row in auroc:
        recs = [r for r in scores if (r["corruption"], r["severity"]) == tuple(row.values())[1:3]]
        assert int(row["n"]) == len(recs) == (3 if row["corruption"] == "other_images" else 30)
        for score, direction in SCORE_DIRECTIONS.items():
            if score == "tta_spread":  # not an informer score
                assert row[f"auroc_{score}"] == "nan"
                continue
            sign = -1.0 if direction == "low" else 1.0
            s = [sign * float(r[score]) for r in clean + recs]
            truth = [0] * len(clean) + [1] * len(recs)
            assert float(row[f"auroc_{score}"]) == pytest.approx(roc_auc_score(truth, s))
    # The input check's flags are the monitor file's check applied to the written scores.
    check = load_monitor(env["monitor"]).input_check
    assert check is not None and check.score == "distinctiveness"
    shifted = [r for r in scores if r["corruption"] != "clean"]
    values = np.array([float(r["distinctiveness"]) for r in shifted])
    assert [int(r["input_flag"]) for r in shifted] == check.flags(values).astype(int).tolist()
    assert np.allclose([float(r["input_p"]) for r in shifted], check.p_values(values))
    # The clean images are the 30 calibration images themselves: each counts itself, so its
    # p-value is (1 + its rank from the top) / 31, at least 2 / 31. (The CSV's 8 digits do not
    # keep the ties with the calibration scores: these rows are not recomputed from them.)
    ranks = [float(r["input_p"]) * 31 for r in clean]
    assert all(abs(v - round(v)) < 1e-5 and round(v) >= 2 for v in ranks)
    for row in read_rows(out / "flag_rate.csv"):
        at = (row["corruption"], row["severity"])
        recs = [r for r in scores if (r["corruption"], r["severity"]) == at]
        k = sum(int(r["input_flag"]) for r in recs)
        assert (int(row["n"]), int(row["flagged"])) == (len(recs), k)
        assert float(row["alpha"]) == 0.1 and row["direction"] == "high"
        low, high = clopper_pearson(k, len(recs))
        assert (float(row["low"]), float(row["high"])) == pytest.approx((low, high))
    # F1 of the model at the monitor's thresholds, recomputed from the images themselves.
    f1 = {(r["corruption"], r["severity"]): r for r in read_rows(out / "f1.csv")}
    assert float(f1[("clean", "0")]["drop"]) == 0
    assert ("other_images", "0") not in f1
    model = OnnxClassifier(env["model"], device="cpu")
    monitor = load_monitor(env["monitor"]).monitor
    labels = read_rows(env["labels"])
    images = [load_image(env["val"] / r["path"]) for r in labels]
    y = np.array([[int(r[c]) for c in conftest.CLASSES] for r in labels])
    for corruption, severity in (("clean", 0), ("occlude", 2)):
        x = images if corruption == "clean" else [corrupt(i, corruption, severity) for i in images]
        yhat = monitor.predict(1 / (1 + np.exp(-model.logits(model.preprocess(x)))))
        expected = [f1_score(y[:, j], yhat[:, j], zero_division=np.nan) for j in range(3)]
        row = f1[(corruption, str(severity))]
        got = [float(row[f"f1_{c}"]) for c in conftest.CLASSES]
        assert got == pytest.approx(expected, nan_ok=True)
        assert float(row["macro_f1"]) == pytest.approx(np.nanmean(expected))
    report = (out / "report.md").read_text()
    assert "## `informer_fd`" in report and "occlude" in report and "covered/width" in report


def test_the_same_run_writes_byte_identical_files(env, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        result = invoke(*shift_args(env, out, "--corruptions", "gaussian_noise,jpeg", "--seed", 7))
        assert result.exit_code == 0, result.output
    for path in a.iterdir():
        assert path.read_bytes() == (b / path.name).read_bytes(), path.name
    other = tmp_path / "c"
    result = invoke(*shift_args(env, other, "--corruptions", "gaussian_noise", "--seed", 8))
    assert result.exit_code == 0, result.output

    def noise(folder: Path) -> list[str]:
        rows = read_rows(folder / "scores.csv")
        return [r["distinctiveness"] for r in rows if r["corruption"] == "gaussian_noise"]

    assert noise(other) != noise(a)  # another seed, other noise


def test_a_broken_image_is_a_failure_row_and_exit_1(env, tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder, 3, size=20, seed=9)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    result = invoke(
        "shift", env["model"], "--monitor", env["monitor"], "--images", folder,
        "--corruptions", "invert", "--device", "cpu", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    failures = read_rows(out / "failures.csv")
    assert [(Path(r["path"]).name, r["corruption"]) for r in failures] == [("broken.png", "clean")]
    assert not (out / "f1.csv").exists()  # no labels, no F1
    auroc = read_rows(out / "auroc.csv")
    assert [(r["n_clean"], r["n"]) for r in auroc] == [("3", "3")]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--corruptions", "sharpen"), "sharpen"),
        (("--severities", "1,4"), "severities"),
        (("--split", "val"), "--labels"),
    ],
)
def test_refused_options_exit_2(env, tmp_path, extra, message):
    args = [a for a in shift_args(env, tmp_path / "out") if a not in ("--labels", env["labels"])]
    result = invoke(*args, *extra)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


def test_no_output_inside_an_input_and_no_monitor_of_another_model(env, tmp_path, tiny_model):
    inside = invoke(*shift_args(env, env["val"] / "shift"))
    assert inside.exit_code == 2 and "input folder" in inside.output
    assert not (env["val"] / "shift").exists()
    other, _ = tiny_model(name="other.onnx", classes=conftest.CLASSES, size=16, hidden=5, seed=9)
    result = invoke("shift", other, *shift_args(env, tmp_path / "out")[2:])
    assert result.exit_code == 2 and "fitted for other settings" in result.output


def test_several_monitors_and_one_without_input_check(env, tmp_path):
    entropy = tmp_path / "entropy.json"
    r = conftest.calibrate(env, entropy, "--method", "entropy", saliency=())
    assert r.exit_code == 0, r.output
    plain = tmp_path / "old.json"  # a monitor file written before the input check existed
    doc = json.loads(env["monitor"].read_text())
    doc.pop("input_check")
    plain.write_text(json.dumps(doc))
    out = tmp_path / "out"
    result = invoke(*shift_args(env, out, "--corruptions", "invert", "--monitor", entropy,
                                "--monitor", plain))  # fmt: skip
    assert result.exit_code == 0, result.output
    auroc = read_rows(out / "auroc.csv")
    by_monitor = {r["monitor"]: r for r in auroc}
    assert list(by_monitor) == ["monitor", "entropy", "old"]  # repeated names: the file names
    assert by_monitor["entropy"]["auroc_distinctiveness"] == "nan"
    # The informer monitors share their maps: the same scores, scored once.
    assert (
        by_monitor["monitor"]["auroc_distinctiveness"] == by_monitor["old"]["auroc_distinctiveness"]
    )
    assert {r["monitor"] for r in read_rows(out / "flag_rate.csv")} == {"monitor", "entropy"}
    assert "none (the monitor has no input check)" in (out / "report.md").read_text()
