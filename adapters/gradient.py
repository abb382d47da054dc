"""Exact Input x Gradient at full resolution (white box): S_k = x * dz_k/dx.

The reference the finite-difference adapter is checked against (METHOD.md section 2). It needs a
differentiable graph: either a torch module given directly (for instance the DenseNet121 of
:mod:`informer_audit.densenet` loaded with its checkpoint), or the audited ONNX file converted with
onnx2torch (:mod:`informer_audit.adapters.onnx_torch`). torch is optional; without it the adapter
refuses to start and says how to install it.

Cost per batch: one forward pass and K backward passes that reuse its graph (``retain_graph``),
with the module's parameters frozen so that the backward passes compute input gradients only.
Before any map is returned, the torch outputs are compared with the ONNX Runtime logits of the
same images, so a module that is not the audited model is refused rather than explained.

:class:`TorchGraphAdapter` holds what every adapter that runs the audited model as a torch module
shares (this one and :mod:`~informer_audit.adapters.lrp`): the two ways to the module, the model's
layout and fixed batch size, logits from probabilities, and the check against ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from informer_audit.errors import SaliencyError
from informer_audit.numerics import PROB_EPS
from informer_audit.saliency import (
    AdapterOption,
    ProgressCallback,
    SaliencyAdapter,
    register_adapter,
)

from .onnx_torch import convert_onnx, import_torch

if TYPE_CHECKING:
    from informer_audit.model import OnnxClassifier

# Not __init__ settings: the front end builds ``module`` from them
# (:func:`informer_audit.checkpoints.torch_module_for`). Shared by the adapters that take one.
TORCH_WEIGHTS = AdapterOption(
    "--torch-weights",
    "weights",
    Path,
    "differentiate this PyTorch checkpoint instead of converting the ONNX file "
    "(checked to give the ONNX model's scores).",
    init=False,
)
"""``--torch-weights``: the checkpoint from which the front end builds ``module``."""
TORCH_ARCH = AdapterOption(
    "--torch-arch",
    "arch",
    str,
    "architecture of --torch-weights (default: the one the ONNX file's export provenance names).",
    init=False,
)
"""``--torch-arch``: the architecture of ``--torch-weights``."""


def select_output(result: Any, out_index: int | None, adapter: str) -> Any:
    """The class scores among a module's outputs: ``result[out_index]`` of a tuple or list (its
    only element without ``out_index``), or ``result`` itself."""
    if isinstance(result, tuple | list):
        if out_index is None:
            if len(result) != 1:
                raise SaliencyError(
                    f"{adapter}: the torch module returned {len(result)} outputs; "
                    "say which holds the class scores with output_index"
                )
            out_index = 0
        return result[out_index]
    return result


class TorchGraphAdapter(SaliencyAdapter):
    """Base of the adapters that run the audited model as a torch module (not registered).

    Parameters
    ----------
    batch_size : int
        Images per torch forward pass; does not change the maps.
    module : torch.nn.Module, optional
        A torch module computing the audited model's scores from its input (model layout, same
        normalised input the ONNX file takes). Default: convert the ONNX file with onnx2torch.
        Not part of the settings a monitor is bound to: it must compute the same function as the
        ONNX model, which is checked on every batch.
    output_index : int, optional
        With a ``module`` that returns several tensors, which one holds the class scores.
    tolerance : float
        Largest accepted ``|z_torch - z_onnx| / (1 + |z_onnx|)`` between the torch module's logits
        and ONNX Runtime's.
    """

    access: ClassVar[str] = "graph"
    invariant_params: ClassVar[frozenset[str]] = frozenset({"batch_size", "tolerance"})

    def __init__(
        self,
        batch_size: int = 8,
        module: Any = None,
        output_index: int | None = None,
        tolerance: float = 1e-3,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SaliencyError(
                f"{self.name}: batch_size must be a positive integer, got {batch_size!r}"
            )
        tolerance = float(tolerance)
        if not tolerance > 0:
            raise SaliencyError(f"{self.name}: tolerance must be positive, got {tolerance!r}")
        self._torch = import_torch()  # refuse at once, not after the first image is loaded
        if module is not None and not isinstance(module, self._torch.nn.Module):
            raise SaliencyError(
                f"{self.name}: module must be a torch.nn.Module, got {type(module).__name__}"
            )
        self.batch_size, self.module, self.output_index = batch_size, module, output_index
        self.tolerance = tolerance
        self._params: dict[str, Any] = {"batch_size": batch_size, "tolerance": tolerance}
        self._converted: dict[str, tuple[Any, int]] = {}  # model sha256 -> (module, output)

    def forward_passes(self, height: int, width: int) -> int:
        """Forward passes per image (plus the backward work of each adapter)."""
        return 1

    def _net(self, model: OnnxClassifier) -> tuple[Any, int | None]:
        """The torch module for ``model`` and the index of its score output."""
        if self.module is not None:
            return self.module, self.output_index
        if model.sha256 not in self._converted:
            net = convert_onnx(model.path)
            import onnx

            names = [
                o.name for o in onnx.load(str(model.path), load_external_data=False).graph.output
            ]
            index = names.index(model.output.name) if len(names) > 1 else None
            self._converted[model.sha256] = (net, -1 if index is None else index)
        net, index = self._converted[model.sha256]
        return net, None if index < 0 else index

    @staticmethod
    def _model_input(xb: Any, model: OnnxClassifier) -> Any:
        """A NCHW batch in the model's layout."""
        return xb.permute(0, 2, 3, 1) if model.card.layout == "NHWC" else xb

    @staticmethod
    def _model_batches(model: OnnxClassifier, m: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of the runs of ``m`` rows: all at once, or the model's fixed batch."""
        step = model.fixed_batch or max(m, 1)
        for start in range(0, m, step):
            yield start, min(start + step, m)

    def _padded(self, chunk: Any, model: OnnxClassifier) -> Any:
        """``chunk`` padded to the model's fixed batch size with copies of its first row (which
        get no gradient); unchanged for a model with a dynamic batch."""
        fixed = model.fixed_batch
        if fixed is None or chunk.shape[0] >= fixed:
            return chunk
        pad = chunk[:1].detach().expand(fixed - chunk.shape[0], *chunk.shape[1:])
        return self._torch.cat([chunk, pad])

    def _logits(self, out: Any, model: OnnxClassifier, m: int, k: int) -> Any:
        """The module's class scores ``out`` (m, K) as logits (probabilities mapped back)."""
        if out.ndim != 2 or tuple(out.shape) != (m, k):
            raise SaliencyError(
                f"{self.name}: the torch module returned shape {tuple(out.shape)}, "
                f"expected ({m}, {k})"
            )
        out = out.float()
        if model.card.output == "probabilities":
            p = out.clamp(PROB_EPS, 1.0 - PROB_EPS)
            out = self._torch.log(p) - self._torch.log1p(-p)
        return out

    def _output(self, result: Any, out_index: int | None) -> Any:
        return select_output(result, out_index, self.name)

    def _inputs(
        self, model: OnnxClassifier, x: NDArray[np.float32], logits: NDArray[np.float64] | None
    ) -> tuple[NDArray[np.float32], NDArray[np.float64], Any, int | None]:
        """What :meth:`explain` starts from: the input as contiguous float32, ONNX Runtime's
        logits (computed when not given), the torch module and its score output."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        reference = np.asarray(logits if logits is not None else model.logits(x), np.float64)
        return (x, reference, *self._net(model))

    def _check(
        self, z: NDArray[np.float64], reference: NDArray[np.float64], model: OnnxClassifier
    ) -> None:
        finite = np.isfinite(reference).all(axis=1)
        err = np.abs(z[finite] - reference[finite]) / (1.0 + np.abs(reference[finite]))
        worst = float(err.max()) if err.size else 0.0
        if not worst <= self.tolerance:  # also catches NaN
            source = "the given torch module" if self.module is not None else "the converted graph"
            raise SaliencyError(
                f"{self.name}: {source} does not compute the same scores as {model.path}: "
                f"relative logit difference {worst:.3g} > tolerance {self.tolerance:g}. "
                "The maps would explain another model."
            )


@register_adapter
class ExactGradientIxG(TorchGraphAdapter):
    """Full-resolution Input x Gradient by automatic differentiation.

    Parameters
    ----------
    batch_size, module, output_index, tolerance
        See :class:`TorchGraphAdapter`.
    """

    name: ClassVar[str] = "gradient"
    options: ClassVar[tuple[AdapterOption, ...]] = (
        TORCH_WEIGHTS,
        TORCH_ARCH,
        AdapterOption(
            "--gradient-batch-size",
            "batch_size",
            int,
            "images per torch forward pass (does not change results) [8].",
            min=1,
        ),
    )

    def forward_passes(self, height: int, width: int) -> int:
        """Forward passes per image (plus one backward pass per class)."""
        return 1

    def explain(
        self,
        model: OnnxClassifier,
        x: NDArray[np.float32],
        *,
        logits: NDArray[np.float64] | None = None,
        progress: ProgressCallback | None = None,
    ) -> NDArray[np.float64]:
        """Exact ixg maps of every model output.

        Parameters
        ----------
        x : ndarray, shape (N, C, H, W), float32
        logits : ndarray, shape (N, K), optional
            ONNX Runtime's logits for ``x``; computed here when not given. The torch module's
            outputs must agree with them (``tolerance``).

        Returns
        -------
        ndarray, shape (N, K, C, H, W), float64
        """
        torch = self._torch
        x, reference, net, out_index = self._inputs(model, x, logits)
        n, k = x.shape[0], len(model.card.class_names)
        maps = np.empty((n, k, *x.shape[1:]), dtype=np.float64)
        frozen = [p for p in net.parameters() if p.requires_grad]
        for p in frozen:  # input gradients only; restored for a module the caller owns
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                for start in range(0, n, self.batch_size):
                    stop = min(start + self.batch_size, n)
                    xb = torch.from_numpy(x[start:stop]).requires_grad_(True)
                    z = self._scores(net, out_index, xb, model, k)
                    self._check(z.detach().double().numpy(), reference[start:stop], model)
                    for j in range(k):
                        (grad,) = torch.autograd.grad(z[:, j].sum(), xb, retain_graph=j < k - 1)
                        maps[start:stop, j] = (xb.detach() * grad).double().numpy()
                    if progress is not None:
                        progress(stop, n)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return maps

    def _scores(
        self, net: Any, out_index: int | None, xb: Any, model: OnnxClassifier, k: int
    ) -> Any:
        """Logits (m, K) of a NCHW batch, through the module in the model's layout and batch."""
        inp = self._model_input(xb, model)
        parts = [  # full fixed-size batches; padded rows are dropped and get no gradient
            self._output(net(self._padded(inp[s:e], model)), out_index)[: e - s]
            for s, e in self._model_batches(model, inp.shape[0])
        ]
        out = parts[0] if len(parts) == 1 else self._torch.cat(parts)
        return self._logits(out, model, xb.shape[0], k)
