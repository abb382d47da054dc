#!/usr/bin/env bash
# Worked example of `informer-audit shift` on the project's shared NIH ChestX-ray14 sample and
# reference DenseNet121 (5 findings, 128 px): how well do the input scores, and the input check
# of `calibrate`/`flag`, catch images the model was not made for?
#
# 1. Monitors are calibrated on the 140 labelled `val` images: INFORMER with finite-difference
#    maps (32 px patches, as in examples/nih-cxr14-evaluate) and with exact Input x Gradient maps
#    (torch + onnx2torch). Each has an input check at the default alpha 0.01, its direction chosen
#    from 8 probe images (left out of its calibration scores: n = 132, smallest one-sided p-value
#    1/133), and a twin whose direction is fixed to "high" (all 140 images calibrate it).
# 2. `flag` applies each monitor to the 140 `test` images (labels withheld; never calibrated on):
#    the clean flag rate, which must be consistent with alpha.
# 3. `shift` scores the first 40 `val` images (sorted by path) and 29 corrupted copies of each
#    (13 corruptions, 3 severities for the 8 graded ones), plus 16 pictures of other kinds that
#    ship with scikit-image (a CT phantom, a retina, cells, photographs, text), with both monitors.
#
# Outputs go to output/ (git-ignored): monitor_{fd,gradient}{,_high}.json, flags_test_*.csv,
# test_flag_rate.csv and shift/ (report.md, auroc.csv, flag_rate.csv, f1.csv, scores.csv,
# failures.csv, shift_auroc.png); cache/ makes a rerun of steps 1-2 fast.
#
# Environment: SHARED (default ../shared beside the repository), PYTHON (default python3, the
# interpreter informer-audit is installed in), N_SHIFT (default 40: clean images of step 3),
# SALIENCY (default fd,gradient with torch, fd without). Extra arguments go to
# `informer-audit shift`, e.g. `bash run.sh --corruptions invert,rotate90`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
shared="${SHARED:-$repo/../shared}"
data="$shared/data/nih-cxr14-621"
model="$shared/models/densenet121-nih5-128.onnx"
card="$shared/models/densenet121-nih5-128.card.json"
out="$here/output"
py="${PYTHON:-python3}"
n_shift="${N_SHIFT:-40}"
for f in "$data/labels.csv" "$model" "$card"; do
    if [ ! -e "$f" ]; then
        echo "missing $f: this example needs the project's shared folder (set SHARED=...)" >&2
        exit 2
    fi
done
mkdir -p "$out"
if [ -z "${SALIENCY:-}" ]; then
    if "$py" -c "import torch" 2>/dev/null; then SALIENCY=fd,gradient; else SALIENCY=fd; fi
fi
IFS=, read -r -a adapters <<< "$SALIENCY"

# The clean images of the shift run (first N_SHIFT val images by path), the test folder (links
# to the 140 test images) and the other pictures (copied from scikit-image's bundled data).
"$py" - "$data" "$out" "$n_shift" <<'PY'
import csv
import os
import shutil
import sys
from pathlib import Path

import skimage.data

data, out, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
with open(data / "labels.csv", newline="") as fh:
    reader = csv.DictReader(fh)
    fields = reader.fieldnames
    rows = list(reader)
val = sorted((r for r in rows if r["split"] == "val"), key=lambda r: r["path"])[:n]
with open(out / "shift-labels.csv", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(val)
test = out / "test-images"
test.mkdir(exist_ok=True)
for r in rows:
    if r["split"] == "test":
        link = test / Path(r["path"]).name
        if not link.is_symlink():
            os.symlink((data / r["path"]).resolve(), link)
other = out / "other-images"
other.mkdir(exist_ok=True)
names = ["phantom.png", "retina.jpg", "microaneurysms.png", "cell.png", "ihc.png", "camera.png",
         "astronaut.png", "coins.png", "moon.png", "page.png", "text.png", "brick.png",
         "grass.png", "chelsea.png", "coffee.png", "rocket.jpg"]
for name in names:
    shutil.copyfile(Path(skimage.data.data_dir) / name, other / name)
print(f"{len(val)} clean val images, {len(list(test.iterdir()))} test images, "
      f"{len(names)} other pictures")
PY

# Per adapter two monitors, identical but for the input check's direction: chosen by calibrate
# (auto, the default) and fixed to "high" (unrelated class maps are unusual: what METHOD.md
# section 8 reports for this model). shift scores the images once for both (same maps).
start=$SECONDS
monitors=()
names=()
for a in "${adapters[@]}"; do
    extra=()
    [ "$a" = fd ] && extra=(--patch-size 32)
    for direction in auto high; do
        name="$a"
        [ "$direction" = high ] && name="${a}_high"
        informer-audit calibrate "$model" --model-card "$card" --images "$data" \
            --labels "$data/labels.csv" --split val --saliency "$a" ${extra[@]+"${extra[@]}"} \
            --input-direction "$direction" --input-probes 8 --cache "$out/cache" \
            -o "$out/monitor_$name.json"
        set +e
        informer-audit flag "$model" --model-card "$card" --monitor "$out/monitor_$name.json" \
            --images "$out/test-images" --cache "$out/cache" --restart \
            -o "$out/flags_test_$name.csv"
        rc=$?
        set -e
        [ "$rc" -le 1 ] || exit "$rc"
        monitors+=(--monitor "$out/monitor_$name.json")
        names+=("$name")
    done
done
echo "calibrate + flag took $((SECONDS - start)) s"

# The clean test flag rate per monitor, with its exact binomial (Clopper-Pearson) 95% interval.
"$py" - "$out" "${names[@]}" <<'PY'
import csv
import sys
from pathlib import Path

from informer_audit.shift import clopper_pearson

out = Path(sys.argv[1])
lines = ["monitor,n,flagged,flag_rate,low,high"]
for a in sys.argv[2:]:
    with open(out / f"flags_test_{a}.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("input_flag") not in (None, "")]
    k = sum(int(r["input_flag"]) for r in rows)
    low, high = clopper_pearson(k, len(rows))
    lines.append(f"monitor_{a},{len(rows)},{k},{k / len(rows):.4f},{low:.4f},{high:.4f}")
(out / "test_flag_rate.csv").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY

start=$SECONDS
set +e
informer-audit shift "$model" --model-card "$card" "${monitors[@]}" \
    --images "$data" --labels "$out/shift-labels.csv" --other-images "$out/other-images" \
    --seed 0 -o "$out/shift" "$@"
rc=$?
set -e
echo "shift took $((SECONDS - start)) s (exit $rc); report: $out/shift/report.md"
exit "$rc"
