"""Record, or check, the SHA-256 of every file the bundled example and a small evaluate write.

A refactoring must not change results. This script runs the bundled example
(``examples/nih-cxr14/run.sh``: info, calibrate, flag with saved maps, the HTML report) and a
small ``evaluate`` on the example's 140 labelled images (first 70 by path calibrate, last 70 are
evaluated; fd at 32 px, entropy, TTA and MSP, 10 bootstrap sets), then hashes every file they
wrote. The example's
``output/`` folder (generated, git-ignored) is deleted and written anew.

    python tools/output_digests.py record tools/output-digests.json   # before a change
    python tools/output_digests.py check tools/output-digests.json    # after: exit 1 if any differ

Floating-point results depend on the numpy and ONNX Runtime builds, so the manifest records
their versions and ``check`` warns when they differ. Needs ``informer-audit`` on PATH.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "nih-cxr14"


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _halves(src: Path, dst: Path) -> None:
    with src.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [*(reader.fieldnames or []), "split"]
        rows = sorted(reader, key=lambda r: r["path"])
    for i, row in enumerate(rows):
        row["split"] = "calibration" if i < len(rows) // 2 else "evaluation"
    with dst.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def run_all(work: Path) -> dict[str, str]:
    out = EXAMPLE / "output"
    if out.exists():
        shutil.rmtree(out)
    subprocess.run(["bash", str(EXAMPLE / "run.sh")], check=True, stdout=subprocess.DEVNULL)
    digests = {f"example/{k}": v for k, v in _digests(out).items()}
    labels = work / "halves.csv"
    _halves(EXAMPLE / "val" / "labels.csv", labels)
    ev = work / "evaluate"
    val = EXAMPLE / "val"
    model = EXAMPLE / "model" / "densenet121-nih5-128.onnx"
    card = EXAMPLE / "model" / "densenet121-nih5-128.card.json"
    cmd = ["informer-audit", "evaluate", str(model), "--model-card", str(card)]
    cmd += ["--calib-images", str(val), "--calib-labels", str(labels)]
    cmd += ["--calib-split", "calibration", "--test-images", str(val)]
    cmd += ["--test-labels", str(labels), "--test-split", "evaluation"]
    cmd += ["--methods", "informer,entropy,tta,msp", "--saliency", "fd", "--patch-size", "32"]
    cmd += ["--bootstrap", "10", "--seed", "0", "-o", str(ev)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    digests.update({f"evaluate/{k}": v for k, v in _digests(ev).items()})
    return digests


def _versions() -> dict[str, str]:
    import numpy
    import onnxruntime

    return {"numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("record", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    verb, manifest = argv[0], Path(argv[1])
    with tempfile.TemporaryDirectory(prefix="informer-digests-") as tmp:
        digests = run_all(Path(tmp))
    if verb == "record":
        doc = {"versions": _versions(), "files": digests}
        manifest.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(digests)} files in {manifest}")
        return 0
    doc = json.loads(manifest.read_text())
    if doc.get("versions") != _versions():
        print(f"warning: recorded with {doc.get('versions')}, running {_versions()}")
    want: dict[str, str] = doc["files"]
    changed = sorted(k for k in want.keys() & digests.keys() if want[k] != digests[k])
    missing = sorted(want.keys() - digests.keys())
    new = sorted(digests.keys() - want.keys())
    for label, names in (("changed", changed), ("no longer written", missing), ("new", new)):
        for name in names:
            print(f"{label}: {name}")
    same = len(want.keys() & digests.keys()) - len(changed)
    print(f"{same} of {len(want)} files byte-identical")
    return 1 if changed or missing or new else 0


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "160")
    sys.exit(main(sys.argv[1:]))
