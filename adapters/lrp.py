"""Layer-wise Relevance Propagation class maps (white box): S_k = the relevance of class k.

LRP (Bach et al. 2015; Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019)
starts from the explained score of class k (its logit) at the output and hands it back layer by
layer to the layer's inputs, each layer by a rule; what reaches the model input is the map, in
model-input space like the ``gradient`` adapter's: shape (K, C, H, W) per image.

The graph
    The adapter reaches the audited model as the ``gradient`` adapter does: a torch module given
    directly (``--torch-weights``) or the ONNX file converted with onnx2torch. The module is
    traced with ``torch.fx`` (a converted graph already is one) and read as a list of
    operations, each given one of these treatments:

    * **linear layers** (convolutions; dense layers: ``nn.Linear``, ``x @ W``) take the rule of
      the composite;
    * **canonization**: an element-wise affine map of constants (BatchNorm in eval mode, a
      constant scale or shift) that directly follows a linear layer, as its only consumer, is
      merged into that layer's weights and bias (what ONNX exporters do too, so both routes give
      one graph); so is average pooling that directly follows one (DenseNet's transitions: a
      pooled convolution is one larger convolution, and its rule then sees the pooled output,
      where LRP-0 on the pooling alone would divide by sums of signed terms). BatchNorm that
      cannot be merged -- DenseNet's pre-activation BatchNorm, after a concatenation and before
      its ReLU, where zennit's ``SequentialMergeBatchNorm`` fails -- is an element-wise affine
      map: each output depends on one input, so its relevance passes to that input unchanged
      (the rule LRP uses for element-wise layers); its shift takes none;
    * **element-wise activations** (ReLU, tanh, sigmoid, ...) pass relevance unchanged;
    * **sums and other average pooling** (two tensors added, ``AvgPool``, global average
      pooling, ``mean``): the LRP-0 rule of a linear map without bias,
      R_i = x_i (dy/dx_i) R / y, which conserves relevance;
    * **data movement** (concatenation, flatten, reshape, transpose, padding, slicing) and
      **max pooling** pass relevance back by their gradient: every element to where it came
      from (to the maximum of each pooling window).

    Anything else (a product of two tensors, softmax, attention) is refused, naming the nodes.

Rules (``zennit``'s definitions, stabiliser ``z + eps * sign(z)``; the maps equal zennit's
where zennit applies, see the tests, but for average pooling right after a convolution, which
zennit treats by LRP-0 on its own)
    * ``epsilon``: R_i = x_i sum_j w_ij R_j / (z_j + eps sign z_j);
    * ``zplus``: the same with positive weights (and bias) on positive inputs and negative
      weights on negative inputs;
    * ``gamma``: positive weights boosted by gamma = 0.25 (generalised to inputs of both signs);
    * ``flat``: relevance spread evenly over each output's receptive field (first convolution);
    * ``zbox``: the z^B rule of a bounded input (first convolution), with the lowest and highest
      input the model card allows (pixel 0 and 255, normalised).

The rules a layer gets come from a :class:`Composite` (:data:`COMPOSITES`). Biases take their
share of relevance, as LRP's rules define; :class:`Conservation` reports, per image and class,
how much of the explained score reached the input.

Cost: for every batch, one forward pass that also evaluates each rule's modified layer (one
extra pass per linear layer), then one backward sweep that carries the relevance of all K classes
at once (``torch.vmap``): 1.6x the ``gradient`` adapter on the reference model
(``benchmarks/lrp_cost.py``). zennit's hooks, by contrast, rerun the modified forward pass and
the unmodified backward pass for every class (3.6-3.8x the ``gradient`` adapter there, without
canonization). zennit is not needed here; the tests compare with it where it is installed
(:func:`import_zennit`).

Maps are deterministic, and each image's map depends on that image only (not on the batch).
"""

from __future__ import annotations

import functools
import operator
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from informer_audit.errors import SaliencyError
from informer_audit.saliency import AdapterOption, ProgressCallback, register_adapter

from .gradient import TORCH_ARCH, TORCH_WEIGHTS, TorchGraphAdapter, select_output
from .onnx_torch import import_beside_torchvision, import_torch

if TYPE_CHECKING:
    from informer_audit.model import OnnxClassifier

STABILIZER = 1e-6
"""The stabiliser of every rule but ``epsilon`` (which takes its own): zennit's default."""
GAMMA = 0.25
"""The gamma of the ``gamma`` rule (zennit's and Montavon et al.'s value)."""
_PIXEL_RANGE = (0.0, 255.0)
"""What the model's preprocessing starts from (the 8-bit scale, see the model card)."""


# -- composites ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Composite:
    """Which rule each kind of linear layer gets.

    Attributes
    ----------
    name : str
        The ``composite`` setting.
    conv : str
        Rule of the convolutions.
    dense : str
        Rule of the dense layers (``nn.Linear``, matrix products with a constant).
    first : str or None
        Rule of the first convolution(s), those reached from the input through data movement and
        constant affine maps only; ``None``: the conv rule. A dense first layer (an MLP) keeps
        the dense rule: the flat rule would spread every class's relevance evenly over all
        inputs, giving every class the same map.
    summary : str
        One line for documentation.
    """

    name: str
    conv: str
    dense: str
    first: str | None
    summary: str

    def rule(self, kind: str, first: bool) -> str:
        """The rule of a linear layer of ``kind`` (``"conv"`` or ``"dense"``)."""
        if first and kind == "conv" and self.first is not None:
            return self.first
        return self.conv if kind == "conv" else self.dense


COMPOSITES: dict[str, Composite] = {
    c.name: c
    for c in (
        Composite(
            "epsilon-plus-flat",
            "zplus",
            "epsilon",
            "flat",
            "LRP-epsilon in dense layers, LRP-z+ in convolutions, flat rule in the first layer "
            "(zennit's EpsilonPlusFlat, the recommendation of Kohlbrenner et al. 2020)",
        ),
        Composite(
            "epsilon-gamma-box",
            "gamma",
            "epsilon",
            "zbox",
            "LRP-epsilon in dense layers, LRP-gamma (0.25) in convolutions, z^B with the input "
            "bounds in the first layer (zennit's EpsilonGammaBox; Montavon et al. 2019)",
        ),
        Composite(
            "epsilon-plus",
            "zplus",
            "epsilon",
            None,
            "LRP-epsilon in dense layers, LRP-z+ in every convolution (zennit's EpsilonPlus)",
        ),
    )
}
"""The composites by name. The default, ``epsilon-plus-flat``, is the configuration the LRP
literature recommends for convolutional classifiers: z+ in the convolutions gives maps without
the noise of gradients, epsilon in the dense head keeps the class specificity of the logits, and
the flat first layer does not depend on the sign of normalised pixels."""
DEFAULT_COMPOSITE = "epsilon-plus-flat"


# -- conservation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conservation:
    """How much of each explained score reached the input as relevance.

    Attributes
    ----------
    relevance : ndarray, shape (N, K)
        The sum of each image's map of each class.
    explained : ndarray, shape (N, K)
        The score each map explains (the logit; logit(p) for a model that outputs
        probabilities): the relevance put in at the output.
    """

    relevance: NDArray[np.float64]
    explained: NDArray[np.float64]

    @property
    def ratio(self) -> NDArray[np.float64]:
        """``relevance / explained`` per image and class (NaN where nothing was explained).

        1 where the rules conserve relevance; biases, stabilisers and the flat rule's edges
        absorb the rest.
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            out = self.relevance / self.explained
        return np.where(self.explained != 0, out, np.nan)

    def summary(self, class_names: Sequence[str] | None = None) -> str:
        """One line per class: median and range of :attr:`ratio` over the images."""
        ratio = self.ratio
        names = list(class_names) if class_names is not None else list(range(ratio.shape[1]))
        lines = []
        for j, name in enumerate(names):
            r = ratio[:, j][np.isfinite(ratio[:, j])]
            if r.size:
                lines.append(
                    f"{name}: relevance/score median {np.median(r):.3f} "
                    f"(range {r.min():.3f} to {r.max():.3f}, {r.size} images)"
                )
            else:
                lines.append(f"{name}: no image with a non-zero score")
        return "\n".join(lines)


# -- zennit, for comparisons -----------------------------------------------------------------------
def _zennit_placeholder() -> dict[str, types.ModuleType]:
    """``torchvision.models.resnet`` with classes no module is an instance of: what
    ``zennit.torchvision`` imports (for its ResNet canonizer, which then never applies)."""
    torch = import_torch()
    root = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    for name in ("Bottleneck", "BasicBlock"):
        setattr(resnet, name, type(name, (torch.nn.Module,), {}))
    models.resnet = resnet  # type: ignore[attr-defined]
    root.models = models  # type: ignore[attr-defined]
    return {"torchvision": root, "torchvision.models": models, "torchvision.models.resnet": resnet}


def import_zennit() -> Any:
    """``import zennit`` (0.5.1), which imports torchvision, also where torchvision cannot be.

    The adapter does not use zennit; tests and benchmarks compare with it.
    """
    return import_beside_torchvision(
        "zennit",
        _zennit_placeholder,
        "comparing with zennit needs zennit, which is not installed ({exc}); install it with: "
        "pip install --no-deps zennit  (--no-deps: its torchvision requirement would replace "
        "a CPU torch build)",
        "its torchvision ResNet canonizer unavailable",
    )


# -- the graph -------------------------------------------------------------------------------------
@dataclass
class _Linear:
    """A linear layer ``apply(x, weight, bias)``, then the average pooling merged into it
    (``post``); ``axis`` is the weight's output axis."""

    kind: str  # "conv" or "dense"
    weight: Any
    bias: Any
    axis: int
    apply: Callable[[Any, Any, Any], Any]
    cache: dict[str, Any] = field(default_factory=dict)
    post: tuple[Callable[[Any], Any], ...] = ()

    def __call__(self, x: Any, weight: Any, bias: Any) -> Any:
        """The layer with these parameters (the rules' modified ones, or its own)."""
        out = self.apply(x, weight, bias)
        for pool in self.post:
            out = pool(out)
        return out

    def modified(self, key: str, make: Callable[[], Any]) -> Any:
        """A tensor derived from the parameters, computed once."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def fold(self, scale: Any, shift: Any) -> None:
        """Merge ``y * scale + shift`` (per output feature, 1-D) into the weights and bias."""
        torch = import_torch()
        w = self.weight
        if scale is not None:
            shape = [1] * w.ndim
            shape[self.axis] = -1
            w = w * scale.reshape(shape).to(w.dtype)
        n_out = w.shape[self.axis]
        b = self.bias if self.bias is not None else torch.zeros(n_out, dtype=w.dtype)
        if scale is not None:
            b = b * scale.to(b.dtype)
        if shift is not None:
            b = b + shift.to(b.dtype)
        self.weight, self.bias = w.contiguous(), b.expand(n_out).contiguous()
        self.cache.clear()


@dataclass
class _Op:
    """One operation of the read graph; ``inputs`` are the tensors its relevance goes to."""

    node: Any
    kind: str  # input, meta, move, norm, pass, affine, linear
    inputs: tuple[Any, ...] = ()
    call: Callable[[dict[Any, Any]], Any] | None = None
    linear: _Linear | None = None
    affine: tuple[Any, Any, int | None] | None = None  # (scale, shift, channel axis or None)
    first: bool = False


_BINARY = {
    operator.add: "add",
    operator.sub: "sub",
    operator.mul: "mul",
    operator.truediv: "div",
    operator.neg: "neg",
}
_METHOD_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "neg": "neg"}
_MOVE_METHODS = frozenset(
    "view reshape flatten permute transpose contiguous squeeze unsqueeze expand narrow clone "
    "float to type_as".split()
)
_ACT_METHODS = frozenset({"relu", "sigmoid", "tanh"})
_META_METHODS = frozenset({"size", "dim", "numel"})
_MEAN_METHODS = frozenset({"mean"})
# The treatments of torch.nn modules and functions, by name.
_ACT_MODULES = (
    "ReLU ReLU6 LeakyReLU PReLU ELU CELU SELU GELU SiLU Mish Sigmoid Tanh Hardtanh Hardswish "
    "Hardsigmoid Softplus Softsign"
)
_ACT_FUNCTIONS = (
    "relu relu6 leaky_relu elu celu selu gelu silu mish sigmoid tanh hardtanh hardswish "
    "hardsigmoid softplus"
)
_MAX_MODULES = "MaxPool1d MaxPool2d MaxPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d"
_MAX_FUNCTIONS = "max_pool1d max_pool2d max_pool3d adaptive_max_pool1d adaptive_max_pool2d " + (
    "adaptive_max_pool3d"
)
_AVG_MODULES = "AvgPool1d AvgPool2d AvgPool3d AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d"
_AVG_FUNCTIONS = "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d " + (
    "adaptive_avg_pool3d"
)
# onnx2torch's own modules, by class name (onnx2torch need not import to read a torch graph)
_ONNX_MOVE = frozenset(
    "OnnxConcat OnnxCopyIdentity OnnxFlatten OnnxReshape OnnxTranspose OnnxSqueezeStaticAxes "
    "OnnxUnsqueezeStaticAxes OnnxPadStatic OnnxExpand OnnxCast".split()
)
_ONNX_NORM = frozenset({"OnnxGlobalAveragePool", "OnnxGlobalAveragePoolWithKnownInputShape"})
_ONNX_ACT = frozenset({"OnnxHardSigmoid", "OnnxErf"})


def _vocabulary() -> dict[str, Any]:
    """The module classes and functions by treatment (needs torch)."""
    torch = import_torch()
    nn, F = torch.nn, torch.nn.functional

    def modules(names: str) -> tuple[type, ...]:
        return tuple(getattr(nn, n) for n in names.split())

    def functions(names: str) -> set[Any]:
        return {getattr(F, n) for n in names.split()}

    move = {torch.cat, torch.concat, torch.flatten, torch.reshape, torch.permute}
    move |= {torch.transpose, torch.squeeze, torch.unsqueeze, torch.narrow, operator.getitem}
    return {
        "funcs": {
            "act": functions(_ACT_FUNCTIONS) | {torch.relu, torch.sigmoid, torch.tanh},
            "move": move | {F.pad},
            "dropout": {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout},
            "max": functions(_MAX_FUNCTIONS),
            "norm": functions(_AVG_FUNCTIONS) | {torch.mean},
            "binary": {torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.div: "div"},
            "conv": {F.conv1d, F.conv2d, F.conv3d},
        },
        "modules": {
            "act": modules(_ACT_MODULES),
            "move": modules("Flatten Unflatten Identity ZeroPad2d ConstantPad2d"),
            "dropout": modules("Dropout Dropout1d Dropout2d Dropout3d AlphaDropout"),
            "max": modules(_MAX_MODULES),
            "norm": modules(_AVG_MODULES),
            "conv": modules("Conv1d Conv2d Conv3d"),
            "bn": modules("BatchNorm1d BatchNorm2d BatchNorm3d"),
        },
    }


def _stabilize(z: Any, eps: float) -> Any:
    """zennit's stabiliser: ``z + eps * sign(z)``, with sign(0) = +1."""
    return z + eps * ((z >= 0).to(z.dtype) * 2 - 1)


class RelevanceGraph:
    """A torch module read for LRP: its operations, canonized, with a treatment each.

    Parameters
    ----------
    module : torch.nn.Module
        Maps the model input (model layout) to the class scores; traced with ``torch.fx``
        unless it is a ``torch.fx.GraphModule`` already. Not modified.
    sample : torch.Tensor
        An input of the shape the module will be run on (any batch size): the graph is read
        with one forward pass of it.
    output_index : int, optional
        With a module that returns several tensors, which one holds the class scores.

    Raises
    ------
    SaliencyError
        The module cannot be traced, or holds operations without an LRP treatment (named).
    """

    def __init__(self, module: Any, sample: Any, output_index: int | None = None) -> None:
        torch = import_torch()
        self._torch = torch
        self._vocab = _vocabulary()
        gm = module
        if not isinstance(module, torch.fx.GraphModule):
            try:
                gm = torch.fx.symbolic_trace(module)
            except Exception as exc:
                raise SaliencyError(
                    f"lrp: cannot trace the torch module with torch.fx to read its layers "
                    f"({type(exc).__name__}: {exc}); convert the ONNX file instead (no module), "
                    "or use saliency='gradient'",
                    params=("saliency",),
                ) from exc
        self._gm = gm
        nodes = list(gm.graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise SaliencyError(
                f"lrp: the torch module takes {len(inputs)} inputs; it must take the image "
                "batch only"
            )
        self.input = inputs[0]
        self.output = self._output_node(nodes, output_index)
        self.ops, self.consts = self._read(nodes, sample)
        self._canonize()
        self._mark_first()

    # -- reading -----------------------------------------------------------------------------
    @staticmethod
    def _output_node(nodes: list[Any], output_index: int | None) -> Any:
        (out,) = [n for n in nodes if n.op == "output"]
        result = select_output(out.args[0], output_index, "lrp")
        if not hasattr(result, "op"):
            raise SaliencyError("lrp: the torch module's output is not computed from its input")
        return result

    def _value(self, node: Any, env: dict[Any, Any]) -> Any:
        """The node's value by its own semantics (constants, and the probe forward pass)."""
        from torch.fx.node import map_arg

        args = map_arg(node.args, lambda n: env[n])
        kwargs = map_arg(node.kwargs, lambda n: env[n])
        if node.op == "get_attr":
            obj: Any = self._gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        if node.op == "call_module":
            return self._gm.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        raise SaliencyError(f"lrp: unexpected graph node {node.op} {node.target}")

    def _read(self, nodes: list[Any], sample: Any) -> tuple[list[_Op], dict[Any, Any]]:
        torch = self._torch
        depends: set[Any] = {self.input}
        for node in nodes:
            if node.op != "placeholder" and any(i in depends for i in node.all_input_nodes):
                depends.add(node)
        consts: dict[Any, Any] = {}
        env: dict[Any, Any] = {self.input: sample}
        ops: list[_Op] = [_Op(self.input, "input")]
        carrying = {self.input}  # tensors that relevance flows through
        unsupported: list[str] = []
        with torch.no_grad():
            for node in nodes:
                if node.op in ("placeholder", "output"):
                    continue
                if node not in depends:
                    consts[node] = env[node] = self._value(node, env)
                    continue
                op = self._classify(node, env, carrying)
                if op is None:  # go on, to name every such node at once
                    unsupported.append(self._describe(node))
                    env[node] = self._value(node, env)
                    carrying.add(node)
                    continue
                env[node] = op.call(env) if op.call is not None else self._value(node, env)
                if op.kind != "meta":
                    if not isinstance(env[node], torch.Tensor):
                        unsupported.append(self._describe(node) + " (returns no tensor)")
                        continue
                    carrying.add(node)
                ops.append(op)
        if unsupported:
            raise SaliencyError(
                "lrp: no relevance rule for "
                + "; ".join(unsupported[:10])
                + (f"; and {len(unsupported) - 10} more" if len(unsupported) > 10 else "")
                + ". Use saliency='gradient' or 'fd' for this model.",
                params=("saliency",),
            )
        if self.output not in carrying:
            raise SaliencyError("lrp: the torch module's scores do not depend on its input")
        self._shapes = {n: tuple(v.shape) for n, v in env.items() if isinstance(v, torch.Tensor)}
        return ops, consts

    def _describe(self, node: Any) -> str:
        if node.op == "call_module":
            what = type(self._gm.get_submodule(node.target)).__name__
        elif node.op == "call_function":
            what = getattr(node.target, "__name__", str(node.target))
        else:
            what = f".{node.target}()"
        return f"node {node.name!r} ({what})"

    def _classify(self, node: Any, env: dict[Any, Any], carrying: set[Any]) -> _Op | None:
        """The treatment of a node that depends on the input; None if it has none."""
        torch, vocab = self._torch, self._vocab
        tensors = tuple(n for n in node.all_input_nodes if n in carrying)
        if not tensors or _is_meta(node):  # sizes, shapes: recomputed each run, no relevance
            return _Op(node, "meta", call=functools.partial(self._value, node))
        consts = {n: env[n] for n in node.all_input_nodes if n not in carrying}
        funcs, modules = vocab["funcs"], vocab["modules"]
        kind: str | None = None
        if node.op == "call_module":
            mod = self._gm.get_submodule(node.target)
            cls = type(mod).__name__
            if isinstance(mod, modules["conv"]) and not _has_tensor_args(node, 1):
                lin = _Linear("conv", mod.weight.detach(), _detach(mod.bias), 0, mod._conv_forward)
                return _Op(node, "linear", tensors, linear=lin)
            if isinstance(mod, torch.nn.Linear):
                lin = _Linear("dense", mod.weight.detach(), _detach(mod.bias), 0, _linear)
                return _Op(node, "linear", tensors, linear=lin)
            if isinstance(mod, modules["bn"]) and mod.running_mean is not None:
                return self._batch_norm(
                    node, tensors, mod.weight, mod.bias, mod.running_mean, mod.running_var, mod.eps
                )
            if cls == "OnnxBatchNorm" and len(tensors) == 1 and node.args[0] in tensors:
                scale, bias, mean, var = (env[a] for a in node.args[1:5])
                return self._batch_norm(node, tensors, scale, bias, mean, var, mod.epsilon)
            if isinstance(mod, modules["dropout"]):
                return _Op(node, "move", tensors, call=operator.itemgetter(tensors[0]))
            if cls == "OnnxMatMul" and len(node.args) == 2 and node.args[0] in tensors:
                return self._matmul(node, tensors, consts.get(node.args[1]))
            if cls == "OnnxBinaryMathOperation":
                names = {torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.div: "div"}
                binary = names.get(mod.math_op_function)
                return self._binary(node, tensors, binary, env) if binary else None
            if cls == "OnnxNeg":
                return self._binary(node, tensors, "neg", env)
            if cls == "OnnxFunction" and mod.function is torch.tanh or cls in _ONNX_ACT:
                kind = "pass"
            elif isinstance(mod, modules["act"]):
                kind = "pass"
            elif isinstance(mod, modules["move"]) or cls in _ONNX_MOVE:
                kind = "move"
            elif isinstance(mod, modules["max"]):
                kind = "move"
            elif isinstance(mod, modules["norm"]) or cls in _ONNX_NORM:
                kind = "norm"
            elif cls == "OnnxReduceStaticAxes" and getattr(mod, "math_op_function", None) in (
                torch.mean,
            ):
                kind = "norm"
        elif node.op == "call_function":
            target = node.target
            if target in funcs["conv"] and node.args[0] in tensors and len(tensors) == 1:
                return self._functional_linear(node, tensors, "conv", env)
            if target is torch.nn.functional.linear and node.args[0] in tensors:
                return self._functional_linear(node, tensors, "dense", env)
            if target in (torch.matmul, operator.matmul) and node.args[0] in tensors:
                return self._matmul(node, tensors, consts.get(node.args[1]))
            if target in _BINARY or target in funcs["binary"]:
                name = _BINARY.get(target) or funcs["binary"][target]
                return self._binary(node, tensors, name, env)
            if target in funcs["dropout"]:
                return _Op(node, "move", tensors, call=operator.itemgetter(tensors[0]))
            if target in funcs["act"]:
                kind = "pass"
            elif target in funcs["move"] or target in funcs["max"]:
                kind = "move"
            elif target in funcs["norm"]:
                kind = "norm"
        elif node.op == "call_method":
            name = str(node.target)
            if name in _METHOD_BINARY:
                return self._binary(node, tensors, _METHOD_BINARY[name], env)
            if name == "matmul" and node.args[0] in tensors:
                return self._matmul(node, tensors, consts.get(node.args[1]))
            if name in _ACT_METHODS:
                kind = "pass"
            elif name in _MOVE_METHODS:
                kind = "move"
            elif name in _MEAN_METHODS:
                kind = "norm"
        if kind is None:
            return None
        if kind == "pass" and len(tensors) != 1:
            return None
        return _Op(node, kind, tensors, call=self._caller(node))

    def _caller(self, node: Any) -> Callable[[dict[Any, Any]], Any]:
        """``env -> value`` by the node's semantics, never in place."""
        if node.kwargs.get("inplace"):
            node_kwargs = {**node.kwargs, "inplace": False}
        else:
            node_kwargs = None
        mod = self._gm.get_submodule(node.target) if node.op == "call_module" else None
        inplace_module = mod is not None and bool(getattr(mod, "inplace", False))

        def call(env: dict[Any, Any]) -> Any:
            from torch.fx.node import map_arg

            args = map_arg(node.args, lambda n: env[n])
            kwargs = map_arg(node_kwargs if node_kwargs is not None else node.kwargs, env.get)
            if mod is not None:
                if inplace_module:
                    args = tuple(a.clone() if hasattr(a, "clone") else a for a in args)
                return mod(*args, **kwargs)
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            return getattr(args[0], node.target)(*args[1:], **kwargs)

        return call

    def _batch_norm(
        self, node: Any, tensors: tuple[Any, ...], weight: Any, bias: Any, mean: Any, var: Any,
        eps: float,
    ) -> _Op:  # fmt: skip
        """BatchNorm in eval mode as ``x * scale + shift`` per channel (axis 1)."""
        torch = self._torch
        var = torch.as_tensor(var).detach().double()
        scale = 1.0 / torch.sqrt(var + float(eps))
        if weight is not None:
            scale = scale * torch.as_tensor(weight).detach().double()
        shift = -torch.as_tensor(mean).detach().double() * scale
        if bias is not None:
            shift = shift + torch.as_tensor(bias).detach().double()
        scale, shift = scale.float(), shift.float()
        source = tensors[0]

        def call(env: dict[Any, Any]) -> Any:
            x = env[source]
            shape = (1, -1) + (1,) * (x.ndim - 2)
            return x * scale.reshape(shape) + shift.reshape(shape)

        return _Op(node, "affine", tensors, call=call, affine=(scale, shift, 1))

    def _binary(
        self, node: Any, tensors: tuple[Any, ...], name: str, env: dict[Any, Any]
    ) -> _Op | None:
        """``a op b``: a sum of two tensors (LRP-0), or an affine map of one tensor by a
        constant; a product or quotient of two tensors has no rule here."""
        torch = self._torch
        args = node.args
        call = self._caller(node)
        if name == "neg":
            return _Op(node, "affine", tensors, call=call, affine=(torch.tensor(-1.0), None, None))
        if len(args) < 2 or "alpha" in node.kwargs:
            return None
        a, b = args[0], args[1]
        a_dyn = a in tensors
        b_dyn = b in tensors
        if a_dyn and b_dyn:
            return _Op(node, "norm", tensors, call=call) if name in ("add", "sub") else None
        other = b if a_dyn else a
        other = env[other] if hasattr(other, "op") else other
        c = torch.as_tensor(other).detach().float()
        if name == "add":
            affine = (None, c, None)
        elif name == "sub":
            affine = (None, -c, None) if a_dyn else (torch.tensor(-1.0), c, None)
        elif name == "mul":
            affine = (c, None, None)
        elif a_dyn:  # x / c
            affine = (1.0 / c, None, None)
        else:  # c / x: element-wise, not affine
            return _Op(node, "pass", tensors, call=call)
        return _Op(node, "affine", tensors, call=call, affine=affine)

    def _matmul(self, node: Any, tensors: tuple[Any, ...], weight: Any) -> _Op | None:
        """``x @ W`` with a constant 2-D ``W``: a dense layer (output axis -1 of ``W``)."""
        torch = self._torch
        if weight is None or not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            return None
        lin = _Linear("dense", weight.detach(), None, 1, _matmul)
        return _Op(node, "linear", tensors, linear=lin)

    def _functional_linear(
        self, node: Any, tensors: tuple[Any, ...], kind: str, env: dict[Any, Any]
    ) -> _Op | None:
        """``F.conv2d(x, W, b, ...)`` / ``F.linear(x, W, b)`` with constant ``W`` and ``b``."""
        from torch.fx.node import map_arg

        names = ["input", "weight", "bias"]
        values = dict(zip(names, node.args, strict=False)) | {
            k: v for k, v in node.kwargs.items() if k in names
        }
        rest_args = node.args[3:]
        rest_kwargs = {k: v for k, v in node.kwargs.items() if k not in names}
        weight, bias = values.get("weight"), values.get("bias")
        if weight is None or weight in tensors or bias in tensors:
            return None
        w = env[weight] if hasattr(weight, "op") else weight
        b = env[bias] if hasattr(bias, "op") else bias
        rest_args = map_arg(rest_args, lambda n: env[n])
        rest_kwargs = map_arg(rest_kwargs, lambda n: env[n])
        target = node.target

        def apply(x: Any, wt: Any, bs: Any) -> Any:
            return target(x, wt, bs, *rest_args, **rest_kwargs)

        lin = _Linear(kind, w.detach(), _detach(b), 0, apply)
        return _Op(node, "linear", tensors, linear=lin)

    # -- canonization --------------------------------------------------------------------------
    def _canonize(self) -> None:
        """Merge into a linear layer what follows it as its only consumer: constant affine maps
        (BatchNorm), then average pooling (a positive linear map: pooling a convolution is one
        larger convolution, whose rule then sees the pooled output; LRP-0 on the pooling alone
        divides by sums of signed terms)."""
        self._merge_into_linear(self._fold_affine)
        self._merge_into_linear(self._fold_pool)

    def _merge_into_linear(self, fold: Callable[[_Op, _Op], bool]) -> None:
        """Apply ``fold(linear op, its consumer)`` wherever it merges the consumer in."""
        i = 0
        while i < len(self.ops):
            op = self.ops[i]
            src = next(
                (j for j in range(i - 1, -1, -1) if op.inputs and self.ops[j].node is op.inputs[0]),
                None,
            )
            lin_op = self.ops[src] if src is not None else None
            if (
                lin_op is not None
                and src is not None
                and len(op.inputs) == 1
                and lin_op.kind == "linear"
                and lin_op.linear is not None
                and len(lin_op.node.users) == 1
                and lin_op.node is not self.output
                and fold(lin_op, op)
            ):
                self.ops[src] = _Op(op.node, "linear", lin_op.inputs, linear=lin_op.linear)
                del self.ops[i]
                continue
            i += 1

    def _fold_affine(self, lin_op: _Op, op: _Op) -> bool:
        if op.kind != "affine" or op.affine is None or lin_op.linear is None:
            return False
        if lin_op.linear.post:  # the shift would meet the pooling's padding
            return False
        vectors = self._per_feature(lin_op, op.affine)
        if vectors is None:
            return False
        lin_op.linear.fold(*vectors)
        return True

    def _fold_pool(self, lin_op: _Op, op: _Op) -> bool:
        if op.kind != "norm" or op.call is None or lin_op.linear is None:
            return False
        call, source, consts = op.call, op.inputs[0], self.consts
        lin_op.linear.post = (*lin_op.linear.post, lambda t: call({**consts, source: t}))
        return True

    def _per_feature(
        self, lin_op: _Op, affine: tuple[Any, Any, int | None]
    ) -> tuple[Any, Any] | None:
        """The affine map's scale and shift as vectors over the layer's output features, or
        None when they vary along another axis (then it cannot be merged)."""
        torch = self._torch
        assert lin_op.linear is not None
        shape = self._shapes[lin_op.node]
        feature = 1 if lin_op.linear.kind == "conv" else len(shape) - 1
        n_out = shape[feature]
        out: list[Any] = []
        for value, axis in ((affine[0], affine[2]), (affine[1], affine[2])):
            if value is None:
                out.append(None)
                continue
            v = torch.as_tensor(value).float()
            if axis is not None:  # per-channel vectors (BatchNorm): channel axis 1
                if feature != axis or v.numel() != n_out:
                    return None
                out.append(v.reshape(-1))
                continue
            if v.ndim > len(shape):
                return None
            full = (1,) * (len(shape) - v.ndim) + tuple(v.shape)
            if any(s != 1 for d, s in enumerate(full) if d != feature):
                return None
            out.append(v.reshape(-1).expand(n_out) if v.numel() in (1, n_out) else None)
            if out[-1] is None:
                return None
        return out[0], out[1]

    def _mark_first(self) -> None:
        """The first linear layers: reached from the input through data movement and constant
        affine maps only (their input is still the image, up to those)."""
        pre = {self.input}
        for op in self.ops:
            if op.kind == "linear" and op.inputs and op.inputs[0] in pre:
                op.first = True
            elif op.kind in ("move", "affine") and len(op.inputs) == 1 and op.inputs[0] in pre:
                if not _is_max(self._gm, op.node, self._vocab):
                    pre.add(op.node)
        self._pre = pre

    # -- running -------------------------------------------------------------------------------
    def linear_layers(self) -> list[tuple[str, str, bool]]:
        """``(node name, "conv" | "dense", first)`` of every linear layer after canonization."""
        return [
            (op.node.name, op.linear.kind, op.first)
            for op in self.ops
            if op.kind == "linear" and op.linear is not None
        ]

    def relevance(
        self,
        x: Any,
        explained: Callable[[Any], Any],
        composite: Composite,
        epsilon: float = 1e-6,
        bounds: tuple[Any, Any] | None = None,
    ) -> tuple[Any, Any]:
        """The relevance at the input of every explained score, all classes in one sweep.

        Parameters
        ----------
        x : torch.Tensor
            Model input (model layout), float32.
        explained : callable
            Maps the module's output (N, K) to the scores to explain (N, K): the relevance put
            in at the output (e.g. logits from probabilities).
        composite : Composite
        epsilon : float
            The epsilon of the ``epsilon`` rule.
        bounds : (torch.Tensor, torch.Tensor), optional
            Lowest and highest input (broadcastable to ``x``), for the ``zbox`` rule.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            The module's output (N, K) and the relevance (K, N, *x.shape[1:]) at its input.
        """
        torch = self._torch
        env: dict[Any, Any] = dict(self.consts)
        env[self.input] = x
        backs: dict[Any, Callable[[Any], tuple[Any, ...]]] = {}
        box: dict[Any, tuple[Any, Any]] = {}
        if bounds is not None:
            box[self.input] = (bounds[0].expand_as(x), bounds[1].expand_as(x))
        with torch.no_grad():
            for op in self.ops[1:]:
                value, back = self._forward(op, env, composite, epsilon, box)
                env[op.node] = value
                if back is not None:
                    backs[op.node] = back
                if op.node in self._pre and op.inputs and op.inputs[0] in box and op.call:
                    low, high = box[op.inputs[0]]
                    box[op.node] = (
                        op.call({**env, op.inputs[0]: low}),
                        op.call({**env, op.inputs[0]: high}),
                    )
            out = env[self.output]
            scores = explained(out).to(out.dtype)
            k = scores.shape[1]
            eye = torch.eye(k, dtype=out.dtype)
            if out.shape != scores.shape:
                raise SaliencyError(
                    f"lrp: the module's output has shape {tuple(out.shape)}, its scores "
                    f"{tuple(scores.shape)}"
                )
            # class j's relevance: its own score at its own output, nothing elsewhere
            relevance: dict[Any, Any] = {self.output: eye[:, None, :] * scores[None]}
            for op in reversed(self.ops[1:]):
                r = relevance.pop(op.node, None)
                if r is None or op.node not in backs:
                    continue
                for inp, part in zip(op.inputs, backs[op.node](r), strict=True):
                    if part is None:
                        continue
                    relevance[inp] = relevance[inp] + part if inp in relevance else part
            at_input = relevance.get(self.input)
            if at_input is None:
                at_input = torch.zeros((k, *x.shape), dtype=x.dtype)
        return out, at_input

    def _forward(
        self,
        op: _Op,
        env: dict[Any, Any],
        composite: Composite,
        epsilon: float,
        box: dict[Any, tuple[Any, Any]],
    ) -> tuple[Any, Callable[[Any], tuple[Any, ...]] | None]:
        """The op's value and its relevance map ``R_out (K, ...) -> R per input``."""
        torch = self._torch
        if op.kind == "meta":
            assert op.call is not None
            return op.call(env), None
        if op.kind in ("pass", "affine"):
            assert op.call is not None
            value = op.call(env)
            if tuple(value.shape) != tuple(env[op.inputs[0]].shape):
                raise SaliencyError(
                    f"lrp: element-wise {self._describe(op.node)} changes the shape "
                    f"{tuple(env[op.inputs[0]].shape)} to {tuple(value.shape)}"
                )
            return value, lambda r: (r,)
        if op.kind == "linear":
            assert op.linear is not None
            rule = composite.rule(op.linear.kind, op.first)
            x = env[op.inputs[0]]
            bounds = box.get(op.inputs[0])
            return _RULES[rule](x, op.linear, epsilon, bounds)
        assert op.call is not None
        call, inputs = op.call, op.inputs

        def f(*tensors: Any) -> Any:
            return call({**env, **dict(zip(inputs, tensors, strict=True))})

        primals = tuple(env[n] for n in inputs)
        value, vjp = torch.func.vjp(f, *primals)
        batched = torch.vmap(vjp)
        if op.kind == "move":
            return value, lambda r: tuple(batched(r))
        # norm: R_i = x_i * (dy/dx_i)^T (R / y), the LRP-0 rule of a linear map without bias
        return value, lambda r: tuple(
            p * g for p, g in zip(primals, batched(r / _stabilize(value, STABILIZER)), strict=True)
        )


def _is_meta(node: Any) -> bool:
    """A node that reads a tensor's size or shape (its value carries no relevance)."""
    if node.op == "call_method":
        return node.target in _META_METHODS
    return node.op == "call_function" and node.target in (getattr, len)


def _detach(t: Any) -> Any:
    return None if t is None else t.detach()


def _has_tensor_args(node: Any, n: int) -> bool:
    """True when the module call takes more than ``n`` positional arguments."""
    return len(node.args) > n


def _linear(x: Any, w: Any, b: Any) -> Any:
    torch = import_torch()
    return torch.nn.functional.linear(x, w, b)


def _matmul(x: Any, w: Any, b: Any) -> Any:
    out = x @ w
    return out if b is None else out + b


def _is_max(gm: Any, node: Any, vocab: dict[str, Any]) -> bool:
    """Max pooling: data movement that chooses by value (its output is not the image)."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), vocab["modules"]["max"])
    return node.op == "call_function" and node.target in vocab["funcs"]["max"]


# -- rules -----------------------------------------------------------------------------------------
_Back = Callable[[Any], tuple[Any, ...]]


def _vjp(lin: _Linear, weight: Any, bias: Any, x: Any) -> tuple[Any, Callable[[Any], Any]]:
    """``lin(x, weight, bias)`` and the transpose of the layer, ``s (K, *out) -> (K, *x.shape)``.

    The transpose of a linear map does not depend on where it is taken: it serves every input
    of ``x``'s shape.
    """
    torch = import_torch()
    out, vjp = torch.func.vjp(lambda a: lin(a, weight, bias), x)
    batched = torch.vmap(vjp)
    return out, lambda s: batched(s)[0]


def _epsilon(x: Any, lin: _Linear, eps: float, bounds: Any) -> tuple[Any, _Back]:
    z, tr = _vjp(lin, lin.weight, lin.bias, x)
    return z, lambda r: (x * tr(r / _stabilize(z, eps)),)


def _positive_negative(lin: _Linear) -> tuple[Any, Any, Any, Any]:
    """``W+``, ``W-``, ``b+`` and ``b-``."""
    w, b = lin.weight, lin.bias
    wp = lin.modified("w+", lambda: w.clamp(min=0))
    wn = lin.modified("w-", lambda: w.clamp(max=0))
    bp = None if b is None else lin.modified("b+", lambda: b.clamp(min=0))
    bn = None if b is None else lin.modified("b-", lambda: b.clamp(max=0))
    return wp, wn, bp, bn


def _zplus(x: Any, lin: _Linear, eps: float, bounds: Any) -> tuple[Any, _Back]:
    """zennit's ZPlus: W+ on x+ (with b+) and W- on x-, normalised by their sum."""
    value = lin(x, lin.weight, lin.bias)
    wp, wn, bp, _ = _positive_negative(lin)
    xp = x.clamp(min=0)
    z, tp = _vjp(lin, wp, bp, xp)
    terms = [(xp, tp)]
    if bool((x < 0).any()):  # after a ReLU there is nothing negative: the term is zero
        xn = x.clamp(max=0)
        zn, tn = _vjp(lin, wn, None, xn)
        z = z + zn
        terms.append((xn, tn))

    def back(r: Any) -> tuple[Any, ...]:
        s = r / _stabilize(z, STABILIZER)
        total = None
        for a, tr in terms:
            part = a * tr(s)
            total = part if total is None else total + part
        return (total,)

    return value, back


def _gamma(x: Any, lin: _Linear, eps: float, bounds: Any) -> tuple[Any, _Back]:
    """zennit's generalised Gamma rule: for outputs z > 0 the positive contributions boosted by
    gamma, for z < 0 the negative ones."""
    torch = import_torch()
    value = lin(x, lin.weight, lin.bias)
    w, b = lin.weight, lin.bias
    wp = lin.modified("wg+", lambda: w + GAMMA * w.clamp(min=0))
    wn = lin.modified("wg-", lambda: w + GAMMA * w.clamp(max=0))
    bp = None if b is None else lin.modified("bg+", lambda: b + GAMMA * b.clamp(min=0))
    bn = None if b is None else lin.modified("bg-", lambda: b + GAMMA * b.clamp(max=0))
    xp = x.clamp(min=0)
    z_pos, tp = _vjp(lin, wp, bp, xp)
    z_neg, tn = _vjp(lin, wn, bn, xp)
    negative = bool((x < 0).any())
    xn = x.clamp(max=0)
    if negative:
        z_pos = z_pos + lin(xn, wn, None)
        z_neg = z_neg + lin(xn, wp, None)
    pos, neg = (value > 0).to(x.dtype), (value < 0).to(x.dtype)

    def back(r: Any) -> tuple[Any, ...]:
        k = r.shape[0]
        sp = r * pos / _stabilize(z_pos, STABILIZER)
        sn = r * neg / _stabilize(z_neg, STABILIZER)
        both = torch.cat([sp, sn])  # one call of each transpose for the two halves
        wp_s, wn_s = tp(both), tn(both)
        out = xp * (wp_s[:k] + wn_s[k:])
        if negative:
            out = out + xn * (wn_s[:k] + wp_s[k:])
        return (out,)

    return value, back


def _flat(x: Any, lin: _Linear, eps: float, bounds: Any) -> tuple[Any, _Back]:
    """Relevance spread evenly over each output's receptive field (all weights and inputs 1)."""
    torch = import_torch()
    value = lin(x, lin.weight, lin.bias)
    ones_w = lin.modified("ones", lambda: torch.ones_like(lin.weight))
    z, tr = _vjp(lin, ones_w, None, torch.ones_like(x))
    return value, lambda r: (tr(r / _stabilize(z, STABILIZER)),)


def _zbox(x: Any, lin: _Linear, eps: float, bounds: Any) -> tuple[Any, _Back]:
    """z^B: (W x + b) - (W+ l + b+) - (W- h + b-) with the lowest and highest input l, h."""
    if bounds is None:
        raise SaliencyError("lrp: the zbox rule needs the input bounds (the model card's)")
    low, high = bounds
    wp, wn, bp, bn = _positive_negative(lin)
    value, t0 = _vjp(lin, lin.weight, lin.bias, x)
    z_low, tp = _vjp(lin, wp, bp, low)
    z_high, tn = _vjp(lin, wn, bn, high)
    z = value - z_low - z_high

    def back(r: Any) -> tuple[Any, ...]:
        s = r / _stabilize(z, STABILIZER)
        return (x * t0(s) - low * tp(s) - high * tn(s),)

    return value, back


_RULES: dict[str, Callable[[Any, _Linear, float, Any], tuple[Any, _Back]]] = {
    "epsilon": _epsilon,
    "zplus": _zplus,
    "gamma": _gamma,
    "flat": _flat,
    "zbox": _zbox,
}
"""Rule name -> ``(input, layer, epsilon, bounds) -> (output, relevance map)``."""


# -- the adapter -----------------------------------------------------------------------------------
@register_adapter
class LayerwiseRelevance(TorchGraphAdapter):
    """LRP class maps at full resolution (see the module doc for the rules).

    Parameters
    ----------
    composite : str
        Which rules (:data:`COMPOSITES`); default ``epsilon-plus-flat``.
    epsilon : float
        The epsilon of the LRP-epsilon rule (> 0); default 1e-6.
    batch_size, module, output_index, tolerance
        As for the ``gradient`` adapter (:class:`~.gradient.TorchGraphAdapter`).

    Attributes
    ----------
    last_conservation : Conservation or None
        Of the images of the last :meth:`explain` call: the sum of each map against the score
        it explains.
    """

    name: ClassVar[str] = "lrp"
    options: ClassVar[tuple[AdapterOption, ...]] = (
        TORCH_WEIGHTS,
        TORCH_ARCH,
        AdapterOption(
            "--lrp-composite",
            "composite",
            str,
            "LRP rules: epsilon-plus-flat (LRP-epsilon in dense layers, z+ in convolutions, "
            "flat first layer), epsilon-gamma-box or epsilon-plus [epsilon-plus-flat].",
            choices=tuple(COMPOSITES),
        ),
        AdapterOption(
            "--lrp-epsilon",
            "epsilon",
            float,
            "epsilon of the LRP-epsilon rule [1e-6].",
        ),
        AdapterOption(
            "--lrp-batch-size",
            "batch_size",
            int,
            "images per torch forward pass (does not change results) [8].",
            min=1,
        ),
    )

    def __init__(
        self,
        composite: str = DEFAULT_COMPOSITE,
        epsilon: float = 1e-6,
        batch_size: int = 8,
        module: Any = None,
        output_index: int | None = None,
        tolerance: float = 1e-3,
    ) -> None:
        if composite not in COMPOSITES:
            raise SaliencyError(
                f"lrp: composite must be one of {list(COMPOSITES)}, got {composite!r}",
                params=("composite",),
            )
        if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
            raise SaliencyError(
                f"lrp: epsilon must be a positive number, got {epsilon!r}", params=("epsilon",)
            )
        epsilon = float(epsilon)
        if not (epsilon > 0 and np.isfinite(epsilon)):
            raise SaliencyError(
                f"lrp: epsilon must be a positive number, got {epsilon!r}", params=("epsilon",)
            )
        super().__init__(batch_size, module, output_index, tolerance)
        self.composite, self.epsilon = composite, epsilon
        self._params.update(composite=composite, epsilon=epsilon)
        self._graphs: dict[tuple[int, tuple[int, ...]], tuple[Any, RelevanceGraph]] = {}
        self.last_conservation: Conservation | None = None

    def forward_passes(self, height: int, width: int) -> int:
        """Forward passes per image (each also evaluates the rules' modified layers; then one
        backward sweep for all classes)."""
        return 1

    def graph(self, net: Any, out_index: int | None, sample: Any) -> RelevanceGraph:
        """The :class:`RelevanceGraph` of ``net`` for inputs shaped like ``sample`` (cached)."""
        key = (id(net), tuple(sample.shape[1:]))
        cached = self._graphs.get(key)
        if cached is None or cached[0] is not net:
            cached = (net, RelevanceGraph(net, sample, out_index))
            self._graphs[key] = cached
        return cached[1]

    def _bounds(self, model: OnnxClassifier) -> tuple[Any, Any] | None:
        """The lowest and highest model input (from the card), for the ``zbox`` rule."""
        if COMPOSITES[self.composite].first != "zbox":
            return None
        torch = self._torch
        card = model.card
        c = card.channels
        mean = np.broadcast_to(np.asarray(card.mean, np.float64), (c,))
        std = np.broadcast_to(np.asarray(card.std, np.float64), (c,))
        shape = (1, 1, 1, c) if card.layout == "NHWC" else (1, c, 1, 1)
        low, high = ((v / card.scale - mean) / std for v in _PIXEL_RANGE)
        low_t = torch.from_numpy(np.minimum(low, high).reshape(shape).astype(np.float32))
        high_t = torch.from_numpy(np.maximum(low, high).reshape(shape).astype(np.float32))
        return low_t, high_t

    def explain(
        self,
        model: OnnxClassifier,
        x: NDArray[np.float32],
        *,
        logits: NDArray[np.float64] | None = None,
        progress: ProgressCallback | None = None,
    ) -> NDArray[np.float64]:
        """LRP maps of every model output.

        Parameters
        ----------
        x : ndarray, shape (N, C, H, W), float32
        logits : ndarray, shape (N, K), optional
            ONNX Runtime's logits for ``x``; computed here when not given. The torch module's
            outputs must agree with them (``tolerance``).

        Returns
        -------
        ndarray, shape (N, K, C, H, W), float64
            Also sets :attr:`last_conservation`.
        """
        torch = self._torch
        x, reference, net, out_index = self._inputs(model, x, logits)
        n, k = x.shape[0], len(model.card.class_names)
        composite = COMPOSITES[self.composite]
        bounds = self._bounds(model)
        maps = np.empty((n, k, *x.shape[1:]), dtype=np.float64)
        explained = np.empty((n, k), dtype=np.float64)
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            inp = self._model_input(torch.from_numpy(x[start:stop]), model)
            for s, e in self._model_batches(model, inp.shape[0]):
                chunk = self._padded(inp[s:e], model)
                graph = self.graph(net, out_index, chunk)
                m = chunk.shape[0]
                out, rel = graph.relevance(
                    chunk,
                    functools.partial(self._logits, model=model, m=m, k=k),
                    composite,
                    self.epsilon,
                    bounds,
                )
                z = self._logits(out, model, m, k).double().numpy()[: e - s]
                self._check(z, reference[start + s : start + e], model)
                rel = rel[:, : e - s]
                if model.card.layout == "NHWC":
                    rel = rel.permute(0, 1, 4, 2, 3)
                maps[start + s : start + e] = rel.transpose(0, 1).double().numpy()
                explained[start + s : start + e] = z
            if progress is not None:
                progress(stop, n)
        self.last_conservation = Conservation(maps.reshape(n, k, -1).sum(axis=2), explained)
        return maps


def relevance_maps(
    module: Any,
    x: Any,
    composite: str = DEFAULT_COMPOSITE,
    *,
    epsilon: float = 1e-6,
    bounds: tuple[Any, Any] | None = None,
    output_index: int | None = None,
) -> tuple[Any, Any]:
    """LRP maps of a torch module's outputs, without an ONNX model (for tests and research).

    Parameters
    ----------
    module : torch.nn.Module
        Maps ``x`` to scores (N, K); each score is explained as it is.
    x : torch.Tensor
        Input batch.
    composite : str
        A :data:`COMPOSITES` name.
    epsilon, bounds, output_index
        As for :meth:`RelevanceGraph.relevance` and :class:`RelevanceGraph`.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The output (N, K) and the maps (N, K, *x.shape[1:]).
    """
    if composite not in COMPOSITES:
        raise SaliencyError(
            f"lrp: composite must be one of {list(COMPOSITES)}, got {composite!r}",
            params=("composite",),
        )
    graph = RelevanceGraph(module, x, output_index)
    out, rel = graph.relevance(x, lambda o: o, COMPOSITES[composite], epsilon, bounds)
    return out, rel.transpose(0, 1)
