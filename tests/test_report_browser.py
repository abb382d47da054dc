"""The report renders in a real browser: headless Chromium screenshots it without errors.

Skips (with the reason) where Chromium is not installed: ``apt-get install chromium`` on Debian.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from reportkit import make_run

from conftest import invoke

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs headless Chromium (Debian: apt-get install chromium); not on PATH",
)


def chromium(page: Path, profile: Path, *action: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on a local page with ``action`` (--screenshot=..., --dump-dom)."""
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={profile}",
            "--window-size=1280,1600",
            *action,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_report_renders_in_headless_chromium(tmp_path):
    run = make_run(tmp_path / "run")
    report = tmp_path / "report"
    r = invoke("report", run["flags"], "--monitor", run["monitor"], "-o", report,
               "--maps", run["maps"])  # fmt: skip
    assert r.exit_code == 0, r.output
    shot = tmp_path / "shot.png"
    done = chromium(report / "index.html", tmp_path / "profile", f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    with Image.open(shot) as im:
        assert im.size == (1280, 1600)
        # Not a blank page: the dark page header and the coloured overlays are there.
        colours = im.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 100
    # The console: no uncaught script error, no resource that failed to load.
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not [line for line in console if "Uncaught" in line or "Failed to load" in line], console
    assert "Uncaught" not in done.stderr and "net::ERR_FILE_NOT_FOUND" not in done.stderr
    # The script ran: it showed the (static, hidden) controls and counted the gallery.
    dom = chromium(report / "index.html", tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr
    n = dom.stdout.count('<article class="card is-flagged"')
    assert n > 0 and f'id="gallery-count" aria-live="polite">{n} of {n} shown<' in dom.stdout
    assert 'id="gallery-controls" hidden' not in dom.stdout
    assert 'id="gallery-controls" hidden' in (report / "index.html").read_text(encoding="utf-8")
