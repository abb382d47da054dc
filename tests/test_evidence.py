"""informer_audit.evidence: the paired bootstrap, information beyond p, Youden stability."""

from __future__ import annotations

import itertools
import json
import math
import time

import numpy as np
import pytest
from scipy.special import expit

from informer_audit.errors import EvaluationError
from informer_audit.evidence import (
    _fit_logistic,
    _multiplicities,
    _youden_weighted,
    information_beyond_confidence,
    information_table_rows,
    paired_bootstrap,
    paired_bootstrap_many,
    youden_stability,
)
from informer_audit.metrics import bootstrap_indices, bootstrap_mean_f1
from informer_audit.monitor import PREDICT_NOTHING, youden_threshold

# -- 1. paired bootstrap ------------------------------------------------------------------------
# Four images, one class: labels 1, 1, 0, 0; method a predicts 1, 1, 1, 0; method b 1, 0, 0, 0.
Y4 = np.array([[1.0], [1.0], [0.0], [0.0]])
A4 = np.array([[True], [True], [True], [False]])
B4 = np.array([[True], [False], [False], [False]])


def _f1(idx: tuple[int, ...], pred: np.ndarray) -> float:
    y, p = Y4[list(idx), 0] > 0.5, pred[list(idx), 0]
    tp, fp, fn = np.sum(y & p), np.sum(~y & p), np.sum(y & ~p)
    return math.nan if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def test_the_observed_difference_is_hand_computed() -> None:
    r = paired_bootstrap(Y4, A4, B4, n_resamples=10)
    # a: TP 2, FP 1, FN 0 -> F1 = 4/5; b: TP 1, FP 0, FN 1 -> F1 = 2/3.
    assert r.mean_f1_a == pytest.approx(0.8)
    assert r.mean_f1_b == pytest.approx(2 / 3)
    assert r.mean_difference == pytest.approx(2 / 15)
    assert (r.method_a, r.method_b, r.n_resamples) == ("a", "b", 10)


def test_the_bootstrap_matches_the_exact_distribution_of_all_256_resamples() -> None:
    diffs = np.array(
        [_f1(i, A4) - _f1(i, B4) for i in itertools.product(range(4), repeat=4)], dtype=float
    )
    # Resample (0, 0, 2, 2): a has TP 2, FP 2 -> 4/6; b has TP 2 -> 1.
    assert _f1((0, 0, 2, 2), A4) - _f1((0, 0, 2, 2), B4) == pytest.approx(-1 / 3)
    valid = diffs[np.isfinite(diffs)]
    # b's F1 is undefined when only images 2 and 3 are drawn (2^4 = 16 resamples); a's only
    # when image 3 alone is (one of those 16).
    assert valid.size == 240
    share_le, share_ge = np.mean(valid <= 0), np.mean(valid >= 0)
    assert (share_le, share_ge) == (pytest.approx(77 / 240), pytest.approx(190 / 240))

    r = paired_bootstrap(Y4, A4, B4, n_resamples=200_000, seed=3)
    assert r.n_valid / r.n_resamples == pytest.approx(240 / 256, abs=0.003)
    assert r.bootstrap_mean == pytest.approx(valid.mean(), abs=0.005)
    assert r.p_value == pytest.approx(2 * min(share_le, share_ge), abs=0.01)
    # The exact 2.5% and 97.5% quantiles of the discrete distribution are -0.5 and 1.0
    # (P(d <= -0.6) = 4/240 < 0.025 < P(d <= -0.5) = 16/240; P(d < 1) = 225/240 < 0.975).
    assert (r.low, r.high) == (pytest.approx(-0.5), pytest.approx(1.0))


def _random_case(seed: int = 1, n: int = 300, k: int = 5) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, k)).astype(float)
    y[rng.random((n, k)) < 0.1] = np.nan
    a = rng.random((n, k)) < 0.5
    b = a ^ (rng.random((n, k)) < 0.1)
    c = a ^ (rng.random((n, k)) < 0.2)
    return y, a, b, c


def test_the_resamples_are_those_of_bootstrap_indices() -> None:
    y, a, b, _ = _random_case()
    # 8000 resamples of 300 images are drawn in two chunks (2**21 // 300 = 6990 at a time).
    r = paired_bootstrap(y, a, b, n_resamples=8000, seed=5)
    idx = bootstrap_indices(y.shape[0], 8000, seed=5)
    d = bootstrap_mean_f1(y, a, idx) - bootstrap_mean_f1(y, b, idx)
    assert r.n_valid == 8000
    assert r.bootstrap_mean == pytest.approx(d.mean(), abs=1e-12)
    assert (r.low, r.high) == pytest.approx(tuple(np.percentile(d, [2.5, 97.5])), abs=1e-12)
    n_le, n_ge = np.sum(d <= 0), np.sum(d >= 0)
    assert r.p_value == pytest.approx(min(1.0, 2 * (min(n_le, n_ge) + 1) / 8001))


def test_the_bootstrap_is_reproducible_with_its_seed() -> None:
    y, a, b, _ = _random_case()
    first = paired_bootstrap(y, a, b, n_resamples=500, seed=7)
    assert paired_bootstrap(y, a, b, n_resamples=500, seed=7) == first
    other = paired_bootstrap(y, a, b, n_resamples=500, seed=8)
    assert other.bootstrap_mean != first.bootstrap_mean
    assert other.mean_difference == first.mean_difference


def test_a_method_against_itself_differs_by_zero_with_p_one() -> None:
    y, a, _, _ = _random_case()
    r = paired_bootstrap(y, a, a.copy(), n_resamples=1000)
    assert (r.mean_difference, r.bootstrap_mean, r.low, r.high) == (0.0, 0.0, 0.0, 0.0)
    assert r.p_value == 1.0 and r.n_valid == 1000


def test_many_pairs_share_their_resamples() -> None:
    y, a, b, c = _random_case()
    got = paired_bootstrap_many(
        y, {"a": a, "b": b, "c": c}, [("a", "b"), ("b", "c"), ("a", "c")], n_resamples=3000
    )
    ab, bc, ac = got
    assert (ac.method_a, ac.method_b) == ("a", "c")
    # Paired across methods: the resampled differences add up resample by resample.
    assert ab.bootstrap_mean + bc.bootstrap_mean == pytest.approx(ac.bootstrap_mean, abs=1e-12)
    assert ab.mean_difference + bc.mean_difference == pytest.approx(ac.mean_difference)
    alone = paired_bootstrap(y, a, b, n_resamples=3000)
    assert (alone.bootstrap_mean, alone.low, alone.high, alone.p_value) == (
        ab.bootstrap_mean,
        ab.low,
        ab.high,
        ab.p_value,
    )


def test_a_clear_improvement_has_a_small_p_value() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (300, 3)).astype(float)
    good = y > 0.5
    noisy = good ^ (rng.random(y.shape) < 0.3)
    r = paired_bootstrap(y, good, noisy, n_resamples=2000)
    assert r.mean_difference > 0.2 and r.low > 0.0
    assert r.p_value == pytest.approx(2 / 2001)


def test_resamples_without_a_defined_f1_are_left_out() -> None:
    # One labelled image only, a negative that neither method predicts: F1 undefined always.
    y = np.array([[0.0], [np.nan]])
    r = paired_bootstrap(y, np.zeros((2, 1), bool), np.zeros((2, 1), bool), n_resamples=50)
    assert r.n_valid == 0
    assert all(math.isnan(v) for v in (r.mean_difference, r.bootstrap_mean, r.low, r.p_value))
    assert r.to_dict()["p_value"] is None


def test_ten_thousand_resamples_take_well_under_a_second() -> None:
    y, a, b, _ = _random_case()
    paired_bootstrap(y, a, b, n_resamples=100)  # imports
    start = time.perf_counter()
    paired_bootstrap(y, a, b, n_resamples=10_000)
    assert time.perf_counter() - start < 1.0


def test_the_bootstrap_refuses_bad_arguments() -> None:
    # Array and pair arguments are a caller's, not a user's: no CLI flag is named for them.
    with pytest.raises(EvaluationError, match="not in audited") as err:
        paired_bootstrap_many(Y4, {"a": A4}, [("a", "b")])
    assert err.value.params == ()
    with pytest.raises(EvaluationError, match="level"):
        paired_bootstrap(Y4, A4, B4, level=95)
    with pytest.raises(EvaluationError, match="n_resamples must be >= 1"):
        paired_bootstrap(Y4, A4, B4, n_resamples=0)
    with pytest.raises(EvaluationError, match="shape"):
        paired_bootstrap(Y4, A4, B4[:3])


def test_the_bootstrap_result_is_json_ready() -> None:
    d = paired_bootstrap(Y4, A4, B4, n_resamples=20).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert isinstance(d["n_valid"], int) and isinstance(d["low"], float)


# -- 2. information beyond the model's confidence -----------------------------------------------
def _errors(seed: int, beta_z: float, n: int = 600) -> tuple[np.ndarray, ...]:
    """Predictions whose errors depend on |logit p| and, with weight beta_z, on a hidden z."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(0.0, 2.0, n)
    p = expit(logit)
    yhat = p >= 0.5
    z = rng.normal(size=n)
    wrong = rng.random(n) < expit(-1.0 - 0.6 * np.abs(logit) + beta_z * z)
    return rng, wrong, z, p, yhat


def test_a_score_with_information_beyond_p_is_detected() -> None:
    rng, wrong, z, p, yhat = _errors(0, beta_z=1.5)
    score = z + rng.normal(0.0, 0.5, z.size)
    r = information_beyond_confidence(wrong, score, p, yhat, direction="above")
    assert r.p_value < 0.01 and r.lr_statistic > 20
    assert r.coefficient > 0
    assert r.cv_auroc_gain > 0.05
    assert r.cv_auroc_gain == r.cv_auroc_full - r.cv_auroc_base
    assert r.auroc > 0.6 and r.n_splits == 5 and r.note == ""
    # Flagging low values of -score is the same monitor: the same test, the same orientation.
    flipped = information_beyond_confidence(wrong, -score, p, yhat, direction="below")
    assert flipped.auroc == r.auroc
    assert flipped.lr_statistic == pytest.approx(r.lr_statistic, rel=1e-6)
    assert flipped.coefficient == pytest.approx(r.coefficient, rel=1e-6)
    # The wrong orientation ranks the errors as less suspicious.
    backwards = information_beyond_confidence(wrong, score, p, yhat, direction="below")
    assert backwards.auroc == pytest.approx(1 - r.auroc)
    assert backwards.coefficient == pytest.approx(-r.coefficient, rel=1e-6)


def test_noise_carries_no_information_beyond_p() -> None:
    p_values = []
    for seed in range(20):
        rng, wrong, _, p, yhat = _errors(seed, beta_z=0.0)
        r = information_beyond_confidence(
            wrong, rng.normal(size=wrong.size), p, yhat, direction="above"
        )
        p_values.append(r.p_value)
        assert r.lr_statistic >= 0.0
    # Under no information, p-values are uniform: about 1 in 20 below 0.05.
    assert sum(v < 0.05 for v in p_values) <= 3
    assert 0.2 < float(np.median(p_values)) < 0.8


def test_a_smooth_function_of_p_adds_little_even_when_fitted() -> None:
    _, wrong, _, p, yhat = _errors(0, beta_z=1.5)
    entropy = -(p * np.log(p) + (1 - p) * np.log1p(-p))
    r = information_beyond_confidence(wrong, entropy, p, yhat, direction="above")
    assert r.auroc > 0.6  # it "detects errors"...
    assert r.lr_statistic < 3.84 and r.p_value > 0.05  # ...but knows nothing beyond p
    assert abs(r.cv_auroc_gain) < 0.02


def test_a_declared_function_of_p_gains_exactly_nothing() -> None:
    _, wrong, _, p, yhat = _errors(0, beta_z=1.5)
    entropy = -(p * np.log(p) + (1 - p) * np.log1p(-p))
    r = information_beyond_confidence(
        wrong, entropy, p, yhat, direction="above", function_of_p=True
    )
    assert r.cv_auroc_gain == 0.0
    assert (r.lr_statistic, r.p_value) == (0.0, 1.0)
    assert r.cv_auroc_full == r.cv_auroc_base
    assert math.isnan(r.coefficient)
    assert "function of p" in r.note and r.function_of_p
    fitted = information_beyond_confidence(wrong, entropy, p, yhat, direction="above")
    assert r.cv_auroc_base == fitted.cv_auroc_base  # same folds, same base model
    assert r.auroc == fitted.auroc


def test_the_within_group_aurocs_are_hand_computed() -> None:
    yhat = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    wrong = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)
    score = np.array([0.9, 0.2, 0.5, 0.1, 0.3, 0.4, 0.1, 0.2])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    r = information_beyond_confidence(wrong, score, p, yhat, direction="above", n_splits=2)
    # Predicted positives: wrong {.9, .2} vs right {.5, .1}: 3 of 4 pairs ordered -> 3/4.
    assert r.auroc_pred_pos == pytest.approx(0.75)
    # Predicted negatives: wrong {.3} vs right {.4, .1, .2}: 2 of 3 -> 2/3.
    assert r.auroc_pred_neg == pytest.approx(2 / 3)
    # All: wrong {.9, .2, .3} vs right {.5, .1, .4, .1, .2}: 5 + 2.5 (a tie) + 3 of 15.
    assert r.auroc == pytest.approx(10.5 / 15)
    below = information_beyond_confidence(wrong, -score, p, yhat, direction="below", n_splits=2)
    assert (below.auroc, below.auroc_pred_pos, below.auroc_pred_neg) == (
        r.auroc,
        r.auroc_pred_pos,
        r.auroc_pred_neg,
    )
    assert (r.n, r.n_wrong, r.n_splits) == (8, 3, 2)


def test_the_logistic_fit_is_maximum_likelihood() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    t = rng.random(300) < expit(x @ rng.normal(size=6))
    fit = _fit_logistic(x, t)
    ref = LogisticRegression(C=1e12, max_iter=10_000, tol=1e-12).fit(x, t)
    prob = ref.predict_proba(x)[:, 1]
    assert fit.loglik == pytest.approx(np.sum(np.where(t, np.log(prob), np.log1p(-prob))))
    np.testing.assert_allclose(fit.coef[1:], ref.coef_[0], atol=1e-6)
    assert not fit.separated


N_DEG = 80
RNG_DEG = np.random.default_rng(0)
P_DEG = RNG_DEG.random(N_DEG)
YHAT_DEG = P_DEG >= 0.5
NOISE_DEG = RNG_DEG.random(N_DEG)


def test_no_error_or_only_errors_give_nan_and_a_note() -> None:
    for wrong, word in ((np.zeros(N_DEG, bool), "right"), (np.ones(N_DEG, bool), "wrong")):
        r = information_beyond_confidence(wrong, NOISE_DEG, P_DEG, YHAT_DEG, direction="below")
        assert f"every prediction is {word}" in r.note
        assert all(math.isnan(v) for v in (r.auroc, r.lr_statistic, r.p_value, r.cv_auroc_gain))
        assert r.n_splits == 0
    empty = information_beyond_confidence([], [], [], [], direction="below")
    assert (empty.n, empty.note) == (0, "no labelled images")


def test_few_errors_reduce_or_skip_the_cross_validation() -> None:
    one = np.zeros(N_DEG, bool)
    one[3] = True
    r = information_beyond_confidence(one, NOISE_DEG, P_DEG, YHAT_DEG, direction="below")
    assert "too few for cross-validation" in r.note and r.n_splits == 0
    assert math.isnan(r.cv_auroc_base) and math.isfinite(r.auroc)
    three = np.zeros(N_DEG, bool)
    three[[3, 10, 20]] = True
    r = information_beyond_confidence(three, NOISE_DEG, P_DEG, YHAT_DEG, direction="below")
    assert r.n_splits == 3 and "n_splits reduced from 5 to 3" in r.note
    assert "rough approximation" in r.note
    assert math.isfinite(r.cv_auroc_gain)


def test_a_constant_score_adds_nothing() -> None:
    wrong = RNG_DEG.random(N_DEG) < 0.3
    r = information_beyond_confidence(wrong, np.ones(N_DEG), P_DEG, YHAT_DEG, direction="below")
    assert (r.auroc, r.lr_statistic, r.p_value, r.cv_auroc_gain) == (0.5, 0.0, 1.0, 0.0)
    assert "constant" in r.note


def test_a_perfectly_separating_score_does_not_crash() -> None:
    wrong = np.random.default_rng(4).random(N_DEG) < 0.3
    r = information_beyond_confidence(
        wrong, wrong.astype(float), P_DEG, YHAT_DEG, direction="above"
    )
    assert "separated perfectly" in r.note
    assert r.auroc == 1.0 and r.cv_auroc_full == 1.0
    assert r.p_value < 1e-6 and math.isnan(r.coefficient)
    # When p and the prediction separate already, the score adds nothing.
    base = information_beyond_confidence(YHAT_DEG, NOISE_DEG, P_DEG, YHAT_DEG, direction="below")
    assert "p and the prediction alone separate" in base.note
    assert base.lr_statistic < 1e-4 and base.cv_auroc_base == 1.0


def test_the_information_test_refuses_bad_input() -> None:
    with pytest.raises(EvaluationError, match="direction"):
        information_beyond_confidence([True, False], [0.1, 0.2], [0.5, 0.5], [1, 0], direction="up")
    with pytest.raises(EvaluationError, match="probs must lie in"):
        information_beyond_confidence(
            [True, False], [0.1, 0.2], [0.5, 1.5], [1, 0], direction="below"
        )
    with pytest.raises(EvaluationError, match="non-finite"):
        information_beyond_confidence(
            [True, False], [0.1, np.nan], [0.5, 0.5], [1, 0], direction="below"
        )
    with pytest.raises(EvaluationError, match="n_splits must be >= 2") as err:
        information_beyond_confidence(
            [True, False], [0.1, 0.2], [0.5, 0.5], [1, 0], direction="below", n_splits=1
        )
    assert err.value.params == ("n_splits",)


def test_the_table_rows_leave_out_unlabelled_images_per_class() -> None:
    _, wrong0, z, p0, yhat0 = _errors(1, beta_z=1.0, n=200)
    y = np.column_stack([yhat0 ^ wrong0, yhat0]).astype(float)  # class 1: every prediction right
    y[:50, 0] = np.nan
    probs = np.column_stack([p0, p0])
    yhat = np.column_stack([yhat0, yhat0])
    scores = {"informer": np.column_stack([-z, -z]), "entropy": np.column_stack([p0, p0])}
    rows = information_table_rows(
        y,
        probs,
        yhat,
        scores,
        {"informer": "below", "entropy": "above"},
        {"entropy": True},
        ["A", "B"],
    )
    assert [(m, c) for m, c, _ in rows] == [
        ("informer", "A"),
        ("informer", "B"),
        ("entropy", "A"),
        ("entropy", "B"),
    ]
    first = rows[0][2]
    direct = information_beyond_confidence(
        wrong0[50:], -z[50:], p0[50:], yhat0[50:], direction="below"
    )
    assert first == direct and first.n == 150
    assert rows[1][2].n_wrong == 0 and "every prediction is right" in rows[1][2].note
    assert rows[2][2].function_of_p and rows[2][2].cv_auroc_gain == 0.0
    assert not first.function_of_p
    json.dumps([t.to_dict() for _, _, t in rows])
    with pytest.raises(EvaluationError, match="no entry for method 'entropy'"):
        information_table_rows(y, probs, yhat, scores, {"informer": "below"}, {}, ["A", "B"])
    with pytest.raises(EvaluationError, match="class_names has 1 names"):
        information_table_rows(y, probs, yhat, scores, {}, {}, ["A"])


# -- 3. stability of the Youden threshold -------------------------------------------------------
def test_the_vectorised_youden_threshold_is_youden_threshold() -> None:
    rng = np.random.default_rng(0)
    for n, decimals in ((200, 2), (40, 1), (30, 6)):
        p = np.round(rng.random(n), decimals)  # with ties
        y = rng.random(n) < 0.3 + 0.4 * p
        weights = _multiplicities(rng, n, 150)
        weights[0] = 1.0  # the data themselves
        got = _youden_weighted(y, p, weights)
        for b in range(weights.shape[0]):
            idx = np.repeat(np.arange(n), weights[b].astype(int))
            want = youden_threshold(y[idx].astype(float), p[idx])
            assert (math.isnan(got[b]) and want is None) or got[b] == want


def test_predicting_nothing_and_undefined_resamples_match_youden_threshold() -> None:
    y = np.array([False, True, False])
    p = np.array([0.9, 0.1, 0.5])  # the positive has the lowest p
    weights = np.array([[1.0, 1.0, 1.0], [3.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    got = _youden_weighted(y, p, weights)
    assert got[0] == youden_threshold(y.astype(float), p)
    assert math.isnan(got[1])
    assert got[2] == youden_threshold(np.array([0.0, 1.0, 1.0]), np.array([0.9, 0.1, 0.1]))
    assert youden_threshold(np.array([1.0, 0.0]), np.array([0.1, 0.9])) == PREDICT_NOTHING
    one = _youden_weighted(np.array([True, False]), np.array([0.1, 0.9]), np.ones((1, 2)))
    assert one[0] == PREDICT_NOTHING


def _separated(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0.0, 0.4, 100), rng.uniform(0.6, 1.0, 100)])
    y = np.repeat([0.0, 1.0], 100)
    return y, p


def test_a_well_separated_class_has_a_narrow_interval() -> None:
    y, p = _separated()
    r = youden_stability(y, p)
    # Every threshold in (max negative, min positive] is perfect; the highest is chosen.
    assert r.threshold == p[100:].min()
    assert r.low <= r.threshold <= r.high
    assert r.high - r.low < 0.05
    assert (r.n, r.n_valid, r.n_skipped) == (200, 1000, 0)


def test_a_noisy_class_has_a_wide_interval() -> None:
    rng = np.random.default_rng(1)
    r = youden_stability(rng.integers(0, 2, 200).astype(float), rng.random(200))
    assert r.high - r.low > 0.3


def test_youden_stability_is_reproducible_and_fast() -> None:
    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 2, 200).astype(float), rng.random(200)
    youden_stability(y, p, n_resamples=2)  # imports
    start = time.perf_counter()
    first = youden_stability(y, p, seed=4)
    assert time.perf_counter() - start < 1.0
    assert youden_stability(y, p, seed=4) == first
    assert youden_stability(y, p, seed=5) != first


def test_youden_stability_skips_and_counts_one_label_resamples() -> None:
    # Two labelled images (one of each), one unlabelled: a resample has both labels with
    # probability 1/2, so about half the resamples are skipped.
    y = np.array([0.0, 1.0, np.nan])
    p = np.array([0.2, 0.7, np.nan])
    r = youden_stability(y, p, n_resamples=2000)
    assert r.n == 2 and r.n_valid + r.n_skipped == 2000
    assert r.n_skipped / 2000 == pytest.approx(0.5, abs=0.05)
    assert r.threshold == r.low == r.high == 0.7
    none = youden_stability([0.0, 0.0], [0.1, 0.2], n_resamples=10)
    assert math.isnan(none.threshold) and none.n_valid == 0
    assert none.to_dict()["threshold"] is None
    with pytest.raises(EvaluationError, match="p must have shape"):
        youden_stability([0.0, 1.0], [0.1])
