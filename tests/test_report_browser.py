"""A comparison report opens in headless Chromium with no network, and every figure loads.

Needs Debian's `chromium` (`apt-get install chromium`); skipped with the reason when absent.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

from test_compare import make_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Appended to a copy of the report: after load, write each image's state and every resource
# the page fetched into an attribute that --dump-dom prints.
PROBE = """<script>window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
  const fetched = performance.getEntriesByType('resource').map(r => r.name);
  document.body.setAttribute('data-probe', JSON.stringify({images, fetched}));
});</script>"""


def render(page_path, tmp_path) -> dict:
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page_path.read_text().replace("</body>", PROBE + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--proxy-server=127.0.0.1:9",  # any network fetch would fail
           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000", "--dump-dom", probe_page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, f"chromium printed no probe result; DOM starts: {dom[:300]!r}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install chromium)")
def test_comparison_report_renders_offline_with_every_figure(tmp_path):
    from trafficlens.evaluation.compare import compare

    ds = make_dataset(tmp_path / "ds", per_class=20)
    out = tmp_path / "report"
    compare(ds.path, "rf,knn-seq,dt:header", out, split="capture", log=lambda message: None)
    page = out / "report.html"
    expected = len(re.findall(r"<img ", page.read_text()))
    result = render(page, tmp_path)
    assert len(result["images"]) == expected >= 5
    for image in result["images"]:
        assert image["complete"] and image["width"] > 100 and image["height"] > 100, image
    assert [u for u in result["fetched"] if not u.startswith(("data:", "file:"))] == []
