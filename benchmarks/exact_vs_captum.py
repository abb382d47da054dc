"""Exact Input x Gradient for all classes: the gradient adapter vs Captum, side by side.

Seconds per image for the maps of all five classes of the reference DenseNet121, on the same torch
model, in one process:

* ``adapter``: :class:`~informer_audit.adapters.gradient.ExactGradientIxG` with the DenseNet121
  of :mod:`informer_audit.densenet` loaded from the shared checkpoint (one forward pass, K
  backward passes reusing its graph), given the ONNX Runtime logits as the pipeline gives them;
* ``captum``: ``captum.attr.InputXGradient(model).attribute(x, target=k)`` for each class k
  (what a Captum user writes: one forward and one backward pass per class);
* the same two on the ONNX file converted by onnx2torch (what ``--saliency gradient`` runs).

Runs alternate, each waits for idle CPUs (and is redone once if other processes used them), and
the median of each is reported; the
maps are compared too (cosine per map). Needs torch, onnx2torch and captum
(``pip install "informer-audit[torch,bench]"``).

    python benchmarks/exact_vs_captum.py [--images 8] [--batch-size 8] [--repeats 3]

Last line: ``RESULT exact_vs_captum <ratio> x target <= 0.60 PASS|FAIL`` (adapter / Captum on the
checkpoint's DenseNet121).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _quiet import measure

from informer_audit.images import find_images, load_image
from informer_audit.model import OnnxClassifier
from informer_audit.saliency import get_adapter

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "models"
TARGET = 0.60


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=SHARED_MODELS / "densenet121-nih5-128.onnx")
    ap.add_argument("--card", type=Path, default=SHARED_MODELS / "densenet121-nih5-128.card.json")
    ap.add_argument("--weights", type=Path, default=SHARED_MODELS / "densenet121-nih5-128.pt")
    ap.add_argument("--image-dir", type=Path, default=ROOT / "examples" / "nih-cxr14" / "audit")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fd-patch-size", type=int, default=16)
    args = ap.parse_args()

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
    n = x.shape[0]
    on_plain = get_adapter("gradient", module=net, batch_size=args.batch_size)
    on_converted = get_adapter("gradient", batch_size=args.batch_size)
    on_converted._converted[model.sha256] = (converted, -1)  # time the maps, not the conversion

    def captum(module: torch.nn.Module) -> np.ndarray:
        ixg = InputXGradient(module)
        out = np.empty((n, k, *x.shape[1:]))
        for s in range(0, n, args.batch_size):
            xb = torch.from_numpy(x[s : s + args.batch_size])
            for j in range(k):
                attr = ixg.attribute(xb.clone().requires_grad_(True), target=j)
                out[s : s + args.batch_size, j] = attr.detach().double().numpy()
        return out

    runs: dict[str, Callable[[], np.ndarray]] = {
        "adapter, DenseNet121 checkpoint": lambda: on_plain.explain(model, x, logits=logits),
        "captum,  DenseNet121 checkpoint": lambda: captum(net),
        "adapter, ONNX via onnx2torch": lambda: on_converted.explain(model, x, logits=logits),
        "captum,  ONNX via onnx2torch": lambda: captum(converted),
    }
    maps = {name: fn() for name, fn in runs.items()}  # warm-up (oneDNN builds its kernels)
    # torch's threads slow down many times over when another process takes a core: every run
    # waits for idle CPUs and is redone once if others used them (see _quiet.py).
    times: dict[str, list[float]] = {name: [] for name in runs}
    shares = []
    for _ in range(args.repeats):
        for name, fn in runs.items():
            wall, share, _ = measure(fn)
            times[name].append(wall)
            shares.append(share)
    per_image = {name: statistics.median(ts) / n for name, ts in times.items()}

    print(
        f"model     {args.model.name} + {args.weights.name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"input     {tuple(x.shape[1:])}, {n} images, batch {args.batch_size}, "
        f"{k} classes, median of {args.repeats}"
    )
    for name, sec in per_image.items():
        print(f"  {name:34s} {sec:7.3f} s/image")
    names = list(runs)
    for a, b in ((names[0], names[1]), (names[2], names[3])):
        ma, mb = maps[a].reshape(n * k, -1), maps[b].reshape(n * k, -1)
        cos = (ma * mb).sum(1) / np.linalg.norm(ma, axis=1) / np.linalg.norm(mb, axis=1)
        print(f"  maps {a.split(',')[1].strip():28s} adapter vs captum: min cosine {cos.min():.6f}")
    print(f"machine   other processes used at most {max(shares):.0%} of the CPUs in a kept run")
    # The FD adapter estimates exactly the patch sums of these maps (METHOD.md section 2).
    patch = args.fd_patch_size
    fd = get_adapter("fd", patch_size=patch).explain(model, x)
    exact = maps[names[0]]
    h, w = exact.shape[-2:]
    if h % patch == 0 and w % patch == 0:
        summed = exact.reshape(n, k, -1, h // patch, patch, w // patch, patch).sum(axis=(2, 4, 6))
        a, b = summed.reshape(n * k, -1), fd.reshape(n * k, -1)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        print(
            f"fd        {patch} px patches vs patch-summed exact maps: min cosine {cos.min():.4f}"
        )
    ratio = per_image[names[0]] / per_image[names[1]]
    ratio_conv = per_image[names[2]] / per_image[names[3]]
    print(f"ratio     adapter / captum: {ratio:.3f} (checkpoint), {ratio_conv:.3f} (onnx2torch)")
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"RESULT exact_vs_captum {ratio:.3f} x target <= {TARGET:.2f} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
