"""Exact Input x Gradient for all classes: the gradient adapter vs Captum, and vs the floor.

Seconds per image for the maps of all five classes of the reference DenseNet121, on the same torch
model, in one process:

* ``adapter``: :class:`~informer_audit.adapters.gradient.ExactGradientIxG` with the DenseNet121
  of :mod:`informer_audit.densenet` loaded from the shared checkpoint (one forward pass, K
  backward passes reusing its graph, input gradients only), given the ONNX Runtime logits as
  the pipeline gives them;
* ``captum``: ``captum.attr.InputXGradient(model).attribute(x, target=k)`` for each class k
  (what a Captum user writes: one forward and one backward pass per class);
* ``floor``: the passes the adapter cannot do without, bare: per batch one forward pass and K
  ``torch.autograd.grad`` calls for the input gradient, nothing else (no check against ONNX
  Runtime, no maps assembled). This is the structural floor of any exact Input x Gradient of K
  classes: the adapter can approach it, not beat it;
* the same three on the ONNX file converted by onnx2torch (what ``--saliency gradient`` runs).

Every side runs once per round over ``--rounds`` interleaved rounds, each time the fastest of
``--repeats`` back-to-back runs (``_paired.py``: the order alternates, each turn waits for idle
CPUs, a disturbed run is redone or outvoted); each comparison is the median of its paired
per-round ratios, printed with their range. The forward
and backward passes each side issues are counted and printed, and the maps compared (cosine per
map). Needs torch, onnx2torch and captum (``pip install "informer-audit[torch,bench]"``).

    python benchmarks/exact_vs_captum.py [--images 8] [--batch-size 8] [--rounds 9] [--repeats 3]

Last line: ``RESULT exact_vs_captum <ratio> x target <= 1.10 PASS|FAIL``: adapter time / floor
time on the checkpoint's DenseNet121, median of paired rounds. Against Captum the adapter can
reach at best floor / captum, which (1 forward + K input-gradient backward passes against K + K)
is about 0.6 here: that ratio is printed beside it, measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from _paired import Spread, describe_machine, interleave, result_line

from informer_audit.images import find_images, load_image
from informer_audit.model import OnnxClassifier
from informer_audit.saliency import get_adapter

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "models"
TARGET = 1.10


@contextmanager
def counting(torch: Any, module: Any) -> Iterator[dict[str, int]]:
    """Count, while inside, forward passes of ``module`` and backward passes (autograd.grad)."""
    counts = {"forward": 0, "backward": 0}
    grad = torch.autograd.grad

    def counted_grad(*a: Any, **kw: Any) -> Any:
        counts["backward"] += 1
        return grad(*a, **kw)

    def hook(*_: Any) -> None:
        counts["forward"] += 1

    handle = module.register_forward_pre_hook(hook)
    torch.autograd.grad = counted_grad
    try:
        yield counts
    finally:
        handle.remove()
        torch.autograd.grad = grad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=SHARED_MODELS / "densenet121-nih5-128.onnx")
    ap.add_argument("--card", type=Path, default=SHARED_MODELS / "densenet121-nih5-128.card.json")
    ap.add_argument("--weights", type=Path, default=SHARED_MODELS / "densenet121-nih5-128.pt")
    ap.add_argument("--image-dir", type=Path, default=ROOT / "examples" / "nih-cxr14" / "audit")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=3, help="runs per side per round; fastest kept")
    ap.add_argument("--fd-patch-size", type=int, default=16)
    args = ap.parse_args()
    print(describe_machine(), flush=True)

    try:
        import torch
        from captum.attr import InputXGradient
    except ImportError as exc:
        print(f"needs torch and captum: {exc}", file=sys.stderr)
        return 2
    from informer_audit.adapters.onnx_torch import convert_onnx
    from informer_audit.densenet import densenet121

    for path in (args.model, args.weights):
        if not path.is_file():
            print(f"missing {path} (the shared reference model)", file=sys.stderr)
            return 2
    model = OnnxClassifier(args.model, card_file=args.card, device="cpu")
    k = len(model.card.class_names)
    net = densenet121(num_classes=k)
    net.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    net.eval()
    converted = convert_onnx(args.model)
    for p in converted.parameters():  # as a Captum user would hold it: a trainable module
        p.requires_grad_(True)

    paths = find_images(args.image_dir)[: args.images]
    x = model.preprocess([load_image(p) for p in paths])
    logits = model.logits(x)
    n, bs = x.shape[0], args.batch_size
    on_plain = get_adapter("gradient", module=net, batch_size=bs)
    on_converted = get_adapter("gradient", batch_size=bs)
    on_converted._converted[model.sha256] = (converted, -1)  # time the maps, not the conversion

    def captum(module: Any) -> np.ndarray:
        ixg = InputXGradient(module)
        out = np.empty((n, k, *x.shape[1:]))
        for s in range(0, n, bs):
            xb = torch.from_numpy(x[s : s + bs])
            for j in range(k):
                attr = ixg.attribute(xb.clone().requires_grad_(True), target=j)
                out[s : s + bs, j] = attr.detach().double().numpy()
        return out

    def floor(module: Any) -> None:
        frozen = [p for p in module.parameters() if p.requires_grad]
        for p in frozen:  # input gradients only, as the adapter computes them
            p.requires_grad_(False)
        try:
            for s in range(0, n, bs):
                xb = torch.from_numpy(x[s : s + bs]).requires_grad_(True)
                z = module(xb)
                for j in range(k):
                    torch.autograd.grad(z[:, j].sum(), xb, retain_graph=j < k - 1)
        finally:
            for p in frozen:
                p.requires_grad_(True)

    routes = {"checkpoint": (net, on_plain), "onnx2torch": (converted, on_converted)}
    sides: dict[str, Callable[[], Any]] = {}
    modules = {}
    for route, (module, adapter) in routes.items():
        sides[f"adapter, {route}"] = lambda a=adapter: a.explain(model, x, logits=logits)
        sides[f"captum, {route}"] = lambda m=module: captum(m)
        sides[f"floor, {route}"] = lambda m=module: floor(m)
        for side in ("adapter", "captum", "floor"):
            modules[f"{side}, {route}"] = module
    passes, maps = {}, {}
    for name, fn in sides.items():  # warm-up (oneDNN builds its kernels), passes, maps
        with counting(torch, modules[name]) as counts:
            maps[name] = fn()
        passes[name] = counts
    runs = interleave(sides, args.rounds, repeats=args.repeats)

    print(
        f"model     {args.model.name} + {args.weights.name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"input     {tuple(x.shape[1:])}, {n} images, batch {bs}, {k} classes, "
        f"{args.rounds} interleaved rounds, best of {args.repeats} runs per side per round"
    )
    batches = -(-n // bs)
    for name in sides:
        per_round = ", ".join(f"{t / n:.3f}" for t in runs.seconds[name])
        c = passes[name]
        print(
            f"  {name:22s} {runs.median(name) / n:7.3f} s/image (median; rounds {per_round}); "
            f"{c['forward'] / batches:g} forward + {c['backward'] / batches:g} backward "
            "passes per batch"
        )
    for route in routes:
        a, b = maps[f"adapter, {route}"], maps[f"captum, {route}"]
        ma, mb = a.reshape(n * k, -1), b.reshape(n * k, -1)
        cos = (ma * mb).sum(1) / np.linalg.norm(ma, axis=1) / np.linalg.norm(mb, axis=1)
        print(f"  maps {route:10s} adapter vs captum: min cosine {cos.min():.6f}")
    print(f"machine   other processes used at most {runs.busiest:.0%} of the CPUs in a kept run")
    # The FD adapter estimates exactly the patch sums of these maps (METHOD.md section 2).
    patch = args.fd_patch_size
    fd = get_adapter("fd", patch_size=patch).explain(model, x)
    exact = maps["adapter, checkpoint"]
    h, w = exact.shape[-2:]
    if h % patch == 0 and w % patch == 0:
        summed = exact.reshape(n, k, -1, h // patch, patch, w // patch, patch).sum(axis=(2, 4, 6))
        fa, fb = summed.reshape(n * k, -1), fd.reshape(n * k, -1)
        cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
        print(
            f"fd        {patch} px patches vs patch-summed exact maps: min cosine {cos.min():.4f}"
        )
    figures = {}
    for route in routes:
        to_floor = Spread.of(runs.ratios(f"adapter, {route}", f"floor, {route}"))
        to_captum = Spread.of(runs.ratios(f"adapter, {route}", f"captum, {route}"))
        best = Spread.of(runs.ratios(f"floor, {route}", f"captum, {route}"))
        figures[route] = to_floor
        print(f"ratio     {route}: adapter / floor {to_floor.text()}")
        print(
            f"          {route}: adapter / captum {to_captum.text()}; floor / captum {best.text()}"
        )
    line = result_line("exact_vs_captum", figures["checkpoint"].median, "x", "<=", TARGET)
    print(line)
    return 0 if line.endswith("PASS") else 1


if __name__ == "__main__":
    sys.exit(main())
