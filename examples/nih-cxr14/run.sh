#!/usr/bin/env bash
# The bundled real example: a vendor's ONNX model (no informer metadata, so its model card is
# given), calibrated on 140 labelled NIH validation images and auditing 140 unlabelled ones.
# Finite-difference saliency with 32 px patches (4 x 4 per 128 px image, 32 forward passes per
# image) keeps the whole run near a minute on 2 CPU cores; use --patch-size 16 (the default)
# for finer maps at four times the cost.
set -euo pipefail
cd "$(dirname "$0")"
out=output
mkdir -p "$out"
model=model/densenet121-nih5-128.onnx
card=model/densenet121-nih5-128.card.json

informer-audit info "$model" --model-card "$card"
informer-audit calibrate "$model" --model-card "$card" \
    --images val --labels val/labels.csv --patch-size 32 \
    -o "$out/monitor.json" --scores-csv "$out/calibration_scores.csv"
# --save-maps keeps every image's class maps (compressed, a few KB each) so that the HTML report
# (--report, or later `informer-audit report`) shows them without recomputing anything.
informer-audit flag "$model" --model-card "$card" \
    --monitor "$out/monitor.json" --images audit -o "$out/flags.csv" \
    --save-maps "$out/maps" --report "$out/report"
echo "outputs in $(pwd)/$out: monitor.json, calibration_scores.csv, flags.csv, maps/,"
echo "report/index.html (open it in a browser)"
