//! `gs://` object stores against tests/gcs_server.py: Google Cloud Storage's XML API as Google
//! documents it, on 127.0.0.1, taking only requests signed with its service account's key
//! (self-signed JWTs). Records a pipeline delivers (small objects in one PUT, a large one as an
//! XML multipart upload) are stored whole and read back by sluice's `object_store` source; a
//! missing bucket and a key the server refuses stop the run at start; an upload a killed run left
//! open is aborted at the next start.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use sluice_connectors::synth::Profile;

use super::support::{
    Peer, all_lines, folder_objects, free_port, generated, object_store_pipeline, output_within, python, repo_root,
    sluice,
};

/// How long a run that should stop at start may take.
const STOPS_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// tests/gcs_server.py on a free port with the bucket `lake`, its key file and the folder it
/// mirrors its objects into; stopped when dropped.
struct Gcs {
    _server: Peer,
    port: u16,
    dir: tempfile::TempDir,
}

impl Gcs {
    fn start() -> Gcs {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let server = Peer::listening(
            Command::new(python())
                .arg(repo_root().join("tests/gcs_server.py"))
                .arg(port.to_string())
                .arg(dir.path().join("key.json"))
                .arg(dir.path().join("mirror"))
                .arg("lake")
                .stdout(Stdio::null()),
            port,
            "the GCS server",
        );
        Gcs { _server: server, port, dir }
    }

    /// The service account key file it wrote (with its `gcs_base_url`).
    fn key(&self) -> PathBuf {
        self.dir.path().join("key.json")
    }

    /// What it holds under `bucket/prefix`, as a folder.
    fn stored(&self, bucket_and_prefix: &str) -> PathBuf {
        self.dir.path().join("mirror").join(bucket_and_prefix)
    }

    /// One of its plain-text test answers.
    fn ask(&self, what: &str) -> String {
        reqwest::blocking::get(format!("http://127.0.0.1:{}/{what}", self.port)).unwrap().text().unwrap()
    }
}

/// 30,000 CloudTrail records (about 20 MB) go to one bucket twice: gzip NDJSON objects of at most
/// 1 MiB (one PUT each) and an uncompressed NDJSON object of all of them (an XML multipart upload
/// of 8 MiB parts, completed in order), every request signed with the service account's key. What
/// the server holds is exactly the records, and sluice's `object_store` source reading the
/// multipart object's prefix back delivers them again, whole.
#[test]
fn records_delivered_to_gcs_are_stored_whole_in_single_and_multipart_uploads_and_read_back() {
    let gcs = Gcs::start();
    let dir = tempfile::tempdir().unwrap();
    let records = generated(Profile::Cloudtrail, 42, 30_000);
    let input = dir.path().join("trail.ndjson");
    std::fs::write(&input, records.join("\n") + "\n").unwrap();
    let options = format!("options = {{ service_account = {:?} }}", gcs.key().display().to_string());
    let write = object_store_pipeline(
        dir.path(),
        "to-gcs",
        &format!("type = \"file\"\npaths = [{:?}]", input.display().to_string()),
        &format!(
            "url = \"gs://lake/trail\"\n{options}\nformat = \"ndjson\"\ncompression = \"gzip\"\n\
             buffer = {{ size_mb = 1, interval_s = 60 }}\n\n[sinks.whole]\ntype = \"object_store\"\ninputs = [\"in\"]\n\
             url = \"gs://lake/whole\"\n{options}\nformat = \"ndjson\"\nbuffer = {{ size_mb = 64, interval_s = 60 }}"
        ),
    );
    let output = sluice().args(["run", "--workers", "1", write.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut expected = records.clone();
    expected.sort();
    let small = folder_objects(&gcs.stored("lake/trail"));
    assert!(small.len() > 5 && small.keys().all(|k| k.ends_with(".gz")), "{:?}", small.keys());
    assert!(all_lines(&small) == expected, "the gzip objects hold other records");
    let whole = folder_objects(&gcs.stored("lake/whole"));
    assert_eq!(whole.len(), 1, "{:?}", whole.keys());
    assert!(all_lines(&whole) == expected, "the multipart object holds other records");
    // The large object went up in parts and was completed; no request was refused (a 401 or 403
    // would mean a token the server does not take), only the start-up probe's HEAD found nothing.
    let requests = gcs.ask("__requests");
    let count = |what: &str| requests.lines().filter(|l| l.contains(what)).count();
    assert_eq!(count("?uploads"), 1, "{requests}");
    assert!(count("partNumber=") >= 3, "{requests}");
    // (object_store escapes the `/` in object names.)
    assert_eq!(count("POST /lake/whole%2F"), 2, "an initiation and a completion: {requests}");
    let refused: Vec<&str> = requests.lines().filter(|l| !l.ends_with(" 200") && !l.ends_with(" 204")).collect();
    assert!(refused.iter().all(|l| l.contains("%2Esluice%2Dhealthcheck ") && l.ends_with(" 404")), "{refused:?}");
    assert_eq!(gcs.ask("__uploads"), "0");

    let out = dir.path().join("again");
    let reread = object_store_pipeline(
        dir.path(),
        "from-gcs",
        &format!("type = \"object_store\"\nurl = \"gs://lake/whole/\"\n{options}"),
        &format!("url = \"file://{}\"\nformat = \"ndjson\"", out.display()),
    );
    let output = sluice().args(["run", reread.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(all_lines(&folder_objects(&out)) == expected, "the source read other records back");
}

/// A bucket that does not exist and a key the server does not take each stop the run when it
/// starts, saying which (otherwise every object, and its error-output copy in the same bucket,
/// would be retried until the stop's grace ran out); the key is never printed. An empty prefix of
/// a bucket that exists is no problem.
#[test]
fn a_missing_bucket_or_a_refused_key_stops_a_gcs_run_at_start() {
    let gcs = Gcs::start();
    let dir = tempfile::tempdir().unwrap();
    let source = "type = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 100";
    let options = format!("options = {{ service_account = {:?} }}", gcs.key().display().to_string());
    let missing =
        object_store_pipeline(dir.path(), "missing", source, &format!("url = \"gs://nolake/trail\"\n{options}"));
    let output = output_within(sluice().args(["run", missing.to_str().unwrap()]), STOPS_WITHIN);
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("the bucket of gs://nolake/trail does not exist; create it, or correct the URL"), "{said}");

    // The same account's key file with another RSA key: its tokens' signatures do not verify.
    let mut key: serde_json::Value = serde_json::from_slice(&std::fs::read(gcs.key()).unwrap()).unwrap();
    let other = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .unwrap();
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    let other_key = String::from_utf8(other.stdout).unwrap();
    key["private_key"] = serde_json::Value::from(other_key.clone());
    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, key.to_string()).unwrap();
    let refused = object_store_pipeline(
        dir.path(),
        "refused",
        source,
        &format!("url = \"gs://lake/trail\"\noptions = {{ service_account = {:?} }}", wrong.display().to_string()),
    );
    let output = output_within(sluice().args(["run", refused.to_str().unwrap()]), STOPS_WITHIN);
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("gs://lake/trail refused our credentials") && said.contains("401"), "{said}");
    let secret = other_key.lines().nth(1).unwrap();
    assert!(!said.contains(secret), "the key is never printed: {said}");
    assert!(!gcs.stored("lake/trail").exists(), "nothing was delivered");

    let fine = object_store_pipeline(
        dir.path(),
        "fine",
        source,
        &format!("url = \"gs://lake/fresh/prefix\"\nformat = \"ndjson\"\n{options}"),
    );
    let output = sluice().args(["run", fine.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(all_lines(&folder_objects(&gcs.stored("lake/fresh/prefix"))).len(), 100);
}

/// A multipart upload a killed run left open (GCS keeps, and bills, its parts though no listing
/// shows them) is aborted by the sink at the next start.
#[test]
fn a_multipart_upload_an_interrupted_run_left_open_on_gcs_is_aborted_at_the_next_start() {
    let gcs = Gcs::start();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[pipeline]\nname = \"stale\"\ndata_dir = \"{}\"\n[sources.demo]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 1\n\
         [sinks.gcs]\ntype = \"object_store\"\ninputs = [\"demo\"]\nurl = \"gs://lake/stale\"\n\
         options = {{ service_account = {:?} }}\n",
        dir.path().join("data").display(),
        gcs.key().display().to_string()
    );
    super::support::an_upload_left_open_is_aborted_at_the_next_start(&toml, || {
        gcs.ask("__uploads").parse().unwrap_or_else(|e| panic!("{e}"))
    });
}
