"""The CLI end to end on a tiny test-built model: exit codes, outputs, refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import conftest
from conftest import invoke, labelled_folder, read_rows, write_images


@pytest.fixture
def setup(tmp_path):
    s = labelled_folder(
        tmp_path, n_val=24, n_audit=5, subdir="imgs", audit_size=24, model_name="tiny.onnx",
        extra_columns={"age": 50},
    )  # fmt: skip
    write_images(s["audit"] / "sub", 2, size=18, seed=6, mode="RGB")
    return dict(s, monitor=tmp_path / "monitor.json")


def calibrate(s, *extra, out="monitor.json", **kw):
    return conftest.calibrate(s, s["tmp"] / out, *extra, **kw)


def flag(s, *extra, out=None, **paths):
    return conftest.flag(s, out or s["tmp"] / "flags.csv", *extra, **paths)


def test_info_shows_model(setup):
    r = invoke("info", setup["model"], "--device", "cpu")
    assert r.exit_code == 0, r.output
    for text in ("A, B, C", "NCHW", "CPUExecutionProvider", "dynamic", "ONNX metadata"):
        assert text in r.output
    j = invoke("info", setup["model"], "--json")
    assert j.exit_code == 0
    assert json.loads(j.output)["card"]["class_names"] == ["A", "B", "C"]


def test_info_without_preprocessing_is_refused(tmp_path, tiny_model):
    model, _ = tiny_model(metadata=False, name="bare.onnx")
    r = invoke("info", model)
    assert r.exit_code == 2
    assert "cannot tell how to preprocess" in r.output and "card_file=" in r.output
    assert "(command line: --model-card, --class-names, --image-size," in r.output
    card = tmp_path / "card.json"
    card.write_text(
        json.dumps(
            {
                "class_names": ["x", "y", "z"],
                "image_size": [16, 16],
                "channels": 3,
                "layout": "NCHW",
                "scale": 255,
                "mean": [0.5],
                "std": [0.25],
                "output": "logits",
            }
        )
    )
    ok = invoke("info", model, "--model-card", card)
    assert ok.exit_code == 0 and "x, y, z" in ok.output


def test_calibrate_then_flag(setup):
    r = calibrate(setup, "--scores-csv", setup["tmp"] / "scores.csv")
    assert r.exit_code == 0, r.output
    doc = json.loads((setup["tmp"] / "monitor.json").read_text())
    assert doc["schema_version"] == 1
    assert doc["binding"]["audited_classes"] == ["A", "B", "C"]
    assert doc["binding"]["saliency"] == {
        "name": "fd",
        "patch_size": 8,
        "scheme": "central",
        "step": 0.001,
    }
    assert doc["calibration"]["n_images"] == 24
    assert "F1 before" in r.output
    scores = read_rows(setup["tmp"] / "scores.csv")
    assert len(scores) == 24 and "dist_A|B" in scores[0]

    out = setup["tmp"] / "flags.csv"
    f = flag(setup, "--device", "cpu", out=out)
    assert f.exit_code == 0, f.output
    rows = read_rows(out)
    assert len(rows) == 7  # recursive: 5 + 2 in sub/
    assert list(rows[0])[:8] == [
        "path",
        "status",
        "error",
        "prob_A",
        "pred_A",
        "d_A",
        "flag_A",
        "audited_A",
    ]
    classes = doc["monitor"]["classes"]
    for row in rows:
        assert row["status"] == "ok"
        for c in classes:
            name = c["name"]
            pred = float(row[f"prob_{name}"]) >= c["prediction_threshold"]
            flagged = float(row[f"d_{name}"]) < c["flag_threshold"]
            assert int(row[f"pred_{name}"]) == pred
            assert int(row[f"flag_{name}"]) == flagged
            assert int(row[f"audited_{name}"]) == (pred ^ flagged)
            assert 0 <= float(row[f"d_{name}"]) <= 4
    assert not out.with_name(out.name + ".partial").exists()


def test_flag_records_a_bad_file_and_goes_on(setup):
    assert calibrate(setup).exit_code == 0
    (setup["audit"] / "broken.png").write_bytes(b"not an image at all")
    (setup["audit"] / "empty.jpg").write_bytes(b"")
    out = setup["tmp"] / "flags.csv"
    f = flag(setup, out=out)
    assert f.exit_code == 1
    rows = {Path(r["path"]).relative_to(setup["audit"]).as_posix(): r for r in read_rows(out)}
    assert len(rows) == 9 and "sub/img_000.png" in rows
    assert rows["broken.png"]["status"] == "failed" and "broken.png" in rows["broken.png"]["error"]
    assert "empty" in rows["empty.jpg"]["error"]
    assert rows["img_000.png"]["status"] == "ok"
    assert "2 file(s) failed" in f.output


def test_calibrate_records_missing_and_corrupt_images(setup):
    with setup["labels"].open("a", newline="") as fh:
        csv.writer(fh).writerow(["imgs/missing.png", 1, 0, 1, 40])
    (setup["val"] / "imgs" / "img_003.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = calibrate(setup)
    assert r.exit_code == 1, r.output
    assert "missing.png" in r.output and "img_003.png" in r.output
    doc = json.loads((setup["tmp"] / "monitor.json").read_text())
    assert doc["calibration"]["n_images"] == 23 and doc["calibration"]["n_failed"] == 2
    failed = {f["path"]: f["error"] for f in doc["calibration"]["failures"]}
    assert set(failed) == {"imgs/missing.png", "imgs/img_003.png"}
    assert "not found" in failed["imgs/missing.png"]


@pytest.mark.parametrize(
    "extra, field",
    [
        (("--patch-size", 4), "saliency.patch_size"),
        (("--fd-step", 0.01), "saliency.step"),
        (("--saliency", "fd", "--fd-scheme", "forward"), "saliency.scheme"),
    ],
)
def test_flag_refuses_other_saliency_settings(setup, extra, field):
    assert calibrate(setup).exit_code == 0
    f = flag(setup, *extra, out=setup["tmp"] / "f.csv")
    assert f.exit_code == 2
    assert field in f.output
    assert not (setup["tmp"] / "f.csv").exists()


def test_flag_refuses_a_monitor_for_another_model(setup, tiny_model):
    assert calibrate(setup).exit_code == 0
    other, _ = tiny_model(classes=("A", "B", "C"), size=16, hidden=5, seed=99, name="other.onnx")
    f = flag(setup, model=other, out=setup["tmp"] / "f.csv")
    assert f.exit_code == 2 and "model_sha256" in f.output


def test_flag_refuses_other_preprocessing(setup, tmp_path):
    assert calibrate(setup).exit_code == 0
    f = flag(setup, "--std", "0.5", out=tmp_path / "f.csv")
    assert f.exit_code == 2 and "preprocessing.std" in f.output


def test_flag_refuses_a_damaged_monitor(setup):
    assert calibrate(setup).exit_code == 0
    m = setup["tmp"] / "monitor.json"
    m.write_text(m.read_text()[:100])
    f = flag(setup, monitor=m, out=setup["tmp"] / "f.csv")
    assert f.exit_code == 2 and "not valid monitor JSON" in f.output


def test_class_subset_and_mapping(setup):
    text = setup["labels"].read_text().replace("path,A,B,C", "path,Alpha,B,C")
    setup["labels"].write_text(text)
    r = calibrate(setup, "--classes", "A=Alpha,C")
    assert r.exit_code == 0, r.output
    doc = json.loads((setup["tmp"] / "monitor.json").read_text())
    assert doc["binding"]["audited_classes"] == ["A", "C"]
    assert doc["calibration"]["label_columns"] == {"A": "Alpha", "C": "C"}
    f = flag(setup, "--with-matrix", out=setup["tmp"] / "f.csv")
    assert f.exit_code == 0
    row = read_rows(setup["tmp"] / "f.csv")[0]
    assert "prob_B" not in row and "dist_A|C" in row
    # with two classes, d_A = d_C = the single pairwise distance
    assert float(row["d_A"]) == pytest.approx(float(row["dist_A|C"]), rel=1e-6)


def test_bad_labels_exit_2(setup):
    setup["labels"].write_text("file_name,A\nx.png,1\n")
    r = calibrate(setup)
    assert r.exit_code == 2 and "labels.csv" in r.output


@pytest.mark.parametrize("machine", ["cpu-build", "no-gpu"])
def test_cuda_unavailable_exit_3(setup, onnx_providers, machine):
    onnx_providers(machine)
    r = invoke("info", setup["model"], "--device", "cuda")
    assert r.exit_code == 3, r.output
    assert "device='cuda'" in r.output and "device='cpu'" in r.output
    assert "--device cuda" not in r.output and "(command line: --device)" in r.output


@pytest.mark.parametrize(
    "machine, note",
    [("cpu-build", "no CUDA provider"), ("no-gpu", "could not be created"), ("gpu", "CUDA (auto)")],
)
def test_info_says_which_device_auto_chose(setup, onnx_providers, machine, note):
    onnx_providers(machine)
    r = invoke("info", setup["model"], "--device", "auto", "--json")
    assert r.exit_code == 0, r.output
    model = json.loads(r.output)
    assert note in model["device_note"]
    assert model["device"] == ("cuda" if machine == "gpu" else "cpu")


def test_unknown_saliency_is_a_usage_error(setup):
    r = calibrate(setup, "--saliency", "nope")
    assert r.exit_code == 2 and "nope" in r.output


def test_flag_takes_the_card_from_the_monitor_for_a_bare_model(setup, tiny_model, tmp_path):
    model, params = tiny_model(metadata=False, name="bare.onnx", hidden=5, seed=1)
    card = tmp_path / "card.json"
    card.write_text(json.dumps(params["card"]))
    r = invoke(
        "calibrate",
        model,
        "--model-card",
        card,
        "--images",
        setup["val"],
        "--labels",
        setup["labels"],
        "-o",
        tmp_path / "m.json",
        "--patch-size",
        8,
    )
    assert r.exit_code == 0, r.output
    f = flag(setup, model=model, monitor=tmp_path / "m.json", out=tmp_path / "f.csv")
    assert f.exit_code == 0, f.output
    assert len(read_rows(tmp_path / "f.csv")) == 7
    # ... but an explicit card that differs from the monitor's is still refused
    other = dict(params["card"], mean=[0.4, 0.4, 0.4])
    card.write_text(json.dumps(other))
    g = flag(
        setup,
        "--model-card",
        card,
        model=model,
        monitor=tmp_path / "m.json",
        out=tmp_path / "g.csv",
    )
    assert g.exit_code == 2 and "preprocessing.mean" in g.output


# -- choosing the saliency adapter ----------------------------------------------------------------
def test_lime_settings_go_into_the_monitor_and_bind_flag(setup):
    lime = ("--saliency", "lime", "--lime-samples", 24, "--lime-seed", 3, "--lime-fill", "0")
    result = calibrate(setup, saliency=lime)
    assert result.exit_code == 0, result.output
    saliency = json.loads((setup["tmp"] / "monitor.json").read_text())["binding"]["saliency"]
    assert saliency["name"] == "lime"
    assert (saliency["num_samples"], saliency["seed"], saliency["fill"]) == (24, 3, 0.0)
    assert "batch_size" not in saliency  # does not change maps
    assert flag(setup).exit_code == 0
    rows = read_rows(setup["tmp"] / "flags.csv")
    assert len(rows) == 7 and all(r["error"] == "" for r in rows)
    refused = flag(setup, "--lime-samples", 25)
    assert refused.exit_code == 2
    assert "num_samples is 24 in the monitor but 25 for this run" in refused.output


def test_flag_refuses_another_adapter_than_the_monitors(setup):
    assert calibrate(setup).exit_code == 0
    result = flag(setup, "--saliency", "lime")
    assert result.exit_code == 2
    assert "fitted with saliency 'fd'" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (("--saliency", "fd", "--lime-samples", 10), "--lime-samples applies to --saliency lime"),
        (("--saliency", "lime", "--patch-size", 8), "--patch-size applies to --saliency fd"),
        (("--saliency", "lime", "--lime-fill", "grey"), "expected 'mean' or a pixel value"),
        (("--saliency", "lime", "--lime-kernel-width", -1), "kernel_width"),
        (("--saliency", "gradient", "--fd-step", 0.01), "--fd-step applies to --saliency fd"),
    ],
)
def test_saliency_options_for_another_adapter_are_refused(setup, args, message):
    result = calibrate(setup, saliency=args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.torch
def test_gradient_adapter_end_to_end(setup):
    pytest.importorskip("torch", reason="the exact-gradient adapter needs torch")
    result = calibrate(setup, saliency=("--saliency", "gradient", "--gradient-batch-size", 5))
    assert result.exit_code == 0, result.output
    binding = json.loads((setup["tmp"] / "monitor.json").read_text())["binding"]
    assert binding["saliency"] == {"name": "gradient"}
    assert flag(setup).exit_code == 0
    assert len(read_rows(setup["tmp"] / "flags.csv")) == 7


def test_gradient_adapter_without_torch_says_how_to_install(setup, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    result = calibrate(setup, saliency=("--saliency", "gradient"))
    assert result.exit_code == 2
    assert "needs torch" in result.output and "pip install" in result.output
