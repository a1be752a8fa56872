//! The `otlp` source against OpenTelemetry's own SDKs: Python's logging handler and OTLP/HTTP log
//! exporter (protobuf, gzip, a bearer token in its headers, batches of its own), with a span
//! active for some records, and JavaScript's OTLP/HTTP exporter (OTLP's JSON encoding). Every record the SDK logged is in the lake once, with its body,
//! severity, attributes, resource, scope and trace context; refused requests answer as OTLP says.

use std::process::{Command, Stdio};

use super::support::{free_port, json_lines_under, python, repo_root, sluice, start_listening_with, terminate};

const TOKEN: &str = "otlp-test-token";

/// The example pipeline `pipelines/from-opentelemetry.toml` as a user runs it (its port moved, a
/// token given), fed by OpenTelemetry's Python SDK.
#[test]
fn opentelemetry_python_sdk_logs_land_with_their_context() {
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
    let mut otlp = start_listening_with(
        sluice()
            .current_dir(dir.path())
            .args(["run", "--quiet"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        port,
    );
    let script = format!(
        "import logging\n\
         from opentelemetry import trace\n\
         from opentelemetry.sdk.trace import TracerProvider\n\
         from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler\n\
         from opentelemetry.sdk._logs.export import BatchLogRecordProcessor\n\
         from opentelemetry.sdk.resources import Resource\n\
         from opentelemetry.exporter.otlp.proto.http import Compression\n\
         from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter\n\
         trace.set_tracer_provider(TracerProvider())\n\
         tracer = trace.get_tracer('shop')\n\
         provider = LoggerProvider(resource=Resource.create({{'service.name': 'checkout', 'deployment.environment': 'test'}}))\n\
         exporter = OTLPLogExporter(endpoint='http://127.0.0.1:{port}/v1/logs', headers={{'Authorization': 'Bearer {TOKEN}'}}, \
         compression=Compression.Gzip)\n\
         provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_export_batch_size=64))\n\
         log = logging.getLogger('payments')\n\
         log.setLevel(logging.INFO)\n\
         log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))\n\
         for i in range(300):\n\
         \x20   if i % 100 == 0:\n\
         \x20       with tracer.start_as_current_span('refund') as span:\n\
         \x20           log.warning('refund %d', i, extra={{'order.id': i}})\n\
         \x20           print(format(span.get_span_context().trace_id, '032x'))\n\
         \x20   else:\n\
         \x20       log.info('order %d paid', i, extra={{'order.id': i, 'amount': i * 1.5}})\n\
         provider.shutdown()\n"
    );
    let run = Command::new(python()).arg("-c").arg(script).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let trace_ids: Vec<String> = String::from_utf8_lossy(&run.stdout).lines().map(str::to_string).collect();
    assert_eq!(trace_ids.len(), 3);

    // OTLP's refusals: another token, another signal, another content type.
    let client = reqwest::blocking::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let status = |request: reqwest::blocking::RequestBuilder| request.send().unwrap().status().as_u16();
    let json = "application/json";
    assert_eq!(status(client.post(url("/v1/logs")).bearer_auth("wrong").header("Content-Type", json).body("{}")), 401);
    assert_eq!(status(client.post(url("/v1/traces")).bearer_auth(TOKEN).header("Content-Type", json).body("{}")), 404);
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
    let lake = dir.path().join("lake/otel");
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
        } else {
            assert_eq!((&r["severity_text"], &r["severity_number"]), (&"INFO".into(), &9.into()), "{r}");
            assert_eq!(r["attributes"]["amount"], i as f64 * 1.5, "{r}");
            assert!(r["trace_id"].is_null(), "{r}");
        }
    }
}

/// OpenTelemetry's JavaScript SDK and its OTLP/HTTP exporter, which sends OTLP's JSON encoding
/// (tests/js/otlp_logs.mjs): each record once, its map body and attributes as JSON values, its
/// resource and scope.
#[test]
fn opentelemetry_javascript_sdk_logs_in_otlp_json_land_whole() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("otlp-json.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"otlp-json\"\ndata_dir = \"{data}\"\n\
             [sources.otel]\ntype = \"otlp\"\nlisten = \"127.0.0.1:{port}\"\nbearer_token = \"{TOKEN}\"\n\
             [sinks.lake]\ntype = \"object_store\"\ninputs = [\"otel\"]\nurl = \"file://{lake}\"\nformat = \"ndjson\"\n",
            data = dir.path().join("data").display(),
            lake = dir.path().join("lake").display(),
        ),
    )
    .unwrap();
    let mut otlp = start_listening_with(
        sluice().args(["run", "--quiet"]).arg(&config).stdout(Stdio::null()).stderr(Stdio::null()),
        port,
    );
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
