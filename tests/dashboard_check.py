"""The dashboard (issue 19 §1) in a real browser: Debian's Chromium driven by Playwright.

    dashboard_check.py SLUICE WORKDIR OUTDIR [KINESIS_ENDPOINT STREAM_ARN] [--tls CERT KEY CA]

Starts a Firehose HTTP endpoint receiver (Firehose's HTTP endpoint protocol: 200 with the request's
requestId, or 503 while an outage is injected), runs `SLUICE run --admin` on a pipeline whose
Firehose API source feeds a jq transform and an http_endpoint sink, produces records with boto3
the whole time, and checks in the page:
  - it loads nothing from anywhere but the admin address;
  - its numbers move, and match /metrics (scraped just before and just after the page is read)
    within a second's tolerance;
  - the layout does not jump as numbers change;
  - a partitioning sink (one partition: the transform leaves only `info` records) shows its open
    partitions, as /metrics says;
  - an outage of the destination shows in the success ratio, the retries and the error list;
  - with a Kinesis stream given (one the source reads an hour behind its tip), how far behind
    shows in its tile, in red, as /metrics says;
  - with `--tls` (the API listener serves CERT and KEY, which CA signed; the producer trusts CA),
    when the listener's certificate ends shows beside the stream's name, in red within the alert
    rules' 14 days, as /metrics says;
then takes a screenshot into OUTDIR. Prints a JSON report; exits non-zero when a check fails.
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
from botocore.config import Config
from playwright.sync_api import sync_playwright

STREAM = "dash"
CHROMIUM = os.environ.get("SLUICE_TEST_CHROMIUM", "/usr/bin/chromium")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver(BaseHTTPRequestHandler):
    """Firehose's HTTP endpoint protocol: answer 200 with the request's id; 503 during an outage."""

    down = threading.Event()
    records = 0
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if Receiver.down.is_set():
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"errorMessage":"injected outage"}')
            return
        request = json.loads(body)
        with Receiver.lock:
            Receiver.records += len(request["records"])
        answer = json.dumps({"requestId": request["requestId"], "timestamp": int(time.time() * 1000)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def produce(endpoint, stop, sent, ca):
    """PutRecordBatch of 50 records every 50 ms until `stop`: about 1,000 records/s."""
    client = boto3.client(
        "firehose",
        endpoint_url=endpoint,
        verify=ca if ca else None,
        region_name="us-east-1",
        aws_access_key_id="AKIDDASHBOARD",
        aws_secret_access_key="secret",
        config=Config(retries={"max_attempts": 3, "mode": "standard"}),
    )
    n = 0
    while not stop.is_set():
        batch = []
        for _ in range(50):
            level = "debug" if n % 5 == 0 else "info"
            batch.append({"Data": json.dumps({"n": n, "level": level, "msg": "request served"}).encode() + b"\n"})
            n += 1
        client.put_record_batch(DeliveryStreamName=STREAM, Records=batch)
        sent[0] = n
        time.sleep(0.05)


def scrape(admin):
    """/metrics as {(family, frozenset(labels)): value}."""
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        pairs = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
        samples[(name, pairs)] = float(value)
    return samples


def metric(samples, family, **labels):
    want = set(labels.items())
    return sum(v for (name, pairs), v in samples.items() if name == family and want <= set(pairs))


def main():
    args = sys.argv[1:]
    tls = None
    if "--tls" in args:
        at = args.index("--tls")
        tls, args = args[at + 1:at + 4], args[:at]
    sluice, workdir, outdir = args[0:3]
    kinesis = args[3:5]
    os.makedirs(outdir, exist_ok=True)
    receiver_port, api_port, admin_port = free_port(), free_port(), free_port()
    server = ThreadingHTTPServer(("127.0.0.1", receiver_port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = os.path.join(workdir, "dashboard.toml")
    with open(config, "w") as f:
        f.write(f"""[pipeline]
name = "{STREAM}"
data_dir = "{workdir}/data"
stop_timeout_s = 2

[sources.api]
type = "firehose"
listen = "127.0.0.1:{api_port}"
{f'tls = {{ cert = "{tls[0]}", key = "{tls[1]}" }}' if tls else ''}

[transforms.no_debug]
type = "jq"
inputs = ["api"]
query = 'select(.level != "debug")'

{kinesis_source(kinesis)}
[sinks.collector]
type = "http_endpoint"
inputs = ["no_debug"{', "trail"' if kinesis else ''}]
url = "http://127.0.0.1:{receiver_port}/in"
buffer = {{ size_mb = 1, interval_s = 1 }}
retry = {{ duration_s = 3 }}
backup_store = {{ url = "file://{workdir}/backup" }}

[sinks.lake]
type = "object_store"
inputs = ["no_debug"]
url = "file://{workdir}/lake"
partitioning = {{ query = '{{level: .level}}' }}
prefix = "level=!{{partitionKeyFromQuery:level}}/"
error_prefix = "errors/!{{firehose:error-output-type}}/"
buffer = {{ size_mb = 64, interval_s = 60 }}
""")
    admin = f"127.0.0.1:{admin_port}"
    log = open(os.path.join(outdir, "sluice.log"), "w")
    run = subprocess.Popen([sluice, "run", "--quiet", config, "--admin", admin], stdout=log, stderr=log)
    report = {"checks": {}}
    stop = threading.Event()
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{admin}/health", timeout=1)
                with socket.create_connection(("127.0.0.1", api_port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline or run.poll() is not None:
                    raise SystemExit(f"sluice did not start; see {outdir}/sluice.log")
                time.sleep(0.2)
        sent = [0]
        scheme = "https" if tls else "http"
        ca = tls[2] if tls else None
        producer = threading.Thread(target=produce, args=(f"{scheme}://127.0.0.1:{api_port}", stop, sent, ca), daemon=True)
        producer.start()
        run_checks(admin, outdir, report, bool(kinesis), bool(tls))
        stop.set()
        producer.join(timeout=10)
        report["sent"] = sent[0]
    finally:
        stop.set()
        run.terminate()
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
        server.shutdown()
    print(json.dumps(report, indent=1))
    if not all(report["checks"].values()):
        sys.exit(1)


def kinesis_source(kinesis):
    """The `trail` source's table when a Kinesis endpoint and stream are given."""
    if not kinesis:
        return ""
    endpoint, stream = kinesis
    return f"""[sources.trail]
type = "kinesis"
stream = "{stream}"
endpoint = "{endpoint}"
poll_ms = 200
"""


def shown_as(page, checks, report, name, selector, ready, judge):
    """Waits (20 s at most) until the element `selector` finds satisfies `ready` (a JavaScript
    expression of it, `e`), then adds the checks `judge(element, its data-value)` gives and what it
    shows to the report; an element never ready fails the check `<name> shown`."""
    try:
        page.wait_for_function(
            f"s => {{ const e = document.querySelector(s); return e && ({ready}); }}", arg=selector, timeout=20_000
        )
        element = page.locator(selector).first
        raw = element.get_attribute("data-value")
        value = float(raw) if raw not in (None, "") else None
        report[name] = [element.text_content(), value, element.get_attribute("class")]
        checks.update(judge(element, value))
    except Exception as e:  # noqa: BLE001 (the report says which check failed)
        checks[f"{name} shown"] = False
        report[f"{name} error"] = str(e)


def run_checks(admin, outdir, report, kinesis, tls):
    checks = report["checks"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        requested = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(f"http://{admin}/")

        def value(selector):
            raw = page.locator(selector).first.get_attribute("data-value")
            return float(raw) if raw not in (None, "") else None

        stream = f'[data-stream="{STREAM}"]'
        records_in = f'{stream}[data-metric="records_in"]'
        page.wait_for_function(
            "s => { const e = document.querySelector(s); return e && Number(e.dataset.value) > 0; }",
            arg=records_in,
            timeout=20_000,
        )
        # The numbers move.
        first = value(records_in)
        page.wait_for_timeout(2500)
        second = value(records_in)
        checks["incoming records move"] = second > first
        report["incoming"] = [first, second]
        checks["incoming rate shown"] = (value(f'{stream}[data-metric="records_in_per_s"]') or 0) > 0

        # The page matches /metrics: each figure is a value the counter had between two seconds
        # before the page's frame was read (the page draws a frame a second) and a scrape taken
        # just after. A window of time, not a second of the average rate: delivered records move
        # in whole objects, several of which can land within one frame.
        compared = {}
        before = scrape(admin)
        page.wait_for_timeout(2000)
        sink = f'{stream}[data-sink="collector"]'
        transform = f'{stream}[data-transform="no_debug"]'
        pairs = [
            ("records_in", records_in, "sluice_IncomingRecords", {}, f'{stream}[data-metric="records_in_per_s"]'),
            ("bytes_in", f'{stream}[data-metric="bytes_in"]', "sluice_IncomingBytes", {}, f'{stream}[data-metric="bytes_in_per_s"]'),
            ("delivered", f'{sink}[data-metric="delivered_records"]', "sluice_DeliveryToHttpEndpoint_Records",
             {"destination": "collector"}, f'{sink}[data-metric="delivered_per_s"]'),
            ("transform in", f'{transform}[data-metric="records_in"]', "sluice_TransformRecords",
             {"transform": "no_debug", "outcome": "in"}, f'{transform}[data-metric="records_in_per_s"]'),
            ("transform dropped", f'{transform}[data-metric="dropped"]', "sluice_TransformRecords",
             {"transform": "no_debug", "outcome": "dropped"}, f'{transform}[data-metric="dropped_per_s"]'),
        ]
        shown = {name: (value(sel), value(rate_sel) or 0) for name, sel, _, _, rate_sel in pairs}
        after = scrape(admin)
        for name, _, family, labels, _ in pairs:
            low = metric(before, family, stream=STREAM, **labels)
            high = metric(after, family, stream=STREAM, **labels)
            on_page, rate = shown[name]
            ok = on_page is not None and low <= on_page <= high
            compared[name] = {"page": on_page, "metrics_2s_before": low, "metrics_after": high, "rate": rate, "ok": ok}
            checks[f"{name} matches /metrics"] = ok
        report["compared"] = compared
        checks["transform drops the debug records"] = (compared["transform dropped"]["page"] or 0) > 0

        def red(element):
            return "bad" in (element.get_attribute("class") or "").split()

        if kinesis:
            # How far the Kinesis source reads behind: an hour, past the alert's five minutes.
            shown_as(page, checks, report, "kinesis lag", f'{stream}[data-metric="kinesis_behind_s"]', "e.dataset.value !== ''",
                     lambda e, v: {
                         "kinesis lag matches /metrics": v == metric(scrape(admin), "sluice_KinesisMillisBehindLatest", stream=STREAM) / 1000 == 3600,
                         "kinesis lag shown in red past 5 min": red(e),
                         "kinesis lag reads as a duration": e.text_content() == "1 h 00 min",
                     })

        if tls:
            # When the listener's certificate ends: two days from now, within the alert rules'
            # 14 days, so in red.
            shown_as(page, checks, report, "listener certificate",
                     f'{stream}[data-metric="certificate_ends_s"][data-certificate="listener"]', "e.dataset.value !== ''",
                     lambda e, v: {
                         "listener certificate end matches /metrics": v is not None and v == metric(scrape(admin), "sluice_ListenerCertificateExpiry_seconds", stream=STREAM) > 0,
                         "listener certificate ending soon shown in red": red(e),
                         "listener certificate end reads as time left":
                             re.fullmatch(r"API certificate ends in 4[78] h \d\d min", e.text_content() or "") is not None,
                     })

        # The partitioning sink's open partitions: `level=info` only, held for its 60 s interval.
        shown_as(page, checks, report, "open partitions", f'{stream}[data-sink="lake"][data-metric="open_partitions"]',
                 "e.dataset.value === '1'",
                 lambda e, v: {
                     "open partitions match /metrics": v == metric(scrape(admin), "sluice_PartitionCount", stream=STREAM, destination="lake") == 1,
                     "open partitions read as a count": e.text_content() == "1 partition",
                 })

        # No layout jump: the tiles and tables keep their boxes while numbers change.
        boxes = "() => [...document.querySelectorAll('.tile, table, .errors')].map(e => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height].map(Math.round).join(','); })"
        layout_before = page.evaluate(boxes)
        page.wait_for_timeout(2200)
        layout_after = page.evaluate(boxes)
        checks["layout does not jump"] = layout_before == layout_after
        checks["healthy success ratio is 100 %"] = value(f'{sink}[data-metric="success"]') == 1.0
        checks["no errors listed while healthy"] = page.locator("tr.error").count() == 0

        # An outage: the destination answers 503.
        Receiver.down.set()
        try:
            page.wait_for_function(
                "s => { const e = document.querySelector(s); return e && e.dataset.value !== '' && Number(e.dataset.value) < 1; }",
                arg=f'{sink}[data-metric="success"]',
                timeout=20_000,
            )
            checks["outage shows in the success ratio"] = True
        except Exception as e:  # noqa: BLE001 (the report says which check failed)
            checks["outage shows in the success ratio"] = False
            report["outage error"] = str(e)
        try:
            page.wait_for_selector('tr.error[data-component="collector"]', timeout=20_000)
            checks["outage shows in the error list"] = True
        except Exception as e:  # noqa: BLE001
            checks["outage shows in the error list"] = False
            report["error list error"] = str(e)
        codes = page.eval_on_selector_all('tr.error[data-component="collector"]', "rs => rs.map(r => r.dataset.code)")
        report["error codes"] = sorted(set(codes))
        checks["errors carry Firehose's HTTP endpoint codes"] = any(c.startswith("HttpEndpoint.") for c in codes)
        report["success during outage"] = value(f'{sink}[data-metric="success"]')
        page.wait_for_timeout(4000)
        reasons = page.eval_on_selector_all(f'{sink}[data-metric="error_output_records"] .chip', "cs => cs.map(c => c.dataset.reason)")
        report["error output reasons"] = reasons
        checks["retries shown"] = (metric(scrape(admin), "sluice_DeliveryToHttpEndpoint_Retries", stream=STREAM) > 0)
        page.screenshot(path=os.path.join(outdir, "dashboard.png"))
        Receiver.down.clear()

        origin = f"http://{admin}/"
        outside = [u for u in requested if not u.startswith(origin)]
        report["requests"] = sorted(set(requested))
        checks["nothing loaded from elsewhere"] = not outside and any(u.endswith("/events") for u in requested)
        browser.close()


if __name__ == "__main__":
    main()
