"""Images -> scores, maps, distinctiveness -> calibrated monitor or audited predictions.

:class:`Auditor` streams images through the model and a saliency adapter, a chunk at a time,
and yields one :class:`ImageResult` per file: scored, or failed with the reason (an unreadable
file, non-finite model output, ...). One bad file never stops the batch. :func:`calibrate` fits a
:class:`~informer_audit.monitor.FlagMonitor` on labelled images; :func:`flag_folder` applies one to
a folder, journaling each row as it finishes so that an interrupted run resumes where it stopped.

The monitor's raw score comes from the auditor's :class:`~.scorers.Scorer`: INFORMER's class
distinctiveness ``d`` (:class:`~.scorers.InformerScorer`) or a baseline (entropy, TTA, MSP: no
saliency map; TTA takes extra forward passes), and everything downstream (fit, flag, CSV files)
works the same. With a :class:`~.cache.ScoreCache`, an image whose scores
are already stored (same model, image bytes, preprocessing, classes, method settings) is neither
loaded nor explained again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import __version__
from .binding import check_binding
from .cache import ScoreCache, key_document
from .errors import (
    EvaluationError,
    ImageReadError,
    InformerAuditError,
    InformerAuditWarning,
    LabelFormatError,
    ModelSpecError,
    MonitorMismatchError,
    OutputWriteError,
    SaliencyError,
)
from .fileio import content_sha256
from .flagsfile import FlagsLayout, write_flags_csv
from .images import IMAGE_SUFFIXES, load_image, scan_folder
from .inputcheck import (
    InputCheck,
    available_scores,
    check_alpha,
    input_scores,
    needed_calibration,
    probe_copies,
    score_of,
)
from .journal import FlagJournal, journal_path
from .labels import LabelSet
from .mapstore import MapStore
from .model import OnnxClassifier
from .monitor import FlagMonitor
from .monitorfile import monitor_to_dict
from .numerics import logit, sigmoid
from .paths import printable
from .scorers import Scorer, make_monitor

logger = logging.getLogger(__name__)


@dataclass
class ImageResult:
    """Everything computed for one image (audited classes only, in audited order).

    Attributes
    ----------
    key : str
        The image as the user named it (CSV path, or path under the audited folder).
    path : Path
    error : str or None
        Why the image could not be scored; ``None`` when it was.
    logits, probs : ndarray, shape (K,)
    dist : ndarray, shape (K, K)
        Cosine distances between the class maps (scorers with maps, e.g. INFORMER, only).
    maps : ndarray, shape (K, ...) or None
        The class saliency maps, kept only when asked (never from the cache).
    score : ndarray, shape (K,)
        The monitor's raw score: ``d`` for INFORMER, else the baseline's score.
    """

    key: str
    path: Path
    error: str | None = None
    logits: NDArray[np.float64] | None = None
    probs: NDArray[np.float64] | None = None
    dist: NDArray[np.float64] | None = None
    maps: NDArray[np.float64] | None = None
    score: NDArray[np.float64] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def d(self) -> NDArray[np.float64] | None:
        """INFORMER's class distinctiveness: the score of a scorer with a distance matrix."""
        return self.score if self.dist is not None else None


class Auditor:
    """Streams images through one model and one scorer (INFORMER or a baseline).

    Parameters
    ----------
    model : OnnxClassifier
    scorer : Scorer
        The monitor's raw score (:mod:`.scorers`), e.g. ``InformerScorer(adapter)``.
    classes : sequence of str, optional
        Model outputs to audit (distinctiveness is computed among these); default all.
    images_per_chunk : int
        Images loaded and explained together (bounds memory; does not change results).
    keep_maps : bool
        Keep each image's class maps in its result (the cache is then only written, not read,
        as it holds no maps).
    cache : ScoreCache, optional
        Per-image score cache, read before scoring and written after.

    Attributes
    ----------
    cache_hits, cache_misses : int
        Images found in / missing from the cache so far (both 0 without a cache).
    """

    def __init__(
        self,
        model: OnnxClassifier,
        scorer: Scorer,
        classes: Sequence[str] | None = None,
        *,
        images_per_chunk: int = 8,
        keep_maps: bool = False,
        cache: ScoreCache | None = None,
    ) -> None:
        names = list(model.card.class_names)
        self.classes = list(classes) if classes is not None else names
        unknown = [c for c in self.classes if c not in names]
        if unknown or not self.classes or len(set(self.classes)) != len(self.classes):
            raise LabelFormatError(
                f"audited classes {self.classes} must be distinct model classes; the model "
                f"({model.path}) has {names}"
            )
        if not isinstance(scorer, Scorer):
            raise EvaluationError(
                f"scorer must be a Scorer (informer_audit.scorers), got {type(scorer).__name__}"
            )
        scorer.check(model, self.classes)
        self.model = model
        self.scorer = scorer
        self.index = np.array([names.index(c) for c in self.classes])
        self.images_per_chunk = max(1, int(images_per_chunk))
        self.keep_maps = keep_maps
        self.cache = cache
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def method(self) -> str:
        """The scorer's method name (the monitor's ``method``)."""
        return self.scorer.name

    @property
    def score_name(self) -> str:
        """Prefix of the score columns in CSV files: ``d`` (INFORMER) or the method's name."""
        return self.scorer.score_name

    def binding(self) -> dict[str, Any]:
        """What a monitor fitted with this auditor is valid for.

        The model's fingerprint, classes and preprocessing, then the scorer's
        :meth:`~.scorers.Scorer.settings` (``saliency``, and ``method`` for a baseline).
        """
        card = self.model.card.to_dict()
        class_names = card.pop("class_names")
        return {
            "model_sha256": self.model.sha256,
            "class_names": class_names,
            "audited_classes": list(self.classes),
            "preprocessing": card,
            **self.scorer.settings(),
        }

    def close(self) -> None:
        """Release what scoring holds beyond this process (nothing here; see :mod:`.backends`)."""

    # -- the score cache ----------------------------------------------------------------------
    def _cache_document(self, path: Path) -> str | None:
        """The image's cache key document; ``None`` without a cache or for an unreadable file."""
        if self.cache is None:
            return None
        try:
            image_sha256 = content_sha256(path)
        except OSError:
            return None  # loading the image will record why
        return key_document(
            model_sha256=self.model.sha256,
            image_sha256=image_sha256,
            kind=self.scorer.cache_kind,
            settings=self.scorer.cache_settings(),
            classes=self.classes,
            preprocessing=self.model.card.to_dict(),
        )

    def _from_cache(self, cache: ScoreCache, r: ImageResult, document: str) -> bool:
        arrays = cache.get(document, self.scorer.cache_shapes(len(self.classes)))
        if arrays is None:
            self.cache_misses += 1
            return False
        self.cache_hits += 1
        z = arrays["logits"]
        r.logits, r.probs = z, sigmoid(z)
        r.score, r.dist = self.scorer.from_cache(arrays, r.probs)
        return True

    def _to_cache(self, cache: ScoreCache, r: ImageResult, document: str) -> None:
        if r.logits is None or r.score is None:
            return  # not scored: nothing to store
        cache.put(document, self.scorer.to_cache(r.logits, r.score, r.dist))

    def run(
        self,
        items: Iterable[tuple[str, Path]],
        on_result: Callable[[ImageResult], None] | None = None,
    ) -> Iterator[ImageResult]:
        """Score ``(key, path)`` items; yields one result per item, in order."""
        chunk: list[tuple[str, Path]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) == self.images_per_chunk:
                yield from self._emit(self._score_chunk(chunk), on_result)
                chunk = []
        if chunk:
            yield from self._emit(self._score_chunk(chunk), on_result)

    @staticmethod
    def _emit(
        results: list[ImageResult], on_result: Callable[[ImageResult], None] | None
    ) -> Iterator[ImageResult]:
        for r in results:
            if on_result is not None:
                on_result(r)
            yield r

    def _score_chunk(self, chunk: list[tuple[str, Path]]) -> list[ImageResult]:
        results = [ImageResult(key, Path(path)) for key, path in chunk]
        loaded: list[tuple[ImageResult, NDArray[np.float32]]] = []
        documents: dict[int, str] = {}  # id(result) -> cache key document
        for r in results:
            document = self._cache_document(r.path)
            if document is not None and self.cache is not None:
                documents[id(r)] = document
                if not self.keep_maps and self._from_cache(self.cache, r, document):
                    continue
            self._load(loaded, r, None)
        self._score_isolated(loaded)
        for r, _ in loaded:
            if r.ok and id(r) in documents and self.cache is not None:
                self._to_cache(self.cache, r, documents[id(r)])
        return results

    def score_bytes(self, items: Sequence[tuple[str, str | Path, bytes]]) -> list[ImageResult]:
        """Score images from their bytes, already read: ``(key, path, data)`` items.

        What a worker of :mod:`.backends` runs: the driver reads the files (no shared file
        system is needed) and this decodes ``data`` as :func:`~.images.load_image` decodes a
        file, ``path`` naming it in messages. The score cache is not used (the driver owns it);
        each result is scored or failed exactly as :meth:`run` would score or fail the file.
        """
        results = [ImageResult(key, Path(path)) for key, path, _ in items]
        loaded: list[tuple[ImageResult, NDArray[np.float32]]] = []
        for r, (_, _, data) in zip(results, items, strict=True):
            self._load(loaded, r, data)
        self._score_isolated(loaded)
        return results

    # -- in-memory images (the shift benchmark's corrupted copies, :mod:`.shift`) --------------
    def score_arrays(
        self, keys: Sequence[str], images: Sequence[NDArray[np.floating]]
    ) -> list[ImageResult]:
        """Score canonical images already in memory; one result per image, in order.

        Parameters
        ----------
        keys : sequence of str
            Names of the images (a result's :attr:`~ImageResult.key`; its ``path`` is
            ``Path(key)``).
        images : sequence of ndarray, each (H, W, C)
            Canonical images (:mod:`.images`): a :class:`~.images.LoadedImage` keeps its
            ``source_bits``, so an 8-bit one is resized in 8 bits as its file would be.

        Returns
        -------
        list of ImageResult
            Scored exactly as :meth:`run` scores files, without the score cache; an image that
            cannot be preprocessed (a shape that is not canonical) or scored is a failed result.
        """
        if len(keys) != len(images):
            raise EvaluationError(f"got {len(keys)} keys for {len(images)} images")
        results = [ImageResult(key, Path(key)) for key in keys]
        loaded: list[tuple[ImageResult, NDArray[np.float32]]] = []
        for r, image in zip(results, images, strict=True):
            try:
                loaded.append((r, self.model.preprocess([image])[0]))
            except (ValueError, MemoryError) as exc:
                r.error = f"{r.key}: cannot convert the image: {exc}"
        self._score_isolated(loaded)
        return results

    def _load(
        self,
        loaded: list[tuple[ImageResult, NDArray[np.float32]]],
        r: ImageResult,
        data: bytes | None,
    ) -> None:
        """Read and preprocess one image into ``loaded``; a file problem becomes its error."""
        try:
            image = load_image(r.path) if data is None else load_image(r.path, data)
            loaded.append((r, self.model.preprocess([image])[0]))
        except ImageReadError as exc:
            r.error = str(exc)
        except (OSError, ValueError, MemoryError) as exc:
            r.error = f"{r.path}: cannot read or convert the image: {exc}"

    def _score_isolated(self, loaded: list[tuple[ImageResult, NDArray[np.float32]]]) -> None:
        """Score loaded images together; when the runtime fails, find the image that fails it."""
        if not loaded:
            return
        try:
            self._score(loaded)
        except (ModelSpecError, SaliencyError, EvaluationError):
            raise  # a model or adapter problem, not a file problem: stop the run
        except Exception as exc:  # isolate the image that makes the runtime fail
            if len(loaded) == 1:
                loaded[0][0].error = f"scoring failed: {type(exc).__name__}: {exc}"
            else:
                for pair in loaded:
                    try:
                        self._score([pair])
                    except (ModelSpecError, SaliencyError, EvaluationError):
                        raise
                    except Exception as exc1:
                        pair[0].error = f"scoring failed: {type(exc1).__name__}: {exc1}"

    def _score(self, loaded: list[tuple[ImageResult, NDArray[np.float32]]]) -> None:
        x = np.stack([arr for _, arr in loaded])
        logits = self.model.logits(x)
        finite = np.asarray(np.isfinite(logits).all(axis=1))
        for (r, _), good in zip(loaded, finite.tolist(), strict=True):
            if not good:
                r.error = "the model returned non-finite scores (NaN or Inf) for this image"
        if not finite.any():
            return
        keep = np.flatnonzero(finite)
        batch = self.scorer.score(self.model, x[keep], logits[keep], self.index)
        z = logits[keep][:, self.index]
        probs = sigmoid(z)
        for row, i in enumerate(keep):
            r = loaded[i][0]
            if not batch.valid[row]:
                r.error = self.scorer.invalid_reason
                continue
            r.logits, r.probs, r.score = z[row], probs[row], batch.scores[row]
            if batch.dist is not None:
                r.dist = batch.dist[row]
            if self.keep_maps and batch.maps is not None:
                r.maps = batch.maps[row]


# -- calibrate ----------------------------------------------------------------------------------
@dataclass
class Calibration:
    """Outcome of :func:`calibrate`.

    Attributes
    ----------
    monitor : FlagMonitor
        Fitted.
    binding : dict
        What the monitor is valid for (:meth:`Auditor.binding`).
    results : list of ImageResult
        The scored images, in label-file order.
    y : ndarray, shape (N_ok, K)
        Labels of the scored images.
    failures : list of ImageResult
        The images that could not be scored.
    labels : LabelSet, optional
        The label set calibrated on (gives :attr:`provenance` its label fields).
    flag_scores : ndarray, shape (N_ok, K), optional
        The scores the flag thresholds were compared with on these images: the raw score, the
        distance to the threshold (margin), the learned flagger's out-of-fold probability
        (its fitted model's where an image has no label for a class).
    evidence : dict, optional
        What the cross-fitted estimate and the information tests showed
        (:func:`.crossfit.calibration_evidence`); stored in the monitor file.
    input_check : InputCheck, optional
        The fitted input check (:func:`fit_input_check`); stored in the monitor file.
    """

    monitor: FlagMonitor
    binding: dict[str, Any]
    results: list[ImageResult]
    y: NDArray[np.float64]
    failures: list[ImageResult] = field(default_factory=list)
    labels: LabelSet | None = None
    flag_scores: NDArray[np.float64] | None = None
    evidence: dict[str, Any] | None = None
    input_check: InputCheck | None = None

    @property
    def return_code(self) -> int:
        return 1 if self.failures else 0

    @property
    def provenance(self) -> dict[str, Any]:
        """The monitor file's ``calibration`` record: the labels, their filters, the failures."""
        record: dict[str, Any] = {}
        if self.labels is not None:
            labels = self.labels
            record = {
                "labels_file": Path(labels.source).name,
                "label_format": labels.format,
                "label_columns": dict(zip(labels.class_names, labels.label_columns, strict=True)),
                "filters": {**labels.filters, "excluded": labels.excluded},
            }
        return {
            **record,
            "n_images": len(self.results),
            "n_failed": len(self.failures),
            "failures": [{"path": f.key, "error": f.error} for f in self.failures],
        }


def calibrate(
    auditor: Auditor,
    labels: LabelSet,
    *,
    grid_step: float = 0.001,
    on_result: Callable[[ImageResult], None] | None = None,
    evidence_options: Mapping[str, Any] | None = None,
    input_check: InputCheck | None = None,
    input_probes: int = 8,
    input_seed: int = 0,
) -> Calibration:
    """Score every labelled image and fit the monitor of the auditor's method.

    Parameters
    ----------
    auditor : Auditor
        Its audited classes must be ``labels.class_names``, in that order.
    labels : LabelSet
    evidence_options : mapping, optional
        Keyword arguments of :func:`.crossfit.calibration_evidence` (``n_splits``,
        ``n_repeats``, ``n_resamples``, ``seed``); an empty mapping uses its defaults, ``None``
        skips the estimate (the monitor is the same either way).
    input_check : InputCheck, optional
        An unfitted input check (its score, alpha and direction), fitted on the scored images
        by :func:`fit_input_check`; ``None``: no input check.
    input_probes, input_seed : int
        The probe images of ``direction="auto"`` (:func:`fit_input_check`).
    """
    if list(labels.class_names) != auditor.classes:
        raise LabelFormatError(
            f"{labels.source}: label classes {labels.class_names} differ from the audited "
            f"classes {auditor.classes}"
        )
    items = list(zip(labels.keys, labels.paths, strict=True))
    ok, failed, rows = [], [], []
    for i, result in enumerate(auditor.run(items, on_result)):
        if result.ok:
            ok.append(result)
            rows.append(i)
        else:
            failed.append(result)
    if len(ok) < 2:
        raise LabelFormatError(
            f"{labels.source}: only {len(ok)} of {len(items)} calibration images could be scored; "
            "at least 2 are needed. First failures: " + "; ".join(str(f.error) for f in failed[:3])
        )
    y = labels.y[rows]
    scored = [_probs_score(r) for r in ok]
    probs = np.stack([s[0] for s in scored])
    scores = np.stack([s[1] for s in scored])
    dist = _distances(ok) if auditor.scorer.has_maps else None
    monitor = make_monitor(auditor.method, grid_step=grid_step)
    monitor.fit(scores, y, probs, auditor.classes, dist=dist)
    fitted = monitor.calibration_scores_
    flag_scores = np.where(np.isfinite(fitted), fitted, monitor.flag_scores(scores, probs, dist))
    evidence = None
    if evidence_options is not None:
        from .crossfit import calibration_evidence

        evidence = calibration_evidence(
            monitor, auditor.scorer, scores, y, probs, dist, **evidence_options
        )
    check = None
    if input_check is not None:
        check = fit_input_check(auditor, ok, input_check, probes=input_probes, seed=input_seed)
    return Calibration(
        monitor, auditor.binding(), ok, y, failed, labels, flag_scores, evidence, check
    )


def image_input_scores(
    auditor: Auditor, results: Sequence[ImageResult]
) -> dict[str, NDArray[np.float64]]:
    """The image-level input scores of scored results (:func:`.inputcheck.input_scores`).

    From what scoring computed, no model call: the logits, the distance matrices (methods
    with maps) and, for TTA, its spread. Each score has shape (N,).
    """
    if not results:
        return {}
    logits = np.stack([np.asarray(r.logits) for r in results])
    probs = np.stack([np.asarray(r.probs) for r in results])
    dist = _distances(results) if auditor.scorer.has_maps else None
    tta = np.stack([np.asarray(r.score) for r in results]) if _is_tta(auditor) else None
    return input_scores(logits, probs, dist, tta)


def _is_tta(auditor: Auditor) -> bool:
    return "tta" in auditor.scorer.option_groups


def input_score_names(auditor: Auditor) -> tuple[str, ...]:
    """The input scores the auditor's method computes (the flags CSV's ``input_<name>``)."""
    return available_scores(auditor.scorer.has_maps, _is_tta(auditor))


def fit_input_check(
    auditor: Auditor,
    results: Sequence[ImageResult],
    check: InputCheck,
    *,
    probes: int = 8,
    seed: int = 0,
) -> InputCheck:
    """Fit an input check on scored calibration images.

    With ``check.direction == "auto"``, ``probes`` of the images (drawn with
    ``numpy.random.default_rng(seed)``) are probe images: they are read again, corrupted
    (:func:`.inputcheck.probe_copies`: noise, inverted, upside down) and scored by the
    auditor's method -- ``3 * probes`` extra images' worth of model calls and saliency maps,
    at calibration time only -- and the paired differences choose the direction. The probe
    images are then left out of the calibration scores, so that the direction depends on no
    image the p-values are ranked against. With another direction (or ``probes=0``) nothing is
    computed again and every image is a calibration image.

    Parameters
    ----------
    auditor : Auditor
        The one that scored ``results``.
    results : sequence of ImageResult
        Scored calibration images (at least 2 for probes).
    check : InputCheck
        Unfitted (its hyperparameters are used); fitted and returned.
    """
    scores = score_of(image_input_scores(auditor, results), check.score)
    m = min(max(0, int(probes)), len(results) - 1)
    if check.direction != "auto" or m <= 0:
        fitted = check.fit(scores)
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(len(results), m, replace=False))
        shifted = _probe_scores(auditor, [results[i] for i in chosen], check.score, seed)
        rest = np.delete(scores, chosen)
        logger.info("input check: %d probe image(s), %d calibration scores", m, rest.size)
        fitted = check.fit(rest, probe_clean=scores[chosen], probe_shifted=shifted)
    warn_if_cannot_flag(fitted, fitted.alpha, stacklevel=4)
    return fitted


def warn_if_cannot_flag(check: InputCheck, alpha: float, *, stacklevel: int = 3) -> None:
    """Warn when no image can reach ``p <= alpha`` with the check's calibration images."""
    if check.can_flag(alpha):
        return
    needed = needed_calibration(alpha, check.direction_)
    warnings.warn(
        InformerAuditWarning(
            f"the input check has {check.n_calibration_} calibration images: its smallest "
            f"p-value is {check.min_p_:.3g} > alpha = {alpha:g}, so no image can be flagged; "
            f"a {check.direction_} check at this alpha needs at least {needed} calibration "
            "images (not counting probe images)",
            params=("input_alpha",),
        ),
        stacklevel=stacklevel,
    )


def _probe_scores(
    auditor: Auditor, results: Sequence[ImageResult], score: str, seed: int
) -> NDArray[np.float64]:
    """Scores (m, 3) of the corrupted copies of probe images; NaN where a copy fails."""
    from .inputcheck import PROBE_KINDS

    model = auditor.model
    c = len(PROBE_KINDS)
    out = np.full((len(results), c), np.nan)
    rows, arrays = [], []
    for i, r in enumerate(results):
        try:
            arrays.append(model.preprocess([load_image(r.path)])[0])
            rows.append(i)
        except (OSError, ValueError, MemoryError) as exc:  # ImageReadError is a ValueError
            logger.warning("input check probe %s could not be read again: %s", r.key, exc)
    if not arrays:
        return out
    card = model.card
    copies = probe_copies(np.stack(arrays), card.mean, card.std, seed)
    x = copies.reshape(-1, *copies.shape[2:])
    logits = model.logits(x)
    keep = np.flatnonzero(np.isfinite(logits).all(axis=1))
    if keep.size == 0:
        return out
    batch = auditor.scorer.score(model, x[keep], logits[keep], auditor.index)
    good = keep[batch.valid]
    z = logits[good][:, auditor.index]
    dist = batch.dist[batch.valid] if batch.dist is not None else None
    tta = batch.scores[batch.valid] if _is_tta(auditor) else None
    values = score_of(input_scores(z, sigmoid(z), dist, tta), score)
    flat = np.full(x.shape[0], np.nan)
    flat[good] = values
    out[rows] = flat.reshape(len(rows), c)
    return out


def _distances(results: Sequence[ImageResult]) -> NDArray[np.float64]:
    """The K x K distance matrices of scored results, stacked: (N, K, K)."""
    dists = [r.dist for r in results]
    if any(d is None for d in dists):
        raise ValueError("a scored image of a method with maps has no distance matrix")
    return np.stack([np.asarray(d) for d in dists if d is not None])


# -- flag ---------------------------------------------------------------------------------------
@dataclass
class FlagSummary:
    """Counts of a :func:`flag_folder` run; owns the exit code."""

    classes: list[str]
    n_images: int = 0
    n_failed: int = 0
    predicted: NDArray[np.int64] | None = None
    flagged: NDArray[np.int64] | None = None
    audited: NDArray[np.int64] | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """Files under the folder that were not audited, with the reason (``(path, reason)``, as
    :func:`~.images.scan_folder` lists them: not an image, hidden, a broken symlink, ...).
    They have no CSV row and do not change the exit code: every other file has a row."""
    n_resumed: int = 0
    """Images whose rows came from the journal of an earlier, interrupted run (not scored
    again)."""
    n_duplicates: int = 0
    """Images with the same bytes as an earlier file of this folder in this run: their row is
    that file's (not scored twice)."""
    input_check: InputCheck | None = None
    """The input check applied (``None``: the monitor has none)."""
    input_alpha: float | None = None
    """The alpha the input check flagged at (the monitor's, or the run's override)."""
    n_input_flagged: int = 0
    """Scored images the input check flagged (``p <= input_alpha``)."""

    def __post_init__(self) -> None:
        k = len(self.classes)
        self.predicted = np.zeros(k, dtype=np.int64)
        self.flagged = np.zeros(k, dtype=np.int64)
        self.audited = np.zeros(k, dtype=np.int64)

    @property
    def n_ok(self) -> int:
        return self.n_images - self.n_failed

    @property
    def return_code(self) -> int:
        """0: every image audited; 1: the run finished but some files failed.

        Skipped files (:attr:`skipped`: not images, hidden, ...) do not count: they are
        listed, not failed. An image file that cannot be read is a failure.
        """
        return 1 if self.n_failed else 0


def _scored(
    r: ImageResult,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    if r.probs is None or r.d is None or r.dist is None:
        raise ValueError(f"{r.key}: image was not scored ({r.error})")
    return r.probs, r.d, r.dist


def _probs_score(r: ImageResult) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    if r.probs is None or r.score is None:
        raise ValueError(f"{r.key}: image was not scored ({r.error})")
    return r.probs, r.score


def flag_folder(
    auditor: Auditor,
    monitor: FlagMonitor,
    binding: dict[str, Any],
    images_dir: str | Path,
    out_csv: str | Path,
    *,
    with_matrix: bool = False,
    monitor_source: str = "monitor",
    on_result: Callable[[ImageResult], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    maps_dir: str | Path | None = None,
    restart: bool = False,
    on_reused: Callable[[str], None] | None = None,
    input_check: InputCheck | None = None,
    input_alpha: float | None = None,
) -> FlagSummary:
    """Audit every image under ``images_dir`` and write the flags CSV, resumably.

    Each scored image's row is appended to the journal ``OUT.journal`` as it finishes
    (:class:`~.journal.FlagJournal`: flushed at once, ``fsync``-ed once per chunk of images),
    so an interrupted run -- ``kill -9`` included -- loses no finished row. A rerun with the
    same settings reuses the journal's row of every image whose bytes it holds (under the
    image's current path: a moved or renamed image is not scored again), scores the rest, and
    tries failed images again. When every image is done the CSV is written in the folder's
    sorted path order to ``OUT.partial``, ``fsync``-ed and renamed to ``out_csv``, and the
    journal is removed: an interrupted and resumed run writes the same bytes as an
    uninterrupted one, and there is never a half-written ``out_csv``. A journal of a run with
    other settings is refused (:class:`~.errors.ResumeError`) unless ``restart`` discards it.

    The folder is listed by :func:`~.images.scan_folder`: every file under it gets a CSV row
    (scored or failed) or is in :attr:`FlagSummary.skipped` with its reason (not an image,
    hidden, a broken symlink, ...).

    Files are identified by their bytes: a file with the same bytes as an earlier file of the
    folder is not scored again but gets that file's row (counted in
    :attr:`FlagSummary.n_duplicates`; rows from an earlier run's journal are counted in
    :attr:`FlagSummary.n_resumed`). Should that earlier file fail, the duplicate is scored
    itself. When the CSV cannot be written at the end, :class:`~.errors.OutputWriteError` says
    so; the finished rows stay in the journal, and a rerun writes the CSV without scoring.

    The score columns are ``d_C`` for INFORMER and ``<method>_C`` for a baseline
    (``entropy_C``, ``tta_C``, ``msp_C``). With ``maps_dir``
    (INFORMER, an auditor with ``keep_maps=True``), each scored image's class maps are saved
    there (:class:`~.mapstore.MapStore`) before its row is written.

    Every row has the image-level input scores (``input_<name>``: ``input_entropy``,
    ``input_max_prob``, ``input_energy``, ``input_distinctiveness`` for a method with maps,
    ``input_tta_spread`` for TTA), computed from what scoring computed (no model call). With
    ``input_check`` (a fitted :class:`~.inputcheck.InputCheck`, e.g. the monitor file's), also
    ``input_score``, its conformal ``input_p`` and ``input_flag`` (``p <= alpha``; ``alpha``:
    ``input_alpha``, default the check's own).
    """
    if input_check is not None:
        input_check.check_fitted()
        alpha = input_check.alpha if input_alpha is None else check_alpha(input_alpha)
        if input_check.score not in input_score_names(auditor):
            raise MonitorMismatchError(
                f"{monitor_source}: its input check uses the score {input_check.score!r}, which "
                f"method {auditor.method!r} does not compute ({list(input_score_names(auditor))})"
            )
    elif input_alpha is not None:
        raise EvaluationError(
            "input_alpha applies to an input check; this run has none (the monitor was fitted "
            "without one)",
            params=("input_alpha",),
        )
    if monitor.method != auditor.method:
        raise MonitorMismatchError(
            f"{monitor_source} is a {monitor.method!r} monitor; this run scores images with "
            f"{auditor.method!r}"
        )
    if with_matrix and not auditor.scorer.has_maps:
        raise EvaluationError(
            f"the distance matrix needs saliency maps; method {auditor.method!r} has none"
        )
    check_binding(binding, auditor.binding(), source=monitor_source)
    store = _map_store(auditor, maps_dir)
    scan = scan_folder(images_dir)
    paths = scan.images
    if not paths:
        raise ImageReadError(
            f"{images_dir}: no images found (looked recursively for "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} files and any file whose content is an "
            f"image, DICOM included; {len(scan.skipped)} file(s) skipped"
            + "".join(f"; {printable(str(p))}: {why}" for p, why in scan.skipped[:5])
            + ("; ..." if len(scan.skipped) > 5 else "")
            + ")"
        )
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    layout = FlagsLayout(
        tuple(auditor.classes),
        auditor.score_name,
        with_matrix,
        input_scores=input_score_names(auditor),
        input_check=input_check is not None,
    )
    columns = layout.columns
    summary = FlagSummary(list(auditor.classes))
    summary.skipped = [(printable(str(p)), printable(why)) for p, why in scan.skipped]
    if input_check is not None:
        summary.input_check, summary.input_alpha = input_check, alpha
        warn_if_cannot_flag(input_check, alpha)
    with FlagJournal(
        journal_path(out_csv),
        _journal_settings(auditor, monitor, columns, input_check, summary.input_alpha),
        len(columns) - 1,
        restart=restart,
        sync_every=auditor.images_per_chunk,
    ) as journal:
        if on_start is not None:
            on_start(len(paths))
        hashes: list[str | None] = [None] * len(paths)  # SHA-256 of each file's bytes
        failed: dict[int, str] = {}  # index in paths -> why the image failed
        sent: deque[int] = deque()  # indices handed to the auditor, in order
        first: dict[str, int] = {}  # bytes (SHA-256) -> the first file of this run with them
        copies: dict[int, int] = {}  # index of a duplicate -> index of the file it copies

        def to_score(indices: Iterable[int]) -> Iterator[tuple[str, Path]]:
            for i in indices:
                path = paths[i]
                key = printable(str(path))
                if hashes[i] is None:
                    try:
                        hashes[i] = content_sha256(path)
                    except OSError as exc:
                        failed[i] = f"{key}: cannot read the file ({exc.strerror or exc})"
                        if on_result is not None:
                            on_result(ImageResult(key, path, error=failed[i]))
                        continue
                    sha = str(hashes[i])
                    if sha in first:  # same bytes as an earlier file of this folder
                        copies[i] = first[sha]
                        if on_reused is not None:
                            on_reused(key)
                        continue
                    first[sha] = i
                    # Not seen before in this run: a journal row is an earlier run's.
                    if sha in journal:
                        summary.n_resumed += 1
                        if on_reused is not None:
                            on_reused(key)
                        continue
                sent.append(i)
                yield key, path

        def score(indices: Iterable[int]) -> None:
            for result in auditor.run(to_score(indices), on_result):
                i = sent.popleft()
                if store is not None:
                    _save_maps(store, result)
                sha = hashes[i]
                if result.ok and sha is not None:
                    cells = _flag_cells(result, monitor, layout, input_check, summary.input_alpha)
                    journal.append(sha, result.key, cells)
                else:
                    failed[i] = printable(str(result.error))

        score(range(len(paths)))
        # A duplicate of a file that failed is scored itself (the failure may be its own).
        retry = [i for i, j in copies.items() if j in failed]
        score(retry)
        summary.n_duplicates = len(copies) - len(retry)
        journal.sync()
        try:
            _write_flags_csv(out_csv, layout, paths, hashes, failed, journal, summary)
        except OSError as exc:
            raise OutputWriteError(
                f"cannot write the flags CSV {os.fspath(out_csv)!r}: {exc.strerror or exc}"
                + (f" ({exc.filename})" if exc.filename else "")
                + f"; its {len(journal)} finished row(s) are kept in "
                f"{os.fspath(journal.path)!r}: rerun the same command to write it without "
                "scoring them again"
            ) from exc
        journal.remove()
    return summary


def _journal_settings(
    auditor: Auditor,
    monitor: FlagMonitor,
    columns: Sequence[str],
    input_check: InputCheck | None = None,
    input_alpha: float | None = None,
) -> dict[str, Any]:
    """Everything that changes a flags row; the resume journal is bound to it.

    The column layout, the binding (model SHA-256, classes, preprocessing, saliency or method
    settings), the monitor's decision rule (method, direction, per-class thresholds, the learned
    flagger's coefficients), the input check's (score, direction, the alpha of this run, the
    SHA-256 of its calibration scores) and the tool version. Not included, as they do not
    change rows: the
    device, batch sizes, the score cache, the monitor's calibration statistics, the images
    folder (rows are keyed by image content) and the output file's name.
    """
    rule = monitor_to_dict(monitor)
    decision: dict[str, Any] = {
        "method": rule["method"],
        "direction": rule["direction"],
        "thresholds": [
            [c["name"], c["prediction_threshold"], c["flag_threshold"]] for c in rule["classes"]
        ],
    }
    if any("model" in c for c in rule["classes"]):  # the learned flagger's coefficients
        decision["models"] = [c.get("model") for c in rule["classes"]]
    out = {
        "tool_version": __version__,
        "columns": list(columns),
        "binding": auditor.binding(),
        "monitor": decision,
    }
    if input_check is not None:
        rule_in = input_check.settings(input_alpha)
        scores = json.dumps(rule_in.pop("calibration_scores")).encode("ascii")
        rule_in["calibration_scores_sha256"] = hashlib.sha256(scores).hexdigest()
        out["input_check"] = rule_in
    return out


def _map_store(auditor: Auditor, maps_dir: str | Path | None) -> MapStore | None:
    if maps_dir is None:
        return None
    if not auditor.scorer.has_maps or not auditor.keep_maps:
        raise EvaluationError(
            "saving maps needs a method with maps (informer) and an Auditor(keep_maps=True); "
            "this run "
            f"scores with {auditor.method!r}" + ("" if auditor.keep_maps else ", keep_maps=False")
        )
    return MapStore.create(maps_dir, auditor.binding())


def _save_maps(store: MapStore, result: ImageResult) -> None:
    if not result.ok or result.maps is None:
        return
    _, d, dist = _scored(result)
    try:
        image_sha256 = content_sha256(result.path)
    except OSError:
        image_sha256 = ""  # read a moment ago; the report then cannot check the file is the same
    store.save(result.key, result.maps, dist, d, image_sha256)


def _flag_cells(
    result: ImageResult,
    monitor: FlagMonitor,
    layout: FlagsLayout,
    input_check: InputCheck | None = None,
    input_alpha: float | None = None,
) -> list[str]:
    """The cells of a scored image's flags row after its path, as the CSV writes them."""
    probs, score = _probs_score(result)
    dist = result.dist
    if monitor.uses_distances and dist is None:
        raise ValueError(f"{result.key}: the {monitor.method!r} monitor needs the distance matrix")
    d = None if dist is None else dist[None]
    yhat, flags, audited = (a[0] for a in monitor.audit(probs[None], score[None], d))
    flag_score = monitor.flag_scores(score[None], probs[None], d)[0]
    shown = dist if layout.with_matrix else None
    logits = result.logits if result.logits is not None else logit(probs)
    tta = score[None] if "tta_spread" in layout.input_scores else None
    found = input_scores(logits[None], probs[None], d, tta)
    inputs = {name: float(found[name][0]) for name in layout.input_scores}
    check = None
    if input_check is not None:
        s = score_of(found, input_check.score)
        p = float(input_check.p_values(s)[0])
        check = (float(s[0]), p, bool(input_check.flags(s, input_alpha)[0]))
    return layout.scored_row(
        result.key, probs, yhat, flag_score, flags, audited, dist=shown, inputs=inputs, check=check
    )[1:]


def _write_flags_csv(
    out_csv: Path,
    layout: FlagsLayout,
    paths: Sequence[Path],
    hashes: Sequence[str | None],
    failed: Mapping[int, str],
    journal: FlagJournal,
    summary: FlagSummary,
) -> None:
    """Write the flags CSV in folder order, atomically, and count it into ``summary``.

    Scored rows are read back from the journal one at a time (memory does not grow with the
    folder); failed rows come from ``failed``.
    """
    k = len(summary.classes)
    counts = np.zeros((3, k), dtype=np.int64)  # predicted, flagged, audited positives
    at = [[layout.index(f, j) for j in range(k)] for f in ("pred", "flag", "audited")]
    input_at = layout.columns.index("input_flag") if layout.input_check else None

    def rows() -> Iterator[list[Any]]:
        for i, path in enumerate(paths):
            key = printable(str(path))
            summary.n_images += 1
            sha = hashes[i]
            if sha is None or i in failed:
                summary.n_failed += 1
                summary.failures.append((key, failed[i]))
                yield layout.failed_row(key, failed[i])
                continue
            row = [key, *journal.cells(sha)]
            counts[:] += [[int(row[c]) for c in cols] for cols in at]
            if input_at is not None:
                summary.n_input_flagged += int(row[input_at])
            yield row

    write_flags_csv(out_csv, layout, rows())
    summary.predicted, summary.flagged, summary.audited = counts[0], counts[1], counts[2]


__all__ = [
    "Auditor",
    "Calibration",
    "FlagSummary",
    "ImageResult",
    "InformerAuditError",
    "calibrate",
    "fit_input_check",
    "flag_folder",
    "image_input_scores",
    "input_score_names",
]
