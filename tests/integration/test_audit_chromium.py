"""The audit report opened in a real headless Chromium (Debian's `chromium`, installed by .ci/run when missing):
it renders, every plot and preview image decodes, there are no console errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from curation.build.runner import build
from curation.recipe import validate_recipe
from curation.report.audit_page import write_audit_report
from tests.builds import demo_recipe, make_inputs

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs it)")

# Appended to a copy of the report: counts the images that decoded and any error the page raises.
PROBE = """
<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
const _error = console.error;
console.error = (...a) => { window.__errors.push(a.join(" ")); _error(...a); };
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const el = document.createElement("pre");
  el.id = "probe";
  const h2 = document.querySelectorAll("h2").length;
  el.textContent = `images=${imgs.length} decoded=${ok} errors=${window.__errors.length} h2=${h2}`;
  document.body.appendChild(el);
});
</script>
"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    base = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0"]  # fmt: skip
    return subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chromium")
    make_inputs(root / "inputs", n_captions=120, n_conversations=40)
    recipe = validate_recipe(demo_recipe(root / "inputs", output__rejects=True))
    out = build(recipe, root / "dataset", workers=2, progress=False).out
    return write_audit_report(out)["html"]


def test_report_renders_with_every_image_decoded_and_no_console_errors(report, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    run = _chromium("--dump-dom", probed.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    m = re.search(r"images=(\d+) decoded=(\d+) errors=(\d+) h2=(\d+)", run.stdout)
    assert m, run.stdout[-2000:]
    images, decoded, errors, sections = map(int, m.groups())
    assert images >= 10 and decoded == images  # plots and previews all decode
    assert errors == 0
    assert sections >= 5
    assert "Uncaught" not in run.stderr and "CONSOLE" not in run.stderr


def test_report_screenshot_is_not_blank(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    run = _chromium("--window-size=1200,3000", "--hide-scrollbars", f"--screenshot={shot}", report.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1_000_000)
    assert colors is not None and len(colors) > 50  # text, tables and plots, not an empty page
