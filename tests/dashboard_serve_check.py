"""The dashboard of `sluice serve` in a real browser (Debian's Chromium driven by Playwright): the
pipeline files it does not serve as written, and its reloads.

    dashboard_serve_check.py SLUICE WORKDIR OUTDIR

Writes a folder of two stream pipeline files, one with a misspelt key, runs `SLUICE serve` on it
with `--admin`, and checks in the page:
  - the header's folder chip says one file is not served, in red, as /metrics'
    `sluice_ConfigFilesFailed` says;
  - the notice names that file with its problem at its line and column;
then fixes the file, sends SIGHUP, and checks that the page follows the reload: no file left out,
the notice gone, one reload counted as /metrics says, the fixed file's stream shown. Takes a
screenshot of the page with the notice into OUTDIR. Prints a JSON report; exits non-zero when a
check fails.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from dashboard_check import CHROMIUM, free_port, metric, scrape
from playwright.sync_api import sync_playwright


def pipeline(name, workdir, misspelt=False):
    """A stream pipeline `name`: the Firehose API into NDJSON files (`format` misspelt when asked)."""
    format_key = "formt" if misspelt else "format"
    return f"""[pipeline]
name = "{name}"
data_dir = "{workdir}/data-{name}"

[sources.api]
type = "firehose"

[sinks.out]
type = "object_store"
inputs = ["api"]
url = "file://{workdir}/out-{name}"
{format_key} = "ndjson"
"""


def main():
    sluice, workdir, outdir = sys.argv[1:4]
    os.makedirs(outdir, exist_ok=True)
    folder = os.path.join(workdir, "pipelines")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "orders.toml"), "w") as f:
        f.write(pipeline("orders", workdir))
    broken = os.path.join(folder, "audit.toml")
    with open(broken, "w") as f:
        f.write(pipeline("audit", workdir, misspelt=True))
    api_port, admin_port = free_port(), free_port()
    admin = f"127.0.0.1:{admin_port}"
    log = open(os.path.join(outdir, "sluice-serve.log"), "w")
    serve = subprocess.Popen(
        [sluice, "serve", folder, "--listen", f"127.0.0.1:{api_port}", "--admin", admin], stdout=log, stderr=log
    )
    report = {"checks": {}}
    checks = report["checks"]
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{admin}/health", timeout=1)
                break
            except OSError:
                if time.time() > deadline or serve.poll() is not None:
                    raise SystemExit(f"sluice serve did not start; see {outdir}/sluice-serve.log")
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"http://{admin}/")
            chip = page.locator("#folder")
            try:
                page.wait_for_selector('#folder[data-failed="1"]', timeout=20_000)
                report["chip"] = [chip.text_content(), chip.get_attribute("class")]
                checks["the folder chip says one file is not served"] = "1 file not served" in (chip.text_content() or "")
                checks["the folder chip is red"] = "bad" in (chip.get_attribute("class") or "").split()
                checks["files not served match /metrics"] = metric(scrape(admin), "sluice_ConfigFilesFailed") == 1
                failed = page.locator('#notice .failed[data-file="audit.toml"]')
                text = failed.text_content() if failed.count() else ""
                report["notice"] = text
                checks["the notice names the file and its problem"] = (
                    page.locator("#notice").is_visible() and "unknown key `sinks.out.formt`" in text and "audit.toml:" in text
                )
                page.screenshot(path=os.path.join(outdir, "dashboard-serve.png"))
            except Exception as e:  # noqa: BLE001 (the report says which check failed)
                checks["the folder chip says one file is not served"] = False
                report["failed file error"] = str(e)

            with open(broken, "w") as f:
                f.write(pipeline("audit", workdir))
            serve.send_signal(signal.SIGHUP)
            try:
                page.wait_for_selector('#folder[data-failed="0"][data-reloads="1"]', timeout=20_000)
                page.wait_for_selector('[data-stream="audit"]', timeout=20_000)
                samples = scrape(admin)
                report["after reload"] = chip.text_content()
                checks["after the fix no file is left out"] = metric(samples, "sluice_ConfigFilesFailed") == 0
                checks["the reload is counted as /metrics says"] = metric(samples, "sluice_ConfigReloads") == 1
                checks["the notice is gone"] = not page.locator("#notice").is_visible()
                checks["the chip is no longer red"] = "bad" not in (chip.get_attribute("class") or "").split()
            except Exception as e:  # noqa: BLE001
                checks["after the fix no file is left out"] = False
                report["reload error"] = str(e)
            browser.close()
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
    print(json.dumps(report, indent=1))
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
