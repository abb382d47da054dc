#!/usr/bin/env bash
# Worked example of `informer-audit evaluate` on the project's shared NIH ChestX-ray14 sample and
# reference DenseNet121 (5 findings, 128 px). The 140 labelled images of the `val` split are
# divided in two halves (sorted by path: the first 70 calibrate, the last 70 are evaluated; the
# sample has one image per patient, so no patient is in both); the `test` split's labels are
# withheld and not used. Every method is fitted on the first half and measured on the second:
# INFORMER with finite-difference saliency (32 px patches), with LIME (250 samples instead of
# lime's 1000, to keep the run short) and with exact gradients and LRP when torch is installed; the
# learned flagger on each of those maps; predictive entropy, test-time augmentation (10 copies),
# maximum class probability and the distance to the threshold (margin). Outputs, and the score cache that makes a rerun take seconds, go to output/.
#
# Environment: SHARED (default ../shared beside the repository), PYTHON (default python3, the
# interpreter informer-audit is installed in), SALIENCY (default fd,lime,gradient,lrp with torch,
# fd,lime without; e.g. SALIENCY=fd for a 1-minute run). Extra arguments go to
# `informer-audit evaluate`, e.g. `bash run.sh --bootstrap 100`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
shared="${SHARED:-$repo/../shared}"
data="$shared/data/nih-cxr14-621"
model="$shared/models/densenet121-nih5-128.onnx"
card="$shared/models/densenet121-nih5-128.card.json"
out="$here/output"
py="${PYTHON:-python3}"
for f in "$data/labels.csv" "$model" "$card"; do
    if [ ! -e "$f" ]; then
        echo "missing $f: this example needs the project's shared folder (set SHARED=...)" >&2
        exit 2
    fi
done
mkdir -p "$out"

# 1. The val split, divided in two: one label file whose split column says which half.
"$py" - "$data/labels.csv" "$out/val-halves.csv" <<'PY'
import csv
import sys

src, dst = sys.argv[1:3]
with open(src, newline="") as fh:
    reader = csv.DictReader(fh)
    fields = reader.fieldnames
    rows = sorted((r for r in reader if r["split"] == "val"), key=lambda r: r["path"])
half = len(rows) // 2
for i, row in enumerate(rows):
    row["split"] = "calibration" if i < half else "evaluation"
with open(dst, "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
print(f"{dst}: {half} calibration + {len(rows) - half} evaluation images (val, sorted by path)")
PY

# 2. Saliency adapters: exact gradients need torch (pip install "informer-audit[torch]").
if [ -z "${SALIENCY:-}" ]; then
    if "$py" -c "import torch" 2>/dev/null; then SALIENCY=fd,lime,gradient,lrp; else SALIENCY=fd,lime; fi
fi
lime_args=()
case ",$SALIENCY," in *,lime,*) lime_args=(--lime-samples 250) ;; esac

# 3. Fit every method on the first half, report on the second.
start=$SECONDS
informer-audit evaluate "$model" --model-card "$card" \
    --calib-images "$data" --calib-labels "$out/val-halves.csv" --calib-split calibration \
    --test-images "$data" --test-labels "$out/val-halves.csv" --test-split evaluation \
    --methods informer,learned,entropy,tta,msp,margin --saliency "$SALIENCY" --patch-size 32 ${lime_args[@]+"${lime_args[@]}"} \
    --bootstrap 30 --seed 0 -o "$out" "$@"
echo "evaluate took $((SECONDS - start)) s; report: $out/report.md"
