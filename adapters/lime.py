"""LIME class maps from scores alone (METHOD.md section 2, LIME bullet).

For each image: segment it into S superpixels (lime's quickshift defaults, or SLIC), draw
``num_samples`` binary masks over the segments (the first all ones), replace hidden segments by a
fill (each segment's mean colour, or a constant), score the perturbed images, weight sample ``j``
with lime's kernel ``sqrt(exp(-d_j^2 / w^2))`` of the cosine distance ``d_j`` between mask ``j``
and the all-ones mask, and fit one weighted ridge (``alpha = 1``, with intercept) per class on the
same samples. The class map paints each segment with its coefficient.

What is lime's and what is ours: segmentation goes through lime's ``SegmentationAlgorithm`` and
the weights through lime's kernel, and the per-image random stream is drawn exactly as
``LimeImageExplainer.explain_instance`` draws it (the quickshift seed, then the masks), so with
the same random state the maps equal lime's coefficients (the tests pin this to 1e-6). Three
things are done here instead, because lime does them slowly or wrongly for this use:

- Perturbed images are built with one vectorised ``where`` per run of samples (lime loops over
  samples and segments in Python) and scored through the model's one long-lived ONNX Runtime
  session in large batches that span image boundaries.
- The K ridge fits are one weighted least-squares solve with K right-hand sides. lime's
  ``explain_instance_with_data`` with its image defaults (``num_features=100000``, feature
  selection ``'auto'`` -> ``'highest_weights'``) keeps every segment, only reordered, so its fit is
  ``Ridge(alpha=1, fit_intercept=True)`` on all segments with the kernel as sample weights:
  ``beta = (Xc' W Xc + I)^-1 Xc' W Yc`` with X and Y centred on their weighted means.
- Every class is explained, always: lime's ``top_labels`` (default 5) silently overrides
  ``labels``; there is no such setting here. Segment labels are made contiguous from 0 (SLIC
  numbers from 1, which lime's masking does not expect).

Randomness is seeded per image from ``sha256(seed, image bytes)`` (:func:`image_random_state`),
so an image's maps do not depend on the batch size, on which other images share the call, or on
their order.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from informer_audit.batchsize import batch_size_for
from informer_audit.errors import MeaninglessSettingWarning, SaliencyError
from informer_audit.saliency import (
    ORT_BATCH_SIZE,
    AdapterOption,
    ProgressCallback,
    SaliencyAdapter,
    register_adapter,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from informer_audit.model import OnnxClassifier

SEGMENTATIONS = ("quickshift", "slic")
FALLBACK_BATCH_SIZE = 64
"""Batch size for a model that is not an ONNX Runtime classifier, when none is given."""
MIN_SAMPLES = 100
"""Below this many samples a warning: the smallest N of the convergence table (LimeSaliency),
where d already moves by up to 0.26 against a 4000-sample reference."""
TARGETS = ("probability", "logit")
_SEGMENTATION_PARAMS = {
    "quickshift": ("kernel_size", "max_dist", "ratio"),
    "slic": ("n_segments", "compactness"),
}


def image_random_state(seed: int, image: NDArray[np.floating]) -> np.random.RandomState:
    """The random state of one image: seeded from ``sha256(seed, shape, dtype, bytes)``.

    Parameters
    ----------
    seed : int
    image : ndarray, shape (C, H, W)
        One preprocessed model input.

    Returns
    -------
    numpy.random.RandomState
        A legacy ``RandomState``, the kind lime draws from, so that a test can hand lime the
        same stream.
    """
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256()
    digest.update(int(seed).to_bytes(8, "little", signed=True))
    digest.update(repr((image.shape, image.dtype.str)).encode())
    digest.update(image.tobytes())
    return np.random.RandomState(np.frombuffer(digest.digest(), dtype=np.uint32))


def weighted_ridge(
    x: NDArray[Any], y: NDArray[np.floating], weights: NDArray[np.floating], alpha: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Ridge with intercept and sample weights, for several targets in one solve.

    Equals ``sklearn.linear_model.Ridge(alpha, fit_intercept=True).fit(x, y[:, k],
    sample_weight=weights)`` for every column ``k``.

    Parameters
    ----------
    x : ndarray, shape (N, S)
        Design matrix (LIME's 0/1 masks; bool or float).
    y : ndarray, shape (N, K)
    weights : ndarray, shape (N,)
        Positive sample weights.
    alpha : float

    Returns
    -------
    coef : ndarray, shape (S, K), float64
    intercept : ndarray, shape (K,), float64
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    # scikit-learn centres on the weighted means and does not rescale alpha by sum(w).
    x_mean = w @ x / w.sum()
    y_mean = w @ y / w.sum()
    xc = x - x_mean
    xw = xc * w[:, None]
    gram = xc.T @ xw + alpha * np.eye(x.shape[1])
    coef = np.linalg.solve(gram, xw.T @ (y - y_mean))
    return coef, y_mean - x_mean @ coef


@dataclass
class _Plan:
    """One image's perturbation plan: segments, masks, fill and kernel weights."""

    segments: NDArray[np.intp]  # (H, W), labels 0..S-1
    masks: NDArray[np.bool_]  # (num_samples, S), row 0 all True (segment shown)
    fill: NDArray[np.float32]  # (C, H, W), what hidden pixels become, in model-input space
    weights: NDArray[np.float64]  # (num_samples,)
    unique: NDArray[np.bool_]  # (U, S), the distinct masks: the only ones scored
    inverse: NDArray[np.intp]  # (num_samples,), row of `unique` each mask equals


def _lime_parts(kernel_width: float) -> tuple[Any, Callable[[Any], Any]]:
    """lime's segmentation wrapper and its kernel, imported on first use (lime is heavy)."""
    from lime.lime_image import LimeImageExplainer
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    # The kernel is a closure built in LimeImageExplainer.__init__; take it from there rather
    # than restating it, so the weights are lime's by construction.
    kernel = LimeImageExplainer(kernel_width=kernel_width, random_state=0).base.kernel_fn
    return SegmentationAlgorithm, kernel


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise SaliencyError(f"lime: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise SaliencyError(f"lime: {name} must be a positive number, got {value!r}")
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise SaliencyError(f"lime: {name} must be a positive number, got {value!r}")
    return number


def _fill(value: Any) -> str | float:
    """``"mean"``, or a pixel value in [0, 255] (a number, or its text as a CLI passes it)."""
    if isinstance(value, str) and value != "mean":
        try:
            value = float(value)
        except ValueError:
            pass
    if value == "mean":
        return "mean"
    if isinstance(value, int | float | np.number) and not isinstance(value, bool):
        if 0.0 <= float(value) <= 255.0:  # also refuses NaN
            return float(value)
    raise SaliencyError(f"lime: fill must be 'mean' or a pixel value in [0, 255], got {value!r}")


def fill_from_text(text: str) -> str | float:
    """A ``fill`` as typed: ``"mean"``, or a pixel value (:class:`ValueError` otherwise)."""
    if text == "mean":
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected 'mean' or a pixel value, got {text!r}") from None


@register_adapter
class LimeSaliency(SaliencyAdapter):
    """Superpixel LIME maps of every class from the model's scores.

    Parameters
    ----------
    num_samples : int
        Perturbed images per image (the first is the image itself), hence forward passes per
        image. Default 1000 (lime's own), chosen from the convergence curve that
        ``benchmarks/lime_vs_lime.py`` measures: reference DenseNet121 at 128 px, 3 NIH images
        (lime's quickshift cuts such images into 7-15 segments), each N with its own seed,
        against a 4000-sample reference; r(maps) is Pearson r of the painted class maps
        (mean over images and classes), r(d) that of each image's distinctiveness vector
        (mean over images), |dd| the change of d:

        =====  =======  ======  =========  ========
        N      r(maps)  r(d)    mean |dd|  max |dd|
        =====  =======  ======  =========  ========
        100    0.9971   0.9977  0.070      0.258
        250    0.9990   0.9991  0.028      0.171
        500    0.9993   0.9994  0.048      0.163
        1000   0.9996   0.9999  0.016      0.066
        2000   0.9998   1.0000  0.013      0.043
        =====  =======  ======  =========  ========

        With so few segments the maps and the pattern of d settle by N = 250, but the level
        of d, which the flag thresholds cut, still moves by up to 0.17 there (d itself varies
        across images with a standard deviation of about 1.5). At 1000 the largest change
        falls to 0.07 and the curve flattens: 2000 doubles the cost for 0.066 -> 0.043, close
        to the reference's own noise. Use fewer samples (250) when time matters more than
        flags near a threshold.
    segmentation : {"quickshift", "slic"}
        Superpixel algorithm (through lime's ``SegmentationAlgorithm``), run on the image
        un-normalised to [0, 1] RGB (a 1-channel input is replicated to 3 channels).
    kernel_size, max_dist, ratio : float
        Quickshift settings; lime's defaults 4, 200, 0.2.
    n_segments : int
        SLIC's target number of segments.
    compactness : float
        SLIC's colour/space trade-off.
    fill : "mean" or float
        What a hidden segment becomes: its mean colour (lime's ``hide_color=None``), or a
        constant pixel value on the 8-bit scale [0, 255], converted with the model card.
    kernel_width : float
        Width ``w`` of lime's kernel ``sqrt(exp(-d^2 / w^2))`` on the cosine distance ``d`` to
        the all-ones mask (lime's image default 0.25).
    target : {"probability", "logit"}
        What the ridge regresses. ``"probability"`` (default): ``sigmoid(logit)``, what lime users
        pass as ``classifier_fn`` for a multi-label model, so the maps are lime's maps and stay
        comparable with published LIME results; its coefficients are bounded and a few
        perturbations that make the logit explode cannot dominate the fit. The price is
        saturation: a class predicted at p ~ 0 or 1 moves little under perturbation, and its
        map is small and noisier. ``"logit"`` regresses the logits: no saturation, but not
        what lime computes.
    seed : int
        Seed of the per-image random streams (with a hash of each image's content).
    batch_size : int, optional
        Perturbed images per session run; batches span images. Does not change the maps.
        ``None`` (the default): chosen for the machine and model at the first :meth:`explain`
        (:func:`~informer_audit.batchsize.batch_size_for`: a short probe, cached; 64 for a
        model that is not an :class:`~informer_audit.model.OnnxClassifier`).

    Notes
    -----
    Maps have shape (N, K, H, W): one value per pixel (shared over channels), constant on each
    segment. Forward passes: ``num_samples`` per image, whatever ``logits`` is given.
    """

    name: ClassVar[str] = "lime"
    access: ClassVar[str] = "scores"
    options: ClassVar[tuple[AdapterOption, ...]] = (
        AdapterOption(
            "--lime-samples",
            "num_samples",
            int,
            "perturbed samples (forward passes) per image [1000].",
            min=2,
        ),
        AdapterOption(
            "--lime-segmentation",
            "segmentation",
            str,
            "superpixels [quickshift, with lime's defaults].",
            choices=SEGMENTATIONS,
        ),
        AdapterOption("--lime-kernel-size", "kernel_size", float, "quickshift kernel_size [4]."),
        AdapterOption("--lime-max-dist", "max_dist", float, "quickshift max_dist [200]."),
        AdapterOption("--lime-ratio", "ratio", float, "quickshift ratio [0.2]."),
        AdapterOption("--lime-segments", "n_segments", int, "SLIC n_segments [50].", min=2),
        AdapterOption("--lime-compactness", "compactness", float, "SLIC compactness [10]."),
        AdapterOption(
            "--lime-fill",
            "fill",
            fill_from_text,
            "hidden segments take their mean colour ('mean') or this pixel value on the 8-bit "
            "scale [mean].",
        ),
        AdapterOption(
            "--lime-kernel-width", "kernel_width", float, "kernel width on cosine distance [0.25]."
        ),
        AdapterOption(
            "--lime-target",
            "target",
            str,
            "what the ridge regressions explain [probability].",
            choices=TARGETS,
        ),
        AdapterOption(
            "--lime-seed",
            "seed",
            int,
            "seed; each image's samples derive from it and the image's content [0].",
            min=0,
        ),
        ORT_BATCH_SIZE,
    )

    def __init__(
        self,
        num_samples: int = 1000,
        segmentation: str = "quickshift",
        kernel_size: float = 4.0,
        max_dist: float = 200.0,
        ratio: float = 0.2,
        n_segments: int = 50,
        compactness: float = 10.0,
        fill: str | float = "mean",
        kernel_width: float = 0.25,
        target: str = "probability",
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        # Two samples at least: the image itself and one perturbation.
        self.num_samples = _positive_int(num_samples, "num_samples", minimum=2)
        if segmentation not in SEGMENTATIONS:
            raise SaliencyError(
                f"lime: segmentation must be one of {list(SEGMENTATIONS)}, got {segmentation!r}"
            )
        self.segmentation = segmentation
        self.kernel_size = _positive_float(kernel_size, "kernel_size")
        self.max_dist = _positive_float(max_dist, "max_dist")
        if isinstance(ratio, bool) or not isinstance(ratio, int | float | np.number):
            raise SaliencyError(f"lime: ratio must be a number in [0, 1], got {ratio!r}")
        self.ratio = float(ratio)
        if not 0.0 <= self.ratio <= 1.0:
            raise SaliencyError(f"lime: ratio must be a number in [0, 1], got {ratio!r}")
        self.n_segments = _positive_int(n_segments, "n_segments")
        self.compactness = _positive_float(compactness, "compactness")
        self.fill = _fill(fill)
        self.kernel_width = _positive_float(kernel_width, "kernel_width")
        if target not in TARGETS:
            raise SaliencyError(f"lime: target must be one of {list(TARGETS)}, got {target!r}")
        self.target = target
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise SaliencyError(f"lime: seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.batch_size = None if batch_size is None else _positive_int(batch_size, "batch_size")
        self._params: dict[str, Any] = {
            "num_samples": self.num_samples,
            "segmentation": self.segmentation,
            "kernel_size": self.kernel_size,
            "max_dist": self.max_dist,
            "ratio": self.ratio,
            "n_segments": self.n_segments,
            "compactness": self.compactness,
            "fill": self.fill,
            "kernel_width": self.kernel_width,
            "target": self.target,
            "seed": self.seed,
            "batch_size": self.batch_size,
        }
        self._lime: tuple[Any, Callable[[Any], Any]] | None = None

    def settings(self) -> dict[str, Any]:
        """Name plus the parameters that change maps.

        Leaves out ``batch_size`` and the settings of the segmentation algorithm not in use
        (quickshift's under SLIC and the reverse), so that they cannot break a monitor binding.
        """
        unused = {
            p
            for algo, names in _SEGMENTATION_PARAMS.items()
            if algo != self.segmentation
            for p in names
        }
        return {k: v for k, v in super().settings().items() if k not in unused}

    def check(self, model: OnnxClassifier) -> None:
        """Warn when ``num_samples`` is below :data:`MIN_SAMPLES`.

        Warns
        -----
        MeaninglessSettingWarning
            With so few samples the K ridge fits are barely determined (quickshift gives
            7-15 segments on the reference images, more on larger ones), so d is mostly
            sampling noise.
        """
        if self.num_samples < MIN_SAMPLES:
            warnings.warn(
                MeaninglessSettingWarning(
                    f"lime: num_samples {self.num_samples} is below {MIN_SAMPLES}: the ridge "
                    "fits of the class maps rest on too few perturbations, so d is mostly "
                    f"sampling noise (at {MIN_SAMPLES} it still moves by up to 0.26; d settles "
                    "near 1000, the default); use num_samples=250 or more",
                    params=("num_samples",),
                ),
                stacklevel=2,
            )

    def forward_passes(self, height: int, width: int) -> int:
        """Most forward passes this adapter issues per image: ``num_samples``.

        Repeated masks are scored once, so with few segments it issues fewer (on the reference
        model at 128 px, about two thirds of 1000).
        """
        return self.num_samples

    def explain(
        self,
        model: OnnxClassifier,
        x: NDArray[np.float32],
        *,
        logits: NDArray[np.float64] | None = None,
        progress: ProgressCallback | None = None,
    ) -> NDArray[np.float64]:
        """LIME maps of every model output.

        Parameters
        ----------
        model : OnnxClassifier
        x : ndarray, shape (N, C, H, W), float32
            Preprocessed model input.
        logits : ndarray, shape (N, K), optional
            Not used: the unperturbed image is sample 0 of every fit and is scored with the
            others, so the maps do not depend on whether the caller passes its logits.
        progress : callable, optional
            Called as ``progress(done, total)`` in forward passes after each batch.

        Returns
        -------
        ndarray, shape (N, K, H, W), float64
            Each pixel holds its segment's ridge coefficient for class k.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != model.card.channels:
            raise SaliencyError(
                f"lime: expected preprocessed input of shape (N, {model.card.channels}, H, W), "
                f"got {x.shape}"
            )
        n, _, height, width = x.shape
        k = len(model.card.class_names)
        plans = [self._plan(model, x[i]) for i in range(n)]
        scores = self._score(model, x, plans, progress)  # (N * num_samples, K) logits
        if self.target == "probability":
            # sigmoid, written so that large |z| neither overflows nor loses precision
            scores = 0.5 * (1.0 + np.tanh(0.5 * scores))
        maps = np.empty((n, k, height, width), dtype=np.float64)
        ns = self.num_samples
        for i, plan in enumerate(plans):
            coef, _ = weighted_ridge(plan.masks, scores[i * ns : (i + 1) * ns], plan.weights, 1.0)
            maps[i] = coef.T[:, plan.segments]
        return maps

    # -- internals ------------------------------------------------------------------------------
    def _parts(self) -> tuple[Any, Callable[[Any], Any]]:
        if self._lime is None:
            self._lime = _lime_parts(self.kernel_width)
        return self._lime

    def _plan(self, model: OnnxClassifier, image: NDArray[np.float32]) -> _Plan:
        """Segments, masks, fill and weights of one image, ``image`` of shape (C, H, W)."""
        from sklearn.metrics import pairwise_distances

        segmentation_algorithm, kernel = self._parts()
        card = model.card
        c = image.shape[0]
        mean = np.asarray(card.mean, dtype=np.float64).reshape(c, 1, 1)
        std = np.asarray(card.std, dtype=np.float64).reshape(c, 1, 1)
        # Back to the 8-bit scale, then [0, 255] -> [0, 1]: the image lime users would pass,
        # and what quickshift's max_dist (in Lab units) is meant for.
        rgb = ((image * std + mean) * (card.scale / 255.0)).transpose(1, 2, 0)
        if c == 1:
            rgb = np.repeat(rgb, 3, axis=2)
        rs = image_random_state(self.seed, image)
        # Same draws in the same order as LimeImageExplainer.explain_instance: first the
        # segmentation seed, then the masks.
        segmentation_seed = rs.randint(0, high=1000)
        if self.segmentation == "quickshift":
            segment = segmentation_algorithm(
                "quickshift",
                kernel_size=self.kernel_size,
                max_dist=self.max_dist,
                ratio=self.ratio,
                random_seed=segmentation_seed,
            )
        else:
            segment = segmentation_algorithm(
                "slic", n_segments=self.n_segments, compactness=self.compactness, start_label=0
            )
        labels = np.asarray(segment(rgb))
        _, segments = np.unique(labels, return_inverse=True)
        segments = segments.reshape(labels.shape).astype(np.intp)
        n_seg = int(segments.max()) + 1
        draws = rs.randint(0, 2, self.num_samples * n_seg).reshape(self.num_samples, n_seg)
        draws[0, :] = 1
        distances = pairwise_distances(draws, draws[:1], metric="cosine").ravel()
        weights = np.asarray(kernel(distances), dtype=np.float64)
        if self.fill == "mean":
            # The mean commutes with the affine normalisation: take it in model-input space.
            counts = np.bincount(segments.ravel(), minlength=n_seg)
            fill = np.empty(image.shape, dtype=np.float32)
            for ch in range(c):
                sums = np.bincount(
                    segments.ravel(), weights=image[ch].ravel().astype(np.float64), minlength=n_seg
                )
                fill[ch] = (sums / counts)[segments]
        else:
            value = (float(self.fill) / card.scale - mean) / std  # (C, 1, 1)
            fill = np.broadcast_to(value, image.shape).astype(np.float32)
        masks = draws.astype(bool)
        # With a dozen segments many of the N masks repeat (2^S distinct ones at most); the model
        # gives a repeated image the same score, so each distinct mask is scored once.
        unique, inverse = np.unique(masks, axis=0, return_inverse=True)
        return _Plan(segments, masks, fill, weights, unique, inverse.reshape(-1).astype(np.intp))

    def _score(
        self,
        model: OnnxClassifier,
        x: NDArray[np.float32],
        plans: list[_Plan],
        progress: ProgressCallback | None,
    ) -> NDArray[np.float64]:
        """Logits of every perturbed image, shape (N * num_samples, K).

        Only the distinct masks of each image are scored, in full batches that span images;
        repeated masks take their distinct mask's scores.
        """
        n = x.shape[0]
        k = len(model.card.class_names)
        counts = [len(p.unique) for p in plans]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.intp)
        total = int(offsets[-1])
        distinct = np.empty((total, k), dtype=np.float64)
        if total:
            size = self.batch_size or batch_size_for(model, FALLBACK_BATCH_SIZE)
            batch = min(size, total)
            buf = np.empty((batch, *x.shape[1:]), dtype=np.float32)
            for start in range(0, total, batch):
                stop = min(start + batch, total)
                pos = start
                while pos < stop:  # one run of distinct masks per image the batch touches
                    i = int(np.searchsorted(offsets, pos, side="right")) - 1
                    j = pos - int(offsets[i])
                    end = min(stop, int(offsets[i + 1]))
                    plan = plans[i]
                    shown = plan.unique[j : j + end - pos][:, plan.segments]  # (b, H, W)
                    rows = buf[pos - start : end - start]
                    rows[...] = plan.fill
                    np.copyto(rows, x[i], where=shown[:, None])
                    pos = end
                distinct[start:stop] = model.logits(buf[: stop - start])
                if progress is not None:
                    progress(stop, total)
        return (
            np.concatenate(
                [distinct[offsets[i] : offsets[i + 1]][p.inverse] for i, p in enumerate(plans)]
            )
            if n
            else np.empty((0, k), dtype=np.float64)
        )
