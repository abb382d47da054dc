"""What the out-of-sample estimate adds to ``calibrate``'s time, side by side in one process.

On the NIH ``val`` split with the reference DenseNet121, each round times ``calibrate``
without the estimate (scoring every image: saliency maps, d, the fit) and then, on the very
scores it returned, the estimate ``calibrate`` adds (:func:`informer_audit.crossfit.
calibration_evidence`: repeated cross-fitting, Youden bootstrap, information tests). The
estimate works on the scores alone: the forward-pass count printed beside each time does not
move during it. The figure is the median over rounds of ``(calibrate + estimate) / calibrate``.

    python benchmarks/crossfit_overhead.py [--data DIR] [--model ONNX --card JSON]
        [--method informer|learned|...] [--rounds 2] [--device auto|cpu|cuda]

``--data`` defaults to ``../shared/data/nih-cxr14-621`` beside the repository (its
``labels.csv`` with the ``split`` column); ``--model`` to the bundled example's model. Last
line: ``RESULT crossfit_overhead <ratio> x target <= 1.10 PASS|FAIL``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from informer_audit.audit import Auditor, calibrate
from informer_audit.crossfit import calibration_evidence
from informer_audit.labels import read_labels
from informer_audit.model import OnnxClassifier
from informer_audit.scorers import build_scorer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nih-cxr14"
TARGET = 1.10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/nih-cxr14-621")
    ap.add_argument("--model", type=Path, default=EXAMPLE / "model" / "densenet121-nih5-128.onnx")
    ap.add_argument(
        "--card", type=Path, default=EXAMPLE / "model" / "densenet121-nih5-128.card.json"
    )
    ap.add_argument("--method", default="informer")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()
    labels_csv = args.data / "labels.csv"
    if not labels_csv.is_file():
        print(f"no labelled data at {args.data} (expected labels.csv and images/); give --data")
        return 2

    model = OnnxClassifier(args.model, card_file=args.card, device=args.device)
    classes = list(model.card.class_names)
    labels = read_labels(labels_csv, args.data, classes, split="val")
    scorer = build_scorer(args.method)
    print(f"model    {args.model.name} ({model.device_note}); method {args.method}")
    print(f"images   {len(labels)} labelled val images from {labels_csv}")
    ratios = []
    for r in range(args.rounds):
        auditor = Auditor(model, scorer, classes)
        n0 = model.n_forward
        t = time.perf_counter()
        result = calibrate(auditor, labels)
        t_cal = time.perf_counter() - t
        n1 = model.n_forward
        scores = [res.score for res in result.results]
        probs = [res.probs for res in result.results]
        dist = [res.dist for res in result.results] if scorer.has_maps else None
        t = time.perf_counter()
        evidence = calibration_evidence(
            result.monitor,
            scorer,
            np.stack(scores),
            result.y,
            np.stack(probs),
            None if dist is None else np.stack(dist),
        )
        t_ev = time.perf_counter() - t
        n2 = model.n_forward
        ratios.append((t_cal + t_ev) / t_cal)
        verdicts = [e["verdict"] for e in evidence["out_of_sample"]]
        print(
            f"round {r + 1}  calibrate {t_cal:8.2f} s ({n1 - n0} forward passes)  "
            f"estimate {t_ev:6.2f} s ({n2 - n1} forward passes)  ratio {ratios[-1]:.4f}  "
            f"verdicts {verdicts}"
        )
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"RESULT crossfit_overhead {ratio:.4f} x target <= {TARGET:.2f} {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
