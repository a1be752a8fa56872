//! The `splunk_hec` source against the clients of Splunk's HTTP Event Collector: sluice's own
//! `splunk` sink (HEC as Firehose's Splunk destination speaks it: channels, indexer
//! acknowledgement, its health check at start), `splunk_handler` (a Python logging handler posting
//! to HEC, from PyPI) and plain requests for HEC's refusals. Every event a client was told was
//! taken is in the lake exactly once, as the client wrote it; nothing of a refused request is.

use std::process::{Command, Stdio};

use sluice_connectors::synth::Profile;

use super::support::{
    files_under, free_port, generated, json_lines_under, python, repo_root, sluice, start_listening,
    start_listening_with, terminate,
};

const TOKEN: &str = "3c1d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f";

/// `sluice run` of a pipeline whose `splunk_hec` source listens on `port` (token [`TOKEN`]) and
/// writes each record to NDJSON objects under `dir/lake`; started once it listens.
fn start_hec(dir: &std::path::Path, port: u16) -> super::support::Started {
    start_hec_with(dir, port, "")
}

/// [`start_hec`] with `source_keys` added to the source's table.
fn start_hec_with(dir: &std::path::Path, port: u16, source_keys: &str) -> super::support::Started {
    let config = dir.join("hec.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"hec\"\ndata_dir = \"{data}\"\naudit_log = \"file://{audit}\"\n\
             [sources.hec]\ntype = \"splunk_hec\"\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n{source_keys}\n\
             [sinks.lake]\ntype = \"object_store\"\ninputs = [\"hec\"]\nurl = \"file://{lake}\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 1, interval_s = 1 }}\n",
            data = dir.join("data").display(),
            lake = dir.join("lake").display(),
            audit = dir.join("audit").display(),
        ),
    )
    .unwrap();
    start_listening(&["run", "--quiet", config.to_str().unwrap()], port, Stdio::null(), Stdio::null())
}

/// A response's JSON body.
fn answer_of(response: reqwest::blocking::Response) -> serde_json::Value {
    serde_json::from_str(&response.text().unwrap()).unwrap()
}

/// Stops the HEC pipeline and answers every record it wrote under `lake`, parsed.
fn stop_and_read(mut hec: super::support::Started, lake: &std::path::Path) -> Vec<serde_json::Value> {
    terminate(&hec);
    assert!(hec.wait().unwrap().success());
    json_lines_under(lake)
}

/// sluice's `splunk` sink, as Firehose's Splunk destination does, sends 3,000 CloudTrail events to
/// the source: health check, channel, `ackId`s, acknowledgements polled until true. The run ends
/// with every event acknowledged (nothing backed up), and the lake holds each once, under `event`,
/// as the sink wrote it.
#[test]
fn the_splunk_sink_delivers_to_the_splunk_hec_source_with_indexer_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hec = start_hec(dir.path(), port);
    let sender = dir.path().join("send.toml");
    std::fs::write(
        &sender,
        format!(
            "[pipeline]\nname = \"send\"\ndata_dir = \"{data}\"\nworkers = 2\n\
             [sources.demo]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 3000\nseed = 9\n\
             [sinks.siem]\ntype = \"splunk\"\ninputs = [\"demo\"]\nurl = \"http://127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\
             ack_timeout_s = 180\nbuffer = {{ size_mb = 1, interval_s = 1 }}\nbackup_store = {{ url = \"file://{backup}\" }}\n",
            data = dir.path().join("send-data").display(),
            backup = dir.path().join("backup").display(),
        ),
    )
    .unwrap();
    let sent = sluice().args(["run", "--quiet"]).arg(&sender).output().unwrap();
    let said = String::from_utf8_lossy(&sent.stdout).into_owned() + &String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "{said}");
    assert!(said.contains("delivered 3000 records"), "{said}");
    assert!(files_under(&dir.path().join("backup")).is_empty(), "nothing backed up: {said}");
    let envelopes = stop_and_read(hec, &dir.path().join("lake"));
    let mut events: Vec<String> = envelopes.iter().map(|e| e["event"].to_string()).collect();
    events.sort();
    let mut expected: Vec<String> = generated(Profile::Cloudtrail, 9, 3000)
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap().to_string())
        .collect();
    expected.sort();
    assert_eq!(events.len(), expected.len(), "each event once");
    assert!(events == expected, "the events as the sink sent them");
    assert!(envelopes.iter().all(|e| e["time"].as_f64().is_some_and(|t| t > 1.7e9)), "the sink's arrival times");
}

/// The example pipeline `pipelines/from-splunk-hec.toml` as a user runs it (its port moved), fed by
/// a Python application logging through `splunk_handler` (HEC's event endpoint, its own batching
/// and retries) into two indexes: its 200 log records land as the handler wrote them, under the
/// index and sourcetype they name.
#[test]
fn python_logging_through_splunk_handler_lands_in_the_example_lake() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let example = std::fs::read_to_string(repo_root().join("pipelines/from-splunk-hec.toml")).unwrap();
    let config = dir.path().join("from-splunk-hec.toml");
    std::fs::write(&config, example.replace("127.0.0.1:8088", &format!("127.0.0.1:{port}"))).unwrap();
    let hec = start_listening_with(
        sluice()
            .current_dir(dir.path())
            .args(["run", "--quiet"])
            .arg(&config)
            .env("HEC_TOKEN", TOKEN)
            .stdout(Stdio::null()),
        port,
    );
    let script = format!(
        "import logging, splunk_handler\n\
         for index in ['main', 'audit']:\n\
         \x20   handler = splunk_handler.SplunkHandler(host='127.0.0.1', port={port}, token='{TOKEN}', index=index, \
         protocol='http', verify=False, flush_interval=0.2, source='app', sourcetype='app:json', hostname='web-1')\n\
         \x20   log = logging.getLogger(index)\n\
         \x20   log.setLevel(logging.INFO)\n\
         \x20   log.addHandler(handler)\n\
         \x20   for i in range(100):\n\
         \x20       log.info('%s order %d paid', index, i)\n\
         splunk_handler.force_flush()\n"
    );
    let run = Command::new(python()).arg("-c").arg(script).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let lake = dir.path().join("lake/hec");
    let envelopes = stop_and_read(hec, &lake);
    let mut messages: Vec<String> = envelopes
        .iter()
        .map(|e| {
            assert_eq!(
                (&e["host"], &e["source"], &e["sourcetype"]),
                (&"web-1".into(), &"app".into(), &"app:json".into()),
                "{e}"
            );
            format!("{}/{}", e["index"].as_str().unwrap_or_default(), e["event"].as_str().unwrap_or_default())
        })
        .collect();
    messages.sort();
    let mut expected: Vec<String> = ["main", "audit"]
        .iter()
        .flat_map(|index| (0..100).map(move |i| format!("{index}/{index} order {i} paid")))
        .collect();
    expected.sort();
    assert_eq!(messages, expected);
    for index in ["main", "audit"] {
        let partition = lake.join(format!("index={index}/sourcetype=app:json"));
        let lines = json_lines_under(&partition);
        assert_eq!(lines.len(), 100, "{}", partition.display());
        assert!(lines.iter().all(|e| e["index"] == index));
    }
}

/// HEC's refusals, each with its status and code and nothing of the request stored; the raw
/// endpoint's lines, gzip bodies, Basic auth, the health and ack endpoints.
#[test]
fn hec_requests_are_answered_as_splunk_answers_them() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hec = start_hec(dir.path(), port);
    let client = reqwest::blocking::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let post = |path: &str, auth: Option<&str>, body: &str| {
        let mut request = client.post(url(path)).body(body.to_string());
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        (status, answer_of(response))
    };
    let splunk = format!("Splunk {TOKEN}");
    let refused = [
        ("/services/collector/event", None, r#"{"event":"x1"}"#, 401, 2),
        ("/services/collector/event", Some("Bearer x"), r#"{"event":"x2"}"#, 401, 3),
        ("/services/collector/event", Some("Splunk not-the-token"), r#"{"event":"x3"}"#, 403, 4),
        ("/services/collector/event", Some(splunk.as_str()), "  ", 400, 5),
        ("/services/collector/event", Some(splunk.as_str()), r#"{"event":"x4"}{"event":"#, 400, 6),
        ("/services/collector/event", Some(splunk.as_str()), r#"{"event":"x5"}{"host":"h"}"#, 400, 12),
        ("/services/collector/event", Some(splunk.as_str()), r#"{"event":"x6"}{"event":""}"#, 400, 13),
        ("/services/collector/ack", Some(splunk.as_str()), r#"{"acks":[0]}"#, 400, 10),
    ];
    for (path, auth, body, status, code) in refused {
        let (got, answer) = post(path, auth, body);
        assert_eq!((got, &answer["code"]), (status, &code.into()), "{path} {body}: {answer}");
    }
    let (_, missing) = post("/services/collector/event", Some(&splunk), r#"{"event":"x5"}{"host":"h"}"#);
    assert_eq!(missing, serde_json::json!({"text": "Event field is required", "code": 12, "invalid-event-number": 1}));
    let (status, answer) = post("/services/collector/event?token=abc", None, r#"{"event":"x7"}"#);
    assert_eq!((status, &answer["code"]), (400, &16.into()));
    let (status, answer) = post("/services/collector/nothing", Some(&splunk), "{}");
    assert_eq!(status, 404, "{answer}");
    let health = client.get(url("/services/collector/health")).send().unwrap();
    assert_eq!(answer_of(health), serde_json::json!({"text": "HEC is healthy", "code": 17}));

    // Taken: a raw body (gzip, on a channel), an event body with Basic auth.
    let channel = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, b"{\"raw\":1}\r\n{\"raw\":2}\n").unwrap();
    let raw = client
        .post(url("/services/collector/raw?sourcetype=json"))
        .header("Authorization", &splunk)
        .header("X-Splunk-Request-Channel", channel)
        .header("Content-Encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .unwrap();
    assert_eq!(answer_of(raw), serde_json::json!({"text": "Success", "code": 0, "ackId": 0}));
    let basic = client
        .post(url("/services/collector/event"))
        .basic_auth("anyone", Some(TOKEN))
        .header("X-Splunk-Request-Channel", channel)
        .body(r#"{"event":{"basic":true},"time":1764547200.5}"#)
        .send()
        .unwrap();
    assert_eq!(answer_of(basic)["ackId"], 1);
    let ask_acks = |body: &'static str| {
        let url = url(&format!("/services/collector/ack?channel={channel}"));
        answer_of(client.post(url).header("Authorization", &splunk).body(body).send().unwrap())
    };
    assert_eq!(ask_acks(r#"{"acks":[0,1,2]}"#), serde_json::json!({"acks": {"0": true, "1": true, "2": false}}));
    // HEC answers an id `true` once.
    assert_eq!(ask_acks(r#"{"acks":[1,0]}"#), serde_json::json!({"acks": {"0": false, "1": false}}));
    let (status, answer) = post("/services/collector/event?channel=not-a-guid", Some(&splunk), r#"{"event":"x8"}"#);
    assert_eq!((status, &answer["code"]), (400, &11.into()));

    let mut stored: Vec<String> = stop_and_read(hec, &dir.path().join("lake")).iter().map(|r| r.to_string()).collect();
    stored.sort();
    assert_eq!(stored, [r#"{"event":{"basic":true},"time":1764547200.5}"#, r#"{"raw":1}"#, r#"{"raw":2}"#]);
    // The audit trail: each request, the token's name when it carried one, HEC's code when refused.
    let trail: Vec<serde_json::Value> = json_lines_under(&dir.path().join("audit"))
        .into_iter()
        .filter(|l| l["eventSource"] == "splunk-hec.sluice")
        .collect();
    let raw = trail.iter().find(|l| l["eventName"] == "SendRaw").unwrap_or_else(|| panic!("{trail:#?}"));
    assert_eq!(
        (&raw["userIdentity"]["tokenName"], &raw["requestParameters"]["recordCount"], raw.get("errorCode")),
        (&"default".into(), &2.into(), None),
        "{raw}"
    );
    let wrong = trail.iter().find(|l| l["errorCode"] == "HEC.4").unwrap_or_else(|| panic!("{trail:#?}"));
    assert_eq!((&wrong["userIdentity"]["type"], &wrong["errorMessage"]), (&"Unknown".into(), &"Invalid token".into()));
    assert!(trail.iter().any(|l| l["eventName"] == "QueryAcks" && l.get("errorCode").is_none()), "{trail:#?}");
}

/// `raw_format = "events"`: raw-endpoint lines sent as Splunk's examples send them (curl's
/// `?sourcetype=…&host=…` metadata, a channel) land as event objects with that metadata, so the
/// raw and event endpoints fill one lake alike; a `time` that is no number is refused (code 6).
#[test]
fn raw_lines_land_as_events_with_the_query_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hec = start_hec_with(dir.path(), port, "raw_format = \"events\"");
    let client = reqwest::blocking::Client::new();
    let url = format!(
        "http://127.0.0.1:{port}/services/collector/raw?channel=00872DC6-AC83-4EDE-8AFE-8413C3825C4C\
         &sourcetype=access_combined&host=web-1&index=web&source=%2Fvar%2Flog%2Fnginx%2Faccess.log"
    );
    let lines = "10.0.0.1 - - [07/Dec/2026:10:00:00 +0000] \"GET / HTTP/1.1\" 200 612\n\
                 10.0.0.2 - - [07/Dec/2026:10:00:01 +0000] \"GET /pay HTTP/1.1\" 502 0\n";
    let taken = client.post(&url).header("Authorization", format!("Splunk {TOKEN}")).body(lines).send().unwrap();
    assert_eq!(answer_of(taken), serde_json::json!({"text": "Success", "code": 0, "ackId": 0}));
    // An event-endpoint object beside them, as the lake's other producers send.
    let event = client
        .post(format!("http://127.0.0.1:{port}/services/collector/event"))
        .header("Authorization", format!("Splunk {TOKEN}"))
        .body(r#"{"host":"web-2","sourcetype":"access_combined","event":"from the event endpoint"}"#)
        .send()
        .unwrap();
    assert_eq!(event.status().as_u16(), 200);
    let refused = client
        .post(format!("http://127.0.0.1:{port}/services/collector/raw?time=yesterday"))
        .header("Authorization", format!("Splunk {TOKEN}"))
        .body("x\n")
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    assert_eq!(answer_of(refused)["code"], 6);
    let mut records = stop_and_read(hec, &dir.path().join("lake"));
    records.sort_by_key(|r| r["event"].as_str().unwrap_or_default().to_string());
    let metadata =
        |r: &serde_json::Value| (r["host"].clone(), r["sourcetype"].clone(), r["index"].clone(), r["source"].clone());
    assert_eq!(records.len(), 3, "{records:#?}");
    assert!(records[0]["event"].as_str().is_some_and(|e| e.starts_with("10.0.0.1 ")), "{records:#?}");
    assert!(records[1]["event"].as_str().is_some_and(|e| e.starts_with("10.0.0.2 ")), "{records:#?}");
    for r in &records[..2] {
        assert_eq!(
            metadata(r),
            ("web-1".into(), "access_combined".into(), "web".into(), "/var/log/nginx/access.log".into()),
            "{r}"
        );
    }
    assert_eq!(records[2]["host"], "web-2");
}
