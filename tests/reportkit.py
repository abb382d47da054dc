"""A small flag run for the report tests: tiny model, calibrate, flag with hostile file names.

``make_run`` builds, under a temporary folder, a 3-class tiny model, a calibrated monitor whose
flag thresholds are moved to the median of the audited images' d (so that about half the
predictions are flagged), an audit folder whose file names hold ``<``, ``&``, quotes and
unicode plus one corrupt file, its labels, and a flags CSV with saved maps.
"""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner

from conftest import build_linear_model, card_dict, write_images
from informer_audit.cli import cli

CLASSES = ("A", "B", "C")
HOSTILE_NAMES = (
    "ä'&<b>.png",
    '"quoted" & <i>x.png',
    "<script>alert(1)<.png",
    "naïve résumé 圖像.png",
)


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args])


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def tiny_model(path: Path, size: int = 16, hidden: int = 5, seed: int = 1) -> Path:
    """A 3-class Flatten -> MatMul -> Tanh -> MatMul classifier with its card in the metadata."""
    rng = np.random.default_rng(seed)
    d = 3 * size * size
    w1 = rng.normal(0, 1 / np.sqrt(d), (d, hidden))
    w = rng.normal(0, 1 / np.sqrt(hidden), (hidden, len(CLASSES)))
    b = rng.normal(0, 0.1, len(CLASSES))
    card = card_dict(list(CLASSES), size, 3)
    return build_linear_model(path, w, b, channels=3, size=size, hidden=w1, card=card)


def make_run(tmp: Path, *, method: str | None = None) -> dict[str, Path]:
    """Calibrate, move tau to the median d, flag with --save-maps. Returns the paths."""
    tmp.mkdir(parents=True, exist_ok=True)
    model = tiny_model(tmp / "tiny.onnx")
    val = tmp / "val"
    paths = write_images(val / "imgs", 16, size=20, seed=2)
    rng = np.random.default_rng(4)
    labels = val / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *CLASSES])
        for p in paths:
            w.writerow([f"imgs/{p.name}", *rng.integers(0, 2, len(CLASSES))])
    audit = tmp / "audit"
    plain = write_images(audit, 8, size=24, seed=5)
    for src, name in zip(plain, HOSTILE_NAMES, strict=False):
        src.rename(audit / name)
    (audit / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    audit_labels = tmp / "audit_labels.csv"
    with audit_labels.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *CLASSES])
        for p in sorted(audit.iterdir()):
            if p.name != "broken.png":
                w.writerow([p.name, *rng.integers(0, 2, len(CLASSES))])
    monitor = tmp / "monitor.json"
    saliency = ["--patch-size", "8"] if method is None else ["--method", method]
    r = invoke(
        "calibrate", model, "--images", val, "--labels", labels, "-o", monitor, "--device", "cpu",
        *saliency,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    first = tmp / "flags_first.csv"
    r = invoke("flag", model, "--monitor", monitor, "--images", audit, "-o", first)
    assert r.exit_code == 1, r.output  # the corrupt file
    rows = [row for row in read_rows(first) if row["status"] == "ok"]
    doc = json.loads(monitor.read_text())
    score = "d" if method is None else method
    for entry in doc["monitor"]["classes"]:
        values = np.array([float(row[f"{score}_{entry['name']}"]) for row in rows])
        entry["flag_threshold"] = round(float(np.median(values)), 3)
    monitor.write_text(json.dumps(doc, indent=2))
    flags = tmp / "flags.csv"
    maps = tmp / "maps"
    extra = ["--save-maps", maps] if method is None else []
    r = invoke("flag", model, "--monitor", monitor, "--images", audit, "-o", flags, *extra)
    assert r.exit_code == 1, r.output
    return {
        "model": model,
        "monitor": monitor,
        "flags": flags,
        "maps": maps,
        "audit": audit,
        "labels": audit_labels,
        "tmp": tmp,
    }


class PageParser(HTMLParser):
    """Collects tags, attributes, text, and the text of elements by id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.by_id: dict[str, str] = {}
        self._open: list[tuple[str, str | None, int]] = []  # (tag, id, start index in text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag not in ("img", "meta", "br", "link", "input"):
            self._open.append((tag, a.get("id"), len(self.text)))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            name, ident, start = self._open.pop()
            if ident:
                self.by_id[ident] = "".join(self.text[start:]).strip()
            if name == tag:
                break

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser
