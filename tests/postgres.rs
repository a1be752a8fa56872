//! The `postgres` sink against a real PostgreSQL: each test starts a throwaway cluster from
//! Debian's server binaries (`initdb` into a temporary folder, `pg_ctl start` on a free port on
//! 127.0.0.1, as the `postgres` user when the tests run as root), with password authentication
//! over TCP, and stops it afterwards. A CloudTrail run is loaded exactly once (row for row against
//! the input, one ledger row per staged object); rows PostgreSQL refuses are isolated into the
//! error output while the rest load; a missing table, a missing column and a wrong password stop
//! the run at start with what is wrong; and the conformance kit runs with PostgreSQL stopped
//! (unavailable) and the loader's password changed (refused).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use sluice_connectors::registry;
use sluice_connectors::synth::Profile;
use sluice_engine::testkit::sink::{Destination, Fault};
use sluice_engine::testkit::{plan_from_str, run_pipeline};

use super::support::{as_root, folder_objects, free_port, generated, raw_data, sluice};

pub(super) const LOADER_PASSWORD: &str = "loader-pw-1";

/// A throwaway PostgreSQL cluster, stopped when dropped.
pub(super) struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

/// The newest PostgreSQL server binaries of the machine.
fn server_binaries() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries (Debian: postgresql-15) are needed")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no initdb under /usr/lib/postgresql/*/bin")
}

impl Cluster {
    /// `program` of the server binaries, run as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start(&self) {
        self.start_with("");
    }

    /// Starts the server with `extra` server options.
    fn start_with(&self, extra: &str) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off {extra}",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-o", &options, "start"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Restarts the server with TLS required over TCP (`hostssl` rules only), its certificate for
    /// 127.0.0.1 signed by a new authority; returns the authority's PEM file.
    fn require_tls(&self) -> PathBuf {
        let dir = self.dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let days = ["-days", "2"];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subject) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=sluice {ca}"));
            openssl(&[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem, "-subj", &subject,
                days[0], days[1],
            ]);
        }
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            days[0],
            days[1],
            "-extfile",
            "san.ext",
        ]);
        let key = dir.join("server.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        if as_root() {
            for file in ["server.key", "server.pem"] {
                Command::new("chown").arg("postgres:").arg(dir.join(file)).status().unwrap();
            }
        }
        let hba = self.data().join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap().replace("\nhost ", "\nhostssl ");
        std::fs::write(&hba, rules).unwrap();
        self.stop();
        self.start_with(&format!(
            "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            dir.join("server.pem").display(),
            key.display()
        ));
        dir.join("ca.pem")
    }

    fn stop(&self) {
        let _ = self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", "fast", "-w", "stop"]).output();
    }

    /// After [`Self::require_tls`]: the server's certificate renewed by `other-ca` (a CA moved to),
    /// served after a restart (every connection closes).
    fn serve_certificate_of_the_other_ca(&self) {
        let dir = self.dir.path();
        let out = Command::new("openssl")
            .args(["x509", "-req", "-in", "server.csr", "-CA", "other-ca.pem", "-CAkey", "other-ca.key"])
            .args(["-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext"])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        if as_root() {
            Command::new("chown").arg("postgres:").arg(dir.join("server.pem")).status().unwrap();
        }
        self.stop();
        self.start_with(&format!(
            "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ));
    }

    pub(super) fn url(&self, password: &str) -> String {
        format!("postgres://loader:{password}@127.0.0.1:{}/security", self.port)
    }

    /// Runs `sql` as the superuser in `database` with psql; the rows, each a list of fields.
    fn psql(&self, database: &str, sql: &[&str]) -> Vec<Vec<String>> {
        let mut command = Command::new("psql");
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", database])
            .args(["-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1"])
            .env("PGPASSWORD", "super-pw");
        for statement in sql {
            command.args(["-c", statement]);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    /// Runs `sql` as the superuser in `security`.
    pub(super) fn sql(&self, sql: &str) -> Vec<Vec<String>> {
        self.psql("security", &[sql])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A new cluster with database `security`, a `loader` role (password auth over TCP) and `schema`.
pub(super) fn cluster(schema: &str) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    if as_root() {
        let status = Command::new("chown").arg("postgres:").arg(dir.path()).status().unwrap();
        assert!(status.success());
    }
    let cluster = Cluster { dir, bin: server_binaries(), port: free_port() };
    let pwfile = cluster.dir.path().join("pw");
    std::fs::write(&pwfile, "super-pw\n").unwrap();
    if as_root() {
        Command::new("chown").arg("postgres:").arg(&pwfile).status().unwrap();
    }
    let out = cluster
        .command("initdb")
        .arg("-D")
        .arg(cluster.data())
        .args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
    cluster.start();
    cluster.psql(
        "postgres",
        &[&format!("CREATE ROLE loader LOGIN PASSWORD '{LOADER_PASSWORD}'"), "CREATE DATABASE security OWNER loader"],
    );
    cluster.sql(&format!(
        "{schema}; GRANT ALL ON ALL TABLES IN SCHEMA public TO loader; GRANT CREATE ON SCHEMA public TO loader;"
    ));
    cluster
}

const CLOUDTRAIL_TABLE: &str = "CREATE TABLE cloudtrail_events (event_time timestamptz NOT NULL, event_name text, \
    user_name text, source_ip text)";

/// A pipeline from `source` into the `postgres` sink of `cluster`, staging under `staging`.
fn pipeline(source: &str, url: &str, staging: &Path, extra: &str) -> String {
    format!(
        "[pipeline]\nname = \"to-pg\"\n[sources.in]\n{source}\n\
         [sinks.warehouse]\ntype = \"postgres\"\ninputs = [\"in\"]\nurl = \"{url}\"\n\
         staging = {{ url = \"file://{}\", prefix = \"cloudtrail/\" }}\n\
         error_prefix = \"errors/!{{firehose:error-output-type}}/\"\nbuffer = {{ size_mb = 1, interval_s = 60 }}\n{extra}\n",
        staging.display()
    )
}

const CLOUDTRAIL_SINK: &str = "table = \"cloudtrail_events\"\ncolumns = [\"event_time\", \"event_name\", \"user_name\", \"source_ip\"]\n\
    mapping = { event_time = \"eventTime\", event_name = \"eventName\", user_name = \"userIdentity.userName\", source_ip = \"sourceIPAddress\" }";

fn generator(records: u64) -> String {
    format!("type = \"generator\"\nprofile = \"cloudtrail\"\nrecords = {records}\nseed = 21")
}

#[test]
fn a_cloudtrail_run_is_loaded_exactly_once() {
    let pg = cluster(CLOUDTRAIL_TABLE);
    let staging = tempfile::tempdir().unwrap();
    // The stage holds rows; `backup = "all"` keeps the records themselves.
    let sink = format!("{CLOUDTRAIL_SINK}\nbackup = \"all\"");
    let toml = pipeline(&generator(3_000), &pg.url(LOADER_PASSWORD), staging.path(), &sink);
    let (_, metrics) = run_pipeline(&toml, &registry(), 2).unwrap();
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), 3_000);
    let mut kept: Vec<String> = folder_objects(staging.path())
        .into_iter()
        .filter(|(key, _)| key.starts_with("errors/source-record-backup/"))
        .flat_map(|(_, lines)| lines)
        .collect();
    let mut records = generated(Profile::Cloudtrail, 21, 3_000);
    kept.sort();
    records.sort();
    assert_eq!(kept, records, "the source records backed up as they were");
    assert_eq!(metrics.sinks[0].own_counts.lock().unwrap().get("CopyRows"), Some(&3_000));
    assert!(metrics.sinks[0].own_durations.lock().unwrap().get("CopyDuration").is_some_and(|h| h.count() >= 1));
    let loaded: Vec<String> = pg
        .sql(
            "SELECT to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') || '|' || \
             coalesce(event_name, '') || '|' || coalesce(user_name, '<null>') || '|' || source_ip FROM cloudtrail_events",
        )
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
    let mut expected: Vec<String> = generated(Profile::Cloudtrail, 21, 3_000)
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r).unwrap();
            let user = v["userIdentity"]["userName"].as_str().unwrap_or("<null>").to_string();
            format!(
                "{}|{}|{user}|{}",
                v["eventTime"].as_str().unwrap(),
                v["eventName"].as_str().unwrap(),
                v["sourceIPAddress"].as_str().unwrap()
            )
        })
        .collect();
    let mut loaded = loaded;
    loaded.sort();
    expected.sort();
    assert_eq!(loaded.len(), 3_000);
    assert_eq!(loaded, expected, "every record once, as it was");
    // One ledger row per staged object, their rows adding up to the run.
    let ledger = pg.sql("SELECT count(*), sum(rows) FROM sluice_loads WHERE pipeline = 'to-pg' AND sink = 'warehouse'");
    let staged: Vec<String> =
        folder_objects(staging.path()).into_keys().filter(|k| k.starts_with("cloudtrail/")).collect();
    assert_eq!(ledger[0][0], staged.len().to_string(), "{staged:?}");
    assert_eq!(ledger[0][1], "3000");
}

#[test]
fn rows_postgres_refuses_go_to_the_error_output_and_the_rest_loads() {
    let pg = cluster("CREATE TABLE events (n integer NOT NULL, name varchar(8), at timestamptz)");
    let dir = tempfile::tempdir().unwrap();
    let mut records = Vec::new();
    for i in 0..60 {
        let record = match i % 20 {
            3 => serde_json::json!({"n": i, "name": "much-too-long-a-name", "at": "2026-11-26T10:00:00Z"}),
            7 => serde_json::json!({"n": i, "name": "ok", "at": "not a time"}),
            11 => serde_json::json!({"name": "no n"}),
            _ => serde_json::json!({"n": i, "name": format!("r{i}"), "at": "2026-11-26T10:00:00Z"}),
        };
        records.push(record.to_string());
    }
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, records.join("\n") + "\nnot json\n").unwrap();
    let staging = dir.path().join("staging");
    let toml = pipeline(
        &format!("type = \"file\"\npaths = [\"{}\"]", input.display()),
        &pg.url(LOADER_PASSWORD),
        &staging,
        "table = \"events\"\ncolumns = [\"n\", \"name\", \"at\"]",
    );
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    let m = &metrics.sinks[0];
    assert_eq!((m.records_delivered.load(Relaxed), m.records_failed.load(Relaxed)), (51, 10));
    assert_eq!(pg.sql("SELECT count(*) FROM events")[0][0], "51");
    let objects = folder_objects(&staging);
    let refused: Vec<serde_json::Value> = objects
        .iter()
        .filter(|(key, _)| key.starts_with("errors/redshift-failed/"))
        .flat_map(|(_, lines)| lines.iter().map(|l| serde_json::from_str(l).unwrap()))
        .collect();
    assert_eq!(refused.len(), 9, "{objects:?}");
    let mut codes: Vec<String> = refused.iter().map(|d| d["errorCode"].as_str().unwrap().to_string()).collect();
    codes.sort();
    codes.dedup();
    // value too long, invalid datetime syntax, not null violation.
    assert_eq!(codes, ["22001", "22007", "23502"]);
    for doc in &refused {
        let row = raw_data(doc);
        let message = doc["errorMessage"].as_str().unwrap();
        match doc["errorCode"].as_str().unwrap() {
            "22001" => assert!(row.contains("much-too-long") && message.contains("too long"), "{doc}"),
            "22007" => assert!(row.contains("not a time") && message.contains("timestamp"), "{doc}"),
            _ => assert!(row.contains("no n") && message.contains("null"), "{doc}"),
        }
    }
    let malformed = objects.iter().filter(|(key, _)| key.starts_with("errors/format-conversion-failed/")).count();
    assert_eq!(malformed, 1, "the record that is not JSON: {objects:?}");
}

#[test]
fn a_missing_table_a_missing_column_and_a_wrong_password_stop_the_run_at_start() {
    let pg = cluster(CLOUDTRAIL_TABLE);
    let staging = tempfile::tempdir().unwrap();
    let cases = [
        (
            pg.url(LOADER_PASSWORD),
            CLOUDTRAIL_SINK.replace("\"cloudtrail_events\"", "\"missing_table\""),
            "does not exist",
        ),
        (
            pg.url(LOADER_PASSWORD),
            CLOUDTRAIL_SINK.replace("\"source_ip\"]", "\"source_ip\", \"region\"]"),
            "has no column `region`",
        ),
        (pg.url("wrong"), CLOUDTRAIL_SINK.to_string(), "password authentication failed"),
    ];
    // `sluice validate --check` finds each before any run, and creates nothing (not even the load
    // ledger a run's start makes); the right settings pass.
    let file = staging.path().join("to-pg.toml");
    let staged = staging.path().join("staged");
    let validate = |url: &str, sink: &str| {
        std::fs::write(&file, pipeline(&generator(10), url, &staged, sink)).unwrap();
        sluice().args(["validate", "--check"]).arg(&file).output().unwrap()
    };
    for (url, sink, says) in &cases {
        let checked = validate(url, sink);
        let stderr = String::from_utf8_lossy(&checked.stderr);
        assert_eq!(checked.status.code(), Some(1), "{says}: {stderr}");
        assert!(stderr.contains("sinks.warehouse (postgres") && stderr.contains(says), "{says}: {stderr}");
        assert!(!stderr.contains(LOADER_PASSWORD), "{stderr}");
    }
    let checked = validate(&pg.url(LOADER_PASSWORD), CLOUDTRAIL_SINK);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    assert_eq!(pg.sql("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'sluice_%'")[0][0], "0");
    assert!(!staged.exists());
    for (url, sink, says) in cases {
        let toml = pipeline(&generator(10), &url, staging.path(), &sink);
        let error = run_pipeline(&toml, &registry(), 1).err().unwrap_or_default();
        assert!(error.contains(says), "{says}: {error}");
        assert!(!error.contains(LOADER_PASSWORD), "{error}");
    }
    assert_eq!(pg.sql("SELECT count(*) FROM cloudtrail_events")[0][0], "0");
}

#[test]
fn postgres_config_errors_point_at_the_value() {
    let staging = tempfile::tempdir().unwrap();
    let base = pipeline(&generator(1), "postgres://loader:pw@127.0.0.1:1/security", staging.path(), CLOUDTRAIL_SINK);
    assert!(plan_from_str(&base, &registry()).is_ok());
    for (change, says) in [
        (("columns = [", "columns = [\"\", "), "none empty"),
        (("event_time = \"eventTime\"", "when = \"eventTime\""), "`mapping` names `when`"),
        (
            ("table = \"cloudtrail_events\"", "table = \"cloudtrail_events\"\nformat = \"parquet\""),
            "unknown format `parquet`",
        ),
        (("table = \"cloudtrail_events\"", "table = \"cloudtrail_events\"\nformat = \"json\""), "one jsonb column"),
        (("url = \"postgres://", "url = \"mysql://"), "not a PostgreSQL URL"),
    ] {
        let toml = base.replace(change.0, change.1);
        let error = plan_from_str(&toml, &registry()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains(says) && error.contains("pipeline.toml:"), "{change:?}: {error}");
    }
    let without_staging = base.lines().filter(|l| !l.starts_with("staging")).collect::<Vec<_>>().join("\n");
    let error = plan_from_str(&without_staging, &registry()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("needs `staging`"), "{error}");
    // The `sslrootcert` file is read when the sink is configured: one that is missing, or holds no
    // certificate, is said at the URL (not at the first connection).
    let not_pem = staging.path().join("not-a-ca.txt");
    std::fs::write(&not_pem, "just text\n").unwrap();
    for (file, says) in [(staging.path().join("missing.pem"), "cannot be read"), (not_pem, "holds no PEM certificate")]
    {
        let toml = base.replace("/security\"", &format!("/security?sslmode=require&sslrootcert={}\"", file.display()));
        let error = plan_from_str(&toml, &registry()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains(&format!("sslrootcert `{}` {says}", file.display())) && error.contains("pipeline.toml:"),
            "{error}"
        );
    }
}

/// The cluster as the conformance kit sees it: a payload is stored once its staged object is in
/// the load ledger (loaded); unavailable is the server stopped, refused the loader's password
/// changed.
struct WarehouseDestination {
    pg: Cluster,
    staging: tempfile::TempDir,
    /// Whether the server is stopped.
    down: Mutex<bool>,
}

impl Destination for WarehouseDestination {
    fn sink(&self) -> Arc<dyn sluice_engine::contract::Sink> {
        let toml = pipeline(
            &generator(10),
            &self.pg.url(LOADER_PASSWORD),
            self.staging.path(),
            "table = \"kit\"\ncolumns = [\"object\", \"record\", \"text\"]",
        );
        Arc::clone(&plan_from_str(&toml, &registry()).unwrap().sinks[0].sink)
    }

    fn stored(&self, key: &str) -> futures::future::BoxFuture<'static, Option<Vec<u8>>> {
        let staged = format!("cloudtrail/{key}");
        let loaded = !*self.down.lock().unwrap()
            && self.pg.sql(&format!("SELECT 1 FROM sluice_loads WHERE object_key = '{staged}'")).len() == 1;
        let body = loaded.then(|| std::fs::read(self.staging.path().join(&staged)).ok()).flatten();
        Box::pin(async move { body })
    }

    fn stored_error_output(&self, key: &str) -> futures::future::BoxFuture<'static, Option<Vec<u8>>> {
        super::support::file_when_read(self.staging.path().join(key))
    }

    fn inject(&self, fault: Option<Fault>) -> bool {
        let mut down = self.down.lock().unwrap();
        match fault {
            Some(Fault::Unavailable) => {
                self.pg.stop();
                *down = true;
            }
            Some(Fault::Refused) => {
                // Access taken away: the password changed and the loader's sessions ended (an open
                // session outlives a password change).
                self.pg.sql("ALTER ROLE loader PASSWORD 'changed'");
                self.pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'loader'");
            }
            None => {
                if *down {
                    self.pg.start();
                    *down = false;
                }
                self.pg.sql(&format!("ALTER ROLE loader PASSWORD '{LOADER_PASSWORD}'"));
            }
        }
        true
    }
}

#[test]
fn the_postgres_sink_passes_the_conformance_kit() {
    let pg = cluster("CREATE TABLE kit (object integer, record integer, text text)");
    let destination = WarehouseDestination { pg, staging: tempfile::tempdir().unwrap(), down: Mutex::new(false) };
    super::support::request_sink_conformance(&destination);
    // Delivered twice (Redeliver), loaded once.
    let rows = destination.pg.sql("SELECT count(*), count(DISTINCT (object, record)) FROM kit");
    assert_eq!(rows[0][0], rows[0][1], "no row loaded twice");
}

#[test]
fn postgres_down_past_the_retry_duration_loses_nothing_and_writes_a_manifest_of_what_it_skipped() {
    let pg = cluster(CLOUDTRAIL_TABLE);
    // The server is down from the start: the run begins anyway (only a refusal stops it) and retries.
    let staging = tempfile::tempdir().unwrap();
    let toml = pipeline(
        &generator(300),
        &pg.url(LOADER_PASSWORD),
        staging.path(),
        &format!("{CLOUDTRAIL_SINK}\nretry = {{ duration_s = 3 }}\nhealthcheck = false"),
    );
    pg.stop();
    let (_, metrics) = run_pipeline(&toml, &registry(), 1).unwrap();
    let m = &metrics.sinks[0];
    assert_eq!((m.records_delivered.load(Relaxed), m.records_failed.load(Relaxed)), (0, 300));
    assert!(m.attempts.load(Relaxed) >= 2, "retried before giving up");
    let objects = folder_objects(staging.path());
    let backed_up: Vec<String> = objects
        .iter()
        .filter(|(key, _)| key.starts_with("errors/redshift-failed/"))
        .flat_map(|(_, lines)| lines.iter().map(|l| raw_data(&serde_json::from_str(l).unwrap())))
        .collect();
    // Every record kept as the row it was to be loaded as (format = "csv": staged and copied as
    // rows).
    let mapping =
        sluice_connectors::sinks::postgres::StagedRows::new(sluice_connectors::sinks::postgres::Mapping::columns(&[
            "eventTime",
            "eventName",
            "userIdentity.userName",
            "sourceIPAddress",
        ]));
    let mut expected: Vec<String> = generated(Profile::Cloudtrail, 21, 300)
        .iter()
        .map(|record| {
            let mut row = Vec::new();
            sluice_engine::format::RecordCodec::encode(&mapping, record.as_bytes(), &mut row).unwrap();
            String::from_utf8(row).unwrap().trim_end().to_string()
        })
        .collect();
    let mut got = backed_up.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "every record kept");
    // The manifest names the staged object, which holds the rows: it can be loaded later.
    let manifests: Vec<&String> = objects.keys().filter(|k| k.starts_with("errors/manifests/")).collect();
    assert_eq!(manifests.len(), 1, "{:?}", objects.keys().collect::<Vec<_>>());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(staging.path().join(manifests[0])).unwrap()).unwrap();
    let url = manifest["entries"][0]["url"].as_str().unwrap();
    assert_eq!(manifest["entries"][0]["mandatory"], true);
    assert_eq!(manifest["skipped"]["errorCode"], "Redshift.ConnectionFailed", "{manifest}");
    let staged = url.strip_prefix(&format!("file://{}/", staging.path().display())).unwrap();
    assert!(staged.starts_with("cloudtrail/"), "{url}");
    let mut staged_rows = objects[staged].clone();
    staged_rows.sort();
    assert_eq!(staged_rows, expected, "the staged object holds the rows");
    // The server back: nothing was loaded meanwhile.
    pg.start();
    assert_eq!(pg.sql("SELECT count(*) FROM cloudtrail_events")[0][0], "0");
}

#[test]
fn tls_is_required_and_verified_against_the_given_authority() {
    let pg = cluster(CLOUDTRAIL_TABLE);
    let ca = pg.require_tls();
    let staging = tempfile::tempdir().unwrap();
    let url = |query: &str| format!("{}?{query}", pg.url(LOADER_PASSWORD));
    let verified = url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let (_, metrics) =
        run_pipeline(&pipeline(&generator(200), &verified, staging.path(), CLOUDTRAIL_SINK), &registry(), 1)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), 200);
    assert_eq!(pg.sql("SELECT count(*) FROM cloudtrail_events")[0][0], "200");
    // The server takes no connection without TLS; a certificate from another authority is refused.
    let other = ca.with_file_name("other-ca.pem");
    for (query, says) in [
        ("sslmode=disable".to_string(), "no encryption"),
        (format!("sslmode=verify-full&sslrootcert={}", other.display()), "not trusted"),
    ] {
        let toml = pipeline(&generator(10), &url(&query), staging.path(), CLOUDTRAIL_SINK);
        let error = run_pipeline(&toml, &registry(), 1).err().unwrap_or_default();
        assert!(error.contains(says), "{query}: {error}");
    }
    assert_eq!(pg.sql("SELECT count(*) FROM cloudtrail_events")[0][0], "200");
}

/// The server moves to a certificate of a new CA while a run loads, after `sslrootcert` was renewed
/// to the bundle of both CAs (the order of a CA rotation, as RDS's): the loads after the server's
/// restart connect trusting the new CA, and nothing is backed up. With the file read once at
/// start, every connection after the move is refused (a permanent failure) and its rows backed up.
#[test]
fn a_renewed_sslrootcert_is_trusted_without_a_restart() {
    let pg = cluster(CLOUDTRAIL_TABLE);
    let ca = pg.require_tls();
    let work = tempfile::tempdir().unwrap();
    let trust = work.path().join("trust.pem");
    std::fs::copy(&ca, &trust).unwrap();
    let url = format!("{}?sslmode=verify-full&sslrootcert={}", pg.url(LOADER_PASSWORD), trust.display());
    let source = "type = \"generator\"\nprofile = \"cloudtrail\"\nrate = 100\nseed = 3";
    let sink = format!("{CLOUDTRAIL_SINK}\nretry = {{ duration_s = 60 }}");
    let toml = pipeline(source, &url, work.path(), &sink).replace("interval_s = 60", "interval_s = 1");
    let running = super::support::StartedRun::start(&toml, 1);
    std::thread::sleep(std::time::Duration::from_secs(1));
    // The renewal: both CAs, written whole by a rename.
    let bundle = [std::fs::read(&ca).unwrap(), std::fs::read(ca.with_file_name("other-ca.pem")).unwrap()].concat();
    std::fs::write(work.path().join(".trust.pem.new"), bundle).unwrap();
    std::fs::rename(work.path().join(".trust.pem.new"), &trust).unwrap();
    // Past one look at the files (every 5 s) with the renewal settled, the server moves.
    std::thread::sleep(std::time::Duration::from_secs(7));
    pg.serve_certificate_of_the_other_ca();
    let before_the_move: u64 = pg.sql("SELECT count(*) FROM cloudtrail_events")[0][0].parse().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let metrics = Arc::clone(&running.metrics);
    running.finish().unwrap();
    let m = &metrics.sinks[0];
    let delivered = m.records_delivered.load(Relaxed);
    assert_eq!(m.records_failed.load(Relaxed), 0, "rows were backed up");
    assert_eq!(delivered, metrics.records_in());
    let loaded: u64 = pg.sql("SELECT count(*) FROM cloudtrail_events")[0][0].parse().unwrap();
    assert_eq!(loaded, delivered);
    // Some of them after the move: through connections made trusting the renewed file.
    assert!(loaded > before_the_move, "nothing was loaded after the move ({loaded} in all)");
}

/// Exactly once per logged record (issue 16): a replayed log entry reaches the sink in a payload
/// cut differently from the one that loaded part of it before a crash; the records loaded before
/// are recognised by their log positions and skipped, the rest load, and what is below a log's
/// replay floor leaves the ledger.
#[test]
fn records_replayed_from_the_log_in_another_object_are_loaded_once() {
    use sluice_engine::compression::{Compression, compress};
    use sluice_engine::contract::{Payload, PayloadOrigins, RecordPosition};
    use sluice_engine::record::Origin;

    let pg = cluster("CREATE TABLE numbers (n bigint NOT NULL)");
    let staging = tempfile::tempdir().unwrap();
    let toml =
        pipeline(&generator(1), &pg.url(LOADER_PASSWORD), staging.path(), "table = \"numbers\"\ncolumns = [\"n\"]");
    let sink = Arc::clone(&plan_from_str(&toml, &registry()).unwrap().sinks[0].sink);
    // Records (seq, index, n), each its log entry's record `index`.
    let payload = |key: &str, records: &[(u64, u32, u64)], replay_floor: u64| {
        let mut origins = PayloadOrigins::default();
        let mut text = String::new();
        for (i, &(seq, index, n)) in records.iter().enumerate() {
            origins.record(i, Some(RecordPosition::new(Origin { log: 99, seq, index, replay_floor }, 0)));
            text.push_str(&format!("\"{n}\"\n"));
        }
        Payload {
            key: key.into(),
            body: compress(Compression::Gzip, text.as_bytes()).unwrap().into(),
            content_type: "application/x-ndjson",
            content_encoding: Some("gzip"),
            records: records.len() as u64,
            origins: Some(Arc::new(origins)),
        }
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(sluice_engine::contract::prepare_sink(&sink)).unwrap();
    let deliver = |p: Payload| runtime.block_on(sink.deliver(p)).unwrap();
    // Before the crash: entry 5's first three records.
    deliver(payload("a", &[(5, 0, 0), (5, 1, 1), (5, 2, 2)], 0));
    // After it: entry 5 replayed whole, with entry 6, in another object.
    deliver(payload("b", &[(5, 0, 0), (5, 1, 1), (5, 2, 2), (5, 3, 3), (5, 4, 4), (6, 0, 10)], 0));
    let numbers = || pg.sql("SELECT n FROM numbers ORDER BY n").into_iter().map(|r| r[0].clone()).collect::<Vec<_>>();
    assert_eq!(numbers(), ["0", "1", "2", "3", "4", "10"]);
    let ranges = pg.sql("SELECT seq, first, last, object_key FROM sluice_load_ranges ORDER BY seq, first");
    // Entry 5's range grew to what the second object answered.
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], ["5".to_string(), "0".into(), (4u64 << 32).to_string(), "cloudtrail/b".into()]);
    // Entries below the floor are never replayed: their ranges are forgotten.
    deliver(payload("c", &[(7, 0, 20)], 6));
    let seqs: Vec<String> =
        pg.sql("SELECT DISTINCT seq FROM sluice_load_ranges ORDER BY seq").into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(seqs, ["6", "7"]);
    assert_eq!(pg.sql("SELECT rows FROM sluice_loads ORDER BY object_key").concat(), ["3", "3", "1"]);
    // The three loads, one after the other, used one session, kept open between them.
    let sessions = pg.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'loader'");
    assert_eq!(sessions[0][0], "1", "one pooled session");
}
