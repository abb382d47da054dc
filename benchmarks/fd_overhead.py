"""FD saliency vs the bare ONNX Runtime forward passes it issues, side by side in one process.

For the reference DenseNet121 (bundled in examples/), time per image of the finite-difference
adapter, and of the same number of bare ``session.run`` calls at the same batch size on the same
session. The adapter's overhead (building perturbed batches, accumulating maps) is the ratio.
Runs alternate (FD, bare, FD, bare, ...) and the median of each is reported, so machine noise
hits both sides alike.

    python benchmarks/fd_overhead.py [--images 4] [--patch-size 16] [--batch-size 32]
        [--repeats 3] [--device auto|cpu|cuda]

Last line: ``RESULT fd_overhead <ratio> x target <= 1.10 PASS|FAIL``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from informer_audit.adapters.fd import FiniteDifferenceIxG
from informer_audit.images import find_images, load_image
from informer_audit.model import OnnxClassifier

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nih-cxr14"
TARGET = 1.10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=EXAMPLE / "model" / "densenet121-nih5-128.onnx")
    ap.add_argument(
        "--card", type=Path, default=EXAMPLE / "model" / "densenet121-nih5-128.card.json"
    )
    ap.add_argument("--image-dir", type=Path, default=EXAMPLE / "audit")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--patch-size", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()

    model = OnnxClassifier(args.model, card_file=args.card, device=args.device)
    paths = find_images(args.image_dir)[: args.images]
    x = model.preprocess([load_image(p) for p in paths])
    fd = FiniteDifferenceIxG(patch_size=args.patch_size, batch_size=args.batch_size)
    n_img = x.shape[0]
    passes = n_img * fd.forward_passes(*x.shape[2:])
    batch_sizes = [min(args.batch_size, passes - s) for s in range(0, passes, args.batch_size)]
    # Bare passes: the same batch sizes, real images, straight through the same session.
    session, name, out = model._session, model.input.name, model.output.name
    bare_inputs = {b: np.ascontiguousarray(np.resize(x, (b, *x.shape[1:]))) for b in batch_sizes}

    def run_fd() -> float:
        t = time.perf_counter()
        fd.explain(model, x)
        return time.perf_counter() - t

    def run_bare() -> float:
        t = time.perf_counter()
        for b in batch_sizes:
            session.run([out], {name: bare_inputs[b]})
        return time.perf_counter() - t

    run_fd(), run_bare()  # warm-up: ORT allocates its arenas on the first runs
    fd_times, bare_times = [], []
    for _ in range(args.repeats):
        fd_times.append(run_fd())
        bare_times.append(run_bare())
    t_fd, t_bare = statistics.median(fd_times), statistics.median(bare_times)
    ratio = t_fd / t_bare
    print(f"model        {args.model.name} ({model.device_note})")
    print(
        f"input        {tuple(x.shape[1:])}, {n_img} images, patch {args.patch_size} px, "
        f"{fd.forward_passes(*x.shape[2:])} forward passes per image, batch {args.batch_size}"
    )
    print(
        f"fd saliency  {t_fd / n_img:.3f} s/image  (runs: "
        + ", ".join(f"{t / n_img:.3f}" for t in fd_times)
        + ")"
    )
    print(
        f"bare ORT     {t_bare / n_img:.3f} s/image  (runs: "
        + ", ".join(f"{t / n_img:.3f}" for t in bare_times)
        + ")"
    )
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"RESULT fd_overhead {ratio:.3f} x target <= {TARGET:.2f} {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
