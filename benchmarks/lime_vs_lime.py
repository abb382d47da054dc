"""LIME saliency vs lime's own explainer and vs the bare forward passes, and its convergence in N.

On the reference DenseNet121 (128 px, 5 classes) and real NIH images, in one process:

1. Speed. Seconds per image of the ``lime`` adapter at the batch size the CLI would use (chosen
   for this machine, :mod:`informer_audit.batchsize`, unless ``--batch-size``); of the bare
   ONNX Runtime passes it issues (``model.logits`` on the same number of inputs in the same
   batches); and of ``lime.lime_image.LimeImageExplainer.explain_instance`` with the same
   random state per image (hence the same quickshift segments and the same masks), the same
   long-lived session behind its ``classifier_fn``, at its default batch size (10) and at any
   other ``--lime-batch-sizes``. The forward passes each side issues are counted and printed
   (the adapter scores each distinct mask once: about 711 per image against lime's 1000 here).
   Every side runs once per round over ``--rounds`` interleaved rounds (``_paired.py``: the
   order alternates, each run waits for idle CPUs and is redone once if other processes used
   them); each comparison is the median of its paired per-round ratios, printed with their
   range. The adapter's maps are checked against lime's coefficients on the way.
2. DIANNA (optional): its LIME on the same ONNX file, if ``dianna`` imports here or in the
   interpreter given by ``--dianna-python`` (DIANNA pins its own dependency set: keep it in a
   separate virtual environment).
3. Convergence (``--convergence``; off by default, about 2 minutes more): maps and the
   distinctiveness vector d for N = 100 ... 2000 samples, each N with its own seed, against a
   4000-sample reference: Pearson r of the painted class maps (per image and class, averaged)
   and of each image's d vector (averaged over images), and the mean and largest change of d.

    python benchmarks/lime_vs_lime.py [--images 2] [--rounds 3] [--num-samples 1000]
        [--batch-size N] [--lime-batch-sizes 10] [--convergence] [--convergence-images 3]
        [--dianna-python PATH] [--quick] [--device auto|cpu|cuda]

Last line: ``RESULT lime_vs_lime <ratio> x target <= 1.00 PASS|FAIL``: the median over rounds of
the paired ratio adapter time / ``LimeImageExplainer`` time at lime's default batch of 10. The
exit code is 1 when that fails, when lime is faster at any batch size given (median), or when the
adapter's overhead over its bare passes exceeds 1.10 (median).
"""

from __future__ import annotations

import os

# tqdm reads its TQDM_* environment when first imported (by lime): silence lime's progress bar.
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from _paired import Spread, describe_machine, interleave, result_line
from numpy.typing import NDArray

from informer_audit.adapters.lime import LimeSaliency, image_random_state
from informer_audit.batchsize import choose_batch_size
from informer_audit.distinctiveness import cosine_distance_matrix, distinctiveness
from informer_audit.images import find_images, load_image
from informer_audit.model import OnnxClassifier

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "densenet121-nih5-128.onnx"
CARD = SHARED / "models" / "densenet121-nih5-128.card.json"
IMAGES = SHARED / "data" / "nih-cxr14-621" / "images"
DIANNA_VENV = Path("/tmp/dianna-venv/bin/python")
T = TypeVar("T")
TARGET = 1.00
"""Adapter time / lime's (at its default batch of 10), median of paired rounds: never slower."""
OVERHEAD = 1.10
"""Adapter time / the bare forward passes it issues, median of paired rounds."""


def unit_rgb(model: OnnxClassifier, x: NDArray[np.float32]) -> NDArray[np.float64]:
    """Preprocessed (N, C, H, W) -> the (N, H, W, 3) [0, 1] images a lime user would pass."""
    card = model.card
    mean = np.asarray(card.mean).reshape(1, -1, 1, 1)
    std = np.asarray(card.std).reshape(1, -1, 1, 1)
    rgb = ((x * std + mean) * (card.scale / 255.0)).transpose(0, 2, 3, 1)
    return np.repeat(rgb, 3, axis=3) if rgb.shape[3] == 1 else rgb


def lime_classifier(
    model: OnnxClassifier,
) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    """classifier_fn for lime: [0, 1] NHWC images -> sigmoid probabilities, same session."""
    card = model.card
    mean = np.asarray(card.mean).reshape(1, 1, 1, -1)
    std = np.asarray(card.std).reshape(1, 1, 1, -1)

    def fn(batch: NDArray[np.float64]) -> NDArray[np.float64]:
        x = ((batch[..., : card.channels] * (255.0 / card.scale) - mean) / std).transpose(
            0, 3, 1, 2
        )
        z = model.logits(x.astype(np.float32))
        return 0.5 * (1.0 + np.tanh(0.5 * z))

    return fn


def run_lime(
    model: OnnxClassifier, x: NDArray[np.float32], num_samples: int, batch_size: int, seed: int
) -> list:
    """lime's explain_instance on each image, with the adapter's random state per image."""
    from lime.lime_image import LimeImageExplainer

    rgb = unit_rgb(model, x)
    fn = lime_classifier(model)
    k = len(model.card.class_names)
    explanations = []
    for i in range(x.shape[0]):
        explainer = LimeImageExplainer(
            kernel_width=0.25, random_state=image_random_state(seed, x[i])
        )
        explanations.append(
            explainer.explain_instance(
                rgb[i],
                fn,
                labels=range(k),
                top_labels=None,
                hide_color=None,
                num_samples=num_samples,
                batch_size=batch_size,
            )
        )
    return explanations


def max_difference(maps: NDArray[np.float64], explanations: list) -> float:
    """Largest |adapter map - lime coefficient| over images, classes and segments."""
    worst = 0.0
    for i, explanation in enumerate(explanations):
        for k, pairs in explanation.local_exp.items():
            for seg, coef in pairs:
                values = maps[i, k][explanation.segments == seg]
                worst = max(worst, float(np.abs(values - coef).max()))
    return worst


DIANNA_SNIPPET = textwrap.dedent(
    """
    import json, sys, time, os
    os.environ.setdefault("TQDM_DISABLE", "1")
    import numpy as np
    import dianna
    args = json.loads(sys.argv[1])
    rgb = np.load(args["rgb"])
    mean = np.asarray(args["mean"]).reshape(1, 1, 1, -1)
    std = np.asarray(args["std"]).reshape(1, 1, 1, -1)
    def preprocess(batch):
        x = (batch * (255.0 / args["scale"]) - mean) / std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
    # dianna.explain_image passes on only the keywords that LIMEImage.explain names, so lime's
    # batch_size stays at its default of 10; DIANNA opens a new ORT session for every batch.
    t = time.perf_counter()
    for img in rgb:
        dianna.explain_image(
            args["model"], img, method="LIME", labels=list(range(args["k"])),
            axis_labels={2: "channels"}, preprocess_function=preprocess,
            num_samples=args["num_samples"], kernel_width=0.25, num_features=100000,
            top_labels=None, return_masks=False, random_state=0,
        )
    out = {
        "version": getattr(dianna, "__version__", "?"),
        "seconds": (time.perf_counter() - t) / len(rgb),
    }
    print(json.dumps(out))
    """
)


def run_dianna(
    python: Path | None,
    model: OnnxClassifier,
    x: NDArray[np.float32],
    num_samples: int,
) -> dict | str:
    """DIANNA's LIME timing (s/image, lime's batch 10), or a note saying why there is none."""
    try:
        import dianna  # noqa: F401

        python = Path(sys.executable)
    except ImportError:
        if python is None or not python.is_file():
            return (
                "dianna is not importable here and no --dianna-python interpreter was found "
                f"(looked for {DIANNA_VENV}); skipped"
            )
    card = model.card
    with tempfile.TemporaryDirectory() as tmp:
        rgb_path = Path(tmp) / "rgb.npy"
        np.save(rgb_path, unit_rgb(model, x))
        args = {
            "rgb": str(rgb_path),
            "model": str(model.path),
            "mean": list(card.mean),
            "std": list(card.std),
            "scale": card.scale,
            "k": len(card.class_names),
            "num_samples": num_samples,
        }
        env = {**os.environ, "TQDM_DISABLE": "1"}
        proc = subprocess.run(
            [str(python), "-c", DIANNA_SNIPPET, json.dumps(args)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return f"dianna run failed with {python}: " + " | ".join(tail)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pearson(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def convergence(
    model: OnnxClassifier,
    x: NDArray[np.float32],
    sizes: list[int],
    reference: int,
    batch_size: int,
) -> list[tuple[int, float, float, float, float, float]]:
    """Rows (N, s/image, r maps, r d, mean |d - d_ref|, max |d - d_ref|) against the reference.

    r maps: Pearson r over pixels of each image's class-k map, averaged over images and classes.
    r d: Pearson r over the K classes of each image's d vector, averaged over images.
    """
    t = time.perf_counter()
    ref = LimeSaliency(num_samples=reference, seed=10_000, batch_size=batch_size).explain(model, x)
    print(f"  reference N={reference}: {(time.perf_counter() - t) / x.shape[0]:.1f} s/image")
    d_ref = distinctiveness(cosine_distance_matrix(ref))
    print(
        "  reference d per image: "
        + "; ".join(" ".join(f"{v:.3f}" for v in row) for row in d_ref)
        + f" (std over images, mean over classes: {d_ref.std(axis=0).mean():.3f})"
    )
    rows = []
    for seed, n in enumerate(sizes, start=1):
        t = time.perf_counter()
        maps = LimeSaliency(num_samples=n, seed=seed, batch_size=batch_size).explain(model, x)
        seconds = (time.perf_counter() - t) / x.shape[0]
        d = distinctiveness(cosine_distance_matrix(maps))
        r_maps = float(
            np.nanmean(
                [
                    pearson(maps[i, k], ref[i, k])
                    for i in range(x.shape[0])
                    for k in range(maps.shape[1])
                ]
            )
        )
        r_d = float(np.nanmean([pearson(d[i], d_ref[i]) for i in range(x.shape[0])]))
        diff = np.abs(d - d_ref)
        rows.append((n, seconds, r_maps, r_d, float(diff.mean()), float(diff.max())))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--card", type=Path, default=CARD)
    ap.add_argument("--image-dir", type=Path, default=IMAGES)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the adapter's batch (default: chosen for this machine, as the CLI chooses it)",
    )
    ap.add_argument("--lime-batch-sizes", default="10")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--convergence", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--convergence-images", type=int, default=3)
    ap.add_argument("--convergence-sizes", default="100,250,500,1000,2000")
    ap.add_argument("--reference-samples", type=int, default=4000)
    ap.add_argument(
        "--dianna-python",
        type=Path,
        default=DIANNA_VENV if DIANNA_VENV.is_file() else None,
        help="interpreter with dianna installed (default: /tmp/dianna-venv if present)",
    )
    ap.add_argument("--dianna-images", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a short smoke run of every section")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()
    print(describe_machine(), flush=True)
    if args.quick:
        args.images, args.num_samples, args.rounds = 1, 200, 2
        args.lime_batch_sizes = "10,100"
        args.convergence = True
        args.convergence_images, args.convergence_sizes = 1, "50,100,200"
        args.reference_samples = 400
    lime_batches = [int(b) for b in args.lime_batch_sizes.split(",")]
    if args.images < 1 or not lime_batches or args.rounds < 1:
        ap.error("--images and --rounds must be at least 1; --lime-batch-sizes must name a size")

    model = OnnxClassifier(args.model, card_file=args.card, device=args.device)
    choice = choose_batch_size(model, args.batch_size)
    paths = find_images(args.image_dir)
    n_img = args.images
    x_all = model.preprocess([load_image(p) for p in paths[: max(n_img, args.convergence_images)]])
    x = x_all[:n_img]
    ns, bs = args.num_samples, choice.size
    adapter = LimeSaliency(num_samples=ns, batch_size=bs, seed=args.seed)
    # The adapter scores each distinct mask once: the bare passes are the ones it issues.
    plans = [adapter._plan(model, x[i]) for i in range(n_img)]
    total = sum(len(p.unique) for p in plans)
    batch_sizes = [min(bs, total - s) for s in range(0, total, bs)]
    bare_inputs = {b: np.ascontiguousarray(np.resize(x, (b, *x.shape[1:]))) for b in batch_sizes}

    def run_bare() -> None:
        for b in batch_sizes:
            model.logits(bare_inputs[b])

    sides: dict[str, Callable[[], object]] = {
        "adapter": lambda: adapter.explain(model, x),
        "bare": run_bare,
        **{f"lime {b}": partial(run_lime, model, x, ns, b, args.seed) for b in lime_batches},
    }
    print(f"model        {args.model.name} ({model.device_note})")
    print(
        f"input        {tuple(x.shape[1:])}, {n_img} NIH images, {ns} samples per image, "
        f"adapter {choice.describe()}, quickshift 4/200/0.2, mean fill, probability target"
    )
    # Warm-up (ORT allocates its arenas on the first runs; lime is imported on first use), and
    # the forward passes each side issues: work that noise cannot change.
    passes = {}
    for name, fn in sides.items():
        before = model.n_forward
        fn()
        passes[name] = (model.n_forward - before) / n_img
    print(
        "passes       per image: "
        + ", ".join(f"{name} {p:.0f}" for name, p in passes.items())
        + f" (the adapter scores the distinct masks among {ns}; segments per image: "
        + ", ".join(str(p.masks.shape[1]) for p in plans)
        + ")"
    )
    # Interleaved rounds; each comparison is a ratio within a round, decided on the median.
    runs = interleave(sides, args.rounds)
    for name in sides:
        per_round = ", ".join(f"{t / n_img:.2f}" for t in runs.seconds[name])
        extra = (
            f"; {passes[name] / (runs.median(name) / n_img):.0f} passes/s" if passes[name] else ""
        )
        print(
            f"  {name:11s}{' (default)' if name == 'lime 10' else '          '}"
            f"{runs.median(name) / n_img:7.2f} s/image (median; rounds {per_round}{extra})"
        )
    overhead = Spread.of(runs.ratios("adapter", "bare"))
    print(f"overhead     adapter / bare passes: {overhead.text()} (target <= {OVERHEAD:.2f})")
    speed = {b: Spread.of(runs.ratios("adapter", f"lime {b}")) for b in lime_batches}
    for b, spread in speed.items():
        floor = passes["adapter"] / passes[f"lime {b}"]
        print(
            f"vs lime {b:<4d} adapter / lime: {spread.text()}; passes alone would give {floor:.3f}"
        )
    maps = runs.results["adapter"]
    check = max_difference(maps, runs.results[f"lime {lime_batches[0]}"])
    print(f"same maps    max |adapter - lime coefficient| = {check:.1e}")
    print(f"machine      other processes used at most {runs.busiest:.0%} of the CPUs in a kept run")

    dianna = run_dianna(args.dianna_python, model, x[: args.dianna_images], ns)
    if isinstance(dianna, str):
        print(f"dianna       {dianna}")
    else:
        seconds = dianna["seconds"]
        t_adapter = runs.median("adapter") / n_img
        print(
            f"dianna {dianna['version']}  {seconds:7.2f} s/image  "
            f"({seconds / t_adapter:.2f}x the adapter; lime batch 10 fixed, "
            "a new ORT session per batch; "
            f"{args.dianna_images} image(s), one run)"
        )

    if args.convergence:
        xc = x_all[: args.convergence_images]
        sizes = [int(s) for s in args.convergence_sizes.split(",")]
        print(
            f"convergence  {xc.shape[0]} images, each N with its own seed, against "
            f"N={args.reference_samples}"
        )
        rows = convergence(model, xc, sizes, args.reference_samples, bs)
        print("  |     N | s/image | r(maps) |  r(d)  | mean|dd| | max|dd| |")
        print("  |------:|--------:|--------:|-------:|---------:|--------:|")
        for n, seconds, r_maps, r_d, mean_dd, max_dd in rows:
            print(
                f"  | {n:5d} | {seconds:7.2f} | {r_maps:7.4f} | {r_d:6.4f} | "
                f"{mean_dd:8.4f} | {max_dd:7.4f} |"
            )

    never_slower = all(round(s.median, 3) <= TARGET for s in speed.values())
    print(
        "adapter faster at every lime batch size (median of paired rounds): "
        + ("yes" if never_slower else "NO")
    )
    first = 10 if 10 in speed else lime_batches[0]
    line = result_line("lime_vs_lime", speed[first].median, "x", "<=", TARGET)
    print(line)
    ok = line.endswith("PASS") and never_slower and round(overhead.median, 3) <= OVERHEAD
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
