"""A small flag run for the report tests: tiny model, calibrate, flag with hostile file names.

``make_run`` builds, under a temporary folder, a 3-class tiny model, a calibrated monitor whose
flag thresholds are moved to the median of the audited images' d (so that about half the
predictions are flagged), an audit folder whose file names hold ``<``, ``&``, quotes and
unicode plus one corrupt file, its labels, and a flags CSV with saved maps.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from conftest import PATCH_8, calibrate, flag, labelled_folder, read_rows, write_labels

CLASSES = ("A", "B", "C")
HOSTILE_NAMES = (
    "ä'&<b>.png",
    '"quoted" & <i>x.png',
    "<script>alert(1)<.png",
    "naïve résumé 圖像.png",
)


def make_run(tmp: Path, *, method: str | None = None) -> dict[str, Path]:
    """Calibrate, move tau to the median d, flag with --save-maps. Returns the paths."""
    tmp.mkdir(parents=True, exist_ok=True)
    e = labelled_folder(
        tmp, n_val=16, n_audit=8, subdir="imgs", audit_size=24, model_name="tiny.onnx"
    )
    audit = e["audit"]
    for src, name in zip(sorted(audit.iterdir()), HOSTILE_NAMES, strict=False):
        src.rename(audit / name)
    (audit / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    names = [p.name for p in sorted(audit.iterdir()) if p.name != "broken.png"]
    audit_labels = write_labels(tmp / "audit_labels.csv", names, CLASSES, seed=5)
    monitor = tmp / "monitor.json"
    saliency = PATCH_8 if method is None else ("--method", method)
    r = calibrate(e, monitor, saliency=saliency)
    assert r.exit_code == 0, r.output
    first = tmp / "flags_first.csv"
    r = flag(e, first, monitor=monitor)
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
    r = flag(e, flags, *extra, monitor=monitor)
    assert r.exit_code == 1, r.output
    return {
        "model": e["model"],
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
