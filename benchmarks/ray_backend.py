"""The Ray backend's time per image against the local backend's, at the same total CPUs.

On the NIH ``test`` images with the reference DenseNet121 (INFORMER with finite differences,
16 px patches), each round scores the same images three ways, in an order that alternates
between rounds: the local backend (one process, ONNX Runtime on all CPUs), Ray with one worker
holding all CPUs, and Ray with one worker per CPU. One Ray cluster serves the whole run; its
start-up, and each configuration's worker start-up (building the ONNX Runtime sessions), are
timed and printed apart: the figure is the time per image once the workers are up. Beside each
time the forward passes each side issued (the work, which noise cannot change); every side's
scores are checked to be identical. The figure is the larger of the two Ray configurations'
medians of paired per-round ratios ``Ray time / local time``.

    python benchmarks/ray_backend.py [--data DIR] [--images 24] [--rounds 3]
        [--patch-size 16] [--cpus N] [--gpus-per-worker 0] [--ray-address ADDRESS]

``--data`` defaults to ``../shared/data/nih-cxr14-621`` beside the repository; ``--cpus`` to
this machine's CPUs. With ``--gpus-per-worker 1`` (and a GPU) the Ray side runs ONNX Runtime
on CUDA and is compared with the local backend on CUDA. Last line:
``RESULT ray_backend <ratio> x target <= 1.15 PASS|FAIL``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from _paired import Spread, result_line

from informer_audit.audit import Auditor
from informer_audit.backends import RayAuditor, RayCluster, RaySettings
from informer_audit.model import OnnxClassifier
from informer_audit.scorers import build_scorer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nih-cxr14" / "model"
TARGET = 1.15


def test_images(data: Path, n: int) -> list[tuple[str, Path]]:
    with (data / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("split") == "test"]
    return [(r["path"], data / r["path"]) for r in rows[:n]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/nih-cxr14-621")
    ap.add_argument("--model", type=Path, default=EXAMPLE / "densenet121-nih5-128.onnx")
    ap.add_argument("--card", type=Path, default=EXAMPLE / "densenet121-nih5-128.card.json")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--patch-size", type=int, default=16)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--ray-address", default=None)
    args = ap.parse_args()
    if not (args.data / "labels.csv").is_file():
        print(f"no data at {args.data} (expected labels.csv and images/); give --data")
        return 2
    items = test_images(args.data, args.images)
    gpu = args.gpus_per_worker > 0
    device = "cuda" if gpu else "cpu"
    model = OnnxClassifier(args.model, card_file=args.card, device=device, threads=args.cpus)
    scorer = build_scorer(
        "informer", saliency="fd", saliency_params={"patch_size": args.patch_size}
    )
    local = Auditor(model, scorer)
    print(f"machine  {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"model    {args.model.name} ({model.device_note}); fd {args.patch_size} px patches")
    print(f"images   {len(items)} NIH test images; {args.rounds} interleaved rounds")

    t0 = time.perf_counter()
    with RayCluster(RaySettings(address=args.ray_address)) as cluster:
        print(f"cluster  {cluster.description}: up in {time.perf_counter() - t0:.2f} s")
        if gpu:
            configs = {"ray_1gpu": RaySettings(workers=1, cpus_per_worker=1, gpus_per_worker=1)}
        else:
            configs = {
                f"ray_1x{args.cpus}": RaySettings(workers=1, cpus_per_worker=args.cpus),
                f"ray_{args.cpus}x1": RaySettings(workers=args.cpus, cpus_per_worker=1),
            }
        sides = ["local", *configs]
        seconds: dict[str, list[float]] = {s: [] for s in sides}
        passes: dict[str, list[int]] = {s: [] for s in sides}
        starts: dict[str, list[float]] = {s: [] for s in configs}
        scores: dict[str, Any] = {}
        for r in range(args.rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                if side == "local":
                    before = model.n_forward
                    t = time.perf_counter()
                    results = list(local.run(items))
                    seconds[side].append(time.perf_counter() - t)
                    passes[side].append(model.n_forward - before)
                else:
                    remote = RayAuditor.from_auditor(local, cluster, configs[side])
                    t = time.perf_counter()
                    remote.start()
                    starts[side].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    results = list(remote.run(items))
                    seconds[side].append(time.perf_counter() - t)
                    passes[side].append(sum(int(i["n_forward"]) for i in remote.worker_info()))
                    remote.close()
                failed = [x.key for x in results if not x.ok]
                if failed:
                    print(f"{side}: {len(failed)} image(s) failed, e.g. {failed[0]}")
                    return 1
                got = np.stack([x.score for x in results])
                scores.setdefault(side, got)
                if not np.array_equal(scores[side], got) or not np.array_equal(
                    scores["local"], got
                ):
                    print(f"{side}: scores differ from the local backend's")
                    return 1
                print(
                    f"round {r + 1} {side:>9}: {seconds[side][-1]:7.2f} s "
                    f"({seconds[side][-1] / len(items):.3f} s/image, "
                    f"{passes[side][-1]} forward passes)"
                    + (f"; workers up in {starts[side][-1]:.2f} s" if side in starts else "")
                )
    print("identical scores on every side: yes")
    worst = 0.0
    for side in configs:
        spread = Spread.of([a / b for a, b in zip(seconds[side], seconds["local"], strict=True)])
        print(
            f"{side} / local time per image: {spread.text()}; forward passes per image "
            f"{passes[side][0] / len(items):.0f} vs {passes['local'][0] / len(items):.0f}; "
            f"worker start-up median {np.median(starts[side]):.2f} s (not counted)"
        )
        worst = max(worst, spread.median)
    print(result_line("ray_backend", worst, "x", "<=", TARGET))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
