"""ONNX classifier -> differentiable torch module, with onnx2torch.

torch and onnx2torch are optional: :func:`import_torch` and :func:`convert_onnx` raise a
:class:`~informer_audit.errors.SaliencyError` saying how to install them.

Two known traps are handled here:

* onnx2torch 1.5.15 imports torchvision at import time, for its NMS and RoiAlign converters
  only. The CPU torch build these machines provide cannot import PyPI's torchvision
  ("operator torchvision::nms does not exist"). When torchvision is missing or broken, a
  placeholder ``torchvision.ops`` is put in ``sys.modules`` for the duration of the import and
  removed afterwards; converting a graph that really holds NMS or RoiAlign then fails with a
  message naming torchvision.
* The torch dynamo exporter writes opset 18+ even when asked for 17; onnx2torch 1.5.15 has no
  converter for ReduceMean-18 (axes as an input), AveragePool-19, Reshape with ``allowzero=1``,
  and a few more, and ``onnx.version_converter`` fails on such graphs. :func:`prepare_graph`
  rewrites those nodes into their opset-17 form when the rewrite is exact (constant axes, unit
  dilations, a constant shape without zeros, ...), lowers the opset to 17, and otherwise refuses,
  naming every node it cannot convert.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from informer_audit.errors import SaliencyError

logger = logging.getLogger(__name__)

TARGET_OPSET = 17
"""The opset graphs newer than onnx2torch's converters are lowered to."""

INSTALL_HINT = (
    'pip install "informer-audit[torch]" (or: pip install torch onnx2torch; where pip would '
    "replace a CPU torch build by onnx2torch's torchvision requirement, pip install --no-deps "
    "onnx2torch)"
)

# Reductions whose `axes` moved from an attribute to an input in opset 18 (ReduceSum did in 13).
_AXES_AS_INPUT_18 = frozenset(
    {
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSumSquare",
    }
)


def import_torch() -> Any:
    """``import torch``, or a :class:`SaliencyError` that says how to install it."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise SaliencyError(
            f"the exact-gradient adapter needs torch, which is not installed ({exc}); "
            f"install it with: {INSTALL_HINT}"
        ) from exc


def _torchvision_placeholder() -> dict[str, types.ModuleType]:
    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise SaliencyError(
            "this ONNX graph holds an NMS or RoiAlign node, whose conversion needs a working "
            "torchvision; install one that matches your torch"
        )

    root = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    for name in ("nms", "batched_nms", "box_convert", "roi_align"):
        setattr(ops, name, unavailable)
    root.ops = ops  # type: ignore[attr-defined]
    return {"torchvision": root, "torchvision.ops": ops}


def import_beside_torchvision(
    package: str,
    placeholder: Callable[[], dict[str, types.ModuleType]],
    missing: str,
    lost: str,
) -> Any:
    """``import package``, for a package whose import imports torchvision but that works without.

    When torchvision is missing or broken (see the module doc), the half-imported modules are
    forgotten, ``package`` is imported with the ``placeholder`` modules in ``sys.modules``, and the
    placeholder is removed again so that nobody else mistakes it for torchvision.

    Parameters
    ----------
    package : str
        The package to import (``"onnx2torch"``, ``"zennit"``).
    placeholder : callable
        Returns the placeholder modules by name (``"torchvision"``, ``"torchvision.ops"``, ...).
    missing : str
        The :class:`SaliencyError` message when ``package`` itself is not installed; ``{exc}``
        in it is replaced by the import error.
    lost : str
        What does not work without torchvision, for the log.
    """
    import_torch()
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise SaliencyError(missing.format(exc=exc)) from exc
        reason = "torchvision is not installed"
    except Exception as exc:  # a torchvision built for another torch raises RuntimeError
        reason = f"torchvision does not import ({type(exc).__name__}: {exc})"
    for name in [m for m in sys.modules if m.split(".")[0] in (package, "torchvision")]:
        del sys.modules[name]
    modules = placeholder()
    sys.modules.update(modules)
    try:
        module = importlib.import_module(package)
    finally:
        for name in modules:
            sys.modules.pop(name, None)
    logger.info("imported %s without torchvision (%s); %s", package, reason, lost)
    return module


def import_onnx2torch() -> Any:
    """``import onnx2torch``, working around a missing or broken torchvision (see module doc)."""
    return import_beside_torchvision(
        "onnx2torch",
        _torchvision_placeholder,
        "converting an ONNX model for exact gradients needs onnx2torch, which is not "
        f"installed ({{exc}}); install it with: {INSTALL_HINT}",
        "NMS/RoiAlign unavailable",
    )


# -- graph preparation ---------------------------------------------------------------------------
def _constants(graph: Any) -> dict[str, NDArray[Any]]:
    """Values known before running the graph: initializers and Constant-node outputs."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name == "value_ints":
                    values[node.output[0]] = np.asarray(list(attr.ints), dtype=np.int64)
                elif attr.name == "value_int":
                    values[node.output[0]] = np.asarray(attr.i, dtype=np.int64)
    return values


def _describe(node: Any, version: int) -> str:
    return f"node {node.name or '(unnamed)'!r} ({node.op_type}-{version})"


def _drop_attrs(node: Any, names: set[str]) -> None:
    keep = [a for a in node.attribute if a.name not in names]
    del node.attribute[:]
    node.attribute.extend(keep)


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _lower_node(node: Any, version: int, constants: dict[str, NDArray[Any]]) -> str | None:
    """Rewrite one opset-18+ node into its opset-17 form in place.

    Returns why it cannot be rewritten, or ``None`` when it was (or needed nothing).
    """
    from onnx import helper

    op = node.op_type
    if op in _AXES_AS_INPUT_18 and version >= 18:
        axes_name = node.input[1] if len(node.input) > 1 else ""
        noop = int(_attr(node, "noop_with_empty_axes", 0))
        _drop_attrs(node, {"noop_with_empty_axes"})
        if axes_name:
            if axes_name not in constants:
                return "its axes are computed at run time (the opset-17 form needs constants)"
            axes = [int(a) for a in np.asarray(constants[axes_name]).reshape(-1)]
            del node.input[1:]
            if axes:
                node.attribute.append(helper.make_attribute("axes", axes))
                return None
        if noop:  # no axes and noop_with_empty_axes: the reduction is the identity
            node.op_type = "Identity"
            _drop_attrs(node, {"keepdims"})
        return None
    if op == "Split" and version >= 18:
        if len(node.input) < 2 or not node.input[1]:
            # Without `split`, the opset-13 Split divides into len(outputs) equal parts, as
            # num_outputs does when the axis divides evenly.
            _drop_attrs(node, {"num_outputs"})
        return None
    if op == "AveragePool" and version >= 19:
        dilations = _attr(node, "dilations")
        if dilations is not None and any(int(d) != 1 for d in dilations):
            return f"dilations {list(dilations)} have no opset-17 form"
        _drop_attrs(node, {"dilations"})
        return None
    if op == "Pad" and version >= 18:
        if len(node.input) > 3 and node.input[3]:
            return "it pads selected axes (an opset-18 input with no opset-17 form)"
        mode = _attr(node, "mode", b"constant")
        if (mode.decode() if isinstance(mode, bytes) else mode) == "wrap":
            return "mode 'wrap' has no opset-17 form"
        return None
    if op == "Cast" and version >= 19:
        _drop_attrs(node, {"saturate"})  # only affects float8 targets
        return None
    if op == "Resize" and version >= 18:
        if int(_attr(node, "antialias", 0)) != 0:
            return "antialiased resizing has no opset-17 form"
        if len(node.input) > 4 or _attr(node, "axes") is not None:
            return "resizing selected axes has no opset-17 form"
        policy = _attr(node, "keep_aspect_ratio_policy", b"stretch")
        if (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
            return "keep_aspect_ratio_policy has no opset-17 form"
        _drop_attrs(node, {"antialias", "keep_aspect_ratio_policy"})
        return None
    return None


def _fix_reshape(node: Any, constants: dict[str, NDArray[Any]]) -> str | None:
    # onnx2torch implements Reshape only with allowzero=0; the two agree unless the target
    # shape holds a 0.
    if node.op_type != "Reshape" or int(_attr(node, "allowzero", 0)) == 0:
        return None
    shape = constants.get(node.input[1]) if len(node.input) > 1 else None
    if shape is None:
        return "allowzero=1 with a shape computed at run time"
    if (np.asarray(shape) == 0).any():
        return f"allowzero=1 with a zero in the target shape {np.asarray(shape).tolist()}"
    _drop_attrs(node, {"allowzero"})
    return None


def prepare_graph(proto: Any, source: str = "model") -> Any:
    """Make an ONNX model convertible by onnx2torch, or say exactly why it is not.

    Parameters
    ----------
    proto : onnx.ModelProto
        Modified in place (local functions inlined, opset 18+ nodes lowered to opset 17).
    source : str
        How the model is named in error messages.

    Returns
    -------
    onnx.ModelProto
    """
    import onnx
    from onnx import defs

    onnx2torch = import_onnx2torch()
    registry = importlib.import_module("onnx2torch.node_converters.registry")
    if proto.functions:
        import onnx.inliner

        proto = onnx.inliner.inline_local_functions(proto)
    opsets = {imp.domain or "": imp.version for imp in proto.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx", TARGET_OPSET))
    graph = proto.graph
    constants = _constants(graph)
    problems = []

    def since(op: str, version: int, domain: str) -> int:
        try:
            return int(defs.get_schema(op, version, domain).since_version)
        except Exception:  # unknown operator: leave it to the converter check below
            return version

    lowered = opset > TARGET_OPSET and all(
        d in ("", "ai.onnx") for d in {n.domain for n in graph.node}
    )
    for node in graph.node:
        domain = node.domain or ""
        version = since(node.op_type, opsets.get(domain, opset), domain)
        why = _fix_reshape(node, constants)
        if why is None and lowered:
            why = _lower_node(node, version, constants)
        if why is not None:
            problems.append(f"{_describe(node, version)}: {why}")
    if lowered:
        for imp in proto.opset_import:
            if imp.domain in ("", "ai.onnx"):
                imp.version = TARGET_OPSET
        opset = TARGET_OPSET
    for node in graph.node:
        domain = node.domain or ""
        version = opsets.get(domain, opset) if domain else opset
        try:
            registry.get_converter(node.op_type, version, domain or defs.ONNX_DOMAIN)
        except NotImplementedError:
            problems.append(
                f"{_describe(node, since(node.op_type, version, domain))}: onnx2torch "
                f"{getattr(onnx2torch, '__version__', '')} has no converter for it".replace(
                    "  ", " "
                )
            )
    if problems:
        raise SaliencyError(
            f"{source}: cannot build a differentiable torch graph for exact gradients; "
            + "; ".join(problems[:10])
            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            + ". Use saliency='fd' (scores only) for this model.",
            params=("saliency",),
        )
    return proto


def convert_onnx(path: str | Path) -> Any:
    """Load an ONNX file (with its external data) as an eval-mode ``torch.nn.Module``.

    The module takes the model's input in the model's own layout and returns its outputs in
    graph order (a tuple when there are several). Parameters are frozen (``requires_grad`` off):
    only gradients with respect to the input are wanted, which saves the weight gradients.
    """
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise SaliencyError(f"{path}: cannot load the ONNX model for conversion ({exc})") from exc
    proto = prepare_graph(proto, str(path))
    onnx2torch = import_onnx2torch()
    try:
        module = onnx2torch.convert(proto)
    except SaliencyError:
        raise
    except Exception as exc:
        raise SaliencyError(
            f"{path}: onnx2torch could not convert the model ({type(exc).__name__}: {exc}); "
            "use saliency='fd' (scores only) for this model",
            params=("saliency",),
        ) from exc
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
