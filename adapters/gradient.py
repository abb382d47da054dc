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
"""

from __future__ import annotations

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


@register_adapter
class ExactGradientIxG(SaliencyAdapter):
    """Full-resolution Input x Gradient by automatic differentiation.

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

    name: ClassVar[str] = "gradient"
    access: ClassVar[str] = "graph"
    invariant_params: ClassVar[frozenset[str]] = frozenset({"batch_size", "tolerance"})
    options: ClassVar[tuple[AdapterOption, ...]] = (
        # Not __init__ settings: the front end builds ``module`` from them
        # (:func:`informer_audit.checkpoints.torch_module_for`).
        AdapterOption(
            "--torch-weights",
            "weights",
            Path,
            "differentiate this PyTorch checkpoint instead of converting the ONNX file "
            "(checked to give the ONNX model's scores).",
            init=False,
        ),
        AdapterOption(
            "--torch-arch",
            "arch",
            str,
            "architecture of --torch-weights (default: the one the ONNX file's export "
            "provenance names).",
            init=False,
        ),
        AdapterOption(
            "--gradient-batch-size",
            "batch_size",
            int,
            "images per torch forward pass (does not change results) [8].",
            min=1,
        ),
    )

    def __init__(
        self,
        batch_size: int = 8,
        module: Any = None,
        output_index: int | None = None,
        tolerance: float = 1e-3,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SaliencyError(
                f"gradient: batch_size must be a positive integer, got {batch_size!r}"
            )
        tolerance = float(tolerance)
        if not tolerance > 0:
            raise SaliencyError(f"gradient: tolerance must be positive, got {tolerance!r}")
        self._torch = import_torch()  # refuse at once, not after the first image is loaded
        if module is not None and not isinstance(module, self._torch.nn.Module):
            raise SaliencyError(
                f"gradient: module must be a torch.nn.Module, got {type(module).__name__}"
            )
        self.batch_size, self.module, self.output_index = batch_size, module, output_index
        self.tolerance = tolerance
        self._params: dict[str, Any] = {"batch_size": batch_size, "tolerance": tolerance}
        self._converted: dict[str, tuple[Any, int]] = {}  # model sha256 -> (module, output)

    def forward_passes(self, height: int, width: int) -> int:
        """Forward passes per image (plus one backward pass per class)."""
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
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = x.shape[0]
        k = len(model.card.class_names)
        reference = np.asarray(logits if logits is not None else model.logits(x), np.float64)
        net, out_index = self._net(model)
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
        torch = self._torch
        m = xb.shape[0]
        inp = xb.permute(0, 2, 3, 1) if model.card.layout == "NHWC" else xb
        fixed = model.fixed_batch
        if fixed is not None:  # run full fixed-size batches; padded rows get no gradient
            parts = []
            for s in range(0, m, fixed):
                chunk = inp[s : s + fixed]
                if chunk.shape[0] < fixed:
                    pad = chunk[:1].detach().expand(fixed - chunk.shape[0], *chunk.shape[1:])
                    chunk = torch.cat([chunk, pad])
                parts.append(self._output(net(chunk), out_index)[: min(fixed, m - s)])
            out = torch.cat(parts)
        else:
            out = self._output(net(inp), out_index)
        if out.ndim != 2 or tuple(out.shape) != (m, k):
            raise SaliencyError(
                f"gradient: the torch module returned shape {tuple(out.shape)}, expected ({m}, {k})"
            )
        out = out.float()
        if model.card.output == "probabilities":
            p = out.clamp(PROB_EPS, 1.0 - PROB_EPS)
            out = torch.log(p) - torch.log1p(-p)
        return out

    @staticmethod
    def _output(result: Any, out_index: int | None) -> Any:
        if isinstance(result, tuple | list):
            if out_index is None:
                if len(result) != 1:
                    raise SaliencyError(
                        f"gradient: the torch module returned {len(result)} outputs; "
                        "say which holds the class scores with output_index"
                    )
                out_index = 0
            return result[out_index]
        return result

    def _check(
        self, z: NDArray[np.float64], reference: NDArray[np.float64], model: OnnxClassifier
    ) -> None:
        finite = np.isfinite(reference).all(axis=1)
        err = np.abs(z[finite] - reference[finite]) / (1.0 + np.abs(reference[finite]))
        worst = float(err.max()) if err.size else 0.0
        if not worst <= self.tolerance:  # also catches NaN
            source = "the given torch module" if self.module is not None else "the converted graph"
            raise SaliencyError(
                f"gradient: {source} does not compute the same scores as {model.path}: "
                f"relative logit difference {worst:.3g} > tolerance {self.tolerance:g}. "
                "The maps would explain another model."
            )
