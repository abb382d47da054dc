"""Image sets -> every method's scores -> the paper's evaluation (the ``evaluate`` command).

:mod:`.evaluation` works on arrays; this module makes them from image files. For a labelled
calibration set and a labelled test set it scores every image with

* the model alone (logits -> probabilities; the entropy and MSP baselines are functions of
  them, :class:`~.scorers.ProbabilityScorer`);
* each INFORMER saliency adapter given (one row ``informer_<adapter>`` each, e.g.
  ``informer_fd``, ``informer_lime``);
* test-time augmentation (``tta``), when asked;

each through an :class:`~.audit.Auditor` sharing one :class:`~.cache.ScoreCache`, so that
evaluating several methods, or running again, never recomputes a saliency map or a TTA spread
that is already stored. An image that fails with any method (unreadable file, non-finite
scores) is left out of every method, so that all rows describe the same images; it is recorded
with the reason. :func:`~.evaluation.evaluate_methods` then fits every monitor on the
calibration set and measures it on the test set, and :func:`write_evaluation` writes the report
(:func:`~.evaluation_report.write_evaluation_report`) and one monitor file per method, which
``flag`` can apply.

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
from .cache import ScoreCache
from .errors import EvaluationError, LabelFormatError
from .evaluation import Evaluation, ScoredSet, evaluate_methods
from .evaluation_report import write_evaluation_report
from .labels import LabelSet
from .model import OnnxClassifier
from .monitorfile import save_monitor
from .paths import safe_child
from .progress import Progress
from .saliency import available_adapters
from .scorers import (
    EntropyScorer,
    InformerScorer,
    LearnedScorer,
    ProbabilityScorer,
    Scorer,
    TTAScorer,
    available_scorers,
    build_scorer,
)

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class EvaluationPlan:
    """What ``evaluate`` compares, with its defaults: the front end passes the options as given.

    Parameters
    ----------
    methods : sequence of str
        Registered methods (:func:`~.scorers.available_scorers`), distinct; baselines appear
        in this order, after the INFORMER rows. Default: every registered method.
    saliency : sequence of str, optional
        INFORMER's saliency adapters, one row ``informer_<adapter>`` each; default ``["fd"]``
        when ``methods`` holds informer. Only with informer.
    saliency_params : mapping of str to mapping, optional
        Per adapter name, its keyword arguments; only for adapters in ``saliency``. An adapter
        that takes a ``seed`` gets :attr:`seed` unless one is given here (LIME).
    tta : mapping, optional
        TTA settings (:data:`~.scorers.TTA_PARAMS`); default 10 copies and seed :attr:`seed`.
        Only with tta.
    seed : int
        Seed of the bootstrap, and of TTA and the seeded adapters unless given.
    module : object, optional
        A torch module for the adapters that take one (``gradient``).
    batch_size : int, optional
        Images per ONNX Runtime run (fd, lime), augmented copies per run (tta); does not change
        results. ``None`` (the default): chosen for the model on this machine
        (:func:`~.batchsize.batch_size_for`: a short probe, cached).
    """

    methods: Sequence[str] = field(default_factory=lambda: tuple(available_scorers()))
    saliency: Sequence[str] | None = None
    saliency_params: Mapping[str, Mapping[str, Any]] | None = None
    tta: Mapping[str, Any] | None = None
    seed: int = 0
    module: Any = None
    batch_size: int | None = None

    def adapters(self) -> list[str]:
        """The saliency adapters INFORMER runs with, in row order (checked)."""
        methods = list(self.methods)
        known = list(available_scorers())
        if not methods or len(set(methods)) != len(methods) or set(methods) - set(known):
            raise EvaluationError(f"methods must be distinct names among {known}, got {methods}")
        names = list(self.saliency or ())
        informer = bool({InformerScorer.name, LearnedScorer.name} & set(methods))
        if names and not informer:
            raise EvaluationError(
                f"saliency adapters {names} apply to methods 'informer' and 'learned', which "
                f"methods {methods} leave out"
            )
        if not names and informer:
            names = ["fd"]
        if len(set(names)) != len(names):
            raise EvaluationError(f"saliency adapters must be distinct, got {names}")
        for name in self.saliency_params or {}:
            if name not in names:
                raise EvaluationError(
                    f"saliency parameters for adapter {name!r} were given, but the saliency "
                    f"adapters are {names or 'none'}"
                )
        if self.tta and TTAScorer.name not in methods:
            raise EvaluationError(
                f"TTA parameter {next(iter(self.tta))!r} applies to method 'tta', which "
                f"methods {methods} leave out"
            )
        return names

    def scorers(self) -> dict[str, Scorer]:
        """Row name -> scorer: ``informer_<adapter>`` per adapter, ``learned_<adapter>`` per
        adapter, then the baselines."""
        rows: dict[str, Scorer] = {}
        with_maps = [m for m in (InformerScorer.name, LearnedScorer.name) if m in self.methods]
        adapters = self.adapters()
        for method in with_maps:
            for name in adapters:
                params = dict((self.saliency_params or {}).get(name, {}))
                takes = _init_params(name)
                if "seed" in takes:
                    params.setdefault("seed", self.seed)
                rows[f"{method}_{name}"] = build_scorer(
                    method,
                    saliency=name,
                    saliency_params=params,
                    module=self.module if "module" in takes else None,
                    batch_size=self.batch_size,
                )
        for method in self.methods:
            if method in with_maps:
                continue
            tta = {"copies": 10, "seed": self.seed, **dict(self.tta or {})}
            rows[method] = build_scorer(
                method,
                tta=tta if method == TTAScorer.name else None,
                batch_size=self.batch_size,
            )
        return rows


def _init_params(adapter: str) -> set[str]:
    """The keyword arguments of an adapter's ``__init__`` (empty for an unknown adapter)."""
    import inspect

    cls = available_adapters().get(adapter)
    return set(inspect.signature(cls.__init__).parameters) if cls is not None else set()


def evaluation_cache(
    outdir: str | Path, cache_dir: str | Path | None = None, *, use_cache: bool = True
) -> Path | None:
    """The score-cache folder of an evaluation: ``cache_dir``, else ``OUTDIR/cache``; ``None``
    without a cache."""
    if not use_cache:
        return None
    return Path(cache_dir) if cache_dir is not None else Path(outdir) / "cache"


def _check_rows(scorers: Mapping[str, Scorer]) -> dict[str, Scorer]:
    rows = dict(scorers)
    if not rows:
        raise EvaluationError("no methods to evaluate: give at least one scorer")
    for row, scorer in rows.items():
        if not row or not row.replace("-", "").replace("_", "").isalnum():
            raise EvaluationError(
                f"method row {row!r} must be a non-empty name (letters, digits, - and _)"
            )
        if not isinstance(scorer, Scorer):
            raise EvaluationError(f"row {row!r}: expected a Scorer, got {type(scorer).__name__}")
    return rows


def run_evaluation(
    model: OnnxClassifier,
    calibration: LabelSet,
    test: LabelSet,
    scorers: EvaluationPlan | Mapping[str, Scorer] | None = None,
    *,
    cache: ScoreCache | None = None,
    grid_step: float = 0.001,
    n_bootstrap: int = 30,
    n_resamples: int = 10_000,
    seed: int | None = None,
    images_per_chunk: int = 8,
    backend: Callable[[Auditor], Auditor] | None = None,
    on_progress: Progress | None = None,
) -> EvaluationRun:
    """Score both sets with every method and evaluate (module docstring).

    Parameters
    ----------
    model : OnnxClassifier
    calibration, test : LabelSet
        Labels of the same classes, in the same order (the audited classes).
    scorers : EvaluationPlan or mapping of str to Scorer, optional
        The methods compared: a plan (default :class:`EvaluationPlan`), or the scorers by row
        name (e.g. ``{"informer_fd": InformerScorer(...), "entropy": EntropyScorer()}``).
    cache : ScoreCache, optional
        Per-image score cache shared by every run.
    grid_step : float
        Flag-threshold grid step.
    n_bootstrap : int
        Bootstrap test sets of the paper's t-tests (>= 2).
    n_resamples : int
        Resamples of the paired bootstrap of differences in mean F1 (0 skips it).
    seed : int, optional
        Seed of the bootstrap; default the plan's seed (0 for a mapping of scorers).
    backend : callable, optional
        Turns each scoring run's local :class:`~.audit.Auditor` into the one that runs it, e.g.
        ``lambda a: RayAuditor.from_auditor(a, cluster)`` (:mod:`.backends`); each run's
        auditor is closed when its images are scored. Default: score in this process.
    images_per_chunk : int
        Images loaded and scored together (does not change results).
    on_progress : callable, optional
        :class:`~.progress.Progress`, called as ``on_progress(done, total, stage)``, e.g.
        ``(12, 70, "test: informer_fd")``.

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
    if scorers is None or isinstance(scorers, EvaluationPlan):
        plan = scorers or EvaluationPlan()
        row_scorers = _check_rows(plan.scorers())
        seed = plan.seed if seed is None else seed
    else:
        row_scorers = _check_rows(scorers)
        seed = 0 if seed is None else seed
    classes = list(calibration.class_names)
    if list(test.class_names) != classes:
        raise LabelFormatError(
            f"the calibration labels ({calibration.source}) have classes {classes}, the test "
            f"labels ({test.source}) {list(test.class_names)}; both need the same classes"
        )

    def auditor(scorer: Scorer) -> Auditor:
        local = Auditor(model, scorer, classes, images_per_chunk=images_per_chunk, cache=cache)
        return local if backend is None else backend(local)

    # One run for the probabilities (the probability scorers are functions of them), one per
    # other row (each saliency adapter, TTA). Its cache entries hold the logits alone.
    # A row that computes the same maps as an earlier row (learned_fd and informer_fd) reads
    # that row's run.
    runs: dict[str, Auditor] = {"probabilities": auditor(EntropyScorer())}
    rows: dict[str, Auditor] = {}
    source: dict[str, str] = {}
    for row, scorer in row_scorers.items():
        rows[row] = auditor(scorer)
        if isinstance(scorer, ProbabilityScorer):
            continue
        same = [r for r, aud in runs.items() if _same_scores(aud.scorer, scorer)]
        if same:
            source[row] = same[0]
        else:
            runs[row] = rows[row]

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
        dist: dict[str, NDArray[np.float64]] = {}
        for row, aud in rows.items():
            run = results.get(source.get(row, row))
            if run is not None:
                scores[row] = np.stack([_score(run[i]) for i in keep])
                if aud.scorer.has_maps:
                    dist[row] = np.stack([_dist(run[i]) for i in keep])
            elif isinstance(aud.scorer, ProbabilityScorer):
                scores[row] = aud.scorer.score_probabilities(probs)
        scored[set_name] = ScoredSet(y=labels.y[keep], probs=probs, scores=scores, dist=dist)

    evaluation = evaluate_methods(
        scored["calibration"],
        scored["test"],
        classes,
        grid_step=grid_step,
        n_bootstrap=n_bootstrap,
        seed=seed,
        n_resamples=n_resamples,
    )
    settings = {row: aud.scorer.method_settings() for row, aud in rows.items()}
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
    on_progress: Progress | None,
) -> list[ImageResult]:
    total = len(items)
    done = 0
    if on_progress is not None:
        on_progress(0, total, stage)

    def advance(_r: ImageResult) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total, stage)

    try:
        return list(auditor.run(items, advance))
    finally:
        auditor.close()  # a Ray run's workers make way for the next run's


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


def _same_scores(a: Scorer, b: Scorer) -> bool:
    """Both scorers compute the same maps and scores (what one score-cache entry holds)."""
    return (
        a.has_maps
        and b.has_maps
        and a.cache_kind == b.cache_kind
        and a.cache_settings() == b.cache_settings()
    )


def _dist(r: ImageResult) -> NDArray[np.float64]:
    if r.dist is None:
        raise EvaluationError(f"{r.key}: image has no distance matrix ({r.error})")
    return r.dist


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
    """Write the report (:func:`.write_evaluation_report`) and one monitor file per method.

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
    written = write_evaluation_report(ev, outdir, title=title, provenance=full, plots=plots)
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
    "EvaluationPlan",
    "EvaluationRun",
    "Failure",
    "evaluation_cache",
    "monitor_file_name",
    "run_evaluation",
    "write_evaluation",
]
