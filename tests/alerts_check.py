"""Evaluates docs/alerts.yml with `promtool test rules` on series taken from two real /metrics
scrapes of a run where the conditions hold (tests/alerts.rs).

    alerts_check.py RULES SCRAPE_BEFORE SCRAPE_AFTER SECONDS_BETWEEN WORKDIR

Every series the rules read comes from the scrapes, with its real name and labels: counters grow
at the rate seen between the scrapes (a refused TLS renewal and datagrams dropped at a source
included), gauges keep their last value. Two conditions a short test
cannot drive (a write-ahead log at 80 % of `retention.max_gb`, which is at least 1 GB, and
throttled puts) are set past their thresholds on their real label sets. A certificate's expiry (the
listener's, a client certificate's), a
Unix time, is moved to promtool's clock (which starts at 0): the time left at the evaluation is the
time left at the check. The rules are copied
without annotations (their text is not under test). Prints promtool's output and exits with its
status; exits 1 as well if a rule would fire for no series at all.
"""

import json
import re
import subprocess
import sys
import time

import yaml

SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>.*)\})? (?P<value>\S+)$')
EVAL_SECONDS = 1200
# The counters of what a source dropped of what was sent to it (SluiceSourceDroppingData).
DROPPED_AT_SOURCES = (
    "sluice_SyslogKernelDroppedDatagrams",
    "sluice_SyslogTruncatedMessages",
)
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(path):
    samples = {}
    with open(path) as f:
        for line in f:
            m = SAMPLE.match(line.strip())
            if not m or line.startswith("#"):
                continue
            labels = tuple(sorted(LABEL.findall(m.group("labels") or "")))
            samples[(m.group("name"), labels)] = float(m.group("value"))
    return samples


def series(name, labels):
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{name}{{{inner}}}"


def main():
    rules_path, before_path, after_path, seconds, workdir = sys.argv[1:6]
    before, after = scrape(before_path), scrape(after_path)
    per_minute = 60.0 / float(seconds)
    with open(rules_path) as f:
        rules = yaml.safe_load(f)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    severity = {r["alert"]: r["labels"]["severity"] for g in rules["groups"] for r in g["rules"]}

    def family(name):
        return re.fullmatch(r"sluice_DeliveryTo.+_(Success|DataFreshness_seconds|FailedRecords)", name) or name in (
            "sluice_BufferInterval_seconds",
            "sluice_LogBytes",
            "sluice_LogRetentionBytes",
            "sluice_ThrottledRecords",
            "sluice_ListenerCertificateExpiry_seconds",
            "sluice_ClientCertificateExpiry_seconds",
            "sluice_KinesisMillisBehindLatest",
            "sluice_TlsRenewalFailures",
            "sluice_ConfigFilesFailed",
        ) or name in DROPPED_AT_SOURCES

    inputs, expected = [], {name: [] for name in severity}
    gauges = {}
    for (name, labels), value in after.items():
        if not family(name):
            continue
        counters = ("sluice_ThrottledRecords", "sluice_TlsRenewalFailures") + DROPPED_AT_SOURCES
        if name.endswith("FailedRecords") or name in counters:
            start = before.get((name, labels), 0.0)
            step = (value - start) * per_minute
            if name == "sluice_ThrottledRecords":
                step = 10.0  # not driven by the run: set past its threshold
            inputs.append({"series": series(name, labels), "values": f"{start}+{step}x30"})
            if step > 0:
                alert = {
                    "sluice_ThrottledRecords": "SluiceThrottling",
                    "sluice_TlsRenewalFailures": "SluiceTlsRenewalRefused",
                    **{dropped: "SluiceSourceDroppingData" for dropped in DROPPED_AT_SOURCES},
                }.get(name, "SluiceErrorOutputGrowing")
                if dict(labels) not in expected[alert]:  # (one alert for several families of a stream)
                    expected[alert].append(dict(labels))
            continue
        gauges[(name, labels)] = value
    for (name, labels), value in gauges.items():
        if name == "sluice_LogBytes":
            retention = gauges.get(("sluice_LogRetentionBytes", labels), 0.0)
            value = 0.9 * retention  # not driven by the run: set past its threshold
            if retention > 0:
                expected["SluiceLogNearRetention"].append(dict(labels))
        if name in ("sluice_ListenerCertificateExpiry_seconds", "sluice_ClientCertificateExpiry_seconds"):
            left = value - time.time()
            value = left + EVAL_SECONDS
            if left < 14 * 86400:
                alert = "SluiceListenerCertificateExpiring" if "Listener" in name else "SluiceClientCertificateExpiring"
                expected[alert].append(dict(labels))
        if name == "sluice_ConfigFilesFailed" and value > 0:
            expected["SluiceConfigFilesFailed"].append(dict(labels))
        if name == "sluice_KinesisMillisBehindLatest" and value / 1000 > 300:
            expected["SluiceKinesisSourceBehind"].append(dict(labels))
        if name.endswith("_Success") and value < 1:
            expected["SluiceDeliveryFailing"].append(dict(labels))
        if name.endswith("_DataFreshness_seconds"):
            interval = gauges.get(("sluice_BufferInterval_seconds", labels), 0.0)
            if value > 3 * interval:
                expected["SluiceDataStale"].append(dict(labels))
        inputs.append({"series": series(name, labels), "values": f"{value}x30"})

    missing = [name for name, alerts in expected.items() if not alerts]
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    {
                        "eval_time": f"{EVAL_SECONDS}s",
                        "alertname": name,
                        "exp_alerts": [{"exp_labels": {**labels, "severity": severity[name]}} for labels in alerts],
                    }
                    for name, alerts in expected.items()
                ],
            }
        ],
    }
    with open(f"{workdir}/rules.yml", "w") as f:
        yaml.safe_dump(rules, f)
    with open(f"{workdir}/test.yml", "w") as f:
        yaml.safe_dump(tests, f)
    run = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=workdir, capture_output=True, text=True)
    print(json.dumps({"expected": expected, "missing": missing, "promtool": run.stdout + run.stderr}))
    sys.exit(run.returncode or (1 if missing else 0))


if __name__ == "__main__":
    main()
