"""The batch size chosen for this machine against the fixed default, and what the choice costs.

On the bundled example (the reference DenseNet121 at 128 px, its audit images, FD saliency with
its 32 px patches), in one process:

1. The probe (:func:`informer_audit.batchsize.choose_batch_size`, cache off): ``--probes``
   times, each on a fresh ONNX Runtime session as a first run gets it; its wall time, the sizes
   it tried and its choice are printed.
2. Time per image of the FD adapter at the first probe's choice and at the fixed default
   (``--default``, 32: the CLI's former default), interleaved over ``--rounds`` rounds on one
   session (``_paired.py``); the forward passes each side issues are counted and printed. Many
   short rounds (4 images, about 1 s a run) pair better than a few long ones: the machine's
   speed drifts within seconds, and the difference sought is a few percent.
3. The probe's cost as a share of a 140-image calibration, priced in the same run at the FD
   adapter's time per image (the maps only: calibrate does a little more, so the share is an
   upper bound).

    python benchmarks/batch_choice.py [--images 4] [--rounds 15] [--probes 3] [--device cpu]

Last line: ``RESULT batch_choice <ratio> x target <= 1.00 PASS|FAIL``: the median over rounds of
the paired ratio (time per image at the chosen size) / (at the default). The exit code is 1 when
that fails or when the probe costs 3% or more of the calibration.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from _paired import Spread, describe_machine, interleave, result_line

from informer_audit.adapters.fd import FiniteDifferenceIxG
from informer_audit.batchsize import choose_batch_size
from informer_audit.images import find_images, load_image
from informer_audit.model import OnnxClassifier

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nih-cxr14"
TARGET = 1.00
PROBE_SHARE = 0.03
CALIBRATION_IMAGES = 140


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=EXAMPLE / "model" / "densenet121-nih5-128.onnx")
    ap.add_argument(
        "--card", type=Path, default=EXAMPLE / "model" / "densenet121-nih5-128.card.json"
    )
    ap.add_argument("--image-dir", type=Path, default=EXAMPLE / "audit")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--patch-size", type=int, default=32)
    ap.add_argument("--default", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3, help="runs per side per round; fastest kept")
    ap.add_argument("--probes", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()
    print(describe_machine(), flush=True)

    def session() -> OnnxClassifier:
        return OnnxClassifier(args.model, card_file=args.card, device=args.device)

    probes = [choose_batch_size(session(), use_cache=False) for _ in range(args.probes)]
    model = session()
    chosen = probes[0].size
    print(f"model        {args.model.name} ({model.device_note}, providers {model.providers})")
    for i, p in enumerate(probes, 1):
        tried = ", ".join(f"{b}: {t * 1e3:.2f}" for b, t in sorted(p.seconds_per_image.items()))
        print(f"probe {i}      {p.describe()}; ms per image {tried}")
    costs = sorted(p.probe_seconds or 0.0 for p in probes)
    probe_cost = float(statistics.median(costs))

    x = model.preprocess([load_image(p) for p in find_images(args.image_dir)[: args.images]])
    n = x.shape[0]
    sides = {
        f"chosen {chosen}": FiniteDifferenceIxG(patch_size=args.patch_size, batch_size=chosen),
        f"default {args.default}": FiniteDifferenceIxG(
            patch_size=args.patch_size, batch_size=args.default
        ),
    }
    passes = {}
    for name, fd in sides.items():  # warm-up, and the passes each side issues
        before = model.n_forward
        fd.explain(model, x)
        passes[name] = model.n_forward - before
    print(
        f"input        {tuple(x.shape[1:])}, {n} images, FD {args.patch_size} px patches; "
        + "; ".join(f"{name}: {p} forward passes ({p // n}/image)" for name, p in passes.items())
    )
    a, b = sides
    if chosen == args.default:
        print(f"same size    the probe chose the default ({chosen}): the two runs are one")
        ratio = Spread.of([1.0])
        per_image = None
    else:
        runs = interleave(
            {name: (lambda fd=fd: fd.explain(model, x)) for name, fd in sides.items()},
            args.rounds,
            repeats=args.repeats,
        )
        for name in sides:
            times = ", ".join(f"{t / n:.3f}" for t in runs.seconds[name])
            print(f"  {name:12s} {runs.median(name) / n:.3f} s/image (median; rounds {times})")
        ratio = Spread.of(runs.ratios(a, b))
        per_image = runs.median(a) / n
        print(f"ratio        chosen / default per round: {ratio.text()}")
        print(
            f"machine      other processes used at most {runs.busiest:.0%} of the CPUs in a "
            "kept run"
        )
    if per_image is None:
        t = interleave({a: lambda: sides[a].explain(model, x)}, 1).seconds[a][0]
        per_image = t / n
    calibration = per_image * CALIBRATION_IMAGES
    share = probe_cost / calibration
    print(
        f"probe cost   {probe_cost:.2f} s (median of {len(probes)} probes: "
        f"{', '.join(f'{c:.2f}' for c in costs)} s) = {share:.1%} of a {CALIBRATION_IMAGES}-image "
        "calibration "
        f"({per_image:.3f} s/image x {CALIBRATION_IMAGES} = {calibration:.1f} s; target < "
        f"{PROBE_SHARE:.0%}: {'PASS' if share < PROBE_SHARE else 'FAIL'})"
    )
    sizes = statistics.multimode(p.size for p in probes)
    print(f"choices      {', '.join(str(p.size) for p in probes)} (most often: {sizes})")
    line = result_line("batch_choice", ratio.median, "x", "<=", TARGET)
    print(line)
    return 0 if line.endswith("PASS") and share < PROBE_SHARE else 1


if __name__ == "__main__":
    sys.exit(main())
