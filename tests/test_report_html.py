"""report.html as a browser sees it: headless Chromium (Debian package `chromium`) loads the page
with name resolution off, logs every network request it makes, and a test-only copy of the page
counts the images that decoded."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import records, report, write_sweep

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
# Sets the title to "images <decoded>/<all>" once the page has loaded (the test copy only: the
# report itself carries no script).
PROBE = (
    "<script>addEventListener('load', () => { const all = [...document.images]; "
    "const ok = all.filter(i => i.complete && i.naturalWidth > 0); "
    "document.title = `images ${ok.length}/${all.length}`; });</script>"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="headless Chromium not installed (Debian: apt-get install -y chromium)",
    ),
]


def load(page: Path, work: Path) -> tuple[str, list[str]]:
    """Open `page` (a copy with the probe) in headless Chromium: the title once loaded, and the
    URLs the page requested over the network."""
    probe = page.with_name(f"probe-{page.name}")
    probe.write_text(page.read_text().replace("</body>", f"{PROBE}</body>"))
    netlog = work / f"{page.stem}-net.json"
    home = work / "home"  # Chromium's profile and caches stay out of $HOME
    home.mkdir(exist_ok=True)
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",  # tests may run as root
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing leaves the machine
        f"--user-data-dir={home / 'profile'}",
        f"--log-net-log={netlog}",
        "--dump-dom",
        probe.as_uri(),
    ]
    env = os.environ | {"HOME": str(home)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", done.stdout, re.S)
    return (title[1] if title else ""), page_requests(netlog)


def page_requests(netlog: Path) -> list[str]:
    """URLs of the network requests the page made: the browser's own background traffic (update
    checks, accounts) runs under other isolation keys than the file:// page's."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start and "file://" in str(params.get("network_isolation_key")):
            urls.append(params["url"])
    return urls


def test_report_html_loads_every_figure_and_requests_nothing(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "sweep", records())
    code, out = report(sweep)
    assert code == 0
    page = out / "report.html"
    figures = len(re.findall(r"<figure id=", page.read_text()))
    assert figures >= 4

    title, requests = load(page, tmp_path)
    assert title == f"images {figures}/{figures}"
    assert requests == []

    # The same check on a page that does reach out, and has a broken image: both are caught.
    embedded = re.search(r'data:image/svg[^"]+', page.read_text())
    assert embedded
    control = tmp_path / "control.html"
    control.write_text(
        "<!DOCTYPE html><html><head><title>c</title></head><body>"
        '<img src="http://lpm-test.invalid/figure.png">'
        f'<img src="{embedded[0]}"></body></html>'
    )
    title, requests = load(control, tmp_path)
    assert title == "images 1/2"
    assert requests == ["http://lpm-test.invalid/figure.png"]
