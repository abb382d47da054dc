"""Baseline monitor scores (METHOD.md section 5): entropy, MSP, test-time augmentation.

Every monitor method turns an image into one raw score per class, shape (N, K), and is fitted
and applied by the same :class:`~informer_audit.monitor.FlagMonitor` (same 0.001 grid, same
swap rule, same JSON file); only the direction of the flag differs. The methods are registered
as scorers in :mod:`.scorers` (its table lists them); this module holds the score functions:
binary entropy (:func:`entropy_score`), maximum class probability (:func:`msp_score`) and the
test-time-augmentation spread (:func:`tta_spread`).

Test-time augmentation (:func:`tta_spread`) follows the paper's list, "random rotations of 45
degrees, blurring with kernel size 10 by 10 and random cropping with a padding 8", read as one
composed transform per copy (as a torchvision ``Compose`` of the three would be):

1. rotation by an angle drawn uniformly from ``[-max_angle, max_angle]`` degrees (positive is
   counter-clockwise, as in torchvision), about the image centre, bilinear, same size;
2. a ``blur_size x blur_size`` box blur (mean filter; for an even size the window covers
   ``size // 2`` pixels before and ``size // 2 - 1`` after, as ``cv2.blur`` does), the border
   mirrored (``cv2.blur``'s default ``BORDER_REFLECT_101``);
3. a random crop with padding, as torchvision's ``RandomCrop(size=(H, W), padding=p)``: pad ``p``
   on every side, then cut the original size at an offset drawn uniformly from ``{0, ..., 2p}``
   along each axis (a shift of up to ``p`` pixels).

The copies are made from the *preprocessed* input ``x`` (model-input space). Rotation, box blur
and padding are affine with weights summing to one, so they commute with the per-channel
normalisation ``(v / scale - mean) / std`` provided the area that rotation and padding expose is
filled with the normalised value of a black pixel, ``(0 / scale - mean) / std``: this is what
:func:`black_fill` gives and what the augmentations use by default. The copies are therefore the
normalised copies of the black-filled augmentations of the resized image in pixel space, as a
torchvision pipeline (fill 0 before ``Normalize``) makes them.

Randomness is drawn per image from ``seed`` and a hash of the image's content, so an image's
spread does not depend on the batch it comes in, on its position, or on the folder order.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from .errors import EvaluationError
from .progress import Progress

logger = logging.getLogger(__name__)


# -- scores from probabilities ------------------------------------------------------------------
def _probabilities(probs: NDArray[np.floating], what: str = "probs") -> NDArray[np.float64]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise EvaluationError(f"{what} must have shape (N, K), got {p.shape}")
    if not np.isfinite(p).all():
        raise EvaluationError(f"{what} has {int(np.sum(~np.isfinite(p)))} non-finite values")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise EvaluationError(
            f"{what} must be probabilities in [0, 1], got values in [{p.min():g}, {p.max():g}]"
        )
    return p


def entropy_score(probs: NDArray[np.floating]) -> NDArray[np.float64]:
    """Binary predictive entropy per class, in bits (paper's Eq. 2).

    ``H_k = -p_k log2 p_k - (1 - p_k) log2 (1 - p_k)``, with ``0 log 0 = 0``; 0 for a certain
    prediction, 1 at ``p_k = 0.5``. Flag when high (``direction="above"``).

    Parameters
    ----------
    probs : ndarray, shape (N, K)
        Probabilities ``p_k = sigmoid(z_k)``.

    Returns
    -------
    ndarray, shape (N, K), float64, values in [0, 1]
    """
    from scipy.special import xlogy

    p = _probabilities(probs)
    q = 1.0 - p
    h = -(xlogy(p, p) + xlogy(q, q)) / math.log(2.0)
    # Rounding can leave -0.0 or 1 + 1e-16; the grid and the JSON want [0, 1] exactly.
    return np.clip(h, 0.0, 1.0)


def msp_score(probs: NDArray[np.floating]) -> NDArray[np.float64]:
    """Maximum class probability per class: ``max(p_k, 1 - p_k)``.

    The probability of the binary decision the model leans to. Flag when low
    (``direction="below"``). Like the entropy it is a decreasing function of ``|p_k - 0.5|``,
    so per class the two rank images identically (same AUROC, AURC, AUGRC); their flags can
    differ only through the threshold grid.

    Parameters
    ----------
    probs : ndarray, shape (N, K)

    Returns
    -------
    ndarray, shape (N, K), float64, values in [0.5, 1]
    """
    p = _probabilities(probs)
    return np.maximum(p, 1.0 - p)


# -- test-time augmentation: the augmentations --------------------------------------------------
class _CardLike(Protocol):
    @property
    def scale(self) -> float: ...
    @property
    def mean(self) -> Sequence[float]: ...
    @property
    def std(self) -> Sequence[float]: ...


class ScoreModel(Protocol):
    """What :func:`tta_spread` needs of a model (an :class:`~.model.OnnxClassifier` fits).

    ``logits(x)`` maps a batch (N, C, H, W) in model-input space to (N, K) logits; ``card``
    (scale, mean, std) is only read to find the fill value when none is given.
    """

    def logits(self, x: NDArray[np.floating]) -> NDArray[np.float64]: ...


def black_fill(card: _CardLike, channels: int) -> NDArray[np.float32]:
    """The model-input value of a black pixel, per channel: ``(0 / scale - mean) / std``.

    Parameters
    ----------
    card
        Anything with ``scale``, ``mean`` and ``std`` (a :class:`~.modelcard.ModelCard`); ``mean``
        and ``std`` hold one value per channel or one for all.
    channels : int

    Returns
    -------
    ndarray, shape (C,), float32
    """
    mean = np.broadcast_to(np.asarray(card.mean, dtype=np.float64), (channels,))
    std = np.broadcast_to(np.asarray(card.std, dtype=np.float64), (channels,))
    return ((0.0 / float(card.scale) - mean) / std).astype(np.float32)


def rotate_image(
    x: NDArray[np.floating], angle: float, fill: NDArray[np.floating]
) -> NDArray[np.float32]:
    """Rotate every channel about the image centre, bilinear, keeping the size.

    Parameters
    ----------
    x : ndarray, shape (C, H, W)
    angle : float
        Degrees; positive is counter-clockwise as displayed (row 0 at the top), as in
        torchvision and ``np.rot90``.
    fill : ndarray, shape (C,)
        Value of the area rotated in from outside the image, per channel.

    Returns
    -------
    ndarray, shape (C, H, W), float32
    """
    from scipy.ndimage import rotate

    f = np.asarray(fill, dtype=np.float32)[:, None, None]
    # scipy takes one scalar cval; rotating (x - fill) with 0 outside and adding fill back is
    # the same bilinear rotation with a per-channel fill. "grid-constant" interpolates against
    # the fill beyond the edge, as torchvision's grid_sample with zero padding does.
    out = rotate(
        np.asarray(x, dtype=np.float32) - f,
        angle,
        axes=(1, 2),
        reshape=False,
        order=1,
        mode="grid-constant",
        cval=0.0,
    )
    return np.asarray(out + f, dtype=np.float32)


def box_blur(x: NDArray[np.floating], size: int) -> NDArray[np.float32]:
    """Mean over a ``size x size`` window on each channel, border mirrored.

    Parameters
    ----------
    x : ndarray, shape (C, H, W)
    size : int
        Window side; for an even size the window covers ``size // 2`` pixels before and
        ``size // 2 - 1`` after the centre (scipy's and ``cv2.blur``'s convention).

    Returns
    -------
    ndarray, shape (C, H, W), float32
    """
    from scipy.ndimage import uniform_filter

    # "mirror" is d c b | a b c d | c b a, cv2.blur's default BORDER_REFLECT_101.
    out = uniform_filter(np.asarray(x, dtype=np.float32), size=(1, size, size), mode="mirror")
    return np.asarray(out, dtype=np.float32)


def crop_with_padding(
    x: NDArray[np.floating],
    offset: tuple[int, int],
    padding: int,
    fill: NDArray[np.floating],
) -> NDArray[np.float32]:
    """Pad every side by ``padding`` with ``fill``, then cut (H, W) at ``offset``.

    ``out[:, i, j] = x[:, i + dy - padding, j + dx - padding]`` where that lies inside the image,
    else ``fill``: torchvision's ``RandomCrop(size=(H, W), padding=padding)`` at a given offset.

    Parameters
    ----------
    x : ndarray, shape (C, H, W)
    offset : (int, int)
        ``(dy, dx)``, each in ``0 .. 2 * padding``; ``(padding, padding)`` returns ``x``.
    padding : int
    fill : ndarray, shape (C,)

    Returns
    -------
    ndarray, shape (C, H, W), float32
    """
    c, h, w = x.shape
    dy, dx = int(offset[0]), int(offset[1])
    if not (0 <= dy <= 2 * padding and 0 <= dx <= 2 * padding):
        raise EvaluationError(f"crop offset {offset} must lie in 0..{2 * padding} on both axes")
    padded = np.empty((c, h + 2 * padding, w + 2 * padding), dtype=np.float32)
    padded[...] = np.asarray(fill, dtype=np.float32)[:, None, None]
    padded[:, padding : padding + h, padding : padding + w] = x
    return padded[:, dy : dy + h, dx : dx + w].copy()


def augment_image(
    x: NDArray[np.floating],
    angle: float,
    offset: tuple[int, int],
    fill: NDArray[np.floating],
    *,
    blur_size: int = 10,
    padding: int = 8,
) -> NDArray[np.float32]:
    """One augmented copy: rotate by ``angle``, box-blur, crop with padding at ``offset``.

    Parameters
    ----------
    x : ndarray, shape (C, H, W)
    angle : float
        Degrees, counter-clockwise.
    offset : (int, int)
        Crop offset ``(dy, dx)`` in the padded image, each in ``0 .. 2 * padding``.
    fill : ndarray, shape (C,)
        Model-input value of the exposed area (:func:`black_fill`).
    blur_size, padding : int

    Returns
    -------
    ndarray, shape (C, H, W), float32
    """
    out = rotate_image(x, angle, fill)
    if blur_size > 1:
        out = box_blur(out, blur_size)
    return crop_with_padding(out, offset, padding, fill)


def image_rng(x: NDArray[np.floating], seed: int) -> np.random.Generator:
    """A generator seeded by ``seed`` and the SHA-256 of one image's float32 content and shape.

    The same image gets the same draws wherever it appears (batch, position, folder order).

    Parameters
    ----------
    x : ndarray, shape (C, H, W)
    seed : int, >= 0
    """
    arr = np.ascontiguousarray(x, dtype=np.float32)
    digest = hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:16], "little")])


def draw_augmentations(
    rng: np.random.Generator, copies: int, *, max_angle: float = 45.0, padding: int = 8
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The random parameters of ``copies`` augmented copies of one image.

    Draws, in this order, ``copies`` angles uniform in ``[-max_angle, max_angle]``, then
    ``copies x 2`` crop offsets uniform in ``{0, ..., 2 * padding}``.

    Returns
    -------
    angles : ndarray, shape (T,), float64
    offsets : ndarray, shape (T, 2), int64
        ``(dy, dx)`` per copy.
    """
    angles = rng.uniform(-max_angle, max_angle, size=copies)
    offsets = rng.integers(0, 2 * padding + 1, size=(copies, 2), dtype=np.int64)
    return angles, offsets


def tta_copies(
    x: NDArray[np.floating],
    seed: int,
    fill: NDArray[np.floating],
    *,
    copies: int = 10,
    max_angle: float = 45.0,
    blur_size: int = 10,
    padding: int = 8,
) -> NDArray[np.float32]:
    """The ``copies`` augmented copies of one image, drawn from :func:`image_rng`.

    Parameters
    ----------
    x : ndarray, shape (C, H, W)
        One preprocessed image.
    seed : int
    fill : ndarray, shape (C,)

    Returns
    -------
    ndarray, shape (T, C, H, W), float32
    """
    angles, offsets = draw_augmentations(
        image_rng(x, seed), copies, max_angle=max_angle, padding=padding
    )
    return np.stack(
        [
            augment_image(
                x,
                float(a),
                (int(o[0]), int(o[1])),
                fill,
                blur_size=blur_size,
                padding=padding,
            )
            for a, o in zip(angles, offsets, strict=True)
        ]
    )


def tta_settings(
    *,
    copies: int = 10,
    seed: int = 0,
    max_angle: float = 45.0,
    blur_size: int = 10,
    padding: int = 8,
) -> dict[str, Any]:
    """Validated TTA settings as plain data, for a monitor file's binding or a report.

    Takes the keyword arguments of :func:`tta_spread` that change its result and records the
    fixed choices (fill, composition, spread) next to them.

    Raises
    ------
    EvaluationError
        For a setting out of range.
    """
    problems = []
    if not (isinstance(copies, int | np.integer) and copies >= 2):
        problems.append(f"copies must be an integer >= 2 (one copy has no spread), got {copies!r}")
    if not (isinstance(seed, int | np.integer) and seed >= 0):
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    if not (
        isinstance(max_angle, int | float | np.number)
        and math.isfinite(max_angle)
        and 0 <= max_angle <= 180
    ):
        problems.append(f"max_angle must be in [0, 180] degrees, got {max_angle!r}")
    if not (isinstance(blur_size, int | np.integer) and blur_size >= 1):
        problems.append(f"blur_size must be an integer >= 1 (1: no blur), got {blur_size!r}")
    if not (isinstance(padding, int | np.integer) and padding >= 0):
        problems.append(f"padding must be a non-negative integer, got {padding!r}")
    if problems:
        raise EvaluationError("invalid TTA settings: " + "; ".join(problems))
    return {
        "copies": int(copies),
        "seed": int(seed),
        "max_angle": float(max_angle),
        "blur_size": int(blur_size),
        "padding": int(padding),
        "composition": "rotate, box blur, crop with padding (each copy)",
        "fill": "black pixel, normalised: (0 / scale - mean) / std",
        "spread": "population standard deviation (ddof=0) of sigmoid(logits) over the copies",
        "rng": "numpy default_rng([seed, sha256(image float32 bytes)])",
    }


def tta_spread(
    model: ScoreModel,
    x: NDArray[np.floating],
    *,
    copies: int = 10,
    seed: int = 0,
    max_angle: float = 45.0,
    blur_size: int = 10,
    padding: int = 8,
    fill: NDArray[np.floating] | Sequence[float] | None = None,
    batch_size: int | None = None,
    on_progress: Progress | None = None,
) -> NDArray[np.float64]:
    """Test-time-augmentation spread: std of ``p_k`` over ``copies`` augmented copies.

    ``spread_k = sqrt(mean_t (p_k^(t) - mean_t p_k^(t))^2)`` (population std, ``ddof=0``), with
    ``p_k^(t) = sigmoid(z_k(a_t(x)))`` and ``a_t`` the t-th augmentation (module docstring).
    The original image is not among the copies. Flag when high (``direction="above"``).

    Parameters
    ----------
    model : ScoreModel
        E.g. an :class:`~.model.OnnxClassifier`.
    x : ndarray, shape (N, C, H, W)
        Preprocessed images (``model.preprocess``).
    copies : int
        T, the augmented copies per image (>= 2).
    seed : int
        Combined with each image's content hash (:func:`image_rng`).
    max_angle : float
        Rotation range in degrees.
    blur_size : int
        Box-blur window (1: no blur).
    padding : int
        Crop padding in pixels.
    fill : array-like, shape (C,), optional
        Model-input value for exposed areas; default :func:`black_fill` of ``model.card``.
    batch_size : int, optional
        Copies per ``model.logits`` call (bounds memory; does not change the result, as each
        image's draws depend on the image alone); at least one image's copies go in each call.
        ``None`` (the default): chosen for the machine and model
        (:func:`~.batchsize.batch_size_for`: a short probe, cached; 32 for a model that is not
        an :class:`~.model.OnnxClassifier`).
    on_progress : callable, optional
        Called as ``on_progress(images_done, images_total)``.

    Returns
    -------
    ndarray, shape (N, K), float64, values in [0, 0.5]
        NaN for an image where the model returned NaN for some copy.
    """
    tta_settings(
        copies=copies, seed=seed, max_angle=max_angle, blur_size=blur_size, padding=padding
    )
    if batch_size is not None and not (
        isinstance(batch_size, int | np.integer)
        and not isinstance(batch_size, bool)
        and batch_size >= 1
    ):
        raise EvaluationError(
            f"batch_size must be a positive integer (or None: chosen for the machine), got "
            f"{batch_size!r}"
        )
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[0] == 0:
        raise EvaluationError(f"x must be a non-empty (N, C, H, W) batch, got shape {x.shape}")
    channels = x.shape[1]
    if fill is None:
        card = getattr(model, "card", None)
        if card is None:
            raise EvaluationError("pass fill=, or a model with a card (scale, mean, std)")
        fill_arr = black_fill(card, channels)
    else:
        fill_arr = np.asarray(fill, dtype=np.float32).reshape(-1)
        if fill_arr.shape != (channels,):
            raise EvaluationError(f"fill must hold {channels} values (one per channel)")
    from scipy.special import expit

    n = x.shape[0]
    if batch_size is None:
        from .batchsize import batch_size_for

        batch_size = batch_size_for(model, 32)
    per_call = max(1, int(batch_size) // copies)
    spreads: list[NDArray[np.float64]] = []
    for start in range(0, n, per_call):
        chunk = x[start : start + per_call]
        batch = np.concatenate(
            [
                tta_copies(
                    img,
                    seed,
                    fill_arr,
                    copies=copies,
                    max_angle=max_angle,
                    blur_size=blur_size,
                    padding=padding,
                )
                for img in chunk
            ]
        )
        logits = np.asarray(model.logits(batch), dtype=np.float64)
        if logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
            raise EvaluationError(
                f"model.logits returned shape {logits.shape} for {batch.shape[0]} copies; "
                "expected (copies, K)"
            )
        p = expit(logits).reshape(len(chunk), copies, -1)
        spreads.append(p.std(axis=1, ddof=0))
        done = min(start + per_call, n)
        logger.debug("TTA: %d of %d images (%d copies each)", done, n, copies)
        if on_progress is not None:
            on_progress(done, n)
    return np.concatenate(spreads)
