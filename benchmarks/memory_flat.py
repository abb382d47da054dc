"""Peak memory of ``informer-audit flag`` does not grow with the size of the audited folder.

Builds a tiny ONNX classifier (a linear model with its card in the metadata), calibrates a
monitor on a few labelled images, then audits folders of 200 and of 2,000 small PNGs with
``informer-audit flag`` in fresh processes, and compares the peak resident set size (RSS) of the
two runs. Each run is measured by a fresh wrapper process that starts the command and reads
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it ends, so nothing else is counted. The fd
adapter with one patch per image keeps the runs short (about a minute on 2 cores in all).

    python benchmarks/memory_flat.py [--small 200] [--large 2000] [--repeats 2] [--keep DIR]

Last line: ``RESULT memory_flat <ratio> x target <= 1.10 PASS|FAIL`` (ratio: peak RSS of the
large folder over that of the small one; each the lowest of ``--repeats`` runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

TARGET = 1.10
SIZE = 16  # model input, pixels
CLASSES = ["A", "B", "C"]

# A wrapper process: runs the command given as JSON, prints its children's peak RSS in bytes.
WRAPPER = """
import json, resource, subprocess, sys
result = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": result.returncode, "peak": peak * (1 if sys.platform == "darwin" else 1024),
                  "stderr": result.stderr[-2000:]}))
"""


def build_model(path: Path) -> Path:
    """Flatten -> MatMul -> Tanh -> MatMul + bias: a (N, 3, 16, 16) -> (N, 3) classifier."""
    rng = np.random.default_rng(0)
    d, hidden = 3 * SIZE * SIZE, 5
    inits = [
        numpy_helper.from_array(rng.normal(0, d**-0.5, (d, hidden)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.normal(0, 0.5, (hidden, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.1, 3).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["th"]),
        helper.make_node("MatMul", ["th", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    card = {
        "class_names": CLASSES,
        "image_size": [SIZE, SIZE],
        "channels": 3,
        "layout": "NCHW",
        "scale": 255,
        "mean": [0.5],
        "std": [0.25],
        "output": "logits",
    }
    entry = model.metadata_props.add()
    entry.key, entry.value = "informer_audit.model_card", json.dumps(card)
    onnx.save(model, str(path))
    return path


def write_images(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` distinct 24 x 24 grayscale PNGs (smooth random fields plus noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = Image.fromarray(rng.uniform(0, 255, (4, 4)).astype(np.uint8)).resize((24, 24))
        arr = np.clip(np.asarray(base, dtype=float) + rng.normal(0, 20, (24, 24)), 0, 255)
        path = folder / f"img_{i:05d}.png"
        Image.fromarray(arr.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "informer_audit.cli", *map(str, args)]


def measure(command: list[str]) -> int:
    """Peak RSS (bytes) of ``command``, run by a fresh wrapper process."""
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, json.dumps(command)],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(done.stdout)
    if report["rc"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({report['rc']}):\n{report['stderr']}")
    return int(report["peak"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--large", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="Work in this folder and keep it (default: temp).")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="memory-flat-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = build_model(work / "tiny.onnx")
        val = write_images(work / "val", 24, seed=1)
        rng = np.random.default_rng(2)
        with (work / "val" / "labels.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", *CLASSES])
            for p in val:
                w.writerow([p.name, *rng.integers(0, 2, len(CLASSES))])
        common = ("--device", "cpu", "--threads", "1")
        monitor = work / "monitor.json"
        subprocess.run(
            cli("calibrate", model, "--images", work / "val", "--labels",
                work / "val" / "labels.csv", "-o", monitor, "--patch-size", SIZE, *common),
            check=True,
            capture_output=True,
        )  # fmt: skip
        folders = {}
        for n, seed in ((args.small, 3), (args.large, 4)):
            folders[n] = work / f"audit_{n}"
            write_images(folders[n], n, seed=seed)
        peaks: dict[int, list[int]] = {args.small: [], args.large: []}
        seconds: dict[int, list[float]] = {args.small: [], args.large: []}
        for _ in range(args.repeats):
            for n, folder in folders.items():  # alternate, so machine noise hits both alike
                start = time.perf_counter()
                peaks[n].append(
                    measure(
                        cli("flag", model, "--monitor", monitor, "--images", folder,
                            "-o", work / f"flags_{n}.csv", *common)
                    )
                )  # fmt: skip
                seconds[n].append(time.perf_counter() - start)
                rows = sum(1 for _ in (work / f"flags_{n}.csv").open()) - 1
                if rows != n:
                    raise RuntimeError(f"flags_{n}.csv has {rows} rows, expected {n}")
    small, large = min(peaks[args.small]), min(peaks[args.large])
    for n in (args.small, args.large):
        runs = ", ".join(f"{p / 2**20:.1f}" for p in peaks[n])
        print(
            f"{n:>6} images: peak RSS {min(peaks[n]) / 2**20:.1f} MiB (runs: {runs}); "
            f"{min(seconds[n]):.1f} s per run"
        )
    ratio = large / small
    print(f"ratio {args.large}/{args.small}: {ratio:.3f}")
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"RESULT memory_flat {ratio:.3f} x target <= {TARGET:.2f} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
