//! The `otlp` source against OpenTelemetry's own SDKs: Python's logging handler and OTLP/HTTP log
//! exporter (protobuf, gzip, a bearer token in its headers, batches of its own), with a span
//! active for some records, its span exporter (HTTP and gRPC), and JavaScript's OTLP/HTTP exporter
//! (OTLP's JSON encoding). Every record the SDK logged and every span it ended is in the lake once,
//! with its body or name, severity or kind, attributes, resource, scope and trace context; refused
//! requests answer as OTLP says.

use std::process::{Command, Stdio};

use super::support::{free_port, json_lines_under, python, repo_root, terminate};

const TOKEN: &str = "otlp-test-token";

/// The example pipeline `pipelines/from-opentelemetry.toml` as a user runs it (its port moved, a
/// token given), fed by OpenTelemetry's Python SDK: its logs through the log exporter, the spans
/// they were logged in through the span exporter, and the counters, histogram and gauge of the
/// same work through the metric exporter, each signal into its own lake; a log record's trace
/// context names its span.
#[test]
fn opentelemetry_python_sdk_logs_spans_and_metrics_land_with_their_context() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let example = std::fs::read_to_string(repo_root().join("pipelines/from-opentelemetry.toml")).unwrap();
    let config = dir.path().join("from-opentelemetry.toml");
    let listen = "listen = \"127.0.0.1:4318\"";
    assert!(example.contains(listen));
    std::fs::write(
        &config,
        example.replace(listen, &format!("listen = \"127.0.0.1:{port}\"\nbearer_token = \"{TOKEN}\"")),
    )
    .unwrap();
    let mut otlp = super::support::run_listening(&config, port);
    let script = format!(
        "import logging\n\
         from opentelemetry import trace\n\
         from opentelemetry.trace import SpanKind, Status, StatusCode\n\
         from opentelemetry.sdk.trace import TracerProvider\n\
         from opentelemetry.sdk.trace.export import BatchSpanProcessor\n\
         from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter\n\
         from opentelemetry.sdk.metrics import MeterProvider\n\
         from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader\n\
         from opentelemetry.metrics import Observation\n\
         from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter\n\
         from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler\n\
         from opentelemetry.sdk._logs.export import BatchLogRecordProcessor\n\
         from opentelemetry.sdk.resources import Resource\n\
         from opentelemetry.exporter.otlp.proto.http import Compression\n\
         from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter\n\
         resource = Resource.create({{'service.name': 'checkout', 'deployment.environment': 'test'}})\n\
         tracing = TracerProvider(resource=resource)\n\
         tracing.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint='http://127.0.0.1:{port}/v1/traces', \
         headers={{'Authorization': 'Bearer {TOKEN}'}}, compression=Compression.Gzip)))\n\
         trace.set_tracer_provider(tracing)\n\
         tracer = trace.get_tracer('shop')\n\
         provider = LoggerProvider(resource=resource)\n\
         reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint='http://127.0.0.1:{port}/v1/metrics', \
         headers={{'Authorization': 'Bearer {TOKEN}'}}, compression=Compression.Gzip), export_interval_millis=600000)\n\
         meters = MeterProvider(resource=resource, metric_readers=[reader])\n\
         meter = meters.get_meter('shop')\n\
         orders = meter.create_counter('orders', unit='1', description='orders paid or refunded')\n\
         latency = meter.create_histogram('checkout.duration', unit='ms')\n\
         in_flight = meter.create_up_down_counter('orders.in_flight')\n\
         meter.create_observable_gauge('queue.depth', callbacks=[lambda options: [Observation(7, {{'queue': 'payments'}})]])\n\
         exporter = OTLPLogExporter(endpoint='http://127.0.0.1:{port}/v1/logs', headers={{'Authorization': 'Bearer {TOKEN}'}}, \
         compression=Compression.Gzip)\n\
         provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_export_batch_size=64))\n\
         log = logging.getLogger('payments')\n\
         log.setLevel(logging.INFO)\n\
         log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))\n\
         for i in range(300):\n\
         \x20   if i % 100 == 0:\n\
         \x20       with tracer.start_as_current_span('refund', kind=SpanKind.SERVER, attributes={{'order.id': i}}) as span:\n\
         \x20           with tracer.start_as_current_span('ledger', kind=SpanKind.CLIENT) as child:\n\
         \x20               child.add_event('retry', {{'attempt': 2}})\n\
         \x20               child.set_status(Status(StatusCode.ERROR, 'ledger down'))\n\
         \x20           log.warning('refund %d', i, extra={{'order.id': i}})\n\
         \x20           print(format(span.get_span_context().trace_id, '032x'))\n\
         \x20   else:\n\
         \x20       log.info('order %d paid', i, extra={{'order.id': i, 'amount': i * 1.5}})\n\
         \x20   orders.add(1, {{'outcome': 'refund' if i % 100 == 0 else 'paid'}})\n\
         \x20   latency.record(i * 1.5)\n\
         in_flight.add(3)\n\
         in_flight.add(-1)\n\
         meters.shutdown()\n\
         provider.shutdown()\n\
         tracing.shutdown()\n"
    );
    let run = Command::new(python()).arg("-c").arg(script).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let trace_ids: Vec<String> = String::from_utf8_lossy(&run.stdout).lines().map(str::to_string).collect();
    assert_eq!(trace_ids.len(), 3);

    // OTLP's refusals: another token, a signal not served, another content type.
    let client = reqwest::blocking::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let status = |request: reqwest::blocking::RequestBuilder| request.send().unwrap().status().as_u16();
    let json = "application/json";
    assert_eq!(status(client.post(url("/v1/logs")).bearer_auth("wrong").header("Content-Type", json).body("{}")), 401);
    assert_eq!(
        status(client.post(url("/v1/profiles")).bearer_auth(TOKEN).header("Content-Type", json).body("{}")),
        404
    );
    let grpc = client.post(url("/opentelemetry.proto.collector.logs.v1.LogsService/Export")).body("");
    let grpc = grpc.send().unwrap();
    assert_eq!(grpc.status().as_u16(), 404);
    assert!(grpc.text().unwrap().contains("http/protobuf"));
    assert_eq!(
        status(client.post(url("/v1/logs")).bearer_auth(TOKEN).header("Content-Type", "text/plain").body("x")),
        415
    );
    let bad = client.post(url("/v1/logs")).bearer_auth(TOKEN).header("Content-Type", json).body("{\"resourceLogs\":7}");
    let bad = bad.send().unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let status_body: serde_json::Value = serde_json::from_str(&bad.text().unwrap()).unwrap();
    assert_eq!(status_body["code"], 3, "{status_body}");

    terminate(&otlp);
    assert!(otlp.wait().unwrap().success());
    let lake = dir.path().join("lake/otel/logs");
    let records = json_lines_under(&lake);
    assert!(super::support::files_under(&lake).iter().all(|f| f.to_string_lossy().contains("/service=checkout/dt=")));
    assert_eq!(records.len(), 300, "each log record once");
    let mut bodies: Vec<String> = records.iter().map(|r| r["body"].as_str().unwrap_or_default().to_string()).collect();
    bodies.sort();
    let mut expected: Vec<String> =
        (0..300).map(|i| if i % 100 == 0 { format!("refund {i}") } else { format!("order {i} paid") }).collect();
    expected.sort();
    assert_eq!(bodies, expected);
    for r in &records {
        assert_eq!(r["resource"]["service.name"], "checkout", "{r}");
        assert_eq!(r["resource"]["deployment.environment"], "test", "{r}");
        assert_eq!(r["instrumentation_scope"]["name"], "payments", "{r}");
        assert!(r["timestamp"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 30), "{r}");
        let i = r["attributes"]["order.id"].as_i64().unwrap_or(-1);
        if i % 100 == 0 {
            assert_eq!((&r["severity_text"], &r["severity_number"]), (&"WARN".into(), &13.into()), "{r}");
            assert_eq!(r["trace_id"], trace_ids[(i / 100) as usize], "{r}");
            assert!(r["span_id"].as_str().is_some_and(|s| s.len() == 16), "{r}");
            assert!(!r.as_object().unwrap().contains_key("start_timestamp"), "a log record in the traces' lake: {r}");
        } else {
            assert_eq!((&r["severity_text"], &r["severity_number"]), (&"INFO".into(), &9.into()), "{r}");
            assert_eq!(r["attributes"]["amount"], i as f64 * 1.5, "{r}");
            assert!(r["trace_id"].is_null(), "{r}");
        }
    }

    // The spans: a server span per refund, its client child with the event and the error status.
    let traces = dir.path().join("lake/otel/traces");
    assert!(super::support::files_under(&traces).iter().all(|f| f.to_string_lossy().contains("/service=checkout/dt=")));
    let spans = json_lines_under(&traces);
    assert_eq!(spans.len(), 6, "each span once: {spans:#?}");
    for trace_id in &trace_ids {
        let of = |name: &str| {
            let found: Vec<&serde_json::Value> =
                spans.iter().filter(|s| s["trace_id"] == trace_id.as_str() && s["name"] == name).collect();
            assert_eq!(found.len(), 1, "{name} of {trace_id}: {spans:#?}");
            found[0]
        };
        let (refund, ledger) = (of("refund"), of("ledger"));
        assert_eq!(
            (&refund["kind"], &refund["parent_span_id"]),
            (&"SPAN_KIND_SERVER".into(), &serde_json::Value::Null)
        );
        assert_eq!((&ledger["kind"], &ledger["parent_span_id"]), (&"SPAN_KIND_CLIENT".into(), &refund["span_id"]));
        assert_eq!(ledger["status"], serde_json::json!({"code": "STATUS_CODE_ERROR", "message": "ledger down"}));
        assert_eq!(ledger["events"][0]["name"], "retry");
        assert_eq!(ledger["events"][0]["attributes"], serde_json::json!({"attempt": 2}));
        assert_eq!(refund["status"]["code"], "STATUS_CODE_UNSET");
        assert_eq!(
            (&refund["resource"]["service.name"], &refund["instrumentation_scope"]["name"]),
            (&"checkout".into(), &"shop".into())
        );
        let order = refund["attributes"]["order.id"].as_i64().unwrap_or(-1);
        assert!(
            refund["duration_ns"].as_u64().is_some_and(|d| d >= ledger["duration_ns"].as_u64().unwrap_or(u64::MAX)),
            "{refund}"
        );
        // The log record written inside the refund span names it.
        let logged: Vec<&serde_json::Value> = records.iter().filter(|r| r["attributes"]["order.id"] == order).collect();
        assert_eq!(logged.len(), 1, "{order}");
        assert_eq!((&logged[0]["trace_id"], &logged[0]["span_id"]), (&refund["trace_id"], &refund["span_id"]));
    }

    // The metrics: one point per metric and attribute set, as the SDK aggregated them.
    let metrics = dir.path().join("lake/otel/metrics");
    assert!(
        super::support::files_under(&metrics).iter().all(|f| f.to_string_lossy().contains("/service=checkout/dt="))
    );
    let points = json_lines_under(&metrics);
    let point = |name: &str, attributes: serde_json::Value| {
        let found: Vec<&serde_json::Value> =
            points.iter().filter(|p| p["name"] == name && p["attributes"] == attributes).collect();
        assert_eq!(found.len(), 1, "{name} {attributes}: {points:#?}");
        found[0]
    };
    let paid = point("orders", serde_json::json!({"outcome": "paid"}));
    assert_eq!((&paid["type"], &paid["value"], &paid["is_monotonic"]), (&"sum".into(), &297.into(), &true.into()));
    assert_eq!(paid["aggregation_temporality"], "AGGREGATION_TEMPORALITY_CUMULATIVE");
    assert_eq!((&paid["unit"], &paid["description"]), (&"1".into(), &"orders paid or refunded".into()));
    assert_eq!(point("orders", serde_json::json!({"outcome": "refund"}))["value"], 3);
    let in_flight = point("orders.in_flight", serde_json::json!({}));
    assert_eq!((&in_flight["value"], &in_flight["is_monotonic"]), (&2.into(), &false.into()));
    let latency = point("checkout.duration", serde_json::json!({}));
    assert_eq!(
        (&latency["type"], &latency["count"], &latency["unit"]),
        (&"histogram".into(), &300.into(), &"ms".into())
    );
    assert_eq!((&latency["sum"], &latency["min"], &latency["max"]), (&67_275.0.into(), &0.0.into(), &448.5.into()));
    let buckets = latency["bucket_counts"].as_array().unwrap();
    assert_eq!(buckets.iter().map(|c| c.as_u64().unwrap()).sum::<u64>(), 300);
    assert_eq!(buckets.len(), latency["explicit_bounds"].as_array().unwrap().len() + 1);
    let depth = point("queue.depth", serde_json::json!({"queue": "payments"}));
    assert_eq!((&depth["type"], &depth["value"]), (&"gauge".into(), &7.into()));
    for p in &points {
        assert_eq!(
            (&p["resource"]["service.name"], &p["instrumentation_scope"]["name"]),
            (&"checkout".into(), &"shop".into())
        );
        assert!(p["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{p}");
    }
}

/// OpenTelemetry's JavaScript SDK and its OTLP/HTTP exporter, which sends OTLP's JSON encoding
/// (tests/js/otlp_logs.mjs): each record once, its map body and attributes as JSON values, its
/// resource and scope.
#[test]
fn opentelemetry_javascript_sdk_logs_in_otlp_json_land_whole() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let table = format!("type = \"otlp\"\nlisten = \"127.0.0.1:{port}\"\nbearer_token = \"{TOKEN}\"");
    let config = super::support::listening_pipeline(dir.path(), "otlp-json", "", "otel", &table);
    let mut otlp = super::support::run_listening(&config, port);
    let run = Command::new("node")
        .arg(repo_root().join("tests/js/otlp_logs.mjs"))
        .args([&format!("http://127.0.0.1:{port}/v1/logs"), TOKEN, "120"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    terminate(&otlp);
    assert!(otlp.wait().unwrap().success());
    let records = json_lines_under(&dir.path().join("lake"));
    let mut ids: Vec<i64> = records.iter().map(|r| r["attributes"]["item.id"].as_i64().unwrap_or(-1)).collect();
    ids.sort();
    assert_eq!(ids, (0..120).collect::<Vec<i64>>(), "each record once");
    for r in &records {
        let i = r["attributes"]["item.id"].as_i64().unwrap_or(-1);
        assert_eq!(r["body"], serde_json::json!({"msg": format!("GET /item/{i}"), "status": 200}), "{r}");
        assert_eq!(
            (&r["attributes"]["http.route"], &r["attributes"]["cart.total"]),
            (&"/item/:id".into(), &19.5.into())
        );
        assert_eq!(
            (&r["resource"]["service.name"], &r["resource"]["service.version"]),
            (&"storefront".into(), &"4.2.0".into())
        );
        assert_eq!(
            r["instrumentation_scope"],
            serde_json::json!({"name": "storefront.http", "version": "4.2.0", "attributes": {}})
        );
        assert_eq!((&r["severity_text"], &r["severity_number"]), (&"INFO".into(), &9.into()));
    }
}

/// OTLP/gRPC at `grpc_listen`: OpenTelemetry's Python SDK with its gRPC log exporter (gzip, a
/// bearer token in its metadata) lands every record with its resource; gRPC's own status codes for
/// a wrong token and an unserved service, as grpcio reports them; OTLP/HTTP beside it unchanged.
#[test]
fn opentelemetry_grpc_exporter_logs_land_and_refusals_carry_grpc_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut otlp, port, grpc_port) = start_with_grpc(dir.path(), "otlp-grpc", &format!("bearer_token = \"{TOKEN}\""));
    let script = format!(
        "import logging, grpc\n\
         from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler\n\
         from opentelemetry.sdk._logs.export import BatchLogRecordProcessor\n\
         from opentelemetry.sdk.resources import Resource\n\
         from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter\n\
         from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc\n\
         from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc\n\
         provider = LoggerProvider(resource=Resource.create({{'service.name': 'billing'}}))\n\
         exporter = OTLPLogExporter(endpoint='http://127.0.0.1:{grpc_port}', insecure=True, \
         headers=(('authorization', 'Bearer {TOKEN}'),), compression=grpc.Compression.Gzip)\n\
         provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_export_batch_size=50))\n\
         log = logging.getLogger('invoices')\n\
         log.setLevel(logging.INFO)\n\
         log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))\n\
         for i in range(200):\n\
         \x20   log.info('invoice %d', i, extra={{'invoice.id': i}})\n\
         provider.shutdown()\n\
         channel = grpc.insecure_channel('127.0.0.1:{grpc_port}')\n\
         logs = logs_service_pb2_grpc.LogsServiceStub(channel)\n\
         empty = logs_service_pb2.ExportLogsServiceRequest()\n\
         print(type(logs.Export(empty, metadata=(('authorization', 'Bearer {TOKEN}'),))).__name__)\n\
         for stub, request, token in [(logs, empty, 'wrong'), \
         (trace_service_pb2_grpc.TraceServiceStub(channel), trace_service_pb2.ExportTraceServiceRequest(), '{TOKEN}')]:\n\
         \x20   try:\n\
         \x20       stub.Export(request, metadata=(('authorization', 'Bearer ' + token),))\n\
         \x20       print('accepted')\n\
         \x20   except grpc.RpcError as e:\n\
         \x20       print(e.code().name)\n"
    );
    let run = Command::new(python()).arg("-c").arg(script).output().unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{said}{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(said.lines().collect::<Vec<_>>(), ["ExportLogsServiceResponse", "UNAUTHENTICATED", "UNIMPLEMENTED"]);
    // OTLP/HTTP is served beside it, unchanged.
    let http = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/logs"))
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/json")
        .body(r#"{"resourceLogs":[]}"#)
        .send()
        .unwrap();
    assert_eq!(http.status().as_u16(), 200);
    terminate(&otlp);
    assert!(otlp.wait().unwrap().success());
    let records = json_lines_under(&dir.path().join("lake"));
    let mut ids: Vec<i64> = records.iter().map(|r| r["attributes"]["invoice.id"].as_i64().unwrap_or(-1)).collect();
    ids.sort();
    assert_eq!(ids, (0..200).collect::<Vec<i64>>(), "each record once");
    assert!(records.iter().all(|r| r["resource"]["service.name"] == "billing" && r["body"].is_string()));
    let trail: Vec<serde_json::Value> =
        json_lines_under(&dir.path().join("audit")).into_iter().filter(|l| l["eventSource"] == "otlp.sluice").collect();
    assert!(trail.iter().any(|l| l["errorCode"] == "UNAUTHENTICATED"), "{trail:#?}");
    assert!(
        trail
            .iter()
            .any(|l| l["requestParameters"]["path"] == "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
                && l.get("errorCode").is_none()),
        "{trail:#?}"
    );
}

/// What the exporters compress with, besides gzip: the Python SDK's gRPC exporter with deflate
/// (grpcio's zlib), and OTLP/HTTP bodies as the OpenTelemetry Collector's `otlphttp` exporter
/// sends them with `compression: snappy` (a raw block, or the framed stream it sent before),
/// `x-snappy-framed` and `zstd`, compressed by cramjam (pinned in tests/requirements.txt; its
/// zstd is libzstd's): every record lands once.
#[test]
fn exporters_compressed_with_deflate_snappy_or_zstd_land_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (mut otlp, port, grpc_port) = start_with_grpc(dir.path(), "otlp-compressed", "");
    let script = format!(
        "import json, logging, grpc, cramjam, urllib.request\n\
         from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler\n\
         from opentelemetry.sdk._logs.export import BatchLogRecordProcessor\n\
         from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter\n\
         provider = LoggerProvider()\n\
         exporter = OTLPLogExporter(endpoint='http://127.0.0.1:{grpc_port}', insecure=True, \
         compression=grpc.Compression.Deflate)\n\
         provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_export_batch_size=25))\n\
         log = logging.getLogger('deflated')\n\
         log.setLevel(logging.INFO)\n\
         log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))\n\
         for i in range(100):\n\
         \x20   log.info('deflated %d', i)\n\
         provider.shutdown()\n\
         def body(name):\n\
         \x20   records = [{{'body': {{'stringValue': name + ' ' + str(i)}}}} for i in range(10)]\n\
         \x20   return json.dumps({{'resourceLogs': [{{'scopeLogs': [{{'logRecords': records}}]}}]}}).encode()\n\
         for name, encoding, compress in [('block', 'snappy', cramjam.snappy.compress_raw), \
         ('framed', 'snappy', cramjam.snappy.compress), ('x-framed', 'x-snappy-framed', cramjam.snappy.compress), \
         ('zstd', 'zstd', cramjam.zstd.compress)]:\n\
         \x20   request = urllib.request.Request('http://127.0.0.1:{port}/v1/logs', data=bytes(compress(body(name))), \
         headers={{'Content-Type': 'application/json', 'Content-Encoding': encoding}})\n\
         \x20   print(name, urllib.request.urlopen(request).status)\n"
    );
    let run = Command::new(python()).arg("-c").arg(script).output().unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{said}{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(said.lines().collect::<Vec<_>>(), ["block 200", "framed 200", "x-framed 200", "zstd 200"]);
    terminate(&otlp);
    assert!(otlp.wait().unwrap().success());
    let mut bodies: Vec<String> = json_lines_under(&dir.path().join("lake"))
        .iter()
        .map(|r| r["body"].as_str().unwrap_or_default().to_string())
        .collect();
    bodies.sort();
    let mut expected: Vec<String> = (0..100).map(|i| format!("deflated {i}")).collect();
    for name in ["block", "framed", "x-framed", "zstd"] {
        expected.extend((0..10).map(|i| format!("{name} {i}")));
    }
    expected.sort();
    assert_eq!(bodies, expected);
}

/// OTLP/gRPC's `TraceService/Export` with `signals = ["logs", "traces"]`: the Python SDK's gRPC span
/// exporter lands each span once, parents and kinds as the SDK made them, beside the logs of the
/// same source; metrics stay unimplemented.
#[test]
fn opentelemetry_grpc_span_exporter_spans_land_beside_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut otlp, _, grpc_port) = start_with_grpc(dir.path(), "otlp-grpc-traces", "signals = [\"logs\", \"traces\"]");
    let script = format!(
        "import logging, grpc\n\
         from opentelemetry import trace\n\
         from opentelemetry.trace import SpanKind\n\
         from opentelemetry.sdk.trace import TracerProvider\n\
         from opentelemetry.sdk.trace.export import BatchSpanProcessor\n\
         from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler\n\
         from opentelemetry.sdk._logs.export import BatchLogRecordProcessor\n\
         from opentelemetry.sdk.resources import Resource\n\
         from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter\n\
         from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter\n\
         from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc\n\
         resource = Resource.create({{'service.name': 'billing'}})\n\
         tracing = TracerProvider(resource=resource)\n\
         tracing.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint='http://127.0.0.1:{grpc_port}', \
         insecure=True, compression=grpc.Compression.Gzip), max_export_batch_size=40))\n\
         tracer = tracing.get_tracer('invoicing')\n\
         logs = LoggerProvider(resource=resource)\n\
         logs.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint='http://127.0.0.1:{grpc_port}', \
         insecure=True)))\n\
         trace.set_tracer_provider(tracing)\n\
         log = logging.getLogger('invoices')\n\
         log.setLevel(logging.INFO)\n\
         log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logs))\n\
         for i in range(100):\n\
         \x20   with tracer.start_as_current_span('invoice', kind=SpanKind.CONSUMER, attributes={{'invoice.id': i}}):\n\
         \x20       with tracer.start_as_current_span('render', attributes={{'invoice.id': i}}):\n\
         \x20           pass\n\
         \x20       if i == 99:\n\
         \x20           log.info('last invoice')\n\
         tracing.shutdown()\n\
         logs.shutdown()\n\
         channel = grpc.insecure_channel('127.0.0.1:{grpc_port}')\n\
         try:\n\
         \x20   metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(metrics_service_pb2.ExportMetricsServiceRequest())\n\
         \x20   print('accepted')\n\
         except grpc.RpcError as e:\n\
         \x20   print(e.code().name)\n"
    );
    let run = Command::new(python()).arg("-c").arg(script).output().unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{said}{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(said.trim(), "UNIMPLEMENTED");
    terminate(&otlp);
    assert!(otlp.wait().unwrap().success());
    let records = json_lines_under(&dir.path().join("lake"));
    let (spans, logs): (Vec<_>, Vec<_>) = records.iter().partition(|r| r.get("start_timestamp").is_some());
    assert_eq!(logs.len(), 1, "{logs:#?}");
    assert_eq!(logs[0]["body"], "last invoice");
    assert_eq!(spans.len(), 200, "each span once");
    let span_of = |name: &str, id: i64| {
        let found: Vec<&&serde_json::Value> =
            spans.iter().filter(|s| s["name"] == name && s["attributes"]["invoice.id"] == id).collect();
        assert_eq!(found.len(), 1, "{name} {id}");
        *found[0]
    };
    for i in 0..100 {
        let (invoice, render) = (span_of("invoice", i), span_of("render", i));
        assert_eq!(invoice["kind"], "SPAN_KIND_CONSUMER");
        assert_eq!(render["kind"], "SPAN_KIND_INTERNAL");
        assert_eq!((&render["trace_id"], &render["parent_span_id"]), (&invoice["trace_id"], &invoice["span_id"]));
        assert_eq!(invoice["resource"]["service.name"], "billing");
    }
    assert_eq!(logs[0]["span_id"], span_of("invoice", 99)["span_id"]);
    let trail: Vec<serde_json::Value> =
        json_lines_under(&dir.path().join("audit")).into_iter().filter(|l| l["eventSource"] == "otlp.sluice").collect();
    assert!(trail.iter().any(|l| l["eventName"] == "ExportTraces" && l.get("errorCode").is_none()), "{trail:#?}");
}

/// OTLP/gRPC over TLS: the listener offers `h2` in the handshake (ALPN, which gRPC clients
/// require), and grpcio's secure channel, trusting the test CA, exports through it; the OTLP/HTTP
/// listener beside it still offers HTTP/1.1.
#[test]
fn opentelemetry_grpc_over_tls_is_served_with_alpn_h2() {
    let dir = tempfile::tempdir().unwrap();
    let certs = super::support::TestCertificates::make();
    let tls = format!("tls = {{ cert = \"{}\", key = \"{}\" }}", certs.path("server.pem"), certs.path("server.key"));
    let (mut otlp, port, grpc_port) = start_with_grpc(dir.path(), "otlp-grpc-tls", &tls);
    let script = format!(
        "import grpc\n\
         from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc\n\
         from opentelemetry.proto.logs.v1 import logs_pb2\n\
         from opentelemetry.proto.common.v1 import common_pb2\n\
         credentials = grpc.ssl_channel_credentials(root_certificates=open('{ca}', 'rb').read())\n\
         channel = grpc.secure_channel('127.0.0.1:{grpc_port}', credentials)\n\
         record = logs_pb2.LogRecord(body=common_pb2.AnyValue(string_value='over tls'))\n\
         request = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(\
         scope_logs=[logs_pb2.ScopeLogs(log_records=[record])])])\n\
         print(type(logs_service_pb2_grpc.LogsServiceStub(channel).Export(request)).__name__)\n",
        ca = certs.path("ca.pem"),
    );
    let run = Command::new(python()).arg("-c").arg(script).output().unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{said}{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(said.trim(), "ExportLogsServiceResponse");
    // The HTTP/1.1 listener's ALPN is still http/1.1 (curl would otherwise speak h2 to it).
    let alpn = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-alpn", "h2,http/1.1", "-CAfile"])
        .arg(certs.path("ca.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let alpn = String::from_utf8_lossy(&alpn.stdout);
    assert!(alpn.contains("ALPN protocol: http/1.1"), "{alpn}");
    terminate(&otlp);
    assert!(otlp.wait().unwrap().success());
    let records = json_lines_under(&dir.path().join("lake"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["body"], "over tls");
}

/// An HTTP/2 connection to the gRPC listener that falls silent is closed after `idle_timeout_s`
/// (its frames are not timed as HTTP/1.1 requests are: only silence counts).
#[test]
fn a_silent_grpc_connection_is_closed_after_the_idle_timeout() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let (mut otlp, _, grpc_port) = start_with_grpc(dir.path(), "otlp-idle", "idle_timeout_s = 1");
    let mut h2 = std::net::TcpStream::connect(("127.0.0.1", grpc_port)).unwrap();
    h2.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    // HTTP/2's connection preface and an empty SETTINGS frame, then nothing.
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    let mut answered = Vec::new();
    let ended = h2.read_to_end(&mut answered);
    assert!(ended.is_ok(), "the connection was not closed: {ended:?}");
    // The server spoke HTTP/2 (its SETTINGS frame, type 4) before closing.
    assert_eq!(answered.get(3), Some(&4), "{answered:?}");
    terminate(&otlp);
    assert!(otlp.wait().unwrap().success());
}

/// A log record over a record's 1,000 KiB is taken with the request's other records and goes,
/// whole, to the sink's error output (`processing-failed`, `Source.RecordTooLarge`): the answer is
/// a full success, over gRPC as grpcio reads it and in OTLP/JSON, so the exporter drops nothing,
/// even when every record of a request is over it; said in the error log.
#[test]
fn a_record_over_the_size_limit_goes_to_the_error_output_and_the_rest_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let (mut otlp, port, grpc_port) = start_with_grpc(dir.path(), "otlp-large", "");
    let script = format!(
        "import grpc\n\
         from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc\n\
         from opentelemetry.proto.logs.v1 import logs_pb2\n\
         from opentelemetry.proto.common.v1 import common_pb2\n\
         bodies = ['small 1', 'x' * 1_100_000, 'small 2']\n\
         records = [logs_pb2.LogRecord(body=common_pb2.AnyValue(string_value=b)) for b in bodies]\n\
         request = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(\n\
         \x20   scope_logs=[logs_pb2.ScopeLogs(log_records=records)])])\n\
         stub = logs_service_pb2_grpc.LogsServiceStub(grpc.insecure_channel('127.0.0.1:{grpc_port}'))\n\
         print(stub.Export(request).HasField('partial_success'))\n"
    );
    let run = Command::new(python()).arg("-c").arg(script).output().unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{said}{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(said.trim(), "False");
    let http = reqwest::blocking::Client::new();
    let post = |bodies: &[String]| {
        let records: Vec<serde_json::Value> =
            bodies.iter().map(|b| serde_json::json!({"body": {"stringValue": b}})).collect();
        let request = serde_json::json!({"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]});
        let answer = http
            .post(format!("http://127.0.0.1:{port}/v1/logs"))
            .header("Content-Type", "application/json")
            .body(request.to_string())
            .send()
            .unwrap();
        (answer.status().as_u16(), answer.text().unwrap())
    };
    let big = "y".repeat(1_100_000);
    assert_eq!(post(&["small 3".into(), big.clone()]), (200, "{}".to_string()));
    assert_eq!(post(std::slice::from_ref(&big)), (200, "{}".to_string()));
    terminate(&otlp);
    // (Exit code 2: records went to the error output.)
    assert_eq!(otlp.wait().unwrap().code(), Some(2));
    let (records, failed) = super::support::records_and_error_documents(&dir.path().join("lake"));
    let mut bodies: Vec<&str> = records.iter().map(|r| r["body"].as_str().unwrap_or_default()).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, ["small 1", "small 2", "small 3"]);
    assert!(failed.iter().all(|d| d["errorCode"] == "Source.RecordTooLarge"), "{failed:#?}");
    let mut failed_bodies: Vec<String> = failed
        .iter()
        .map(|d| {
            let record: serde_json::Value = serde_json::from_str(&super::support::raw_data(d)).unwrap();
            record["body"].as_str().unwrap().chars().next().unwrap().to_string()
        })
        .collect();
    failed_bodies.sort();
    assert_eq!(failed_bodies, ["x", "y", "y"]);
    let errors = json_lines_under(&dir.path().join("errors"));
    assert!(
        errors.iter().any(|e| e["errorCode"] == "Source.RecordTooLarge" && e["component"] == "otel"),
        "{errors:#?}"
    );
    let trail = json_lines_under(&dir.path().join("audit"));
    let counts: Vec<u64> = trail.iter().filter_map(|l| l["requestParameters"]["recordCount"].as_u64()).collect();
    assert_eq!(counts, [3, 2, 1], "{trail:#?}");
}

/// A pipeline `name` of an otlp source serving OTLP/HTTP and OTLP/gRPC (`grpc_listen`), with
/// `source_keys` besides, into NDJSON under `<dir>/lake` (its audit trail under `<dir>/audit`),
/// started and listening on both: the process and the gRPC port.
fn start_with_grpc(dir: &std::path::Path, name: &str, source_keys: &str) -> (super::support::Started, u16, u16) {
    let (port, grpc_port) = (free_port(), free_port());
    let table = format!(
        "type = \"otlp\"\nlisten = \"127.0.0.1:{port}\"\ngrpc_listen = \"127.0.0.1:{grpc_port}\"\n{source_keys}"
    );
    let config = super::support::listening_pipeline(dir, name, "", "otel", &table);
    let otlp = super::support::run_listening(&config, port);
    super::support::wait_for_port(grpc_port, "sluice's OTLP/gRPC listener");
    (otlp, port, grpc_port)
}
