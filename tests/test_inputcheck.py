"""The input check (informer_audit.inputcheck): scores, conformal p-values, direction, file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, labelled_folder
from informer_audit.adapters.fd import FiniteDifferenceIxG
from informer_audit.audit import Auditor, calibrate, fit_input_check, flag_folder
from informer_audit.errors import (
    EvaluationError,
    InformerAuditWarning,
    MonitorFormatError,
    NotFittedError,
)
from informer_audit.inputcheck import (
    INPUT_SCORES,
    PROBE_KINDS,
    InputCheck,
    input_scores,
    needed_calibration,
    probe_copies,
    sign_test,
)
from informer_audit.labels import read_labels
from informer_audit.model import OnnxClassifier
from informer_audit.monitorfile import load_monitor, save_monitor
from informer_audit.numerics import sigmoid
from informer_audit.scorers import EntropyScorer, InformerScorer


# -- the scores, by hand ----------------------------------------------------------------------
def test_confidence_scores_by_hand():
    z = np.array([[0.0, math.log(3.0)], [800.0, -800.0]])
    p = sigmoid(z)  # [0.5, 0.75], [1, 0]
    out = input_scores(z, p)
    assert list(out) == ["entropy", "max_prob", "energy"]
    h75 = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))  # 0.8112781...
    np.testing.assert_allclose(out["entropy"], [(1.0 + h75) / 2, 0.0], atol=1e-12)
    np.testing.assert_allclose(out["max_prob"], [0.75, 1.0])
    # JointEnergy with the energy's sign: -(log(1 + e^0) + log(1 + 3)) = -log 8 = -3 log 2;
    # a huge logit gives -z, not an overflow.
    np.testing.assert_allclose(out["energy"], [-3 * math.log(2.0), -800.0], rtol=1e-12)


def test_distinctiveness_and_tta_spread_by_hand():
    d = np.array([[[0.0, 0.5, 1.0], [0.5, 0.0, 1.5], [1.0, 1.5, 0.0]]])
    z = np.zeros((1, 3))
    tta = np.array([[0.1, 0.2, 0.6]])
    out = input_scores(z, sigmoid(z), d, tta)
    assert tuple(out) == INPUT_SCORES
    # mean of the 6 off-diagonal cells = (0.5 + 1 + 1.5) * 2 / 6 = 1; orthogonal maps give 1
    assert out["distinctiveness"][0] == pytest.approx(1.0)
    assert out["tta_spread"][0] == pytest.approx(0.3)
    ortho = np.ones((1, 4, 4)) - np.eye(4)
    assert input_scores(np.zeros((1, 4)), np.full((1, 4), 0.5), ortho)["distinctiveness"][0] == 1


def test_input_scores_refuse_bad_arrays():
    z = np.zeros((2, 3))
    with pytest.raises(EvaluationError, match="dist must have shape"):
        input_scores(z, sigmoid(z), np.zeros((2, 2, 2)))
    with pytest.raises(EvaluationError, match="non-finite"):
        input_scores(np.full((2, 3), np.nan), sigmoid(z))
    with pytest.raises(EvaluationError, match="share one"):
        input_scores(z, np.zeros((3, 3)))


# -- the conformal p-value -----------------------------------------------------------------------
def test_p_values_by_hand_with_ties():
    cal = np.array([3.0, 2.0, 1.0, 2.0])  # sorted by fit: 1, 2, 2, 3; n + 1 = 5
    s = np.array([2.0, 3.5, 0.0, 3.0])
    high = InputCheck("entropy", 0.2, "high").fit(cal)
    low = InputCheck("entropy", 0.2, "low").fit(cal)
    two = InputCheck("entropy", 0.4, "two-sided").fit(cal)
    np.testing.assert_array_equal(high.calibration_scores_, [1, 2, 2, 3])
    # high: (1 + #{cal >= s}) / 5; ties count against the image
    np.testing.assert_allclose(high.p_values(s), [4 / 5, 1 / 5, 5 / 5, 2 / 5])
    np.testing.assert_allclose(low.p_values(s), [4 / 5, 5 / 5, 1 / 5, 5 / 5])
    np.testing.assert_allclose(two.p_values(s), [1.0, 2 / 5, 2 / 5, 4 / 5])
    np.testing.assert_array_equal(high.flags(s), [False, True, False, False])
    np.testing.assert_array_equal(low.flags(s), [False, False, True, False])
    np.testing.assert_array_equal(two.flags(s), [False, True, True, False])
    np.testing.assert_array_equal(high.flags(s, alpha=0.4), [False, True, False, True])


def test_smallest_p_value_and_how_many_images_it_needs():
    # n = 99: the image above all gets p = 1/100 = 0.01, flagged at alpha = 0.01; n = 98 cannot.
    rng = np.random.default_rng(0)
    check = InputCheck("entropy", 0.01, "high").fit(rng.random(99))
    assert check.p_values(np.array([2.0]))[0] == 0.01 and check.flags(np.array([2.0]))[0]
    assert (
        check.can_flag() and not InputCheck("entropy", 0.01, "high").fit(rng.random(98)).can_flag()
    )
    assert needed_calibration(0.01, "high") == 99 and needed_calibration(0.01, "two-sided") == 199
    assert needed_calibration(0.05, "low") == 19
    two = InputCheck("entropy", 0.01, "two-sided").fit(rng.random(198))
    assert two.min_p_ == pytest.approx(2 / 199) and not two.can_flag()
    assert "no image can be flagged" in two.describe()


@pytest.mark.parametrize("direction", ["high", "low", "two-sided"])
@pytest.mark.parametrize("discrete", [False, True])
def test_false_alarm_rate_is_at_most_alpha_for_exchangeable_images(direction, discrete):
    """2000 draws: calibration (n = 49) and 20 test images from one distribution."""
    rng = np.random.default_rng(11)
    alpha, draws, n, m = 0.1, 2000, 49, 20
    flagged = 0
    for _ in range(draws):
        values = rng.normal(size=n + m)
        if discrete:  # many ties: the p-value is conservative, never anti-conservative
            values = np.round(values * 2)
        check = InputCheck("entropy", alpha, direction).fit(values[:n])
        flagged += int(check.flags(values[n:]).sum())
    rate = flagged / (draws * m)
    # Continuous one-sided: exactly floor(alpha (n + 1)) / (n + 1) = 0.1; two-sided: 0.08.
    # Test images within one draw share the calibration set: a generous binomial tolerance.
    se = math.sqrt(alpha * (1 - alpha) / draws)
    assert rate <= alpha + 4 * se
    if not discrete and direction != "two-sided":
        assert abs(rate - alpha) <= 4 * se


@pytest.mark.parametrize("direction,shift", [("high", 1.5), ("low", -1.5), ("two-sided", 1.5)])
def test_false_alarm_rate_is_far_above_alpha_when_the_images_are_shifted(direction, shift):
    rng = np.random.default_rng(12)
    alpha, draws, n = 0.05, 500, 99
    flagged = 0
    for _ in range(draws):
        check = InputCheck("entropy", alpha, direction).fit(rng.normal(size=n))
        flagged += int(check.flags(rng.normal(shift, 1.0, size=10)).sum())
    assert flagged / (draws * 10) > 5 * alpha


def test_shifting_the_other_way_is_not_flagged_by_a_one_sided_check():
    rng = np.random.default_rng(13)
    check = InputCheck("entropy", 0.05, "high").fit(rng.normal(size=199))
    assert check.flags(rng.normal(-2.0, 1.0, size=500)).mean() <= 0.05


# -- the direction -----------------------------------------------------------------------------
def test_direction_from_probes_in_both_directions():
    rng = np.random.default_rng(3)
    cal = rng.normal(size=50)
    clean = rng.normal(size=4)
    up = InputCheck("distinctiveness", direction="auto").fit(
        cal, probe_clean=clean, probe_shifted=clean[:, None] + rng.uniform(0.1, 1, (4, 3))
    )
    assert up.direction_ == "high" and up.probe_["n_higher"] == 12
    assert up.probe_["p_value"] == pytest.approx(2 / 4096)
    assert "12 of 12" in up.direction_reason_
    down = InputCheck("distinctiveness", direction="auto").fit(
        cal, probe_clean=clean, probe_shifted=clean[:, None] - rng.uniform(0.1, 1, (4, 3))
    )
    assert down.direction_ == "low" and down.probe_["n_lower"] == 12
    # Half up, half down: a tie, two-sided.
    mixed = np.array([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])
    tie = InputCheck("distinctiveness", direction="auto").fit(
        cal, probe_clean=np.zeros(4), probe_shifted=mixed
    )
    assert tie.direction_ == "two-sided" and "a tie" in tie.direction_reason_
    # 7 up, 5 down: weak evidence (sign test p = 0.77), yet the majority's tail, said aloud.
    mixed[0, 1] = 1.0
    weak = InputCheck("distinctiveness", direction="auto").fit(
        cal, probe_clean=np.zeros(4), probe_shifted=mixed
    )
    assert weak.probe_["p_value"] == pytest.approx(1586 / 2048)
    assert weak.direction_ == "high" and "weak evidence" in weak.direction_reason_
    # A failed copy (NaN) is left out; ties count neither way.
    shifted = np.ones((4, 3))
    shifted[0, 0], shifted[1, 1] = np.nan, 0.0
    tied = InputCheck("entropy", direction="auto").fit(
        cal, probe_clean=np.zeros(4), probe_shifted=shifted
    )
    assert (tied.probe_["n_higher"], tied.probe_["n_lower"], tied.probe_["n_tied"]) == (10, 0, 1)
    assert tied.direction_ == "high"  # sign test of 10 vs 0: p = 2 / 1024
    none = InputCheck("entropy", direction="auto").fit(cal)
    assert none.direction_ == "two-sided" and none.probe_ is None
    given = InputCheck("entropy", direction="low").fit(
        cal, probe_clean=clean, probe_shifted=clean[:, None] + 1
    )
    assert given.direction_ == "low" and given.direction_reason_ == "given"


def test_sign_test_by_hand():
    assert sign_test(12, 0) == pytest.approx(2 / 4096)
    assert sign_test(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert sign_test(0, 0) == 1.0 and sign_test(3, 3) == 1.0


def test_probe_copies_by_hand():
    mean, std = np.array([0.5, 0.25]), np.array([0.25, 0.5])
    u = np.arange(2 * 2 * 3, dtype=np.float64).reshape(1, 2, 2, 3) / 12.0
    x = (u - mean.reshape(1, 2, 1, 1)) / std.reshape(1, 2, 1, 1)
    copies = probe_copies(x, mean, std, seed=5)
    assert copies.shape == (1, len(PROBE_KINDS), 2, 2, 3) and copies.dtype == np.float32
    back = copies.astype(np.float64) * std.reshape(1, 1, 2, 1, 1) + mean.reshape(1, 1, 2, 1, 1)
    noise, inverted, rotated = back[0]
    np.testing.assert_allclose(inverted, 1.0 - u[0], atol=1e-6)
    np.testing.assert_allclose(rotated, u[0, :, ::-1, ::-1], atol=1e-6)
    expected = np.random.default_rng([5, 0]).random((2, 3))
    np.testing.assert_allclose(noise[0], expected, atol=1e-6)
    np.testing.assert_allclose(noise[1], expected, atol=1e-6)  # the same in every channel
    np.testing.assert_array_equal(probe_copies(x, mean, std, seed=5), copies)
    assert not np.array_equal(probe_copies(x, mean, std, seed=6)[0, 0], copies[0, 0])


def test_estimator_contract_and_refusals():
    check = InputCheck("energy", 0.05, "high")
    assert (check.score, check.alpha, check.direction) == ("energy", 0.05, "high")
    assert not hasattr(check, "direction_")
    with pytest.raises(NotFittedError):
        check.p_values(np.zeros(2))
    assert check.fit(np.zeros(3)) is check
    for bad, match in [
        (InputCheck("nope"), "input score"),
        (InputCheck(alpha=0.0), "alpha"),
        (InputCheck(alpha=1.0), "alpha"),
        (InputCheck(alpha=True), "alpha"),
        (InputCheck(direction="up"), "direction"),
    ]:
        with pytest.raises(EvaluationError, match=match):
            bad.fit(np.zeros(3))
    with pytest.raises(EvaluationError, match="non-finite"):
        InputCheck().fit(np.array([0.0, np.nan]))
    with pytest.raises(EvaluationError, match="at least one"):
        InputCheck().fit(np.zeros(0))
    with pytest.raises(EvaluationError, match="alpha"):
        check.flags(np.zeros(1), alpha=2.0)


# -- with a model: calibrate, flag, forward passes --------------------------------------------
@pytest.fixture
def env(tmp_path):
    return labelled_folder(tmp_path, n_val=12, n_audit=4)


def _labels(env):
    return read_labels(env["labels"], env["val"], {c: c for c in CLASSES})


def _auditor(model, method="informer"):
    if method == "entropy":
        return Auditor(model, EntropyScorer(), list(CLASSES))
    return Auditor(model, InformerScorer(FiniteDifferenceIxG(patch_size=8)), list(CLASSES))


def test_flag_adds_no_forward_pass(env, tmp_path):
    model = OnnxClassifier(env["model"], device="cpu")
    auditor = _auditor(model)
    result = calibrate(auditor, _labels(env), input_check=InputCheck(alpha=0.1, direction="high"))
    check = result.input_check
    assert check is not None and check.n_calibration_ == 12  # no probes: every image counts
    counts = []
    for i, ic in enumerate([None, check]):
        before = model.n_forward
        flag_folder(
            auditor, result.monitor, result.binding, env["audit"], tmp_path / f"f{i}.csv",
            input_check=ic,
        )  # fmt: skip
        counts.append(model.n_forward - before)
    assert counts[0] == counts[1] > 0
    plain = (tmp_path / "f0.csv").read_text().splitlines()
    checked = (tmp_path / "f1.csv").read_text().splitlines()
    assert "input_p" in checked[0] and "input_p" not in plain[0]
    assert "input_energy" in plain[0]  # the confidence scores are written either way


def test_calibrate_with_a_given_direction_adds_no_forward_pass(env):
    counts = []
    for check in (None, InputCheck(alpha=0.25, direction="two-sided"), InputCheck(alpha=0.5)):
        model = OnnxClassifier(env["model"], device="cpu")
        calibrate(_auditor(model), _labels(env), input_check=check)
        counts.append(model.n_forward)
    assert counts[0] == counts[1] < counts[2]  # only auto's probe copies cost passes


def test_probes_leave_their_images_out_and_are_deterministic(env):
    model = OnnxClassifier(env["model"], device="cpu")
    auditor = _auditor(model, "entropy")
    labels = _labels(env)
    ok = list(auditor.run(zip(labels.keys, labels.paths, strict=True)))
    a = fit_input_check(auditor, ok, InputCheck("energy", 0.25), probes=4, seed=1)
    b = fit_input_check(auditor, ok, InputCheck("energy", 0.25), probes=4, seed=1)
    assert a.n_calibration_ == 8 and a.probe_["n_images"] == 4
    assert a.probe_["n_higher"] + a.probe_["n_lower"] + a.probe_["n_tied"] == 12
    np.testing.assert_array_equal(a.calibration_scores_, b.calibration_scores_)
    assert a.probe_ == b.probe_ and a.direction_ == b.direction_
    full = fit_input_check(auditor, ok, InputCheck("energy", 0.25, direction="high"))
    assert set(a.calibration_scores_) < set(full.calibration_scores_)
    with pytest.raises(EvaluationError, match="not computed"):
        fit_input_check(auditor, ok, InputCheck("distinctiveness"))


# -- the monitor file ----------------------------------------------------------------------------
@pytest.fixture
def saved(env, tmp_path):
    model = OnnxClassifier(env["model"], device="cpu")
    with pytest.warns(InformerAuditWarning, match="no image can be flagged") as caught:
        result = calibrate(
            _auditor(model, "entropy"), _labels(env), input_check=InputCheck("energy")
        )
    assert caught[0].filename == __file__  # points at the caller
    assert "4 calibration images" in str(caught[0].message)  # 12 minus 8 probe images
    assert "at least 199" in str(caught[0].message) or "at least 99" in str(caught[0].message)
    path = tmp_path / "monitor.json"
    save_monitor(path, result.monitor, result.binding, result.provenance, None, result.input_check)
    return path, result.input_check


def test_monitor_round_trip_keeps_the_input_check(saved):
    path, check = saved
    loaded = load_monitor(path).input_check
    assert loaded is not None
    assert (loaded.score, loaded.alpha, loaded.direction) == ("energy", 0.01, "auto")
    assert loaded.direction_ == check.direction_
    assert loaded.direction_reason_ == check.direction_reason_ and loaded.probe_ == check.probe_
    np.testing.assert_array_equal(loaded.calibration_scores_, check.calibration_scores_)
    s = np.linspace(-5, 0, 11)
    np.testing.assert_array_equal(loaded.p_values(s), check.p_values(s))


def test_a_monitor_without_an_input_check_still_loads(saved):
    path, _ = saved
    doc = json.loads(path.read_text())
    del doc["input_check"]
    path.write_text(json.dumps(doc))
    assert load_monitor(path).input_check is None


def _edited(path: Path, edit) -> Path:
    doc = json.loads(path.read_text())
    edit(doc["input_check"])
    path.write_text(json.dumps(doc))
    return path


def _set(key, value):
    return lambda ic: ic.__setitem__(key, value)


@pytest.mark.parametrize(
    "edit,field",
    [
        (_set("score", "colour"), "input_check.score"),
        (_set("score", "distinctiveness"), "input_check.score"),  # entropy has no maps
        (_set("score", "tta_spread"), "input_check.score"),
        (_set("alpha", 0), "input_check.alpha"),
        (_set("alpha", 1.0), "input_check.alpha"),
        (_set("alpha", True), "input_check.alpha"),
        (_set("alpha", "0.01"), "input_check.alpha"),
        (_set("direction", "sideways"), "input_check.direction"),
        (_set("fitted_direction", "auto"), "input_check.fitted_direction"),
        (_set("direction_reason", 3), "input_check.direction_reason"),
        (_set("probe", []), "input_check.probe"),
        (lambda ic: ic["probe"].__setitem__("n_higher", -1), "input_check.probe.n_higher"),
        (lambda ic: ic["probe"].__setitem__("p_value", 1.5), "input_check.probe.p_value"),
        (lambda ic: ic["probe"].__setitem__("extra", 1), "input_check.probe.extra"),
        (_set("calibration_scores", []), "input_check.calibration_scores"),
        (lambda ic: ic["calibration_scores"].reverse(), "input_check.calibration_scores[1]"),
        (
            lambda ic: ic["calibration_scores"].__setitem__(0, 0.5),
            "input_check.calibration_scores[0]",
        ),
        (
            lambda ic: ic["calibration_scores"].__setitem__(0, "x"),
            "input_check.calibration_scores[0]",
        ),
        (lambda ic: ic.pop("alpha"), "input_check.alpha is missing"),
        (_set("colour", "red"), "input_check.colour"),
    ],
)
def test_hand_edited_input_checks_are_refused_naming_the_field(saved, edit, field):
    path, _ = saved
    with pytest.raises(MonitorFormatError, match="not a valid monitor") as info:
        load_monitor(_edited(path, edit))
    assert field in str(info.value) and str(path) in str(info.value)


def test_given_direction_must_be_the_fitted_one(saved):
    path, check = saved

    def edit(ic):
        ic["direction"] = "high"
        ic["fitted_direction"] = "low"

    with pytest.raises(MonitorFormatError, match=r"input_check\.fitted_direction.*'high'"):
        load_monitor(_edited(path, edit))
