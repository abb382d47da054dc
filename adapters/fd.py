"""Finite-difference Input x Gradient: class maps from scores (logits) alone.

For a patch ``p`` (all channels) let ``v_p = x * 1_p``. The central difference

    (z_k(x + a v_p) - z_k(x - b v_p)) / (a + b)

is the directional derivative of ``z_k`` along ``v_p``, which equals
``sum_{i in p} x_i dz_k/dx_i``: the patch-sum of Input x Gradient, exact up to O(h^2)
(METHOD.md section 2). ``a`` and ``b`` are the steps the float32 input really takes
(``float32(1 + h) - 1`` and ``1 - float32(1 - h)``), so rounding of the factor does not bias the
map. One set of forward passes gives every class: 2P passes per image (central) or P + 1
(forward). Perturbation batches run through the model's one long-lived session and span image
boundaries, so every batch but the last is full.
"""

from __future__ import annotations

import math
import warnings
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
    from informer_audit.model import OnnxClassifier

SCHEMES = ("central", "forward")
DEFAULT_STEP = 1e-3
FALLBACK_BATCH_SIZE = 32
"""Batch size for a model that is not an ONNX Runtime classifier, when none is given."""
MIN_PATCHES = 4
"""Fewer patches than this: each class map has so few entries that the cosine distances
between them take few distinct values (one patch: every map is a number, d_kl is 0 or 2)."""


@register_adapter
class FiniteDifferenceIxG(SaliencyAdapter):
    """Patch-level Input x Gradient by finite differences of the logits.

    Parameters
    ----------
    patch_size : int
        Side of the square patches in model-input pixels (edge patches may be smaller).
    step : float, optional
        Relative step ``h``: patch pixels are scaled by ``1 +/- h``. Default 1e-3, the measured
        sweet spot for float32 models (FACTS.md: cosine 0.998-0.999 to the exact map at 320 px).
        A model that computes in float16 or bfloat16 (:attr:`OnnxClassifier.reduced_precision`)
        is refused unless a step is given: float16 resolves one part in 1024, so at h = 1e-3
        the perturbed pixels round back to the image and the logit differences are rounding.
        Measured on a tiny tanh network (32 px, 8 px patches, 4 classes, logits up to 6.1;
        float16 probabilities within 3.5e-4 of float32's), cosine of its FD maps to the
        float64 model's (min over 6 images x 4 classes) and the largest change of d, as
        ``tests/test_model_numerics.py`` builds it:

        ==========  =================  =================  ==================
        h           float16 in/out     float16 inside     float32 (for scale)
        ==========  =================  =================  ==================
        1e-3        0 (zero map), 0.74 0.946, 0.24        1.0000, 0.001
        1e-2        0.992, 0.066       0.9993, 0.033      1.0000, 0.000
        3.1e-2      0.9994, 0.022      1.0000, 0.006      1.0000, 0.002
        5e-2        0.9997, 0.017      1.0000, 0.006      1.0000, 0.004
        1e-1        0.9998, 0.018      0.9999, 0.015      0.9999, 0.016
        ==========  =================  =================  ==================

        Hence the suggestion ``h = sqrt(eps)`` (0.031 for float16) and a warning below half; a
        step that large trades rounding for the network's curvature, which this tiny model
        under-represents, so check the maps of a real model against exact gradients.
    scheme : {"central", "forward"}
        Central differences (2P passes, error O(h^2)) or forward (P + 1 passes, O(h)).
    batch_size : int, optional
        Perturbed images per session run; does not change the maps. ``None`` (the default):
        chosen for the machine and model at the first :meth:`explain`
        (:func:`~informer_audit.batchsize.batch_size_for`: a short probe, cached; 32 for a
        model that is not an :class:`~informer_audit.model.OnnxClassifier`).
    """

    name: ClassVar[str] = "fd"
    access: ClassVar[str] = "scores"
    options: ClassVar[tuple[AdapterOption, ...]] = (
        AdapterOption("--patch-size", "patch_size", int, "patch side in model pixels [16].", min=1),
        AdapterOption("--fd-step", "step", float, "relative step h [1e-3]."),
        AdapterOption("--fd-scheme", "scheme", str, "scheme [central].", choices=SCHEMES),
        ORT_BATCH_SIZE,
    )

    def __init__(
        self,
        patch_size: int = 16,
        step: float | None = None,
        scheme: str = "central",
        batch_size: int | None = None,
    ) -> None:
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise SaliencyError(f"fd: patch_size must be a positive integer, got {patch_size!r}")
        # Whether the step was chosen (by the user, or a monitor's settings) or is the default:
        # only the default is refused for a reduced-precision model (see check).
        self.step_given = step is not None
        step = float(DEFAULT_STEP if step is None else step)
        if not (0.0 < step < 0.5):
            raise SaliencyError(f"fd: step must lie in (0, 0.5), got {step!r}")
        if scheme not in SCHEMES:
            raise SaliencyError(f"fd: scheme must be one of {list(SCHEMES)}, got {scheme!r}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise SaliencyError(
                f"fd: batch_size must be a positive integer (or None: chosen for the machine), "
                f"got {batch_size!r}"
            )
        self.patch_size, self.step, self.scheme, self.batch_size = (
            patch_size,
            step,
            scheme,
            batch_size,
        )
        self._params: dict[str, Any] = {
            "patch_size": patch_size,
            "step": step,
            "scheme": scheme,
            "batch_size": batch_size,
        }
        # The factors the float32 input is really multiplied by, and the steps they make.
        self._up = np.float32(1.0 + step)
        self._down = np.float32(1.0 - step)
        self._a = float(self._up) - 1.0
        self._b = 1.0 - float(self._down)

    def check(self, model: OnnxClassifier) -> None:
        """Refuse a single patch or the default step on a float16 model; warn on few patches.

        Raises
        ------
        SaliencyError
            When the patch covers the whole input (one patch: every class map is one number,
            so the cosine distances between classes are 0 or 2 and d says nothing), or when
            the model computes in reduced precision and no step was given.

        Warns
        -----
        MeaninglessSettingWarning
            Fewer than :data:`MIN_PATCHES` patches, or a given step below ``sqrt(eps) / 2`` of
            a reduced-precision model (float16: 0.016; at 1e-2 the table above shows d off by
            0.066).
        """
        height, width = model.card.image_size
        gh, gw = self.grid(height, width)
        if gh * gw == 1:
            raise SaliencyError(
                f"fd: patch_size {self.patch_size} covers the whole {height}x{width} model input: "
                "one patch, so every class map is a single number and the cosine distance "
                "between two classes is 0 or 2, whatever the image; choose a patch size below "
                f"{max(height, width)} (at least {MIN_PATCHES} patches, e.g. "
                f"patch_size={max(1, min(height, width) // 2)})",
                params=("patch_size",),
            )
        if gh * gw < MIN_PATCHES:
            warnings.warn(
                MeaninglessSettingWarning(
                    f"fd: patch_size {self.patch_size} cuts the {height}x{width} model input "
                    f"into only {gh * gw} patches: class maps of {gh * gw} numbers leave the "
                    f"distances between classes, and so d, poorly determined; use at least "
                    f"{MIN_PATCHES} patches (a smaller patch_size)",
                    params=("patch_size",),
                ),
                stacklevel=2,
            )
        if not model.reduced_precision:
            return
        eps = model.precision_eps
        suggested = float(f"{math.sqrt(eps):.2g}")
        where = "; ".join(model.reduced_precision)
        if not self.step_given:
            raise SaliencyError(
                f"fd: {model.path} computes in reduced precision ({where}): machine epsilon "
                f"{eps:.2g}, so at the default step h = {DEFAULT_STEP:g} the perturbed pixels "
                "round back to the image and differences of logits of magnitude 1-10 are "
                "rounding, not gradient (on a float16 test model d moved by up to 0.74). Give "
                f"a step the precision resolves, about sqrt(eps): step={suggested:g} "
                "(check the maps against exact gradients: a large step meets the network's "
                "curvature), or use saliency='lime' (large perturbations) or 'gradient' (exact)",
                params=("step", "saliency"),
            )
        if self.step < math.sqrt(eps) / 2:
            warnings.warn(
                MeaninglessSettingWarning(
                    f"fd: step {self.step:g} is below sqrt(eps) / 2 = {math.sqrt(eps) / 2:.2g} "
                    f"of this reduced-precision model ({where}): logit differences at this step "
                    f"are partly rounding; about {suggested:g} is the step its precision supports",
                    params=("step",),
                ),
                stacklevel=2,
            )

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Number of patch rows and columns for an input of ``height`` x ``width``."""
        return math.ceil(height / self.patch_size), math.ceil(width / self.patch_size)

    def forward_passes(self, height: int, width: int) -> int:
        """Forward passes this adapter issues per image."""
        gh, gw = self.grid(height, width)
        return 2 * gh * gw if self.scheme == "central" else gh * gw

    def explain(
        self,
        model: OnnxClassifier,
        x: NDArray[np.float32],
        *,
        logits: NDArray[np.float64] | None = None,
        progress: ProgressCallback | None = None,
    ) -> NDArray[np.float64]:
        """Patch-level ixg maps of every model output.

        Parameters
        ----------
        x : ndarray, shape (N, C, H, W), float32

        Returns
        -------
        ndarray, shape (N, K, ceil(H / patch_size), ceil(W / patch_size)), float64
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, _, height, width = x.shape
        gh, gw = self.grid(height, width)
        n_patches = gh * gw
        central = self.scheme == "central"
        per_image = 2 * n_patches if central else n_patches
        total = n * per_image
        maps: NDArray[np.float64] | None = None
        base = None
        if not central:
            base = np.asarray(logits if logits is not None else model.logits(x), dtype=np.float64)
        size = self.batch_size or batch_size_for(model, FALLBACK_BATCH_SIZE)
        batch = min(size, total) if total else 0
        buf = np.empty((batch, *x.shape[1:]), dtype=np.float32)
        # What each buffer row holds now: the image index and the perturbed patch (or -1), so
        # that refilling a row for the next patch of the same image restores one patch only.
        held_image = np.full(batch, -1, dtype=np.int64)
        held_patch = np.full(batch, -1, dtype=np.int64)
        for start in range(0, total, batch or 1):
            stop = min(start + batch, total)
            rows = np.arange(start, stop)
            images = rows // per_image
            local = rows % per_image
            patches = local // 2 if central else local
            signs = np.where(local % 2 == 0, 1, -1) if central else np.ones_like(local)
            for j, (img, patch, sign) in enumerate(zip(images, patches, signs, strict=True)):
                if held_image[j] != img:
                    buf[j] = x[img]
                    held_image[j] = img
                elif held_patch[j] >= 0:
                    ys, xs = self._slices(int(held_patch[j]), gw)
                    buf[j, :, ys, xs] = x[img, :, ys, xs]
                ys, xs = self._slices(int(patch), gw)
                buf[j, :, ys, xs] = x[img, :, ys, xs] * (self._up if sign > 0 else self._down)
                held_patch[j] = patch
            z = model.logits(buf[: stop - start])
            if maps is None:  # (N, P, K) while accumulating: rows index (image, patch)
                maps = np.zeros((n, n_patches, z.shape[1]), dtype=np.float64)
            if central:
                # d/dt z(x + t v) ~ (z(+a) - z(-b)) / (a + b); accumulate both halves.
                weight = np.where(signs > 0, 1.0, -1.0) / (self._a + self._b)
                np.add.at(maps, (images, patches), z * weight[:, None])
            elif base is not None:
                maps[images, patches] = (z - base[images]) / self._a
            if progress is not None:
                progress(stop, total)
        if maps is None:  # no images
            maps = np.zeros((n, n_patches, len(model.card.class_names)), dtype=np.float64)
        return np.ascontiguousarray(maps.transpose(0, 2, 1)).reshape(n, maps.shape[2], gh, gw)

    def _slices(self, patch: int, gw: int) -> tuple[slice, slice]:
        s = self.patch_size
        r, c = divmod(patch, gw)
        return slice(r * s, (r + 1) * s), slice(c * s, (c + 1) * s)
