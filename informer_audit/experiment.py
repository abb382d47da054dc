"""Image sets -> every method's scores -> the paper's evaluation (the ``evaluate`` command).

:mod:`.evaluation` works on arrays; this module makes them from image files. For a labelled
calibration set and a labelled test set it scores every image with

* the model alone (logits -> probabilities; the entropy and MSP baselines are functions of
  them, :func:`~.baselines.probability_score`);
* each INFORMER saliency adapter given (one row ``informer_<adapter>`` each, e.g.
  ``informer_fd``, ``informer_lime``);
* test-time augmentation (``tta``), when asked;

each through an :class:`~.audit.Auditor` sharing one :class:`~.cache.ScoreCache`, so that
evaluating several methods, or running again, never recomputes a saliency map or a TTA spread
that is already stored. An image that fails with any method (unreadable file, non-finite
scores) is left out of every method, so that all rows describe the same images; it is recorded
with the reason. :func:`~.evaluation.evaluate_methods` then fits every monitor on the
calibration set and measures it on the test set, and :func:`write_evaluation` writes the report
(:func:`~.evaluation.write_report`) and one monitor file per method, which ``flag`` can apply.

Nothing here prints; progress goes through a callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .audit import Auditor, ImageResult
from .baselines import METHODS, probability_score
from .cache import ScoreCache
from .errors import EvaluationError, LabelFormatError
from .evaluation import Evaluation, ScoredSet, evaluate_methods, write_report
from .labels import LabelSet
from .model import OnnxClassifier
from .monitor import save_monitor
from .paths import safe_child
from .saliency import SaliencyAdapter

logger = logging.getLogger(__name__)

EvaluationProgress = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``, e.g. ``("test: informer_fd", 12, 70)``."""

SETS = ("calibration", "test")


@dataclass(frozen=True)
class Failure:
    """An image left out of the evaluation.

    Attributes
    ----------
    image_set : {"calibration", "test"}
    key : str
        The image path as the labels file names it.
    error : str
        Why: the error, once when every scoring run met it (an unreadable file), else each
        error followed by the runs that met it, e.g. ``"... (tta)"``.
    """

    image_set: str
    key: str
    error: str


@dataclass
class EvaluationRun:
    """Outcome of :func:`run_evaluation`; owns the exit code.

    Attributes
    ----------
    evaluation : Evaluation
        Tables, monitors, bootstrap and failure-detection metrics.
    bindings : dict of str to dict
        Per method row: what its monitor is valid for (:meth:`~.audit.Auditor.binding`).
    settings : dict of str to dict
        Per method row: the settings that change its score (saliency adapter or TTA settings).
    labels : dict of str to LabelSet
        The calibration and test label sets as read.
    n_listed, n_scored : dict of str to int
        Images per set listed by the labels and scored by every method.
    failures : list of Failure
    overlap : list of str
        Test images whose file is also in the calibration set (a leak worth knowing about).
    cache_hits, cache_misses : int
        Image lookups in the score cache, over every run.
    """

    evaluation: Evaluation
    bindings: dict[str, dict[str, Any]]
    settings: dict[str, dict[str, Any]]
    labels: dict[str, LabelSet]
    n_listed: dict[str, int]
    n_scored: dict[str, int]
    failures: list[Failure] = field(default_factory=list)
    overlap: list[str] = field(default_factory=list)
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def return_code(self) -> int:
        """0: every listed image was scored; 1: some were left out (see :attr:`failures`)."""
        return 1 if self.failures else 0


def _check_methods(methods: Sequence[str], adapters: Mapping[str, SaliencyAdapter]) -> list[str]:
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise EvaluationError(
            f"methods must be distinct names among {list(METHODS)}, got {methods}"
        )
    if "informer" in methods and not adapters:
        raise EvaluationError("the informer method needs at least one saliency adapter")
    if adapters and "informer" not in methods:
        raise EvaluationError(
            f"saliency adapters {list(adapters)} were given but the methods {methods} do not "
            "include informer"
        )
    for label in adapters:
        if not label or not label.replace("-", "").replace("_", "").isalnum():
            raise EvaluationError(
                f"adapter label {label!r} must be a non-empty name (letters, digits, - and _)"
            )
    return methods


def run_evaluation(
    model: OnnxClassifier,
    calibration: LabelSet,
    test: LabelSet,
    *,
    methods: Sequence[str] = tuple(METHODS),
    adapters: Mapping[str, SaliencyAdapter] | None = None,
    tta: Mapping[str, Any] | None = None,
    tta_batch_size: int = 32,
    cache: ScoreCache | None = None,
    grid_step: float = 0.001,
    n_bootstrap: int = 30,
    seed: int = 0,
    images_per_chunk: int = 8,
    on_progress: EvaluationProgress | None = None,
) -> EvaluationRun:
    """Score both sets with every method and evaluate (module docstring).

    Parameters
    ----------
    model : OnnxClassifier
    calibration, test : LabelSet
        Labels of the same classes, in the same order (the audited classes).
    methods : sequence of {"informer", "entropy", "tta", "msp"}
        Baselines appear in this order, after the INFORMER rows.
    adapters : mapping of str to SaliencyAdapter, optional
        INFORMER's saliency adapters by row label (``{"fd": ...}`` gives ``informer_fd``);
        needed exactly when ``methods`` holds ``informer``.
    tta : mapping, optional
        TTA settings (:data:`~.audit.TTA_PARAMS`; default: 10 copies, seed 0).
    tta_batch_size : int
        Augmented copies per model run (does not change results).
    cache : ScoreCache, optional
        Per-image score cache shared by every run.
    grid_step : float
        Flag-threshold grid step.
    n_bootstrap : int
        Bootstrap test sets (>= 2).
    seed : int
        Seed of the bootstrap.
    images_per_chunk : int
        Images loaded and scored together (does not change results).
    on_progress : callable, optional
        :data:`EvaluationProgress`.

    Returns
    -------
    EvaluationRun

    Raises
    ------
    EvaluationError
        Unknown or repeated methods, adapters without informer (or the reverse), settings out
        of range.
    LabelFormatError
        Label sets of other classes, or too few images scored (2 calibration, 1 test).
    """
    adapters = dict(adapters or {})
    methods = _check_methods(methods, adapters)
    classes = list(calibration.class_names)
    if list(test.class_names) != classes:
        raise LabelFormatError(
            f"the calibration labels ({calibration.source}) have classes {classes}, the test "
            f"labels ({test.source}) {list(test.class_names)}; both need the same classes"
        )

    def auditor(method: str, adapter: SaliencyAdapter | None = None) -> Auditor:
        return Auditor(
            model,
            adapter,
            classes,
            images_per_chunk=images_per_chunk,
            method=method,
            tta=tta if method == "tta" else None,
            tta_batch_size=tta_batch_size,
            cache=cache,
        )

    # One run for the probabilities (entropy and MSP are functions of them), one per saliency
    # adapter, one for TTA. "entropy" only names the cache entry kind: the logits.
    runs: dict[str, Auditor] = {"probabilities": auditor("entropy")}
    rows: dict[str, Auditor] = {}
    for label, adapter in adapters.items():
        runs[f"informer_{label}"] = rows[f"informer_{label}"] = auditor("informer", adapter)
    for method in methods:
        if method == "tta":
            runs["tta"] = rows["tta"] = auditor("tta")
        elif method != "informer":
            rows[method] = auditor(method)  # scored from the probabilities run

    label_sets = {"calibration": calibration, "test": test}
    scored: dict[str, ScoredSet] = {}
    failures: list[Failure] = []
    n_scored: dict[str, int] = {}
    for set_name, labels in label_sets.items():
        items = list(zip(labels.keys, labels.paths, strict=True))
        results: dict[str, list[ImageResult]] = {}
        for run_name, aud in runs.items():
            results[run_name] = _run(aud, items, f"{set_name}: {run_name}", on_progress)
        ok = np.ones(len(items), dtype=bool)
        for i, (key, _) in enumerate(items):
            error = _failure_text({name: res[i].error for name, res in results.items()})
            if error:
                ok[i] = False
                failures.append(Failure(set_name, key, error))
        keep = np.flatnonzero(ok)
        minimum = 2 if set_name == "calibration" else 1
        if len(keep) < minimum:
            first = "; ".join(f.error for f in failures if f.image_set == set_name)[:500]
            raise LabelFormatError(
                f"{labels.source}: only {len(keep)} of {len(items)} {set_name} images could be "
                f"scored by every method; at least {minimum} needed. Failures: {first}"
            )
        n_scored[set_name] = len(keep)
        probs = np.stack([_probs(results["probabilities"][i]) for i in keep])
        scores: dict[str, NDArray[np.float64]] = {}
        for row in rows:
            if row in results:
                scores[row] = np.stack([_score(results[row][i]) for i in keep])
            else:
                scores[row] = probability_score(row, probs)
        scored[set_name] = ScoredSet(y=labels.y[keep], probs=probs, scores=scores)

    evaluation = evaluate_methods(
        scored["calibration"],
        scored["test"],
        classes,
        grid_step=grid_step,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    settings: dict[str, dict[str, Any]] = {}
    for row, aud in rows.items():
        settings[row] = aud.adapter.settings() if aud.adapter is not None else aud.method_settings()
    calib_paths = {p.resolve() for p in calibration.paths}
    overlap = [k for k, p in zip(test.keys, test.paths, strict=True) if p.resolve() in calib_paths]
    if overlap:
        logger.info(  # callers get run.overlap; the CLI shows it
            "%d test image(s) are also calibration images (e.g. %s): the evaluation is optimistic",
            len(overlap),
            overlap[0],
        )
    return EvaluationRun(
        evaluation=evaluation,
        bindings={row: aud.binding() for row, aud in rows.items()},
        settings=settings,
        labels=dict(label_sets),
        n_listed={name: len(labels) for name, labels in label_sets.items()},
        n_scored=n_scored,
        failures=failures,
        overlap=overlap,
        cache_hits=sum(a.cache_hits for a in runs.values()),
        cache_misses=sum(a.cache_misses for a in runs.values()),
    )


def _run(
    auditor: Auditor,
    items: list[tuple[str, Path]],
    stage: str,
    on_progress: EvaluationProgress | None,
) -> list[ImageResult]:
    total = len(items)
    done = 0
    if on_progress is not None:
        on_progress(stage, 0, total)

    def advance(_r: ImageResult) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(stage, done, total)

    return list(auditor.run(items, advance))


def _failure_text(errors: Mapping[str, str | None]) -> str:
    """One image's errors over the scoring runs; "" when every run scored it.

    An error every run met (an unreadable file) is given once; others name their runs.
    """
    by_error: dict[str, list[str]] = {}
    for run_name, error in errors.items():
        if error is not None:
            by_error.setdefault(error, []).append(run_name)
    if len(by_error) == 1 and len(next(iter(by_error.values()))) == len(errors):
        return next(iter(by_error))
    return "; ".join(f"{error} ({', '.join(names)})" for error, names in by_error.items())


def _probs(r: ImageResult) -> NDArray[np.float64]:
    if r.probs is None:
        raise EvaluationError(f"{r.key}: image was not scored ({r.error})")
    return r.probs


def _score(r: ImageResult) -> NDArray[np.float64]:
    if r.score is None:
        raise EvaluationError(f"{r.key}: image was not scored ({r.error})")
    return r.score


def monitor_file_name(row: str) -> str:
    """The monitor file of a method row: ``monitor_<row>.json``."""
    return f"monitor_{row}.json"


def write_evaluation(
    run: EvaluationRun,
    outdir: str | Path,
    *,
    title: str = "INFORMER evaluation",
    provenance: Mapping[str, Any] | None = None,
    calibration_provenance: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> list[Path]:
    """Write the report (:func:`~.evaluation.write_report`) and one monitor file per method.

    Parameters
    ----------
    run : EvaluationRun
    outdir : path
        Created if missing; files already there are replaced.
    title : str
        The report's heading.
    provenance : mapping, optional
        Shown first in the report's provenance table; the method settings, set sizes, seeds
        and failures are added after it.
    calibration_provenance : mapping, optional
        Stored in each monitor file's ``calibration`` object (label file, filters, ...), with
        the number of images and the calibration failures added.
    plots : bool
        Write the box plot and the risk-coverage plot.

    Returns
    -------
    list of Path
        The files written: the report's, then ``monitor_<row>.json`` per method row.
    """
    outdir = Path(outdir)
    ev = run.evaluation
    failures = [
        {"set": f.image_set, "path": f.key, "error": f.error} for f in run.failures
    ]  # in set order, then label-file order
    full = {
        **dict(provenance or {}),
        "methods": {row: run.settings[row] for row in ev.methods},
        "images": {
            name: {"listed": run.n_listed[name], "scored": run.n_scored[name]} for name in SETS
        },
        "test images also in the calibration set": len(run.overlap),
        "bootstrap": {"sets": ev.n_bootstrap, "seed": ev.seed},
        "grid_step": ev.grid_step,
        "failures": failures,
    }
    written = write_report(ev, outdir, title=title, provenance=full, plots=plots)
    cal_failures = [
        {"path": f.key, "error": f.error} for f in run.failures if f.image_set == "calibration"
    ]
    for row in ev.methods:
        # The row names a saliency adapter, and plug-ins name their own: keep it in outdir.
        path = safe_child(outdir, monitor_file_name(row))
        calibration = {
            **dict(calibration_provenance or {}),
            "evaluation_row": row,
            "n_images": run.n_scored["calibration"],
            "n_failed": len(cal_failures),
            "failures": cal_failures,
        }
        save_monitor(path, ev.monitors[row], run.bindings[row], calibration)
        written.append(path)
    return written


__all__ = [
    "EvaluationProgress",
    "EvaluationRun",
    "Failure",
    "monitor_file_name",
    "run_evaluation",
    "write_evaluation",
]
