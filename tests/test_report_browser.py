"""The HTML report renders in a real headless browser (Debian's chromium), from disk, with no network."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from click.testing import CliRunner

from sectrace.cli import main

pytest.importorskip("matplotlib")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get update && apt-get install -y chromium)")


def test_report_renders_in_headless_chromium(tmp_path):
    res = tmp_path / "r.parquet"
    r = CliRunner().invoke(main, ["simulate", "--gate", "entropy:2.5", "--gate", "always", "--k", "3,5",
                                  "--rtt", "20ms", "--out", str(res)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["report", str(res), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}",
           (tmp_path / "rep" / "report.html").as_uri()]
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert shot.exists() and shot.stat().st_size > 20_000
    from PIL import Image  # matplotlib depends on pillow

    im = Image.open(shot).convert("L")
    assert im.size == (1280, 2400)
    # Not a blank page: the embedded figures and tables give many distinct grey levels.
    assert len(im.getcolors(maxcolors=256) or []) > 50
    if (out := __import__("os").environ.get("SECTRACE_SCREENSHOT")):
        shutil.copy(shot, out)
