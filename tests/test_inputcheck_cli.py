"""The input check through the CLI: calibrate's options and line, flag's columns and exit codes,
the summary, the report, resuming."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import conftest
from conftest import count_loads, invoke, labelled_folder, read_rows

CHECK_COLUMNS = ["input_score", "input_p", "input_flag"]
CONFIDENCE = ["input_entropy", "input_max_prob", "input_energy"]


@pytest.fixture
def setup(tmp_path):
    s = labelled_folder(tmp_path, n_val=24, n_audit=7, audit_size=24)
    return dict(s, monitor=tmp_path / "monitor.json")


def calibrate(s, *extra, **kw):
    return conftest.calibrate(s, s["monitor"], *extra, **kw)


def flag(s, *extra, out=None, **paths):
    return conftest.flag(s, out or s["tmp"] / "flags.csv", *extra, **paths)


def _entropy(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def test_calibrate_fits_the_input_check_and_says_so(setup):
    r = calibrate(setup)
    assert r.exit_code == 0, r.output
    ic = json.loads(setup["monitor"].read_text())["input_check"]
    assert (ic["score"], ic["alpha"], ic["direction"]) == ("distinctiveness", 0.01, "auto")
    assert ic["fitted_direction"] in ("high", "low", "two-sided")
    assert ic["probe"]["n_images"] == 8  # --input-probes 8: left out of the calibration scores
    assert len(ic["calibration_scores"]) == 16 and ic["calibration_scores"] == sorted(
        ic["calibration_scores"]
    )
    assert all(0 <= v <= 2 for v in ic["calibration_scores"])
    text = " ".join(r.output.split())
    assert "input check: distinctiveness (mean cosine distance between the class maps)" in text
    assert f"direction {ic['fitted_direction']} ({ic['direction_reason']})" in text
    assert "n = 16 calibration images, alpha = 0.01" in text
    lo, hi = ic["calibration_scores"][0], ic["calibration_scores"][-1]
    assert f"calibration scores {lo:.4g} to {hi:.4g}" in text
    # 16 images cannot give p <= 0.01: a warning, naming the option, and the line says so too
    assert "warning:" in text and "no image can be flagged" in text
    assert "(command line: --input-alpha)" in text


def test_a_given_direction_scores_nothing_again_and_keeps_every_image(setup):
    r = calibrate(setup, "--input-direction", "low", "--input-alpha", "0.1")
    assert r.exit_code == 0, r.output
    ic = json.loads(setup["monitor"].read_text())["input_check"]
    assert (ic["fitted_direction"], ic["probe"], ic["direction_reason"]) == ("low", None, "given")
    assert len(ic["calibration_scores"]) == 24
    assert "direction low (given), n = 24 calibration images, alpha = 0.1" in " ".join(
        r.output.split()
    )
    assert "warning:" not in r.output


def test_flag_writes_the_input_columns_by_hand(setup):
    assert calibrate(setup, "--input-direction", "high", "--input-alpha", "0.3").exit_code == 0
    ic = json.loads(setup["monitor"].read_text())["input_check"]
    cal = np.array(ic["calibration_scores"])
    out = setup["tmp"] / "flags.csv"
    f = flag(setup, out=out)
    assert f.exit_code == 0, f.output
    rows = read_rows(out)
    header = list(rows[0])
    at = header.index("audited_C") + 1
    assert header[at:] == [*CHECK_COLUMNS, "input_distinctiveness", *CONFIDENCE]
    flagged = 0
    for row in rows:
        s = float(row["input_score"])
        assert s == float(row["input_distinctiveness"])
        p_hand = (1 + np.sum(cal >= s)) / (len(cal) + 1)
        assert float(row["input_p"]) == pytest.approx(p_hand, abs=1e-7)
        assert row["input_flag"] == str(int(p_hand <= 0.3))
        flagged += int(row["input_flag"])
        probs = [float(row[f"prob_{c}"]) for c in "ABC"]
        assert float(row["input_entropy"]) == pytest.approx(
            np.mean([_entropy(p) for p in probs]), abs=1e-6
        )
        assert float(row["input_max_prob"]) == pytest.approx(max(probs), abs=1e-7)
        # -sum log(1 + e^z) = sum log(1 - p) for p = sigmoid(z)
        energy = sum(math.log(1 - p) for p in probs)
        assert float(row["input_energy"]) == pytest.approx(energy, abs=1e-6)
    text = " ".join(f.output.split())
    assert f"input check: {flagged} of 7 scored images flagged" in text
    assert "at alpha = 0.3 (distinctiveness, direction high, 24 calibration images)" in text


def test_flag_input_alpha_overrides_the_monitors(setup):
    assert calibrate(setup, "--input-direction", "two-sided", "--input-alpha", "0.1").exit_code == 0
    base, wide = setup["tmp"] / "base.csv", setup["tmp"] / "wide.csv"
    assert flag(setup, out=base).exit_code == 0
    f = flag(setup, "--input-alpha", "0.99", out=wide)
    assert f.exit_code == 0, f.output
    a, b = read_rows(base), read_rows(wide)
    for ra, rb in zip(a, b, strict=True):
        assert {k: v for k, v in ra.items() if k != "input_flag"} == {
            k: v for k, v in rb.items() if k != "input_flag"
        }
        assert rb["input_flag"] == str(int(float(rb["input_p"]) <= 0.99))
        assert ra["input_flag"] == str(int(float(ra["input_p"]) <= 0.1))
    assert "at alpha = 0.99" in " ".join(f.output.split())
    bad = flag(setup, "--input-alpha", "1.5", out=setup["tmp"] / "bad.csv")
    assert bad.exit_code == 2 and "--input-alpha" in bad.output


def test_a_resumed_run_with_another_alpha_is_refused(tmp_path, monkeypatch):
    s = dict(labelled_folder(tmp_path, n_val=24, n_audit=12), monitor=tmp_path / "monitor.json")
    assert calibrate(s, "--input-direction", "high", "--input-alpha", "0.2").exit_code == 0
    out = tmp_path / "flags.csv"
    count_loads(monkeypatch, stop_at=10)  # the first chunk of 8 is journaled, then Ctrl-C
    assert flag(s, out=out).exit_code == 130
    monkeypatch.undo()
    r = flag(s, "--input-alpha", "0.5", out=out)
    assert r.exit_code == 2 and "journal" in r.output
    r = flag(s, "--input-alpha", "0.5", "--restart", out=out)
    assert r.exit_code == 0, r.output
    again = tmp_path / "again.csv"
    assert flag(s, "--input-alpha", "0.5", out=again).exit_code == 0
    assert out.read_bytes() == again.read_bytes()


def test_failed_rows_keep_the_input_columns_blank(setup):
    assert calibrate(setup, "--input-alpha", "0.2").exit_code == 0
    (setup["audit"] / "broken.png").write_bytes(b"not an image at all")
    out = setup["tmp"] / "flags.csv"
    f = flag(setup, out=out)
    assert f.exit_code == 1
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    broken = rows["broken.png"]
    assert broken["status"] == "failed"
    assert all(broken[c] == "" for c in [*CHECK_COLUMNS, *CONFIDENCE])
    assert "of 7 scored images flagged" in " ".join(f.output.split())


def test_a_method_without_maps_checks_a_confidence_score(setup):
    r = calibrate(setup, "--method", "entropy", saliency=())
    assert r.exit_code == 0, r.output
    ic = json.loads(setup["monitor"].read_text())["input_check"]
    assert ic["score"] == "entropy"
    out = setup["tmp"] / "flags.csv"
    assert flag(setup, out=out).exit_code == 0
    row = read_rows(out)[0]
    assert "input_distinctiveness" not in row and "input_tta_spread" not in row
    assert row["input_score"] == row["input_entropy"]
    bad = calibrate(setup, "--method", "entropy", "--input-score", "distinctiveness", saliency=())
    assert bad.exit_code == 2 and "--input-score" in bad.output
    assert "entropy, max_prob, energy" in bad.output


def test_tta_writes_its_spread(setup):
    r = calibrate(
        setup, "--method", "tta", "--tta-copies", "2", "--input-score", "tta_spread",
        "--input-direction", "high", saliency=(),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    out = setup["tmp"] / "flags.csv"
    assert flag(setup, out=out).exit_code == 0
    for row in read_rows(out):
        spread = np.mean([float(row[f"tta_{c}"]) for c in "ABC"])
        assert float(row["input_tta_spread"]) == pytest.approx(spread, abs=1e-7)
        assert row["input_score"] == row["input_tta_spread"]


def test_a_monitor_without_an_input_check(setup):
    assert calibrate(setup).exit_code == 0
    doc = json.loads(setup["monitor"].read_text())
    del doc["input_check"]
    setup["monitor"].write_text(json.dumps(doc))
    out = setup["tmp"] / "flags.csv"
    f = flag(setup, out=out)
    assert f.exit_code == 0, f.output
    row = read_rows(out)[0]
    assert not set(CHECK_COLUMNS) & set(row) and set(CONFIDENCE) <= set(row)
    assert "input check: none" in f.output
    r = flag(setup, "--input-alpha", "0.1", out=setup["tmp"] / "other.csv")
    assert r.exit_code == 2 and "(command line: --input-alpha)" in " ".join(r.output.split())


def test_the_report_shows_input_flagged_images_first(setup):
    assert calibrate(setup, "--input-direction", "two-sided", "--input-alpha", "0.2").exit_code == 0
    out, report = setup["tmp"] / "flags.csv", setup["tmp"] / "report"
    f = flag(setup, "--input-alpha", "0.99", "--report", report, out=out)
    assert f.exit_code == 0, f.output
    rows = read_rows(out)
    n_flagged = sum(int(r["input_flag"]) for r in rows)
    assert n_flagged > 0
    html = (report / "index.html").read_text()
    assert html.index('id="input-check"') < html.index('id="gallery"')
    assert html.count('id="input-row-') == n_flagged
    assert f'id="count-input-flagged">{n_flagged}<' in html
    assert "input-flagged" in html and "the flag run used another alpha" in html
    # Cards keep their maps (the input-flagged ones are drawn like the others).
    first = html.index('id="input-row-')
    assert "map_" in html[first : html.index("</article>", first)]


def test_report_refuses_input_p_values_of_another_monitor(setup):
    assert calibrate(setup, "--input-direction", "high", "--input-alpha", "0.2").exit_code == 0
    out = setup["tmp"] / "flags.csv"
    assert flag(setup, out=out).exit_code == 0
    doc = json.loads(setup["monitor"].read_text())
    doc["input_check"]["calibration_scores"] = [0.0] * len(doc["input_check"]["calibration_scores"])
    setup["monitor"].write_text(json.dumps(doc))
    r = invoke("report", out, "--monitor", setup["monitor"], "-o", setup["tmp"] / "rep")
    assert r.exit_code == 2 and "input_p" in r.output
