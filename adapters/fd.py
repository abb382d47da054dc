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
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from informer_audit.errors import SaliencyError
from informer_audit.saliency import ProgressCallback, SaliencyAdapter, register_adapter

if TYPE_CHECKING:
    from informer_audit.model import OnnxClassifier

SCHEMES = ("central", "forward")


@register_adapter
class FiniteDifferenceIxG(SaliencyAdapter):
    """Patch-level Input x Gradient by finite differences of the logits.

    Parameters
    ----------
    patch_size : int
        Side of the square patches in model-input pixels (edge patches may be smaller).
    step : float
        Relative step ``h``: patch pixels are scaled by ``1 +/- h``. 1e-3 is the measured sweet
        spot for float32 models (FACTS.md: cosine 0.998-0.999 to the exact map at 320 px).
    scheme : {"central", "forward"}
        Central differences (2P passes, error O(h^2)) or forward (P + 1 passes, O(h)).
    batch_size : int
        Perturbed images per session run; does not change the maps.
    """

    name: ClassVar[str] = "fd"
    access: ClassVar[str] = "scores"

    def __init__(
        self,
        patch_size: int = 16,
        step: float = 1e-3,
        scheme: str = "central",
        batch_size: int = 32,
    ) -> None:
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise SaliencyError(f"fd: patch_size must be a positive integer, got {patch_size!r}")
        step = float(step)
        if not (0.0 < step < 0.5):
            raise SaliencyError(f"fd: step must lie in (0, 0.5), got {step!r}")
        if scheme not in SCHEMES:
            raise SaliencyError(f"fd: scheme must be one of {list(SCHEMES)}, got {scheme!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SaliencyError(f"fd: batch_size must be a positive integer, got {batch_size!r}")
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
        batch = min(self.batch_size, total) if total else 0
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
