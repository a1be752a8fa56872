//! One client must not exhaust a listener (issue 11, items 5 and 6): requests whose headers fail
//! authentication are refused before their body is read, bodies being read count against
//! `max_body_buffer_mb`, connections past `max_connections` are closed, and slow headers, slow
//! bodies and idle keep-alive connections time out. Driven over raw TCP against a `sluice`
//! process on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use sluice_connectors::api::sigv4::Signer;

use super::support::{firehose_to_files, free_port, start_listening, terminate};

const KEY: &str = "AKIDLISTENER";
const SECRET: &str = "listener-secret";

/// `sluice run` of a firehose pipeline on `port` with `source_keys` added to its source.
fn start(dir: &Path, port: u16, source_keys: &str) -> super::support::Started {
    let config = dir.join("listener.toml");
    let text = firehose_to_files("limits", port, &dir.join("data"), &dir.join("out"), "", source_keys, "");
    std::fs::write(&config, text).unwrap();
    start_listening(&["run", config.to_str().unwrap()], port, Stdio::null(), Stdio::null())
}

fn stop(child: super::support::Started) {
    terminate(&child);
    assert!(child.wait_with_output().unwrap().status.success());
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream
}

/// Headers of a PutRecordBatch declaring a `length`-byte body, with `authorization` (none when
/// empty) and a date `skew_s` seconds off.
fn put_headers(port: u16, length: usize, authorization: &str, date: &str) -> String {
    let mut head = format!(
        "POST / HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/x-amz-json-1.1\r\n\
         x-amz-target: Firehose_20150804.PutRecordBatch\r\ncontent-length: {length}\r\nx-amz-date: {date}\r\n"
    );
    if !authorization.is_empty() {
        head.push_str(&format!("authorization: {authorization}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// An `Authorization` that passes every check the headers allow (known key, scope, date, `host`
/// signed) but signs an empty body: only reading the body can show it is wrong.
fn plausible_authorization(port: u16, date: &str) -> String {
    let mut headers = http::HeaderMap::new();
    headers.insert("host", format!("127.0.0.1:{port}").parse().unwrap());
    let signer = Signer { key_id: KEY, secret: SECRET, region: "us-east-1", service: "firehose" };
    signer.sign(date, "POST", "/", &mut headers, b"").unwrap();
    headers["authorization"].to_str().unwrap().to_string()
}

fn now_amz() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

/// Reads one whole HTTP response (status line, headers, a `content-length` body) as text.
fn response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return String::from_utf8_lossy(&got).to_string(),
        }
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    let _ = stream.read_exact(&mut body);
    got.extend_from_slice(&body);
    String::from_utf8_lossy(&got).to_string()
}

/// Whether the server closed the connection within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn requests_the_headers_condemn_are_refused_before_their_bodies_and_bodies_share_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let auth =
        format!("auth = {{ access_keys = [{{ id = \"{KEY}\", secret = \"{SECRET}\" }}] }}\nmax_body_buffer_mb = 6");
    let child = start(dir.path(), port, &auth);
    let big = 5 << 20;
    // 150 connections announce 5 MiB bodies without a signature, an unknown key, a stale date:
    // each is answered at once, without a byte of its body sent.
    let now = now_amz();
    let unknown = plausible_authorization(port, &now).replace(KEY, "AKIDUNKNOWN");
    let stale = "20200101T000000Z";
    let cases = [
        ("", now.as_str(), "MissingAuthenticationTokenException"),
        (unknown.as_str(), now.as_str(), "UnrecognizedClientException"),
        ("AWS4-HMAC-SHA256 nonsense", now.as_str(), "IncompleteSignatureException"),
    ];
    let mut streams = Vec::new();
    for i in 0..150 {
        let (authorization, date, _) = cases[i % cases.len()];
        let mut stream = connect(port);
        stream.write_all(put_headers(port, big, authorization, date).as_bytes()).unwrap();
        streams.push(stream);
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        let answer = response(stream);
        assert!(answer.contains(cases[i % cases.len()].2), "{answer}");
    }
    let mut stale_stream = connect(port);
    stale_stream.write_all(put_headers(port, big, &plausible_authorization(port, stale), stale).as_bytes()).unwrap();
    assert!(response(&mut stale_stream).contains("InvalidSignatureException"));

    // Plausible headers get their body read, within the 6 MiB budget: a second 5 MiB body waits
    // for room, refused at once with ServiceUnavailableException while the first is being sent.
    let mut first = connect(port);
    first.write_all(put_headers(port, big, &plausible_authorization(port, &now), &now).as_bytes()).unwrap();
    first.write_all(&vec![b' '; 1000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut second = connect(port);
    second.write_all(put_headers(port, big, &plausible_authorization(port, &now), &now).as_bytes()).unwrap();
    let answer = response(&mut second);
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("ServiceUnavailableException"), "{answer}");
    // Once the first body is in (its signature is then found wrong), the room is free again.
    first.write_all(&vec![b' '; big - 1000]).unwrap();
    assert!(response(&mut first).contains("InvalidSignatureException"));
    let mut third = connect(port);
    third.write_all(put_headers(port, 2, &plausible_authorization(port, &now), &now).as_bytes()).unwrap();
    third.write_all(b"{}").unwrap();
    assert!(response(&mut third).contains("InvalidSignatureException"));
    stop(child);
}

#[test]
fn connections_past_the_cap_are_closed_and_slow_or_idle_ones_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let limits = "max_connections = 3\nheader_timeout_s = 1\nbody_timeout_s = 1\nidle_timeout_s = 3";
    let child = start(dir.path(), port, limits);
    let list = format!(
        "POST / HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-amz-target: Firehose_20150804.ListDeliveryStreams\r\n\
         content-type: application/x-amz-json-1.1\r\ncontent-length: 2\r\n\r\n{{}}"
    );

    // Partial headers: closed after the header timeout.
    let mut partial = connect(port);
    partial.write_all(b"POST / HTTP/1.1\r\nhost: 127.0.0.1\r\n").unwrap();
    assert!(closed_within(&mut partial, Duration::from_secs(5)), "partial headers were not timed out");

    // A partial body: 408 after the body timeout.
    let mut slow = connect(port);
    slow.write_all(put_headers(port, 100, "", &now_amz()).as_bytes()).unwrap();
    slow.write_all(b"{\"Records\"").unwrap();
    let answer = response(&mut slow);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("RequestTimeoutException"), "{answer}");

    // Keep-alive: a second request after 1.5 s (past the header timeout, within the idle one) is
    // served; then the idle connection is closed.
    let mut kept = connect(port);
    kept.write_all(list.as_bytes()).unwrap();
    let answer = response(&mut kept);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("DeliveryStreamNames"), "{answer}");
    std::thread::sleep(Duration::from_millis(1500));
    kept.write_all(list.as_bytes()).unwrap();
    let answer = response(&mut kept);
    assert!(answer.starts_with("HTTP/1.1 200"), "a keep-alive connection was closed before its idle timeout: {answer}");
    assert!(closed_within(&mut kept, Duration::from_secs(8)), "an idle connection was not closed");

    // Three connections are the cap: a fourth is closed at once, before a byte is read.
    let mut open: Vec<TcpStream> = (0..3).map(|_| connect(port)).collect();
    for stream in &mut open {
        stream.write_all(b"POST").unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = connect(port);
    let _ = fourth.write_all(list.as_bytes());
    assert!(closed_within(&mut fourth, Duration::from_millis(900)), "a connection past the cap was served");
    drop(open);
    stop(child);
}
