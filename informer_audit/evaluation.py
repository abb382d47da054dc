"""Evaluation as in the paper (METHOD.md section 6), on arrays.

Everything here works on arrays that the caller has computed: labels ``y`` (N, K) with NaN where
an image has no label for a class, probabilities ``probs`` (N, K), and one raw score (N, K) per
monitor method (INFORMER's ``d`` per saliency adapter, entropy, TTA spread, MSP; see
:mod:`.baselines`). No model, no images, no files: the metrics are :mod:`.metrics`', the
Markdown report and the plots :mod:`.evaluation_report`'s.

:func:`evaluate_methods` fits one :class:`~.monitor.FlagMonitor` per method on the calibration set
(Youden prediction thresholds, then flag thresholds on the 0.001 grid, best F1 after swapping,
ties flag fewest) and reports on the test set:

* per-class F1, sensitivity and specificity after swapping the flagged predictions, and their
  means over classes (the paper's Table 1, S1, S2), with a ``no_audit`` row: the model's own
  predictions, nothing swapped. A monitor that flags nothing ties ``no_audit`` exactly, so the
  number of flags is reported beside every row;
* a bootstrap (B test sets drawn with replacement to the test-set size, default 30), the mean F1
  of every set and method, and paired t-tests of each INFORMER variant against each baseline and
  against ``no_audit`` (Fig. 3);
* threshold-free failure detection per class: AUROC of the score for "the prediction is wrong",
  AURC and AUGRC (:func:`risk_coverage_curve`).

Conventions *(ours)*: a class with no labelled image, or a metric whose denominator is zero
(F1 with no positives and none predicted, sensitivity without positives, AUROC when every
prediction is right), is NaN, and means over classes skip NaN classes.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import EvaluationError
from .evidence import (
    InformationTest,
    PairedBootstrap,
    information_table_rows,
    paired_bootstrap_many,
)
from .metrics import (
    BoolArray,
    FailureMetrics,
    FloatArray,
    IntArray,
    SwapMetrics,
    TTest,
    as_finite,
    as_labels,
    bootstrap_indices,
    bootstrap_mean_f1,
    check_direction,
    failure_metrics,
    nanmean,
    paired_ttest,
    ratio,
    swap_metrics,
)
from .monitor import FlagMonitor, f1_threshold
from .scorers import make_monitor, method_spec

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

NO_AUDIT = "no_audit"
"""Row name of the model's own predictions, nothing flagged or swapped."""
RETUNED = "retuned"
"""Row name of the model's predictions at F1-optimal thresholds fitted on the calibration set
instead of Youden's: what re-thresholding alone buys, with no monitor."""
REFERENCES = (NO_AUDIT, RETUNED)


# -- tables -------------------------------------------------------------------------------------
def _csv_cell(v: Any) -> str:
    if isinstance(v, bool | np.bool_):
        return str(int(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return "nan" if math.isnan(v) else f"{float(v):.8g}"
    return str(v)


def md_cell(v: Any, fmt: str) -> str:
    if isinstance(v, bool | np.bool_):
        return str(int(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return "n/a" if math.isnan(v) else format(float(v), fmt)
    return str(v).replace("|", "\\|")


@dataclass(frozen=True)
class Table:
    """A small table: column names and rows of plain values (str, int, float; NaN undefined).

    Rendered to CSV (:meth:`to_csv`, floats with 8 significant digits, NaN as ``nan``), to
    Markdown (:meth:`to_markdown`) or to a pandas DataFrame (:meth:`to_frame`).
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_csv_cell(v) for v in row])
        return buf.getvalue()

    def to_markdown(self, fmt: str = ".3f", formats: Mapping[str, str] | None = None) -> str:
        """Markdown table; floats use ``formats[column]`` or ``fmt``."""
        formats = formats or {}
        fmts = [formats.get(c, fmt) for c in self.columns]
        lines = [
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
        ]
        for row in self.rows:
            lines.append(
                "| " + " | ".join(md_cell(v, f) for v, f in zip(row, fmts, strict=True)) + " |"
            )
        return "\n".join(lines) + "\n"

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([list(r) for r in self.rows], columns=list(self.columns))


# -- the evaluation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoredSet:
    """Labels, probabilities and monitor scores of one image set (calibration or test).

    Attributes
    ----------
    y : ndarray, shape (N, K)
        0/1 labels, NaN where an image has no label for a class.
    probs : ndarray, shape (N, K)
        The model's probabilities.
    scores : mapping of str to ndarray, shape (N, K)
        Raw score per method name: a registered method (``entropy``, ``tta``, ``msp``,
        ``informer``) or a variant ``<method>_<label>`` (``informer_fd``, ``informer_lime``).
        Rows are the same images as ``y``; every value must be finite.
    """

    y: Any
    probs: Any
    scores: Mapping[str, Any]
    dist: Mapping[str, Any] = field(default_factory=dict)
    """Per method whose monitor reads them (learned), the K x K distances, shape (N, K, K)."""


@dataclass(frozen=True)
class Evaluation:
    """Outcome of :func:`evaluate_methods`. Tables come from the methods below.

    Attributes
    ----------
    class_names : list of str, length K
    methods : list of str
        The evaluated monitors: INFORMER variants first, then the baselines, each group in the
        order given.
    informer_methods, baseline_methods : list of str
    directions : dict of str to str
        Flag direction per method.
    monitors : dict of str to FlagMonitor
        Fitted on the calibration set, per method; save them with
        :func:`~.monitorfile.save_monitor` to apply one with ``flag``.
    prediction_thresholds : ndarray, shape (K,)
        Youden thresholds on the calibration set (shared by every method).
    test : dict of str to SwapMetrics
        Test-set metrics after swapping, per row name (``no_audit`` and every method).
    n_calibration, n_test : int
    grid_step : float
    seed : int
    bootstrap_indices : ndarray, shape (B, n_test)
    bootstrap_mean_f1 : dict of str to ndarray, shape (B,)
        Per row name.
    ttests : list of TTest
        Every INFORMER variant against every baseline, then against ``no_audit``.
    failure : dict of str to FailureMetrics
        Per method (``no_audit`` has no score).
    """

    class_names: list[str]
    methods: list[str]
    informer_methods: list[str]
    baseline_methods: list[str]
    directions: dict[str, str]
    monitors: dict[str, FlagMonitor]
    prediction_thresholds: FloatArray
    test: dict[str, SwapMetrics]
    n_calibration: int
    n_test: int
    grid_step: float
    seed: int
    bootstrap_indices: IntArray
    bootstrap_mean_f1: dict[str, FloatArray]
    ttests: list[TTest]
    failure: dict[str, FailureMetrics]
    retuned_thresholds: FloatArray | None = None
    paired: list[tuple[str, str, PairedBootstrap]] = field(default_factory=list)
    information: list[tuple[str, str, InformationTest]] = field(default_factory=list)
    n_resamples: int = 0

    @property
    def rows(self) -> list[str]:
        """Row names of the per-method tables: ``no_audit``, ``retuned``, then :attr:`methods`."""
        return [*(r for r in REFERENCES if r in self.test), *self.methods]

    @property
    def n_bootstrap(self) -> int:
        return int(self.bootstrap_indices.shape[0])

    def _per_class(self, attr: str, mean_name: str) -> Table:
        rows = []
        for name in self.rows:
            m = self.test[name]
            values = getattr(m, attr)
            rows.append((name, *(float(v) for v in values), float(nanmean(values))))
        return Table(("method", *self.class_names, mean_name), tuple(rows))

    def table1(self) -> Table:
        """Paper's Table 1: ``method``, F1 after swapping per class, ``mean_f1``."""
        return self._per_class("f1", "mean_f1")

    def sensitivity_table(self) -> Table:
        """Sensitivity after swapping: ``method``, per class, ``mean_sensitivity``."""
        return self._per_class("sensitivity", "mean_sensitivity")

    def specificity_table(self) -> Table:
        """Specificity after swapping: ``method``, per class, ``mean_specificity``."""
        return self._per_class("specificity", "mean_specificity")

    def flags_table(self) -> Table:
        """Flags on the test set: ``method``, per class (labelled images), ``total``."""
        rows = []
        for name in self.rows:
            n_flags = self.test[name].n_flags
            rows.append((name, *(int(v) for v in n_flags), int(n_flags.sum())))
        return Table(("method", *self.class_names, "total"), tuple(rows))

    def thresholds_table(self) -> Table:
        """Fitted thresholds: the prediction thresholds, then each method's flag thresholds."""
        rows: list[tuple[Any, ...]] = [
            ("prediction (Youden)", "", *(float(t) for t in self.prediction_thresholds))
        ]
        if self.retuned_thresholds is not None:
            rows.append(
                (
                    "prediction (F1-optimal, retuned)",
                    "",
                    *(float(t) for t in self.retuned_thresholds),
                )
            )
        for name in self.methods:
            mon = self.monitors[name]
            rows.append((name, mon.direction, *(float(t) for t in mon.flag_thresholds_)))
        return Table(("threshold", "flag_when", *self.class_names), tuple(rows))

    def bootstrap_table(self) -> Table:
        """Long format: ``bootstrap`` (0-based set number), ``method``, ``mean_f1``."""
        rows = [
            (b, name, float(self.bootstrap_mean_f1[name][b]))
            for b in range(self.n_bootstrap)
            for name in self.rows
        ]
        return Table(("bootstrap", "method", "mean_f1"), tuple(rows))

    def bootstrap_summary_table(self) -> Table:
        """Per method: median, quartiles, mean and range of the bootstrap mean F1."""
        rows = []
        for name in self.rows:
            v = self.bootstrap_mean_f1[name]
            v = v[np.isfinite(v)]
            if v.size:
                q1, med, q3 = np.percentile(v, [25, 50, 75])
                stats = (float(med), float(q1), float(q3), float(v.mean()), v.min(), v.max())
            else:
                stats = (math.nan,) * 6
            rows.append((name, *(float(s) for s in stats)))
        return Table(("method", "median", "q1", "q3", "mean", "min", "max"), tuple(rows))

    def ttest_table(self) -> Table:
        """``informer``, ``baseline``, ``mean_difference``, ``statistic``, ``p_value``, ``n``."""
        rows = tuple(
            (t.informer, t.baseline, t.mean_difference, t.statistic, t.p_value, t.n)
            for t in self.ttests
        )
        return Table(
            ("informer", "baseline", "mean_difference", "statistic", "p_value", "n_bootstrap"),
            rows,
        )

    def paired_bootstrap_table(self) -> Table:
        """Paired bootstrap of the difference in mean F1: ``method``, ``reference``, the
        observed difference, its percentile interval and two-sided p-value."""
        rows = tuple(
            (a, b, r.mean_difference, r.low, r.high, r.p_value, r.n_resamples)
            for a, b, r in self.paired
        )
        return Table(
            ("method", "versus", "difference", "low", "high", "p_value", "n_resamples"), rows
        )

    def information_table(self) -> Table:
        """Per method and class: does the flag score rank errors on the test set, and does it
        add anything beyond the model's probability?

        See :func:`.evidence.information_beyond_confidence`.
        """
        rows = tuple(
            (
                m,
                c,
                t.n,
                t.n_wrong,
                t.auroc,
                t.auroc_pred_pos,
                t.auroc_pred_neg,
                t.lr_statistic,
                t.p_value,
                t.cv_auroc_gain,
            )
            for m, c, t in self.information
        )
        return Table(
            (
                "method",
                "class",
                "n",
                "n_wrong",
                "auroc",
                "auroc_pred_pos",
                "auroc_pred_neg",
                "lr_statistic",
                "p_value",
                "cv_auroc_gain",
            ),
            rows,
        )

    def failure_table(self) -> Table:
        """``method``, ``class`` (each class, then ``mean``), ``auroc``, ``aurc``, ``augrc``."""
        rows: list[tuple[Any, ...]] = []
        for name in self.methods:
            f = self.failure[name]
            for j, c in enumerate(self.class_names):
                rows.append((name, c, float(f.auroc[j]), float(f.aurc[j]), float(f.augrc[j])))
            rows.append((name, "mean", f.mean_auroc, f.mean_aurc, f.mean_augrc))
        return Table(("method", "class", "auroc", "aurc", "augrc"), tuple(rows))

    def errors_table(self) -> Table:
        """The model's errors on the test set per class: ``class``, ``n``, ``n_wrong``, rate."""
        m = self.test[NO_AUDIT]
        wrong = m.fp + m.fn
        rows = tuple(
            (c, int(m.n[j]), int(wrong[j]), float(ratio(wrong, m.n)[j]))
            for j, c in enumerate(self.class_names)
        )
        return Table(("class", "n", "n_wrong", "error_rate"), rows)


def _method_roles(
    names: Sequence[str], directions: Mapping[str, str] | None, grid_step: float
) -> tuple[dict[str, str], dict[str, FlagMonitor], list[str], list[str]]:
    dirs: dict[str, str] = {}
    monitors: dict[str, FlagMonitor] = {}
    informer: list[str] = []
    baselines: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name or name == NO_AUDIT:
            raise EvaluationError(f"invalid method name {name!r} ({NO_AUDIT!r} is reserved)")
        given = (directions or {}).get(name)
        try:
            spec = method_spec(name)
        except EvaluationError:
            if given is None:
                raise
            # A method the registry does not know, flagged in the direction the caller gives.
            monitor = FlagMonitor(
                method=name, direction=check_direction(given), grid_step=grid_step
            )
            is_informer = name.startswith("informer")
        else:
            if given is not None and given != spec.direction:
                raise EvaluationError(
                    f"method {name!r} flags {spec.direction!r} its threshold ({spec.name}); "
                    f"directions[{name!r}] = {given!r} contradicts it"
                )
            monitor = make_monitor(name, grid_step=grid_step)
            is_informer = spec.has_maps
        dirs[name] = monitor.direction
        monitors[name] = monitor
        (informer if is_informer else baselines).append(name)
    return dirs, monitors, informer, baselines


def _check_set(s: ScoredSet, what: str, k: int) -> tuple[FloatArray, FloatArray]:
    y = as_labels(s.y, f"{what} y")
    if y.shape[1] != k:
        raise EvaluationError(f"{what} y has {y.shape[1]} columns for {k} classes")
    if y.shape[0] == 0:
        raise EvaluationError(f"the {what} set has no images")
    probs = as_finite(s.probs, f"{what} probs", y.shape)
    if probs.min() < 0.0 or probs.max() > 1.0:
        raise EvaluationError(f"{what} probs must lie in [0, 1]")
    return y, probs


def evaluate_methods(
    calibration: ScoredSet,
    test: ScoredSet,
    class_names: Sequence[str],
    *,
    directions: Mapping[str, str] | None = None,
    grid_step: float = 0.001,
    n_bootstrap: int = 30,
    seed: int = 0,
    n_resamples: int = 10_000,
) -> Evaluation:
    """Fit every method on the calibration set and evaluate it on the test set.

    Parameters
    ----------
    calibration, test : ScoredSet
        The same method names in both; K columns everywhere.
    class_names : sequence of str, length K
    directions : mapping of str to {"below", "above"}, optional
        Flag direction of methods the registry does not know (:func:`.scorers.available_scorers`);
        for registered methods and their variants it may only repeat the registry.
    grid_step : float
        Step of the flag-threshold grid (0.001 in the paper).
    n_bootstrap : int
        Number of bootstrap test sets (>= 2, for the t-tests).
    seed : int
        Seed of :func:`bootstrap_indices`, of the paired bootstrap and of the folds of the
        information tests.
    n_resamples : int
        Resamples of the paired bootstrap of differences in mean F1 (0 skips it).

    Returns
    -------
    Evaluation

    Raises
    ------
    EvaluationError
        Shapes that differ, labels other than 0/1/NaN, non-finite probabilities or scores,
        method sets that differ between the two sets, unknown methods without a direction.
    """
    names = [str(c) for c in class_names]
    k = len(names)
    if k == 0 or len(set(names)) != k:
        raise EvaluationError(f"class_names must be distinct and non-empty, got {names}")
    if not (isinstance(n_bootstrap, int | np.integer) and n_bootstrap >= 2):
        raise EvaluationError(f"n_bootstrap must be an integer >= 2, got {n_bootstrap!r}")
    if not (isinstance(grid_step, int | float) and grid_step > 0 and math.isfinite(grid_step)):
        raise EvaluationError(f"grid_step must be a positive number, got {grid_step!r}")
    cal_y, cal_p = _check_set(calibration, "calibration", k)
    test_y, test_p = _check_set(test, "test", k)
    cal_names, test_names = list(calibration.scores), list(test.scores)
    if not cal_names:
        raise EvaluationError("no monitor scores given: scores must name at least one method")
    if set(cal_names) != set(test_names):
        raise EvaluationError(
            f"the calibration set has scores for {cal_names}, the test set for {test_names}; "
            "both need the same methods"
        )
    dirs, monitors, informer, baselines = _method_roles(cal_names, directions, float(grid_step))
    methods = informer + baselines

    # The prediction thresholds depend only on y and probs; a monitor on an all-zero score with
    # direction "below" has tau = 0 everywhere: it fits them and flags nothing.
    reference = FlagMonitor(NO_AUDIT, "below", float(grid_step))
    reference.fit(np.zeros_like(cal_p), cal_y, cal_p, names)
    yhat = reference.predict(test_p)
    retuned_t = np.array(
        [f1_threshold(cal_y[np.isfinite(cal_y[:, j]), j], cal_p[np.isfinite(cal_y[:, j]), j])
         for j in range(k)]
    )  # fmt: skip
    retuned = test_p >= retuned_t

    swapped: dict[str, SwapMetrics] = {
        NO_AUDIT: swap_metrics(test_y, yhat),
        # "flags" of the retuned row: the predictions that differ from no_audit's.
        RETUNED: swap_metrics(test_y, yhat, retuned ^ yhat),
    }
    audited: dict[str, BoolArray] = {NO_AUDIT: yhat, RETUNED: retuned}
    failure: dict[str, FailureMetrics] = {}
    flag_scores: dict[str, FloatArray] = {}
    for name in methods:
        cal_s = as_finite(calibration.scores[name], f"calibration scores[{name!r}]", cal_y.shape)
        test_s = as_finite(test.scores[name], f"test scores[{name!r}]", test_y.shape)
        cal_d, test_d = _distances(monitors[name], name, calibration, test, k)
        monitor = monitors[name].fit(cal_s, cal_y, cal_p, names, dist=cal_d)
        flag_scores[name] = monitor.flag_scores(test_s, test_p, test_d)
        flags = monitor.flag(test_s, test_p, test_d)
        swapped[name] = swap_metrics(test_y, yhat, flags)
        audited[name] = yhat ^ flags
        failure[name] = failure_metrics(test_y, yhat, flag_scores[name], dirs[name])
        logger.debug("%s: %d flags on the test set", name, int(flags.sum()))

    idx = bootstrap_indices(test_y.shape[0], int(n_bootstrap), seed)
    boot = {row: bootstrap_mean_f1(test_y, audited[row], idx) for row in [*REFERENCES, *methods]}
    ttests = []
    for inf in informer:
        for base in [*baselines, NO_AUDIT]:
            stat, p = paired_ttest(boot[inf], boot[base])
            diff = float(np.mean(boot[inf] - boot[base]))
            ttests.append(TTest(inf, base, diff, stat, p, int(n_bootstrap)))
    paired = _paired(test_y, audited, swapped, informer, baselines, int(n_resamples), seed)
    information = information_table_rows(
        test_y,
        test_p,
        yhat,
        flag_scores,
        dirs,
        {m: _function_of_p(m) for m in methods},
        names,
        seed=seed,
    )
    return Evaluation(
        class_names=names,
        methods=methods,
        informer_methods=informer,
        baseline_methods=baselines,
        directions=dirs,
        monitors=monitors,
        prediction_thresholds=np.asarray(reference.prediction_thresholds_, dtype=np.float64),
        test=swapped,
        n_calibration=int(cal_y.shape[0]),
        n_test=int(test_y.shape[0]),
        grid_step=float(grid_step),
        seed=int(seed),
        bootstrap_indices=idx,
        bootstrap_mean_f1=boot,
        ttests=ttests,
        failure=failure,
        retuned_thresholds=retuned_t,
        paired=paired,
        information=information,
        n_resamples=int(n_resamples),
    )


def _distances(
    monitor: FlagMonitor, name: str, calibration: ScoredSet, test: ScoredSet, k: int
) -> tuple[FloatArray | None, FloatArray | None]:
    """The distance matrices of a method whose monitor reads them (``None`` otherwise)."""
    if not monitor.uses_distances:
        return None, None
    out = []
    for s, what in ((calibration, "calibration"), (test, "test")):
        if name not in s.dist:
            raise EvaluationError(
                f"method {name!r} reads the distances between the class maps: the {what} set "
                f"needs dist[{name!r}], shape (N, {k}, {k})"
            )
        n = np.asarray(s.y).shape[0]
        out.append(as_finite(s.dist[name], f"{what} dist[{name!r}]", (n, k, k)))
    return out[0], out[1]


def _function_of_p(method: str) -> bool:
    try:
        return bool(method_spec(method).function_of_probabilities)
    except EvaluationError:
        return False  # a method the registry does not know: test it


def _paired(
    y: FloatArray,
    audited: Mapping[str, BoolArray],
    swapped: Mapping[str, SwapMetrics],
    informer: Sequence[str],
    baselines: Sequence[str],
    n_resamples: int,
    seed: int,
) -> list[tuple[str, str, PairedBootstrap]]:
    """Every row against ``no_audit``; the map-based rows and ``retuned`` also against the
    best baseline (the baseline with the highest test mean F1), on the same resamples."""
    if n_resamples <= 0:
        return []
    pairs = [(row, NO_AUDIT) for row in [RETUNED, *informer, *baselines]]
    if baselines:
        best = max(baselines, key=lambda b: np.nan_to_num(swapped[b].mean_f1, nan=-1.0))
        pairs += [(row, best) for row in [RETUNED, *informer]]
    results = paired_bootstrap_many(y, audited, pairs, n_resamples=n_resamples, seed=seed)
    return [(a, b, r) for (a, b), r in zip(pairs, results, strict=True)]


__all__ = [
    "NO_AUDIT",
    "REFERENCES",
    "RETUNED",
    "Evaluation",
    "ScoredSet",
    "Table",
    "evaluate_methods",
    "md_cell",
]
