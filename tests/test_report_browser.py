"""The demo report in a real browser: headless Chromium loads report.html, takes a screenshot,
and we fail on a blank page or an image that did not load.

Marker ``browser`` (not in the default run): ``make test-browser``; CI installs Debian's
``chromium`` first. The two negative controls show that the checks can fail.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from robust_ebm.cli.main import main

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]

# Appended to a copy of the page: after 'load', record how many <img> decoded (naturalWidth > 0)
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var d = document.createElement('div');
  d.id = 'img-probe';
  d.setAttribute('data-total', imgs.length);
  d.setAttribute('data-broken', bad.length);
  document.body.appendChild(d);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no chromium on PATH: 'apt-get install chromium' (the CI script does)")


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=180, check=False)


def image_status(page: Path, tmp: Path) -> tuple[int, int]:
    """(images on the page, images that failed to load) as Chromium sees them."""
    probe = tmp / f"probe-{page.name}"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    res = _run(["--virtual-time-budget=15000", "--dump-dom", probe.as_uri()], tmp / "profile")
    m = re.search(r'id="img-probe" data-total="(\d+)" data-broken="(\d+)"', res.stdout)
    assert m, f"the probe did not run: rc {res.returncode}, {res.stderr[-500:]}"
    return int(m[1]), int(m[2])


def screenshot_spread(page: Path, tmp: Path) -> tuple[float, float]:
    """(pixel std, share of non-white pixels) of a 1280x2400 screenshot of ``page``."""
    import matplotlib.image as mpimg

    shot = tmp / f"shot-{page.stem}.png"
    res = _run([f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()],
               tmp / "profile")
    assert shot.is_file(), f"no screenshot: rc {res.returncode}, {res.stderr[-500:]}"
    rgb = mpimg.imread(shot)[..., :3]
    return float(rgb.std()), float((rgb.min(axis=2) < 0.9).mean())


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--quick", "--out", str(out), "--root", str(ROOT)]) == 0
    return out / "report.html"


def test_report_loads_every_image_in_chromium(report, tmp_path):
    total, broken = image_status(report, tmp_path)
    assert total == report.read_text().count("<img ") >= 9
    assert broken == 0


def test_report_screenshot_is_not_blank(report, tmp_path):
    std, ink = screenshot_spread(report, tmp_path)
    assert std > 0.05 and ink > 0.02, (std, ink)


def test_the_checks_fail_on_a_broken_image_and_a_blank_page(report, tmp_path):
    html = report.read_text()
    first = re.search(r'src="data:image/png;base64,([^"]+)"', html)
    assert first
    broken = html.replace(first[1], base64.b64encode(b"not a png").decode(), 1)
    (tmp_path / "broken.html").write_text(broken)
    total, bad = image_status(tmp_path / "broken.html", tmp_path)
    assert total >= 9 and bad == 1
    (tmp_path / "blank.html").write_text("<!DOCTYPE html><html><body></body></html>")
    std, ink = screenshot_spread(tmp_path / "blank.html", tmp_path)
    assert std < 0.05 and ink < 0.02
    assert np.isfinite(std)
