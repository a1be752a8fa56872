//! `az://` object stores against Azurite (Microsoft's Azure Storage emulator, from tests/js) on
//! 127.0.0.1, read and written beside Microsoft's own Python SDK (azure-storage-blob): records a
//! pipeline delivers, large objects uploaded in blocks among them, are read back whole by the SDK
//! and by sluice's `object_store` source; a refused key stops the run at start.

use std::path::Path;
use std::process::{Command, Stdio};

use sluice_connectors::synth::Profile;

use super::support::{Peer, folder_objects, free_port, generated, object_store_pipeline, python, repo_root, sluice};

/// Azurite's well-known development account and key (its documentation's).
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's Blob service on a free port of 127.0.0.1, keeping its data in a folder of its own;
/// stopped when dropped.
struct Azurite {
    _server: Peer,
    /// `http://127.0.0.1:<port>`.
    url: String,
    _data: tempfile::TempDir,
}

impl Azurite {
    fn start() -> Azurite {
        let port = free_port();
        let data = tempfile::tempdir().unwrap();
        let server = Peer::listening(
            Command::new(repo_root().join("tests/js/node_modules/.bin/azurite-blob"))
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--skipApiVersionCheck"])
                // Azurite reports telemetry to Azure by default: nothing here reaches beyond 127.0.0.1.
                .arg("--disableTelemetry")
                .arg("--location")
                .arg(data.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            port,
            "azurite",
        );
        Azurite { _server: server, url: format!("http://127.0.0.1:{port}"), _data: data }
    }

    /// Runs `script` with the SDK, `service` bound to a `BlobServiceClient` of the account; its
    /// stdout, trimmed.
    fn sdk(&self, script: &str) -> String {
        let connection = format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={}/{ACCOUNT};",
            self.url
        );
        let output = Command::new(python())
            .args([
                "-c",
                &format!(
                    "import gzip\nfrom azure.storage.blob import BlobServiceClient\n\
                     service = BlobServiceClient.from_connection_string({connection:?})\n{script}"
                ),
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// `sluice run config` against this Azurite (object_store's emulator mode reads its address
    /// from `AZURITE_BLOB_STORAGE_URL`).
    fn run(&self, config: &Path) -> std::process::Output {
        sluice().args(["run", config.to_str().unwrap()]).env("AZURITE_BLOB_STORAGE_URL", &self.url).output().unwrap()
    }
}

/// 40,000 CloudTrail records (about 27 MB) are delivered to a container as gzip NDJSON and,
/// uncompressed, as NDJSON whose objects (about 13 MB each) are uploaded in blocks (`Content-Encoding: gzip`, which the SDK decodes unless
/// told not to); Microsoft's SDK lists the blobs under the prefix and reads back exactly the
/// records `sluice gen` makes, and sluice's `object_store` source, reading
/// the same `az://` prefix, delivers them again to a folder, whole.
#[test]
fn records_delivered_to_azure_are_read_back_whole_by_microsofts_sdk_and_the_source() {
    let azurite = Azurite::start();
    azurite.sdk("service.create_container('lake')");
    let dir = tempfile::tempdir().unwrap();
    let options = "options = { use_emulator = \"true\" }";
    let write = object_store_pipeline(
        dir.path(),
        "to-azure",
        "type = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 40000",
        &format!(
            "url = \"az://lake/trail\"\n{options}\nformat = \"ndjson\"\ncompression = \"gzip\"\n\
             buffer = {{ size_mb = 64, interval_s = 60 }}\n\n[sinks.plain]\ntype = \"object_store\"\ninputs = [\"in\"]\n\
             url = \"az://lake/plain\"\n{options}\nformat = \"ndjson\"\nbuffer = {{ size_mb = 64, interval_s = 60 }}"
        ),
    );
    let output = azurite.run(&write);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut expected = generated(Profile::Cloudtrail, 42, 40_000);
    expected.sort();

    let listed = azurite.sdk(
        "container = service.get_container_client('lake')\n\
         lines = []\n\
         for blob in container.list_blobs(name_starts_with='trail/'):\n\
         \x20   assert blob.name.endswith('.gz'), blob.name\n\
         \x20   assert blob.content_settings.content_encoding == 'gzip', blob.content_settings\n\
         \x20   stored = container.download_blob(blob.name, decompress=False).readall()\n\
         \x20   lines += gzip.decompress(stored).decode().splitlines()\n\
         print(len(lines))\n\
         print('\\n'.join(sorted(lines)))",
    );
    let mut read = listed.lines();
    assert_eq!(read.next(), Some("40000"));
    assert!(read.eq(expected.iter().map(String::as_str)), "the SDK reads other records than were delivered");
    // The uncompressed copy's objects (about 13 MB each) went up in blocks, committed in order.
    let plain = azurite.sdk(
        "container = service.get_container_client('lake')\n\
         lines, blocks = [], []\n\
         for blob in container.list_blobs(name_starts_with='plain/'):\n\
         \x20   committed, _ = container.get_blob_client(blob.name).get_block_list('committed')\n\
         \x20   blocks.append(len(committed))\n\
         \x20   lines += container.download_blob(blob.name).readall().decode().splitlines()\n\
         print(max(blocks))\n\
         print('\\n'.join(sorted(lines)))",
    );
    let mut read = plain.lines();
    let most_blocks: usize = read.next().unwrap().parse().unwrap();
    assert!(most_blocks > 1, "no object was uploaded in blocks");
    assert!(read.eq(expected.iter().map(String::as_str)), "the uncompressed copy differs");

    let out = dir.path().join("again");
    let reread = object_store_pipeline(
        dir.path(),
        "from-azure",
        &format!("type = \"object_store\"\nurl = \"az://lake/trail/\"\n{options}"),
        &format!("url = \"file://{}\"\nformat = \"ndjson\"", out.display()),
    );
    let output = azurite.run(&reread);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut again: Vec<String> = folder_objects(&out).into_values().flatten().collect();
    again.sort();
    assert!(again == expected, "{} records read back by the source", again.len());
}

/// A key the account refuses stops the run when it starts (otherwise every object, and its
/// error-output copy in the same container, would be retried until the stop's grace ran out), and
/// the key is never printed.
#[test]
fn a_refused_key_stops_an_azure_run_at_start() {
    let azurite = Azurite::start();
    azurite.sdk("service.create_container('lake')");
    let dir = tempfile::tempdir().unwrap();
    let source = "type = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 100";
    let wrong_key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 64]);
    let refused = object_store_pipeline(
        dir.path(),
        "refused",
        source,
        &format!("url = \"az://lake/trail\"\noptions = {{ use_emulator = \"true\", account_key = \"{wrong_key}\" }}"),
    );
    let output = azurite.run(&refused);
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("az://lake/trail refused our credentials") && said.contains("403"), "{said}");
    assert!(!said.contains(&wrong_key), "the key is never printed: {said}");
    // A container that does not exist stops it too, named as such; an empty prefix of one that
    // does (no probe object there) is no problem.
    let no_key = "options = { use_emulator = \"true\" }";
    let missing =
        object_store_pipeline(dir.path(), "missing", source, &format!("url = \"az://nolake/trail\"\n{no_key}"));
    let output = azurite.run(&missing);
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("the container of az://nolake/trail does not exist; create it, or correct the URL"),
        "{said}"
    );
    let fine = object_store_pipeline(
        dir.path(),
        "fine",
        source,
        &format!("url = \"az://lake/fresh/prefix\"\nformat = \"ndjson\"\n{no_key}"),
    );
    let output = azurite.run(&fine);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = "lake = service.get_container_client('lake')\n\
                 print(sum(len(lake.download_blob(b.name).readall().splitlines()) for b in lake.list_blobs(name_starts_with='fresh/')))";
    assert_eq!(azurite.sdk(lines), "100");
}
