"""Render the report of ``tests/fixtures/collapsed_run`` (a small real run that collapsed) in headless Chromium and
save the first screen as ``docs/guides/img/report.png``, the screenshot on the "Monitors and the report" page.

Usage: ``python docs/screenshot_report.py [--chromium /usr/bin/chromium]``. Needs the ``playwright`` package (no
browser download: it drives the given Chromium). The fixture is copied to a temporary folder first, so the
repository is not written to except for the PNG.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", default=str(ROOT / "docs" / "guides" / "img" / "report.png"))
    a = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from medrlvr.analysis.report import build_report

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "collapsed_run"
        shutil.copytree(ROOT / "tests" / "fixtures" / "collapsed_run", run)
        html = build_report(run, quiet=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=a.chromium, headless=True,
                                        args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(html.as_uri(), wait_until="load")
                page.screenshot(path=a.out)
            finally:
                browser.close()
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
