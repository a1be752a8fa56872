//! `http(s)://` object stores (object_store's HTTP store: a WebDAV server) against WsgiDAV on
//! 127.0.0.1: small gzip objects and an object past the part size are stored whole (one PUT each:
//! the store has no multipart upload; before, an object past 8 MiB went to the error output), read
//! back by the `object_store` source (PROPFIND listings); the URL's folders are made when missing.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use sluice_connectors::synth::Profile;

use super::support::{
    Peer, all_lines, folder_objects, free_port, generated, object_store_pipeline, output_within, python, sluice,
};

/// WsgiDAV serving a folder of its own, anonymous and writable; stopped when dropped.
struct WebDav {
    _server: Peer,
    port: u16,
    root: tempfile::TempDir,
}

impl WebDav {
    fn start() -> WebDav {
        let port = free_port();
        let root = tempfile::tempdir().unwrap();
        let server = Peer::listening(
            Command::new(python().with_file_name("wsgidav"))
                .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--auth", "anonymous", "--no-config", "-q"])
                .arg("--root")
                .arg(root.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            port,
            "WsgiDAV",
        );
        WebDav { _server: server, port, root }
    }

    /// The URL of `folder` on the server.
    fn url(&self, folder: &str) -> String {
        format!("http://127.0.0.1:{}/{folder}", self.port)
    }

    /// `folder` as the server keeps it on disk.
    fn folder(&self, folder: &str) -> PathBuf {
        self.root.path().join(folder)
    }
}

/// 30,000 CloudTrail records (about 20 MB) go to a WebDAV folder as gzip objects of 1 MiB and as
/// one uncompressed object of all of them; the server holds exactly the records, in objects with
/// their extensions, and the `object_store` source lists and reads them back.
#[test]
fn records_delivered_to_a_webdav_server_are_stored_whole_and_read_back() {
    let dav = WebDav::start();
    std::fs::create_dir_all(dav.folder("lake")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let records = generated(Profile::Cloudtrail, 42, 30_000);
    let input = dir.path().join("trail.ndjson");
    std::fs::write(&input, records.join("\n") + "\n").unwrap();
    let write = object_store_pipeline(
        dir.path(),
        "to-dav",
        &format!("type = \"file\"\npaths = [{:?}]", input.display().to_string()),
        &format!(
            "url = \"{}\"\nformat = \"ndjson\"\ncompression = \"gzip\"\nbuffer = {{ size_mb = 1, interval_s = 60 }}\n\n\
             [sinks.whole]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"{}\"\nformat = \"ndjson\"\n\
             buffer = {{ size_mb = 64, interval_s = 60 }}",
            dav.url("lake/trail"),
            dav.url("lake/whole")
        ),
    );
    let output = output_within(sluice().args(["run", "--workers", "1", write.to_str().unwrap()]), STOPS_WITHIN);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    let mut expected = records.clone();
    expected.sort();
    let small = folder_objects(&dav.folder("lake/trail"));
    assert!(small.len() > 5 && small.keys().all(|k| k.ends_with(".gz")), "{:?}", small.keys());
    assert!(all_lines(&small) == expected, "the gzip objects hold other records");
    let whole = folder_objects(&dav.folder("lake/whole"));
    assert_eq!(whole.len(), 1, "{:?}", whole.keys());
    assert!(all_lines(&whole) == expected, "the large object holds other records");

    let out = dir.path().join("again");
    let reread = object_store_pipeline(
        dir.path(),
        "from-dav",
        &format!("type = \"object_store\"\nurl = \"{}\"", dav.url("lake/trail")),
        &format!("url = \"file://{}\"\nformat = \"ndjson\"", out.display()),
    );
    let output = output_within(sluice().args(["run", reread.to_str().unwrap()]), STOPS_WITHIN);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(all_lines(&folder_objects(&out)) == expected, "the source read other records back");
}

/// How long a run here may take.
const STOPS_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// The URL's folders are made (MKCOL) when the server lacks them, as object stores need no folders.
#[test]
fn the_folders_of_a_webdav_url_are_made_when_missing() {
    let dav = WebDav::start();
    let dir = tempfile::tempdir().unwrap();
    let config = object_store_pipeline(
        dir.path(),
        "nofolder",
        "type = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 100",
        &format!("url = \"{}\"\nformat = \"ndjson\"", dav.url("new/lake/trail")),
    );
    let output = output_within(sluice().args(["run", config.to_str().unwrap()]), STOPS_WITHIN);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(all_lines(&folder_objects(&dav.folder("new/lake/trail"))).len(), 100);
}
