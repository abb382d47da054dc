"""LRP class maps against exact Input x Gradient: time per image on the same model, same run.

Seconds per image for the maps of all five classes of the reference DenseNet121, in one
process, through the adapters as ``--saliency lrp`` and ``--saliency gradient`` run them (given
the ONNX Runtime logits as the pipeline gives them):

* on the DenseNet121 of :mod:`informer_audit.densenet` loaded from the shared checkpoint
  (``--torch-weights``), and
* on the ONNX file converted by onnx2torch (the default route; the conversion is done before
  timing).

Rounds interleave the two adapters (lrp, gradient, lrp, gradient, ...); every run waits for idle
CPUs and is redone once if other processes used them (``_quiet.py``). The figure is the median
over rounds of the paired ratio lrp / gradient, on the checkpoint's DenseNet121. The passes each
adapter makes are counted and printed, and the maps of the two routes compared (cosine per map),
with the relevance each map conserves. With zennit installed (``pip install --no-deps zennit``),
zennit's own EpsilonPlusFlat (no canonizer: zennit has none for DenseNet) is timed once too, for
reference.

    python benchmarks/lrp_cost.py [--images 8] [--batch-size 8] [--rounds 3]

Last line: ``RESULT lrp_cost <ratio> x target <= 2.00 PASS|FAIL``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from _quiet import measure

from informer_audit.images import find_images, load_image
from informer_audit.model import OnnxClassifier
from informer_audit.saliency import get_adapter

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "models"
TARGET = 2.0


@contextmanager
def counting(torch: Any, net: Any) -> Iterator[dict[str, int]]:
    """Count, while inside: forward passes of ``net``, backward passes (``autograd.grad``),
    LRP forward passes and backward sweeps, and linear-layer evaluations within LRP."""
    from informer_audit.adapters import lrp

    counts = {"forward": 0, "backward": 0, "lrp": 0, "layers": 0}
    grad, relevance, call = torch.autograd.grad, lrp.RelevanceGraph.relevance, lrp._Linear.__call__

    def counted_grad(*a: Any, **kw: Any) -> Any:
        counts["backward"] += 1
        return grad(*a, **kw)

    def counted_relevance(self: Any, *a: Any, **kw: Any) -> Any:
        counts["lrp"] += 1
        return relevance(self, *a, **kw)

    def counted_call(self: Any, *a: Any, **kw: Any) -> Any:
        counts["layers"] += 1
        return call(self, *a, **kw)

    def hook(*_: Any) -> None:
        counts["forward"] += 1

    handle = net.register_forward_pre_hook(hook)
    torch.autograd.grad = counted_grad
    lrp.RelevanceGraph.relevance = counted_relevance  # type: ignore[method-assign]
    lrp._Linear.__call__ = counted_call  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        handle.remove()
        torch.autograd.grad = grad
        lrp.RelevanceGraph.relevance = relevance  # type: ignore[method-assign]
        lrp._Linear.__call__ = call  # type: ignore[method-assign]


def zennit_seconds(torch: Any, net: Any, x: np.ndarray, k: int, batch: int) -> float | None:
    """zennit 0.5.1's EpsilonPlusFlat on ``net``: one forward, K backward passes per batch."""
    import time

    from informer_audit.adapters.lrp import import_zennit
    from informer_audit.errors import SaliencyError

    try:
        import_zennit()
    except SaliencyError:
        return None
    from zennit.composites import EpsilonPlusFlat

    start = time.perf_counter()
    with EpsilonPlusFlat().context(net) as hooked:
        for s in range(0, x.shape[0], batch):
            xb = torch.from_numpy(x[s : s + batch]).requires_grad_(True)
            z = hooked(xb)
            for j in range(k):
                seed = torch.zeros_like(z)
                seed[:, j] = z[:, j].detach()
                torch.autograd.grad(z, xb, seed, retain_graph=j < k - 1)
    return (time.perf_counter() - start) / x.shape[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=SHARED_MODELS / "densenet121-nih5-128.onnx")
    ap.add_argument("--card", type=Path, default=SHARED_MODELS / "densenet121-nih5-128.card.json")
    ap.add_argument("--weights", type=Path, default=SHARED_MODELS / "densenet121-nih5-128.pt")
    ap.add_argument("--image-dir", type=Path, default=ROOT / "examples" / "nih-cxr14" / "audit")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--composite", default="epsilon-plus-flat")
    args = ap.parse_args()

    try:
        import torch
    except ImportError as exc:
        print(f"needs torch: {exc}", file=sys.stderr)
        return 2
    from informer_audit.adapters.onnx_torch import convert_onnx
    from informer_audit.checkpoints import torch_module_for

    for path in (args.model, args.weights):
        if not path.is_file():
            print(f"missing {path} (the shared reference model)", file=sys.stderr)
            return 2
    model = OnnxClassifier(args.model, card_file=args.card, device="cpu")
    k = len(model.card.class_names)
    net = torch_module_for(model, args.weights, "densenet121")
    converted = convert_onnx(args.model)
    paths = find_images(args.image_dir)[: args.images]
    x = model.preprocess([load_image(p) for p in paths])
    logits = model.logits(x)
    n, batch = x.shape[0], args.batch_size

    lrp_kw = {"composite": args.composite, "batch_size": batch}
    adapters = {
        "lrp, checkpoint": get_adapter("lrp", module=net, **lrp_kw),
        "gradient, checkpoint": get_adapter("gradient", module=net, batch_size=batch),
        "lrp, onnx2torch": get_adapter("lrp", module=converted, **lrp_kw),
        "gradient, onnx2torch": get_adapter("gradient", module=converted, batch_size=batch),
    }
    runs: dict[str, Callable[[], np.ndarray]] = {
        name: (lambda a=a: a.explain(model, x, logits=logits)) for name, a in adapters.items()
    }
    maps = {name: fn() for name, fn in runs.items()}  # warm-up; LRP reads each graph once here
    with counting(torch, net) as lrp_counts:
        runs["lrp, checkpoint"]()
    with counting(torch, net) as grad_counts:
        runs["gradient, checkpoint"]()

    times: dict[str, list[float]] = {name: [] for name in runs}
    shares = []
    for _ in range(args.rounds):
        for name, fn in runs.items():
            wall, share, _ = measure(fn)
            times[name].append(wall)
            shares.append(share)
    ratios = {
        route: [
            a / b for a, b in zip(times[f"lrp, {route}"], times[f"gradient, {route}"], strict=True)
        ]
        for route in ("checkpoint", "onnx2torch")
    }

    print(
        f"model     {args.model.name} + {args.weights.name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"input     {tuple(x.shape[1:])}, {n} images, batch {batch}, {k} classes, "
        f"composite {args.composite}, {args.rounds} interleaved rounds"
    )
    batches = -(-n // batch)
    print(
        f"passes    gradient: {grad_counts['forward'] / batches:g} forward + "
        f"{grad_counts['backward'] / batches:g} backward passes per batch"
    )
    graph = next(iter(adapters["lrp, checkpoint"]._graphs.values()))[1]  # type: ignore[attr-defined]
    layers = len(graph.linear_layers())
    print(
        f"          lrp: {lrp_counts['lrp'] / batches:g} forward pass + 1 backward sweep for all "
        f"{k} classes per batch; {lrp_counts['layers'] / batches:g} evaluations of its {layers} "
        "linear layers per forward pass (each layer and its rule's modified layer); the sweep "
        f"is {lrp_counts['backward'] / batches:g} per-operation transposes, each for all {k} "
        "classes at once"
    )
    for name, ts in times.items():
        print(f"  {name:22s} {statistics.median(ts) / n:7.3f} s/image (median)")
    for route, rs in ratios.items():
        print(f"  ratio lrp / gradient, {route:10s} " + ", ".join(f"{r:.2f}" for r in rs))
    a, b = maps["lrp, checkpoint"], maps["lrp, onnx2torch"]
    fa, fb = a.reshape(n * k, -1), b.reshape(n * k, -1)
    cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
    print(f"maps      lrp checkpoint vs onnx2torch: min cosine {cos.min():.7f}")
    conservation = adapters["lrp, checkpoint"].last_conservation  # type: ignore[attr-defined]
    print("conservation (sum of the map / explained logit):")
    for line in conservation.summary(model.card.class_names).splitlines():
        print(f"  {line}")
    zennit = zennit_seconds(torch, net, x, k, batch)
    if zennit is not None:
        ours = statistics.median(times["lrp, checkpoint"]) / n
        print(
            f"zennit    EpsilonPlusFlat hooks (uncanonized), one run: {zennit:.3f} s/image "
            f"({zennit / ours:.1f}x this adapter)"
        )
    print(f"machine   other processes used at most {max(shares):.0%} of the CPUs in a kept run")
    ratio = statistics.median(ratios["checkpoint"])
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"RESULT lrp_cost {ratio:.2f} x target <= {TARGET:.2f} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
