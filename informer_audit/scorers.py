"""Monitor methods as objects: one registry of scorers, like the saliency adapters'.

A scorer turns a batch of preprocessed images into the monitor's raw score, one per image and
audited class, shape (N, K), and knows everything that differs between methods: the flag
direction, the prefix of its CSV score columns, the range of its score, what a monitor binding
and a score-cache entry record of it. :class:`~.audit.Auditor` and :func:`~.audit.calibrate`
work with any scorer; adding a method means writing one :class:`Scorer` subclass and
registering it with :func:`register_scorer` (anchor: :func:`.saliency.register_adapter`).

========== ============ ======================================================== ==========
method     direction    raw score                                                needs
========== ============ ======================================================== ==========
informer   below        class distinctiveness ``d_k`` (:mod:`.distinctiveness`)  saliency
learned    above        P(wrong) of a logistic model on d, the distances, p      saliency
entropy    above        ``H_k = -p log2 p - (1 - p) log2 (1 - p)``, in [0, 1]    probs
tta        above        std of ``p_k`` over T augmented copies, in [0, 0.5]      model
msp        below        ``max(p_k, 1 - p_k)``, in [0.5, 1] *(ours)*              probs
margin     below        ``|logit p_k - logit t_k|``, in [0, inf) *(ours)*        probs
========== ============ ======================================================== ==========

``learned`` and ``margin`` flag on a fitted function of the raw score (their
:attr:`Scorer.monitor_class`: :class:`~.learned.LearnedMonitor`,
:class:`~.monitor.MarginMonitor`); the others compare the raw score itself with the threshold.

The score functions themselves live in :mod:`.baselines` (entropy, MSP, TTA spread) and
:mod:`.distinctiveness`. :func:`build_scorer` and :func:`scorer_from_binding` build a scorer
from plain options (what a front end parses) or from a monitor file's binding.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from .baselines import entropy_score, msp_score, tta_settings, tta_spread
from .distinctiveness import cosine_distance_matrix, distinctiveness
from .errors import EvaluationError, LabelFormatError, MonitorMismatchError, SaliencyError
from .learned import LearnedMonitor
from .monitor import FlagMonitor, MarginMonitor
from .numerics import logit, sigmoid
from .saliency import (
    ORT_BATCH_SIZE,
    SaliencyAdapter,
    adapter_from_settings,
    available_adapters,
    get_adapter,
)

if TYPE_CHECKING:
    from .model import OnnxClassifier

Floats = NDArray[np.float64]
Images = NDArray[np.float32]
Index = NDArray[np.intp]

TTA_PARAMS = ("copies", "seed", "max_angle", "blur_size", "padding")
"""Keyword arguments of :func:`~.baselines.tta_spread` that change its result."""

_OPPOSITE_TOL = 1e-3
"""Cosine distances within this of 2 count as opposite maps: float32 rounding of a softmax
leaves d_12 about 5e-7 short of 2 on the test model (more for saturated probabilities), and
the flag thresholds' grid step (METHOD.md section 4) is 0.001, so such d is constant for it."""


@dataclass(frozen=True)
class ScoredBatch:
    """What a scorer computed for a batch of N images and K audited classes.

    Attributes
    ----------
    scores : ndarray, shape (N, K), float64
        The monitor's raw score.
    valid : ndarray, shape (N,), bool
        False for an image whose score could not be computed (its row of ``scores`` is
        meaningless; the auditor records :attr:`Scorer.invalid_reason` for it).
    dist : ndarray, shape (N, K, K), or None
        Cosine distances between the class maps (scorers with maps only).
    maps : ndarray, shape (N, K, ...), or None
        The class saliency maps (scorers with maps only).
    """

    scores: Floats
    valid: NDArray[np.bool_]
    dist: Floats | None = None
    maps: Floats | None = None

    @classmethod
    def of(cls, scores: Floats) -> ScoredBatch:
        """Scores without maps; an image is valid when all its scores are finite."""
        return cls(scores, np.asarray(np.isfinite(scores).all(axis=1), dtype=bool))


@dataclass(frozen=True)
class ScorerOptions:
    """Plain options a front end parses, for :meth:`Scorer.from_options` (see :func:`build_scorer`).

    Each method takes the ones it understands and refuses the others (the message names the
    parameter): ``saliency``, ``saliency_params`` and ``module`` are INFORMER's, ``tta`` is
    TTA's; ``batch_size`` never changes results and goes where a batch size is taken (``None``:
    chosen for the model on this machine, :func:`~.batchsize.batch_size_for`).
    """

    saliency: str | None = None
    saliency_params: Mapping[str, Any] = field(default_factory=dict)
    tta: Mapping[str, Any] = field(default_factory=dict)
    module: Any = None
    batch_size: int | None = None

    def refuse_saliency(self, method: str) -> None:
        """Refuse INFORMER's options for ``method``."""
        where = f"applies to method 'informer' (saliency maps), not {method!r}"
        if self.saliency is not None:
            raise EvaluationError(f"saliency {self.saliency!r} {where}")
        if self.saliency_params:
            raise EvaluationError(
                f"saliency parameter {next(iter(self.saliency_params))!r} {where}"
            )
        if self.module is not None:
            raise EvaluationError(f"parameter 'module' (a torch module for saliency) {where}")

    def refuse_tta(self, method: str) -> None:
        """Refuse TTA's options for ``method``."""
        if self.tta:
            raise EvaluationError(
                f"TTA parameter {next(iter(self.tta))!r} applies to method 'tta', not {method!r}"
            )


class Scorer(ABC):
    """One monitor method: images -> one raw score per audited class.

    Subclasses set the class attributes, take their settings as keyword arguments in
    ``__init__`` (validated there) and implement :meth:`score`. A cache entry holds the
    logits, the distance matrix when :attr:`has_maps`, and the scores under
    :attr:`score_array`.
    """

    name: ClassVar[str]
    """Registry name (the monitor file's ``method``); no ``_`` (it starts a variant label)."""
    direction: ClassVar[str]
    """``"below"`` or ``"above"``: flag when the raw score is below / above the threshold."""
    score_name: ClassVar[str]
    """Prefix of the score columns in CSV files (``d`` gives ``d_C``)."""
    needs: ClassVar[str]
    """What computing the score takes: ``"saliency"``, ``"probabilities"`` or ``"model"``."""
    score_bounds: ClassVar[tuple[float, float]]
    """Least and greatest flag score (the number compared with the flag threshold: the raw
    score, except for margin and learned); for a ``pairwise`` score, the bounds of one pair's
    term."""
    pairwise: ClassVar[bool] = False
    """The score sums a term over the K - 1 other classes, so its range grows with K."""
    min_classes: ClassVar[int] = 1
    """Audited classes the method needs at least."""
    has_maps: ClassVar[bool] = False
    """The method computes class saliency maps (and a K x K distance matrix)."""
    option_groups: ClassVar[frozenset[str]] = frozenset()
    """Which groups of :class:`ScorerOptions` the method takes: ``"saliency"`` (an adapter and
    its parameters), ``"tta"`` (augmentation settings). Front ends ask this instead of names."""
    cache_kind: ClassVar[str]
    """What a score-cache entry of this method holds (:func:`~.cache.key_document`)."""
    score_array: ClassVar[str | None] = "score"
    """Name of the scores in a cache entry; ``None``: recomputed from the probabilities."""
    invalid_reason: ClassVar[str] = "the model returned non-finite scores for an augmented copy"
    """The error recorded for an image :meth:`score` marks invalid."""
    monitor_class: ClassVar[type[FlagMonitor]] = FlagMonitor
    """The monitor fitted on the scores: :class:`~.monitor.FlagMonitor` compares the raw score
    with the flag threshold; a subclass flags on a fitted function of it (margin, learned)."""
    function_of_probabilities: ClassVar[bool] = False
    """The flag score is a function of the class probability alone (and its fitted
    threshold): it can carry no information about errors beyond the model's confidence."""

    @classmethod
    def score_range(cls, n_classes: int) -> tuple[float, float]:
        """The closed interval the raw score lies in, for ``n_classes`` audited classes.

        A monitor file's flag thresholds are checked against it, and the flag-threshold grid
        of ``direction="above"`` reaches its top, so that the threshold that flags nothing on
        the calibration set flags nothing on any image.
        """
        lo, hi = cls.score_bounds
        if cls.pairwise:
            others = max(int(n_classes) - 1, 0)
            return lo * others, hi * others
        return lo, hi

    # -- what a monitor and a cache entry record ----------------------------------------------
    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``__init__`` that change the score (none by default)."""
        return {}

    def method_settings(self) -> dict[str, Any]:
        """The method and every setting that changes its score: ``{"name": ..., ...}``."""
        return {"name": self.name, **self.cache_settings()}

    def settings(self) -> dict[str, Any]:
        """What a monitor binding records of the method, after the model fields.

        ``{"saliency": None, "method": method_settings()}`` for a method without maps.
        """
        return {"saliency": None, "method": self.method_settings()}

    def cache_settings(self) -> dict[str, Any]:
        """The settings in a score-cache key (:func:`~.cache.key_document`)."""
        return self.options()

    def cache_shapes(self, k: int) -> dict[str, tuple[int, ...]]:
        """The arrays of a cache entry and their shapes, for ``k`` audited classes."""
        shapes: dict[str, tuple[int, ...]] = {"logits": (k,)}
        if self.has_maps:
            shapes["dist"] = (k, k)
        if self.score_array is not None:
            shapes[self.score_array] = (k,)
        return shapes

    def to_cache(self, logits: Floats, score: Floats, dist: Floats | None) -> dict[str, Floats]:
        """One scored image's cache arrays, named and ordered as :meth:`cache_shapes`."""
        arrays = {"logits": logits}
        if self.has_maps:
            if dist is None:
                raise EvaluationError(f"a {self.name!r} cache entry needs the distance matrix")
            arrays["dist"] = dist
        if self.score_array is not None:
            arrays[self.score_array] = score
        return arrays

    def from_cache(
        self, arrays: Mapping[str, Floats], probs: Floats
    ) -> tuple[Floats, Floats | None]:
        """``(score, dist)`` of one image from its cache arrays and probabilities, shape (K,)."""
        if self.score_array is None:
            raise EvaluationError(f"method {self.name!r} stores no scores in the cache")
        return arrays[self.score_array], arrays.get("dist") if self.has_maps else None

    # -- scoring ------------------------------------------------------------------------------
    def check(self, model: OnnxClassifier, classes: Sequence[str]) -> None:
        """Refuse a model or a set of audited classes the method cannot score, before any image.

        Raises
        ------
        LabelFormatError
            Fewer audited classes than :attr:`min_classes`.
        """
        if len(classes) < self.min_classes:
            raise LabelFormatError(
                f"method {self.name!r} needs at least {self.min_classes} audited classes, got "
                f"{list(classes)}"
            )

    @abstractmethod
    def score(self, model: OnnxClassifier, x: Images, logits: Floats, index: Index) -> ScoredBatch:
        """Score a batch of images whose logits are finite.

        Parameters
        ----------
        model : OnnxClassifier
        x : ndarray, shape (N, C, H, W), float32
            Preprocessed model input.
        logits : ndarray, shape (N, K_model)
            The model's logits for ``x`` (every model output).
        index : ndarray, shape (K,), int
            Positions of the audited classes among the model outputs, in audited order.

        Returns
        -------
        ScoredBatch
        """

    # -- construction from plain options ------------------------------------------------------
    @classmethod
    def from_options(cls, options: ScorerOptions) -> Scorer:
        """The scorer for :func:`build_scorer`; refuses options of other methods."""
        options.refuse_saliency(cls.name)
        options.refuse_tta(cls.name)
        return cls()

    @classmethod
    def from_binding(
        cls, binding: Mapping[str, Any], options: ScorerOptions, source: str = "monitor"
    ) -> Scorer:
        """The scorer for :func:`scorer_from_binding`: the binding's settings, then ``options``."""
        return cls.from_options(options)


S = TypeVar("S", bound=type[Scorer])

_REGISTRY: dict[str, type[Scorer]] = {}


def _unfit_for_registry(cls: type[Scorer]) -> str:
    """Why ``cls`` cannot be registered ("" when it can)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or "_" in name:
        return (
            "needs a class attribute 'name': a non-empty name without '_' ('_' separates a "
            "method from a variant label, e.g. informer_fd)"
        )
    if getattr(cls, "direction", None) not in ("below", "above"):
        return "needs a class attribute 'direction': 'below' or 'above'"
    taken = _REGISTRY.get(name, cls)
    return "" if taken is cls else f"takes the method name {name!r} of {taken.__qualname__}"


def register_scorer(cls: S) -> S:
    """Class decorator: make a scorer available under ``cls.name``."""
    why = _unfit_for_registry(cls)
    if why:
        raise EvaluationError(f"scorer {cls.__module__}.{cls.__qualname__} {why}")
    _REGISTRY[cls.name] = cls
    return cls


def available_scorers() -> dict[str, type[Scorer]]:
    """Registered scorers by name, in registration order (the order tables list them)."""
    return dict(_REGISTRY)


def scorer_class(name: str) -> type[Scorer]:
    """The scorer class of a registered method, or of a named variant of one.

    A variant is ``<method>_<anything>``, e.g. ``informer_fd`` and ``informer_lime`` (INFORMER
    with two saliency adapters): it flags like its base method.

    Raises
    ------
    EvaluationError
        When neither ``name`` nor its prefix before the first ``_`` is registered.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    base = name.split("_", 1)[0]
    if base in _REGISTRY and base != name:
        return _REGISTRY[base]
    raise EvaluationError(
        f"unknown monitor method {name!r}; choose one of {list(_REGISTRY)} or a variant named "
        "'<method>_<label>' (e.g. 'informer_fd')"
    )


method_spec = scorer_class
"""Alias of :func:`scorer_class` (the class carries ``name``, ``direction``, ``score_range``)."""


def make_monitor(name: str, *, grid_step: float = 0.001) -> FlagMonitor:
    """An unfitted :class:`FlagMonitor` for a method or variant.

    The monitor's ``method`` is the base method (``informer_fd`` -> ``"informer"``); what
    distinguishes variants (the saliency adapter) belongs in the monitor file's binding.
    """
    cls = scorer_class(name)
    return cls.monitor_class(method=cls.name, direction=cls.direction, grid_step=grid_step)


# -- the built-in methods -----------------------------------------------------------------------
@register_scorer
class InformerScorer(Scorer):
    """INFORMER: class distinctiveness ``d_k`` of one saliency adapter's class maps.

    Parameters
    ----------
    adapter : SaliencyAdapter
    """

    name = "informer"
    direction = "below"
    score_name = "d"
    needs = "saliency"
    score_bounds = (0.0, 2.0)  # d_k = sum over l != k of 1 - cos_kl: [0, 2 (K - 1)]
    pairwise = True
    min_classes = 2
    has_maps = True
    option_groups = frozenset({"saliency"})
    cache_kind = "informer"
    score_array = "d"
    invalid_reason = "the saliency map has non-finite values (the model's scores overflow)"

    def __init__(self, adapter: SaliencyAdapter) -> None:
        if not isinstance(adapter, SaliencyAdapter):
            raise SaliencyError(
                f"the informer method needs a saliency adapter, got {type(adapter).__name__}"
            )
        self.adapter = adapter
        self._pair_checked = False

    def options(self) -> dict[str, Any]:
        return self.adapter.settings()

    def method_settings(self) -> dict[str, Any]:
        return self.adapter.settings()

    def settings(self) -> dict[str, Any]:
        # No "method" key: INFORMER bindings look as before the baselines existed.
        return {"saliency": self.adapter.settings()}

    def check(self, model: OnnxClassifier, classes: Sequence[str]) -> None:
        if len(classes) < 2:
            # Entropy, MSP and TTA score each class alone; only INFORMER compares classes.
            raise LabelFormatError(
                "INFORMER's class distinctiveness compares the saliency maps of different "
                f"classes: audit at least 2 classes with it, got {list(classes)}; the baselines "
                "(method 'entropy', 'msp' or 'tta') score each class alone and work with one"
            )
        self.adapter.check(model)  # refuse or warn about settings this model makes meaningless

    def score(self, model: OnnxClassifier, x: Images, logits: Floats, index: Index) -> ScoredBatch:
        maps = self.adapter.explain(model, x, logits=logits)[:, index]
        dist = cosine_distance_matrix(maps)
        valid = np.asarray(np.isfinite(maps).reshape(len(maps), -1).all(axis=1))
        self._check_pair(model, index, dist, valid)
        return ScoredBatch(scores=distinctiveness(dist), valid=valid, dist=dist, maps=maps)

    def _check_pair(
        self, model: OnnxClassifier, index: Index, dist: Floats, finite: NDArray[np.bool_]
    ) -> None:
        """Refuse two classes whose maps are opposites (checked once, on the first images).

        A 2-class softmax (p_2 = 1 - p_1, so logit p_2 = -logit p_1) gives S_2 = -S_1 for any
        saliency method that is linear in the score: d_12 = 2 on every image, and no threshold
        can flag anything.
        """
        if self._pair_checked or len(index) != 2 or not finite.any():
            return
        self._pair_checked = True
        pair = dist[finite, 0, 1]
        if np.all(pair >= 2.0 - _OPPOSITE_TOL):
            names = [model.card.class_names[i] for i in index]
            raise SaliencyError(
                f"{model.path}: the class maps of {names[0]!r} and {names[1]!r} are opposites "
                f"of each other (cosine distance at least {float(pair.min()):.6f} on all "
                f"{pair.size} first images): the outputs are a 2-class softmax (p_2 = 1 - p_1), "
                "so d = 2 on every image and INFORMER cannot flag anything. Audit such a model "
                "with method 'entropy', 'msp' or 'tta', or give it independent (sigmoid) outputs"
            )

    @classmethod
    def from_options(cls, options: ScorerOptions) -> Scorer:
        options.refuse_tta(cls.name)
        name = options.saliency or "fd"
        params = _adapter_params(name, options)
        try:
            return cls(get_adapter(name, **params))
        except TypeError as exc:
            raise SaliencyError(
                f"saliency parameters {sorted(params)} do not fit adapter {name!r}: {exc}"
            ) from exc

    @classmethod
    def from_binding(
        cls, binding: Mapping[str, Any], options: ScorerOptions, source: str = "monitor"
    ) -> Scorer:
        options.refuse_tta(cls.name)
        settings = binding.get("saliency")
        if not isinstance(settings, Mapping) or not isinstance(settings.get("name"), str):
            raise SaliencyError(
                f"{source}: an informer binding needs the saliency settings with the adapter's "
                f"'name', got {settings!r}"
            )
        name = str(settings["name"])
        if options.saliency is not None and options.saliency != name:
            raise MonitorMismatchError(
                f"{source} was fitted with saliency {name!r}, this run asks for "
                f"{options.saliency!r}"
            )
        # Settings given here that differ from the binding's are reported by check_binding.
        given = _adapter_params(name, options)
        return cls(adapter_from_settings({**settings, **given}))


@register_scorer
class LearnedScorer(InformerScorer):
    """The learned flagger: a per-class logistic model of "the prediction is wrong" on the
    class maps' distances and the model's confidence (:mod:`.learned`).

    It computes what INFORMER computes (the same saliency maps, ``d`` and the K x K
    distances: the same score-cache entries); the monitor turns them into a probability that
    the prediction is wrong, flagged when above the threshold.
    """

    name = "learned"
    direction = "above"
    score_name = "pwrong"
    score_bounds = (0.0, 1.0)
    pairwise = False
    monitor_class = LearnedMonitor

    def settings(self) -> dict[str, Any]:
        return {"saliency": self.adapter.settings(), "method": {"name": self.name}}


def _adapter_params(name: str, options: ScorerOptions) -> dict[str, Any]:
    """An adapter's keyword arguments: the given ones, ``module``, and ``batch_size`` for the
    adapters that run batches through ONNX Runtime (those declaring ``--batch-size``)."""
    params = dict(options.saliency_params)
    cls = available_adapters().get(name)
    if (
        cls is not None
        and ORT_BATCH_SIZE in getattr(cls, "options", ())
        and options.batch_size is not None
    ):
        params.setdefault("batch_size", options.batch_size)
    if options.module is not None:
        params["module"] = options.module
    return params


class ProbabilityScorer(Scorer):
    """A method whose score is a function of the audited classes' probabilities alone.

    Its cache entries (kind ``probs``) hold only the logits, so every such method shares them.
    """

    needs = "probabilities"
    cache_kind = "probs"
    score_array = None
    function_of_probabilities = True

    @abstractmethod
    def score_probabilities(self, probs: NDArray[np.floating]) -> Floats:
        """Raw scores from probabilities: (N, K) -> (N, K)."""

    def cache_settings(self) -> dict[str, Any]:
        return {}  # a function of the logits: the entry is the same for every such method

    def from_cache(
        self, arrays: Mapping[str, Floats], probs: Floats
    ) -> tuple[Floats, Floats | None]:
        return self.score_probabilities(probs[None])[0], None

    def score(self, model: OnnxClassifier, x: Images, logits: Floats, index: Index) -> ScoredBatch:
        return ScoredBatch.of(self.score_probabilities(sigmoid(logits[:, index])))


@register_scorer
class EntropyScorer(ProbabilityScorer):
    """Binary predictive entropy of each class probability (:func:`~.baselines.entropy_score`)."""

    name = score_name = "entropy"
    direction, score_bounds = "above", (0.0, 1.0)
    score_probabilities = staticmethod(entropy_score)


@register_scorer
class TTAScorer(Scorer):
    """Test-time-augmentation spread (:func:`~.baselines.tta_spread`).

    Parameters
    ----------
    copies, seed, max_angle, blur_size, padding
        The settings of :func:`~.baselines.tta_spread` that change its result.
    batch_size : int, optional
        Augmented copies per model run (does not change results; not in :meth:`settings`);
        ``None``: chosen for the model on this machine (:func:`~.batchsize.batch_size_for`).
    """

    name = "tta"
    direction = "above"
    score_name = "tta"
    needs = "model"
    score_bounds = (0.0, 0.5)  # the std of values in [0, 1] is at most 1/2
    option_groups = frozenset({"tta"})
    cache_kind = "tta"
    score_array = "spread"

    def __init__(
        self,
        copies: int = 10,
        seed: int = 0,
        max_angle: float = 45.0,
        blur_size: int = 10,
        padding: int = 8,
        batch_size: int | None = None,
    ) -> None:
        settings = tta_settings(
            copies=copies, seed=seed, max_angle=max_angle, blur_size=blur_size, padding=padding
        )
        if batch_size is not None and not (
            isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1
        ):
            raise EvaluationError(
                f"batch_size must be a positive integer (or None: chosen for the machine), got "
                f"{batch_size!r}"
            )
        self.tta = {k: settings[k] for k in TTA_PARAMS}
        self.batch_size = batch_size

    def options(self) -> dict[str, Any]:
        return dict(self.tta)

    def cache_settings(self) -> dict[str, Any]:
        return tta_settings(**self.tta)

    def score(self, model: OnnxClassifier, x: Images, logits: Floats, index: Index) -> ScoredBatch:
        return ScoredBatch.of(
            tta_spread(model, x, **self.tta, batch_size=self.batch_size)[:, index]
        )

    @classmethod
    def from_options(cls, options: ScorerOptions) -> Scorer:
        options.refuse_saliency(cls.name)
        unknown = sorted(set(options.tta) - set(TTA_PARAMS))
        if unknown:
            raise EvaluationError(f"unknown TTA parameters {unknown}; valid: {list(TTA_PARAMS)}")
        return cls(**dict(options.tta), batch_size=options.batch_size)

    @classmethod
    def from_binding(
        cls, binding: Mapping[str, Any], options: ScorerOptions, source: str = "monitor"
    ) -> Scorer:
        # The monitor's TTA settings, with those given here (check_binding compares them).
        fitted = binding_method(binding)
        merged = {**{k: fitted[k] for k in TTA_PARAMS if k in fitted}, **options.tta}
        return cls.from_options(ScorerOptions(**{**vars(options), "tta": merged}))


@register_scorer
class MSPScorer(ProbabilityScorer):
    """Maximum class probability ``max(p_k, 1 - p_k)`` (:func:`~.baselines.msp_score`)."""

    name = score_name = "msp"
    direction, score_bounds = "below", (0.5, 1.0)
    score_probabilities = staticmethod(msp_score)


@register_scorer
class MarginScorer(ProbabilityScorer):
    """Distance to the decision threshold, ``|logit p_k - logit t_k|``, flagged when low.

    The raw score is ``logit p_k``; the monitor (:class:`~.monitor.MarginMonitor`) subtracts
    the fitted threshold's logit. A threshold-aware baseline: entropy and MSP measure the
    distance to 0.5 wherever the threshold is.
    """

    name = score_name = "margin"
    direction, score_bounds = "below", (0.0, math.inf)
    monitor_class = MarginMonitor

    def score_probabilities(self, probs: NDArray[np.floating]) -> Floats:
        return logit(probs)


# -- constructors for front ends ----------------------------------------------------------------
def binding_method(binding: Mapping[str, Any]) -> dict[str, Any]:
    """The scoring method a monitor binding names: ``{"name": ..., **settings}``.

    A binding without ``"method"`` (every INFORMER monitor, and monitor files written before
    the baselines existed) means INFORMER, with the settings under ``"saliency"``.

    Raises
    ------
    EvaluationError
        When ``"method"`` is not an object with a ``"name"``.
    """
    method = binding.get("method")
    if method is None:
        return {"name": "informer"}
    if not isinstance(method, Mapping) or not isinstance(method.get("name"), str):
        raise EvaluationError(
            f"a binding's 'method' must be an object with a 'name', got {method!r}"
        )
    return dict(method)


def _registered(method: str) -> type[Scorer]:
    if method not in _REGISTRY:
        raise EvaluationError(f"unknown method {method!r}; choose one of {list(_REGISTRY)}")
    return _REGISTRY[method]


def build_scorer(
    method: str = "informer",
    *,
    saliency: str | None = None,
    saliency_params: Mapping[str, Any] | None = None,
    tta: Mapping[str, Any] | None = None,
    module: Any = None,
    batch_size: int | None = None,
) -> Scorer:
    """The scorer of a method from plain options (what ``calibrate`` and ``evaluate`` take).

    Parameters
    ----------
    method : str
        A registered method (:func:`available_scorers`).
    saliency : str, optional
        INFORMER's saliency adapter (default ``"fd"``); informer only.
    saliency_params : mapping, optional
        Keyword arguments of the adapter; informer only.
    tta : mapping, optional
        TTA settings (:data:`TTA_PARAMS`); tta only.
    module : object, optional
        A torch module for the ``gradient`` adapter; informer only.
    batch_size : int, optional
        Images per ONNX Runtime run of the adapters that take one (fd, lime), augmented copies
        per model run for tta (does not change results); ``None`` (the default): chosen for the
        model on this machine (:func:`~.batchsize.batch_size_for`: a short probe, cached).

    Returns
    -------
    Scorer

    Raises
    ------
    EvaluationError
        An unknown method, or an option of another method (the message names the parameter).
    SaliencyError
        An unknown adapter, or parameters that do not fit it.
    """
    options = ScorerOptions(
        saliency, dict(saliency_params or {}), dict(tta or {}), module, batch_size
    )
    return _registered(method).from_options(options)


def scorer_from_binding(
    binding: Mapping[str, Any],
    *,
    method: str | None = None,
    saliency: str | None = None,
    saliency_params: Mapping[str, Any] | None = None,
    tta: Mapping[str, Any] | None = None,
    module: Any = None,
    batch_size: int | None = None,
    source: str = "monitor",
) -> Scorer:
    """Rebuild the scorer a monitor was fitted with, from its binding plus overrides.

    Settings given here replace the binding's; when they differ from it,
    :func:`~.binding.check_binding` (run by :func:`~.audit.flag_folder`) reports the first
    difference.

    Parameters
    ----------
    binding : mapping
        The monitor file's binding (:meth:`~.audit.Auditor.binding`).
    method, saliency : str, optional
        When given, must be the binding's method / saliency adapter.
    saliency_params, tta, module, batch_size
        As for :func:`build_scorer`.
    source : str
        Names the monitor in messages (e.g. its path).

    Raises
    ------
    MonitorMismatchError
        ``method`` or ``saliency`` differs from the binding's (both are named).
    EvaluationError, SaliencyError
        As for :func:`build_scorer`.
    """
    fitted = binding_method(binding)["name"]
    if method is not None and method != fitted:
        raise MonitorMismatchError(
            f"{source} was fitted with method {fitted!r}; this run asks for method {method!r}"
        )
    options = ScorerOptions(
        saliency, dict(saliency_params or {}), dict(tta or {}), module, batch_size
    )
    return _registered(fitted).from_binding(binding, options, source)


__all__ = [
    "TTA_PARAMS",
    "EntropyScorer",
    "InformerScorer",
    "LearnedScorer",
    "MSPScorer",
    "MarginScorer",
    "ProbabilityScorer",
    "ScoredBatch",
    "Scorer",
    "ScorerOptions",
    "TTAScorer",
    "available_scorers",
    "binding_method",
    "build_scorer",
    "make_monitor",
    "method_spec",
    "register_scorer",
    "scorer_class",
    "scorer_from_binding",
]
