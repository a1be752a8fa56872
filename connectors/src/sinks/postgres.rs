//! `type = "postgres"`: the Redshift-style warehouse sink. Each buffer is staged as an object and
//! loaded into a PostgreSQL table with `COPY`, exactly once per object (docs/firehose.md §16).
//!
//! ```toml
//! [sinks.warehouse]
//! type = "postgres"
//! inputs = ["trail"]
//! url = "postgres://loader:${PG_PASS}@127.0.0.1:5432/security"   # sslmode=require|verify-full: TLS, verified
//!                                        # (against sslrootcert=<PEM file> when given, else the web PKI)
//! table = "cloudtrail_events"            # schema-qualified allowed
//! columns = ["event_time", "event_name", "user_name", "source_ip"]   # Firehose's DataTableColumns
//! mapping = { user_name = "userIdentity.userName", source_ip = "sourceIPAddress" }  # JSON path per column (default: its name;
//!                                        # dotted names as the csv format's columns: a key as written first)
//! format = "csv"                         # csv (default): a column per path | json: the record in one jsonb column
//! staging = { url = "s3://bucket/staging", prefix = "cloudtrail/" }  # Firehose's intermediate S3 (any object store URL)
//! healthcheck = true                     # at start: connect, check the table and its columns
//! buffer = { size_mb = 5, interval_s = 300 }
//! retry = { duration_s = 3600 }          # Firehose's Redshift default
//! ```
//!
//! The staged object is this sink's wire format ([`StagedRows`]): `format = "csv"` means records
//! are staged and copied as CSV rows, so each record becomes, as it is buffered on the workers, the
//! row of its columns' values ([`Mapping`]: a string as it is, a number or boolean as the record
//! writes it, an object or array as JSON, a missing key or null as SQL NULL; `format = "json"`: the
//! record in one field), gzip-compressed; a record that is not a JSON object is refused before it is staged
//! (`format-conversion-failed`). The stage holds what is loaded, and a load streams it to COPY,
//! decompressed 1 MiB at a time as it is sent, converting nothing (the rows are split out one by
//! one only when some must be left out or PostgreSQL refuses some). Delivering a
//! payload stores it in `staging` under `prefix` and its key (what the error output and Firehose's
//! manifests name), then loads it in one transaction: the load ledger `sluice_loads(pipeline,
//! sink, object_key, rows, loaded_at)` (created if missing) is checked first and an object it holds
//! is not loaded again; else `COPY table (columns) FROM STDIN (FORMAT csv)` takes the rows and the
//! ledger row is inserted before `COMMIT`. So a payload sent
//! again after a lost answer, a retry or a crash after the commit is never loaded twice.
//! Records read from a write-ahead log are loaded once across crashes too: a crash after the
//! COMMIT but before the log's checkpoint replays them in another object, so each load also
//! records, in the same transaction, the log entry ranges it answered (the payload's
//! [`PayloadOrigins`]) in `sluice_load_ranges(pipeline, sink, log, seq, first, last, object_key)`,
//! and leaves out of its COPY the records whose positions an earlier load's ranges hold; ranges of
//! entries below a log's replay floor are deleted as loads go on.
//! A data error (SQLSTATE classes 22 and 23: a wrong type, a value too long, a NOT NULL) does not
//! fail the batch: the rows are loaded again in halves under savepoints, in the same transaction,
//! down to the single rows that fail; their records go to the error output (`redshift-failed`,
//! `errorCode` the SQLSTATE, `errorMessage` PostgreSQL's message) and the rest commits. Connection failures,
//! serialization failures, shutdowns (57P01) and resource errors are retried; a missing table or
//! column, refused credentials or privileges are permanent. An object given up on (retries run out,
//! or a permanent error) gets a COPY manifest naming its staged object under
//! `errors/manifests/` in the staging store (Firehose's manifest of skipped objects) before its
//! records are backed up. Connections are kept between loads (at most four idle; one whose load
//! failed is dropped, an idle one is checked with a round trip before it is used). Besides
//! `DeliveryToRedshift_*`, it counts `CopyRows` (rows committed)
//! and times `CopyDuration` (from the COPY to the commit).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::SinkExt;
use futures::future::BoxFuture;
use serde::Deserialize;
use sluice_engine::compression::{Compression, decompress};
use sluice_engine::config::{ConnectorConfig, Diagnostic, FixedBody, Problems};
use sluice_engine::contract::{
    DeliveryError, DestinationKind, EntryRange, Payload, PayloadOrigins, RefusedRecord, Sink,
};
use sluice_engine::format::csv::column_paths;
use sluice_engine::format::{ObjectFormat, RecordCodec, TextFormat};
use sluice_engine::metrics::{Family, SinkMeter};
use tokio_postgres::error::SqlState;

use crate::sinks::object_store::{ObjectStoreSink, url_or_table};
use crate::tls::Renewing;
use crate::transforms::json;

/// Rows committed by loads.
const COPY_ROWS: Family = Family { name: "CopyRows", help: "Rows committed into the table by COPY." };
/// How long a load took, from its COPY to its commit.
const COPY_DURATION: Family = Family { name: "CopyDuration", help: "Time a load took, from its COPY to its commit." };

/// What the sink type's destination takes (the registry's line): rows staged as gzip CSV for
/// `COPY`, in the sink's own `format` and `columns`.
pub const BODY: FixedBody =
    FixedBody { describe: "rows staged as gzip CSV for COPY", max_bytes: None, buffering: None };
/// Connections kept idle between loads, at most.
const MAX_IDLE_CONNECTIONS: usize = 4;
/// The load ledger's table.
const LEDGER: &str = "sluice_loads";
/// The ledger of log entry ranges loaded (exactly once per record read from a write-ahead log).
const RANGES: &str = "sluice_load_ranges";

/// How records become rows of the table (module docs).
#[derive(Debug, Clone)]
pub enum Mapping {
    /// A column per dotted JSON path, read as the csv format reads a column's name
    /// ([`column_paths`]: a key as written first, then the paths its dots make).
    Columns(Vec<String>),
    /// The record in one column.
    Json,
}

/// Appends `text` as a quoted CSV field.
fn quoted(text: &str, out: &mut Vec<u8>) {
    quoted_raw(text.as_bytes(), out);
}

/// Appends `bytes` as a quoted CSV field (quotes doubled).
fn quoted_raw(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut rest = bytes;
    while let Some(at) = memchr::memchr(b'"', rest) {
        out.extend_from_slice(&rest[..=at]);
        out.push(b'"');
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

impl Mapping {
    /// A column per dotted JSON path.
    pub fn columns(paths: &[&str]) -> Self {
        Mapping::Columns(paths.iter().map(|p| p.to_string()).collect())
    }
}

/// The staged objects' rows: each record becomes, when it is encoded (on the workers, as it is
/// buffered), the CSV row COPY takes ([`Mapping`]), so the stage holds what is loaded (`COPY …
/// FROM 's3://…' CSV GZIP` can load it again from a manifest) and a load only streams it. A record
/// that is not one UTF-8 JSON object is refused (`format-conversion-failed`). A record is read
/// once: one validating pass finds the columns' values where they are (no tree is built). Each
/// value is written as the record wrote it (a number's digits, `1.50` or a 30-digit integer, kept
/// as they are; an object's or array's text), a string decoded; a record whose keys on a searched
/// level hold escapes has them decoded before they are compared and gets the same row (the two
/// ways are checked against each other by the `json_paths` fuzz target, `fuzz/`).
/// What the object decodes to ([`RecordCodec::records_of`], for the error output) is its rows.
#[derive(Debug, Clone)]
pub struct StagedRows {
    mapping: Mapping,
    /// Every way of every column ([`column_paths`], each its keys), and as a tree for the one-pass
    /// search.
    keys: Vec<Vec<Vec<u8>>>,
    paths: json::PathTree,
    /// Each column's ways in `keys`, in the order they are tried.
    ways: Vec<std::ops::Range<usize>>,
}

impl StagedRows {
    /// Rows of `mapping`.
    pub fn new(mapping: Mapping) -> Self {
        let (mut keys, mut ways) = (Vec::new(), Vec::new());
        if let Mapping::Columns(columns) = &mapping {
            for column in columns {
                let first = keys.len();
                keys.extend(
                    column_paths(column).iter().map(|path| path.iter().map(|key| key.as_bytes().to_vec()).collect()),
                );
                ways.push(first..keys.len());
            }
        }
        let paths = json::PathTree::new(&keys);
        StagedRows { mapping, keys, paths, ways }
    }

    /// Appends the row of the values `found` (for every way of every column) in `record`, and its
    /// line break: each column's value is its first way's that reached one.
    fn found_row(&self, record: &[u8], found: &[json::Found], out: &mut Vec<u8>) {
        for (i, ways) in self.ways.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if let Some(json::Found::At(range)) = found[ways.clone()].iter().find(|f| matches!(f, json::Found::At(_))) {
                field(&record[range.clone()], out);
            }
        }
        out.push(b'\n');
    }
}

thread_local! {
    /// What [`StagedRows::encode`] found, reused on each worker thread.
    static FOUND: std::cell::RefCell<Vec<json::Found>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Appends a column's raw JSON value as a CSV field: nothing (NULL) for `null`, a string's text,
/// any other value as its JSON text.
fn field(raw: &[u8], out: &mut Vec<u8>) {
    match raw.first() {
        None | Some(b'n') => {}
        Some(b'"') if !raw.contains(&b'\\') => quoted_raw(&raw[1..raw.len() - 1], out),
        Some(b'"') => match serde_json::from_slice::<String>(raw) {
            Ok(text) => quoted(&text, out),
            Err(_) => quoted_raw(raw, out),
        },
        Some(_) => quoted_raw(raw, out),
    }
}

impl RecordCodec for StagedRows {
    fn describe(&self) -> String {
        "csv rows (staged for COPY)".into()
    }

    fn content_type(&self) -> &'static str {
        "text/csv"
    }

    fn encode(&self, record: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let malformed = |why: &str| format!("DataFormatConversion.MalformedData: {why}");
        if let Mapping::Json = self.mapping {
            json::check_object(record).map_err(|why| malformed(&why))?;
            quoted_raw(record, out);
            out.push(b'\n');
            return Ok(());
        }
        // The search below validates the JSON, not the encoding.
        json::check_utf8(record).map_err(|why| malformed(&why))?;
        let mut found = FOUND.with(|f| f.take());
        let object = match json::find_paths(record, &self.paths, &mut found) {
            Some(scanned) => scanned == json::Scanned::Valid,
            // Not an object, or escaped keys on the way: their text decoded.
            None => json::find_paths_decoding_keys(record, &self.keys, &mut found).is_some(),
        };
        if object {
            self.found_row(record, &found, out);
        }
        FOUND.with(|f| f.replace(found));
        if object { Ok(()) } else { Err(malformed(&json::why_not_one_object(record))) }
    }

    fn records_of(&self, text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        Ok(rows(text).map(<[u8]>::to_vec).collect())
    }
}

/// The CSV rows of `text` (made by [`Mapping`]: every field empty or quoted), without their line
/// breaks; a line break inside quotes belongs to its field.
fn rows(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let mut quoted = false;
        let mut at = start;
        while let Some(found) = memchr::memchr2(b'"', b'\n', text.get(at..)?) {
            let end = at + found;
            if text[end] == b'"' {
                quoted = !quoted;
                at = end + 1;
            } else if quoted {
                at = end + 1;
            } else {
                let row = &text[start..end];
                start = end + 1;
                return Some(row);
            }
        }
        // A last row without its line break.
        let row = text.get(start..).filter(|r| !r.is_empty())?;
        start = text.len();
        Some(row)
    })
}

/// The sink's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresConfig {
    url: String,
    table: String,
    columns: Vec<String>,
    #[serde(default)]
    mapping: BTreeMap<String, String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default, deserialize_with = "url_or_table")]
    staging: Option<Staging>,
    #[serde(default = "yes")]
    healthcheck: bool,
}

fn yes() -> bool {
    true
}

/// `staging = "s3://bucket/staging"` or `{ url, prefix, options, tls }` (read with [`url_or_table`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Staging {
    url: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    options: BTreeMap<String, toml::Value>,
    #[serde(default)]
    tls: Option<super::object_store::StoreTls>,
}

impl From<String> for Staging {
    fn from(url: String) -> Self {
        Staging { url, prefix: String::new(), options: BTreeMap::new(), tls: None }
    }
}

/// A configured PostgreSQL sink.
pub struct PostgresSink {
    load: Arc<Loader>,
    wire: Arc<dyn ObjectFormat>,
    staging: Arc<dyn Sink>,
    /// Where it loads, without the password.
    location: String,
}

/// What loading a staged object needs.
struct Loader {
    config: tokio_postgres::Config,
    tls: bool,
    /// `sslrootcert`: the only authorities the server's certificate may chain to (else the web
    /// PKI's), read when the sink is configured and again when the file is renewed.
    roots: Option<(std::path::PathBuf, Renewing<Arc<rustls::RootCertStore>>)>,
    /// `table (col, …)`, quoted.
    target: String,
    table: String,
    columns: Vec<String>,
    staging_prefix: String,
    /// The staging store's URL, as written (what a manifest names objects by).
    staging_url: String,
    staging: Arc<dyn Sink>,
    pipeline: String,
    sink: String,
    healthcheck: bool,
    /// Whether the ledger is known to exist.
    ledger_ready: std::sync::atomic::AtomicBool,
    /// Connections kept between loads.
    idle: std::sync::Mutex<Vec<tokio_postgres::Client>>,
    /// `CopyRows` and `CopyDuration`, once the run hands them over.
    meter: std::sync::OnceLock<SinkMeter>,
}

/// Why a streamed COPY failed.
enum CopyFailure {
    /// The server refused or the connection failed.
    Server(tokio_postgres::Error),
    /// The staged object does not decompress.
    Body(std::io::Error),
}

/// Quotes a column or a dotted table name as SQL identifiers.
fn identifier(name: &str) -> String {
    name.split('.').map(|part| format!("\"{}\"", part.replace('"', "\"\""))).collect::<Vec<_>>().join(".")
}

/// Builds a PostgreSQL sink from `[sinks.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Sink>, Problems> {
    let span = config.table.span.clone();
    let spans = |key: &str| config.table.value_span(key).unwrap_or(span.clone());
    let (url_span, columns_span, mapping_span, format_span, staging_span) =
        (spans("url"), spans("columns"), spans("mapping"), spans("format"), spans("staging"));
    let (pipeline, name, data_dir) = (config.pipeline.clone(), config.name.clone(), config.data_dir.clone());
    let base_dir = config.base_dir.clone();
    let mut problems = Problems::default();
    let Some(c) = config.table.deserialize::<PostgresConfig>(&mut problems) else { return Err(problems) };
    let (url, root) = tls_options(&c.url);
    let root = root.map(|r| base_dir.join(r));
    let pg = problems.take(url.parse::<tokio_postgres::Config>().map_err(|e| {
        Diagnostic::new(url_span.clone(), format!("not a PostgreSQL URL: {e}"))
            .with_hint("postgres://user:password@host:5432/database, optionally ?sslmode=require")
    }));
    let roots = root.and_then(|root| match read_roots(&root) {
        Ok(roots) => {
            let renewing = Renewing::new(format!("`sinks.{name}`'s sslrootcert"), vec![root.clone()], Arc::new(roots));
            Some((root, renewing))
        }
        Err(why) => {
            problems.push(
                Diagnostic::new(url_span, format!("sslrootcert `{}` {why}", root.display())).with_hint(
                    "the PEM file of the certificate authorities the server's certificate is checked against",
                ),
            );
            None
        }
    });
    if c.columns.is_empty() || c.columns.iter().any(|col| col.is_empty()) {
        problems.push(
            Diagnostic::new(columns_span, "`columns` must name at least one column, none empty")
                .with_hint("the table's columns to load, in order, as Firehose's DataTableColumns"),
        );
    }
    // Without `columns` (its absence reported) neither `mapping` nor a jsonb load has columns to check.
    let columns_given = !problems.said("columns");
    if let Some(unknown) = c.mapping.keys().find(|k| columns_given && !c.columns.contains(k)) {
        problems.push(
            Diagnostic::new(mapping_span, format!("`mapping` names `{unknown}`, which is not in `columns`"))
                .with_hint("mapping = { column = \"json.path\" } for columns listed in `columns`"),
        );
    }
    let mapping = problems.take(match c.format.as_deref() {
        None | Some("csv") => {
            Ok(Mapping::Columns(c.columns.iter().map(|col| c.mapping.get(col).unwrap_or(col).clone()).collect()))
        }
        Some("json") if (c.columns.len() == 1 || !columns_given) && c.mapping.is_empty() => Ok(Mapping::Json),
        Some("json") => Err(Diagnostic::new(format_span, "format = \"json\" loads one jsonb column")
            .with_hint("columns = [\"record\"] and no `mapping`")),
        Some(other) => Err(Diagnostic::new(format_span, format!("unknown format `{other}`"))
            .with_hint("`csv` (a column per path, default) or `json` (the record in one jsonb column)")),
    });
    let staging = problems.take(match c.staging {
        // Written wrong or misspelt: its problem is reported already.
        None if problems.said("staging") => Err(Problems::default()),
        None => Err(Diagnostic::new(span, "a sink of type `postgres` needs `staging`")
            .with_hint(
                "where batches are staged before COPY (and the error output goes), as Firehose's intermediate S3: \
                 staging = \"s3://bucket/staging\" (or \"file://./staging\", or a table { url, prefix, options })",
            )
            .of_the_table()
            .into()),
        Some(staging) => ObjectStoreSink::from_nested(&staging.url, &staging.options, staging.tls.as_ref(), &base_dir)
            .map_err(|e| Diagnostic::new(staging_span, format!("staging: {e}")).with_hint(e.hint()).into())
            .map(|store| (store.owned_by(&pipeline, &format!("{name}-staging"), &data_dir), staging)),
    });
    let (pg, mapping, (store, staging)) = problems.finish((|| Some((pg?, mapping?, staging?)))())?;
    let tls = pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
    let staging_store: Arc<dyn Sink> = Arc::new(store);
    let target = format!(
        "{} ({})",
        identifier(&c.table),
        c.columns.iter().map(|col| identifier(col)).collect::<Vec<_>>().join(", ")
    );
    let location = format!(
        "postgres://{}:{}/{} {}",
        pg.get_hosts().first().map_or("?".into(), |h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        }),
        pg.get_ports().first().copied().unwrap_or(5432),
        pg.get_dbname().unwrap_or(""),
        c.table
    );
    let load = Loader {
        config: pg,
        tls,
        roots,
        target,
        table: c.table,
        columns: c.columns,
        staging_prefix: staging.prefix,
        staging_url: staging.url.trim_end_matches('/').to_string(),
        staging: Arc::clone(&staging_store),
        pipeline,
        sink: name,
        healthcheck: c.healthcheck,
        ledger_ready: std::sync::atomic::AtomicBool::new(false),
        idle: std::sync::Mutex::new(Vec::new()),
        meter: std::sync::OnceLock::new(),
    };
    Ok(Arc::new(PostgresSink {
        load: Arc::new(load),
        wire: Arc::new(TextFormat::new(StagedRows::new(mapping.clone()), Compression::Gzip)),
        staging: staging_store,
        location,
    }))
}

/// The certificates of an `sslrootcert` file, at least one; or why not (said after its name).
fn read_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in crate::tls::certificates(&crate::tls::pem_file(path)?)? {
        roots.add(certificate).map_err(|e| format!("holds a certificate that cannot be used: {e}"))?;
    }
    Ok(roots)
}

/// The URL as tokio-postgres reads it, and its `sslrootcert` (libpq's name, which tokio-postgres
/// does not read). rustls always checks the server's certificate and name, so `sslmode=verify-full`
/// and `verify-ca` become `require`, which does the same here.
fn tls_options(url: &str) -> (String, Option<String>) {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return (
            url.replace("sslmode=verify-full", "sslmode=require").replace("sslmode=verify-ca", "sslmode=require"),
            None,
        );
    };
    let mut root = None;
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(k, v)| match k.as_ref() {
            "sslrootcert" => {
                root = Some(v.into_owned());
                None
            }
            "sslmode" if v == "verify-full" || v == "verify-ca" => Some((k.into_owned(), "require".into())),
            _ => Some((k.into_owned(), v.into_owned())),
        })
        .collect();
    if pairs.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    (parsed.to_string(), root)
}

/// The delivery error `e` means.
fn classify(e: &tokio_postgres::Error, what: &str) -> DeliveryError {
    let Some(db) = e.as_db_error() else {
        return DeliveryError::Retryable {
            code: "Redshift.ConnectionFailed".into(),
            message: format!("{what}: {}", sluice_engine::redact::error(e)),
        };
    };
    let message = format!("{what}: {} (SQLSTATE {})", db.message(), db.code().code());
    let permanent = |code: &str| DeliveryError::Permanent { code: code.into(), message: message.clone() };
    match db.code() {
        c if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            permanent("Redshift.AuthenticationFailed")
        }
        c if *c == SqlState::UNDEFINED_TABLE => permanent("Redshift.TableNotFound"),
        c if *c == SqlState::UNDEFINED_COLUMN => permanent("Redshift.ColumnNotFound"),
        c if *c == SqlState::INSUFFICIENT_PRIVILEGE => permanent("Redshift.InsufficientPrivilege"),
        c if *c == SqlState::INVALID_CATALOG_NAME => permanent("Redshift.DatabaseNotFound"),
        _ => DeliveryError::Retryable { code: "Redshift.ServerError".into(), message },
    }
}

/// Whether `e` is about the rows' values (SQLSTATE classes 22 and 23), which splitting isolates.
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23"))
}

impl Loader {
    async fn connect(&self) -> Result<tokio_postgres::Client, DeliveryError> {
        let connected = if self.tls {
            let roots = self.roots();
            let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
            let (client, connection) =
                self.config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(config)).await.map_err(|e| {
                    match crate::tls::refusal(&e) {
                        Some(why) => DeliveryError::Permanent {
                            code: "Redshift.TlsFailed".into(),
                            message: format!("the server's certificate is not trusted: {why}"),
                        },
                        None => classify(&e, "cannot connect"),
                    }
                })?;
            tokio::spawn(connection);
            client
        } else {
            let (client, connection) =
                self.config.connect(tokio_postgres::NoTls).await.map_err(|e| classify(&e, "cannot connect"))?;
            tokio::spawn(connection);
            client
        };
        Ok(connected)
    }

    /// An idle connection of an earlier load, else a new one (a server process per connection is
    /// started by PostgreSQL: reusing it spares that and the authentication per load).
    async fn pooled(&self) -> Result<tokio_postgres::Client, DeliveryError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
            match idle {
                // A session the server ended while idle (a restart, an administrator) is noticed
                // here, by one round trip, not in the middle of a load.
                Some(client) if !client.is_closed() && client.batch_execute("").await.is_ok() => return Ok(client),
                Some(_) => continue,
                None => return self.connect().await,
            }
        }
    }

    /// Keeps `client`, after a load that ended cleanly, for the next one. A connection whose load
    /// failed is dropped instead: its state is not known.
    fn give_back(&self, client: tokio_postgres::Client) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(client);
        }
    }

    /// The authorities a server's certificate may chain to: `sslrootcert`'s (read again first when
    /// the file was renewed), else the web PKI's.
    fn roots(&self) -> Arc<rustls::RootCertStore> {
        match &self.roots {
            None => Arc::new(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
            Some((path, roots)) => roots.current(|| read_roots(path).map(Arc::new)),
        }
    }

    /// Creates the load ledger if it is missing (once per run).
    async fn ensure_ledger(&self, client: &tokio_postgres::Client) -> Result<(), DeliveryError> {
        if self.ledger_ready.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {LEDGER} (pipeline text NOT NULL, sink text NOT NULL, \
                 object_key text NOT NULL, rows bigint NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), \
                 PRIMARY KEY (pipeline, sink, object_key))"
            ))
            .await
            .map_err(|e| classify(&e, &format!("cannot create the load ledger {LEDGER}")))?;
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {RANGES} (pipeline text NOT NULL, sink text NOT NULL, \
                 log bigint NOT NULL, seq bigint NOT NULL, first bigint NOT NULL, last bigint NOT NULL, \
                 object_key text NOT NULL, PRIMARY KEY (pipeline, sink, log, seq, first))"
            ))
            .await
            .map_err(|e| classify(&e, &format!("cannot create the load ledger {RANGES}")))?;
        self.ledger_ready.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Creates the ledger if missing and, with the health check on, checks the table and columns.
    /// A server that cannot be reached only warns (deliveries retry); one that refuses stops the run.
    async fn prepare(&self) -> Result<(), DeliveryError> {
        let Some(client) = self.connect_at_start().await? else { return Ok(()) };
        self.ensure_ledger(&client).await?;
        self.check_table(&client).await
    }

    /// [`Self::prepare`] without creating the ledger: changes nothing.
    async fn check(&self) -> Result<(), DeliveryError> {
        let Some(client) = self.connect_at_start().await? else { return Ok(()) };
        self.check_table(&client).await
    }

    /// A connection, or `None` (warned) when the server cannot be reached now; an error when it
    /// refuses.
    async fn connect_at_start(&self) -> Result<Option<tokio_postgres::Client>, DeliveryError> {
        match self.connect().await {
            Ok(client) => Ok(Some(client)),
            Err(e) if e.is_retryable() => {
                tracing::warn!(sink = %self.sink, error = %e, "PostgreSQL cannot be reached now; deliveries will retry");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// With the health check on: the table exists, has the columns, and may be inserted into.
    async fn check_table(&self, client: &tokio_postgres::Client) -> Result<(), DeliveryError> {
        if !self.healthcheck {
            return Ok(());
        }
        let found = client
            .query_opt("SELECT to_regclass($1)::oid", &[&identifier(&self.table)])
            .await
            .map_err(|e| classify(&e, "cannot look up the table"))?
            .and_then(|row| row.get::<_, Option<u32>>(0));
        let Some(oid) = found else {
            return Err(DeliveryError::Permanent {
                code: "Redshift.TableNotFound".into(),
                message: format!("the table `{}` does not exist (or this user cannot see it)", self.table),
            });
        };
        let present: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&oid],
            )
            .await
            .map_err(|e| classify(&e, "cannot read the table's columns"))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if let Some(missing) = self.columns.iter().find(|c| !present.contains(c)) {
            return Err(DeliveryError::Permanent {
                code: "Redshift.ColumnNotFound".into(),
                message: format!(
                    "the table `{}` has no column `{missing}` (it has {})",
                    self.table,
                    present.join(", ")
                ),
            });
        }
        let privileged: bool = client
            .query_one("SELECT has_table_privilege($1::oid, 'INSERT')", &[&oid])
            .await
            .map_err(|e| classify(&e, "cannot check privileges"))?
            .get(0);
        if !privileged {
            return Err(DeliveryError::Permanent {
                code: "Redshift.InsufficientPrivilege".into(),
                message: format!("this user may not INSERT into `{}`", self.table),
            });
        }
        Ok(())
    }

    /// COPYs the rows of the gzip object `body`, decompressed 1 MiB at a time as they are sent.
    async fn copy_compressed(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
        body: &[u8],
    ) -> Result<u64, CopyFailure> {
        use std::io::Read as _;
        let sink = transaction
            .copy_in::<_, Bytes>(&format!("COPY {} FROM STDIN (FORMAT csv)", self.target))
            .await
            .map_err(CopyFailure::Server)?;
        futures::pin_mut!(sink);
        let mut rows = flate2::read::MultiGzDecoder::new(body);
        loop {
            let mut chunk = Vec::with_capacity(1 << 20);
            (&mut rows).take(1 << 20).read_to_end(&mut chunk).map_err(CopyFailure::Body)?;
            if chunk.is_empty() {
                break;
            }
            sink.send(Bytes::from(chunk)).await.map_err(CopyFailure::Server)?;
        }
        sink.finish().await.map_err(CopyFailure::Server)
    }

    /// COPYs `records` (staged rows) in one statement, sent 1 MiB at a time.
    async fn copy<'r>(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
        records: impl Iterator<Item = &'r [u8]>,
    ) -> Result<u64, tokio_postgres::Error> {
        let sink = transaction.copy_in::<_, Bytes>(&format!("COPY {} FROM STDIN (FORMAT csv)", self.target)).await?;
        futures::pin_mut!(sink);
        let mut rows = Vec::with_capacity(1 << 20);
        for row in records {
            rows.extend_from_slice(row);
            rows.push(b'\n');
            if rows.len() >= 1 << 20 {
                sink.send(Bytes::from(std::mem::take(&mut rows))).await?;
            }
        }
        if !rows.is_empty() {
            sink.send(Bytes::from(rows)).await?;
        }
        sink.finish().await
    }

    /// Loads `records` under savepoints, splitting them on data errors down to the records whose
    /// rows fail, which are returned with their SQLSTATE and message.
    async fn load_isolating(
        &self,
        transaction: &mut tokio_postgres::Transaction<'_>,
        records: &[&[u8]],
        refused: &mut Vec<RefusedRecord>,
    ) -> Result<u64, DeliveryError> {
        let mut pending = vec![records];
        let mut loaded = 0;
        while let Some(part) = pending.pop() {
            if part.is_empty() {
                continue;
            }
            let savepoint = transaction.savepoint("sluice_rows").await.map_err(|e| classify(&e, "SAVEPOINT"))?;
            match self.copy(&savepoint, part.iter().copied()).await {
                Ok(n) => {
                    savepoint.commit().await.map_err(|e| classify(&e, "RELEASE SAVEPOINT"))?;
                    loaded += n;
                }
                Err(e) if is_data_error(&e) => {
                    savepoint.rollback().await.map_err(|e| classify(&e, "ROLLBACK TO SAVEPOINT"))?;
                    if let [record] = part {
                        let db = e.as_db_error();
                        refused.push(RefusedRecord {
                            record: record.to_vec(),
                            code: db.map_or("22000".into(), |d| d.code().code().to_string()),
                            message: db.map_or_else(|| e.to_string(), |d| d.message().to_string()),
                            details: serde_json::Map::new(),
                        });
                    } else {
                        let (a, b) = part.split_at(part.len() / 2);
                        pending.push(b);
                        pending.push(a);
                    }
                }
                Err(e) => return Err(classify(&e, "COPY")),
            }
        }
        Ok(loaded)
    }

    /// Which of the payload's records an earlier load already stored (by their log positions),
    /// one flag per record.
    async fn loaded_before(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
        origins: &PayloadOrigins,
    ) -> Result<Vec<bool>, DeliveryError> {
        let mut entries: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
        for range in origins.ranges() {
            entries.entry(range.log).or_default().push(range.seq as i64);
        }
        let mut loaded: Vec<EntryRange> = Vec::new();
        for (log, seqs) in entries {
            let rows = transaction
                .query(
                    &format!(
                        "SELECT seq, first, last FROM {RANGES} \
                         WHERE pipeline = $1 AND sink = $2 AND log = $3 AND seq = ANY($4)"
                    ),
                    &[&self.pipeline, &self.sink, &(log as i64), &seqs],
                )
                .await
                .map_err(|e| classify(&e, "cannot read the load ledger"))?;
            loaded.extend(rows.iter().map(|row| EntryRange {
                log,
                seq: row.get::<_, i64>(0) as u64,
                first: row.get::<_, i64>(1) as u64,
                last: row.get::<_, i64>(2) as u64,
            }));
        }
        Ok((0..origins.len())
            .map(|i| origins.get(i).is_some_and(|p| loaded.iter().any(|range| range.holds(&p))))
            .collect())
    }

    /// Records in the ledger the log entry ranges this load answers, and forgets ranges of
    /// entries below the logs' replay floors (never replayed again).
    async fn remember_ranges(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
        origins: &PayloadOrigins,
        key: &str,
    ) -> Result<(), DeliveryError> {
        let ranges = origins.ranges();
        let column = |f: fn(&EntryRange) -> u64| ranges.iter().map(|r| f(r) as i64).collect::<Vec<i64>>();
        let (logs, seqs, firsts, lasts) =
            (column(|r| r.log), column(|r| r.seq), column(|r| r.first), column(|r| r.last));
        transaction
            .execute(
                &format!(
                    "INSERT INTO {RANGES} (pipeline, sink, log, seq, first, last, object_key) \
                     SELECT $1, $2, * , $7 FROM unnest($3::int8[], $4::int8[], $5::int8[], $6::int8[]) \
                     ON CONFLICT (pipeline, sink, log, seq, first) \
                     DO UPDATE SET last = GREATEST({RANGES}.last, EXCLUDED.last), object_key = EXCLUDED.object_key"
                ),
                &[&self.pipeline, &self.sink, &logs, &seqs, &firsts, &lasts, &key],
            )
            .await
            .map_err(|e| classify(&e, "cannot write the load ledger"))?;
        for (log, floor) in origins.replay_floors() {
            transaction
                .execute(
                    &format!("DELETE FROM {RANGES} WHERE pipeline = $1 AND sink = $2 AND log = $3 AND seq < $4"),
                    &[&self.pipeline, &self.sink, &(log as i64), &(floor as i64)],
                )
                .await
                .map_err(|e| classify(&e, "cannot prune the load ledger"))?;
        }
        Ok(())
    }

    /// Stages and loads one payload, exactly once per key (module docs).
    async fn deliver(&self, payload: Payload) -> Result<(), DeliveryError> {
        let key = format!("{}{}", self.staging_prefix, payload.key);
        self.staging.deliver(Payload { key: key.clone(), ..payload.clone() }).await?;
        let mut client = self.pooled().await?;
        self.ensure_ledger(&client).await?;
        let mut transaction = client.transaction().await.map_err(|e| classify(&e, "BEGIN"))?;
        let done = transaction
            .query_opt(
                &format!("SELECT rows FROM {LEDGER} WHERE pipeline = $1 AND sink = $2 AND object_key = $3 FOR UPDATE"),
                &[&self.pipeline, &self.sink, &key],
            )
            .await
            .map_err(|e| classify(&e, "cannot read the load ledger"))?;
        if done.is_some() {
            // Loaded before (a retry after a lost answer, or a crash after the commit).
            return transaction.commit().await.map_err(|e| classify(&e, "COMMIT"));
        }
        let invalid = |e: std::io::Error| DeliveryError::Unstorable {
            code: "Redshift.InvalidObject".into(),
            message: format!("the staged object does not decompress: {e}"),
        };
        let origins = payload.origins.as_deref();
        let loaded_before = match origins {
            Some(origins) => self.loaded_before(&transaction, origins).await?,
            None => Vec::new(),
        };
        let mut refused = Vec::new();
        let started = std::time::Instant::now();
        // Usually every row is new: the object is decompressed into COPY as it goes, 1 MiB at a
        // time. Rows to leave out, or rows PostgreSQL refuses, need the rows one by one.
        let streamed = if loaded_before.contains(&true) {
            None
        } else {
            match self.copy_compressed(&transaction, &payload.body).await {
                Ok(n) => Some(n),
                Err(CopyFailure::Body(e)) => return Err(invalid(e)),
                Err(CopyFailure::Server(e)) if is_data_error(&e) => {
                    // The failed COPY aborted the transaction: start again, row by row.
                    drop(transaction);
                    transaction = client.transaction().await.map_err(|e| classify(&e, "BEGIN"))?;
                    None
                }
                Err(CopyFailure::Server(e)) => return Err(classify(&e, "COPY")),
            }
        };
        let loaded = match streamed {
            Some(n) => n,
            None => {
                let text = decompress(Compression::Gzip, &payload.body).map_err(invalid)?;
                let fresh = |(i, _): &(usize, &[u8])| !loaded_before.get(*i).copied().unwrap_or(false);
                let records: Vec<&[u8]> = rows(&text).enumerate().filter(fresh).map(|(_, r)| r).collect();
                self.load_isolating(&mut transaction, &records, &mut refused).await?
            }
        };
        transaction
            .execute(
                &format!("INSERT INTO {LEDGER} (pipeline, sink, object_key, rows) VALUES ($1, $2, $3, $4)"),
                &[&self.pipeline, &self.sink, &key, &(loaded as i64)],
            )
            .await
            .map_err(|e| classify(&e, "cannot write the load ledger"))?;
        if let Some(origins) = origins {
            self.remember_ranges(&transaction, origins, &key).await?;
        }
        transaction.commit().await.map_err(|e| classify(&e, "COMMIT"))?;
        self.give_back(client);
        let skipped = loaded_before.iter().filter(|&&b| b).count();
        if skipped > 0 {
            tracing::info!(key, skipped, "records replayed from the log were loaded before; not loaded again");
        }
        if let Some(meter) = self.meter.get() {
            meter.count(COPY_ROWS, loaded);
            meter.observe(COPY_DURATION, started.elapsed());
        }
        tracing::debug!(key, loaded, refused = refused.len(), elapsed = ?started.elapsed(), "COPY done");
        if refused.is_empty() {
            return Ok(());
        }
        Err(DeliveryError::Partly {
            code: "Redshift.DataErrors".into(),
            message: format!(
                "{} of {} rows refused by PostgreSQL; first: {} ({})",
                refused.len(),
                loaded as usize + refused.len(),
                refused[0].message,
                refused[0].code
            ),
            retry: None,
            refused,
        })
    }
}

impl Loader {
    /// Writes a COPY manifest naming the staged object of `key` under `errors/manifests/` in the
    /// staging store, as Firehose does for Redshift loads it skipped: `COPY … FROM '<manifest>'
    /// MANIFEST` (Redshift) or a script reading its entries can load it later.
    async fn skipped(&self, key: &str, error: &DeliveryError) -> Result<(), DeliveryError> {
        let staged = format!("{}{key}", self.staging_prefix);
        let manifest = serde_json::json!({
            "entries": [{ "url": format!("{}/{staged}", self.staging_url), "mandatory": true }],
            "skipped": { "errorCode": error.code(), "errorMessage": error.to_string(), "table": self.table },
        });
        let body = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap_or_default());
        let payload = Payload {
            key: format!("errors/manifests/{staged}.manifest"),
            body,
            content_type: "application/json",
            content_encoding: None,
            records: 0,
            origins: None,
        };
        self.staging.deliver(payload).await
    }
}

impl Sink for PostgresSink {
    fn describe(&self) -> String {
        format!("postgres {} ({})", self.location, self.wire.describe())
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn destination(&self) -> DestinationKind {
        DestinationKind::Redshift
    }

    /// Creates the load ledger if missing and checks the table as [`Sink::check`] does (the engine
    /// prepares the staging store, the sink's error output).
    fn prepare(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let load = Arc::clone(&self.load);
        Box::pin(async move { load.prepare().await })
    }

    /// Unless `healthcheck = false`, the table: it exists, has the columns, and this user may
    /// insert into it. A server that cannot be reached is warned.
    fn check(&self) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let load = Arc::clone(&self.load);
        Box::pin(async move { load.check().await })
    }

    fn wire_format(&self) -> Option<Arc<dyn ObjectFormat>> {
        Some(Arc::clone(&self.wire))
    }

    fn error_output(&self) -> Option<Arc<dyn Sink>> {
        Some(Arc::clone(&self.staging))
    }

    fn deliver(&self, payload: Payload) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let load = Arc::clone(&self.load);
        Box::pin(async move { load.deliver(payload).await })
    }

    fn measure_with(&self, meter: SinkMeter) {
        if let Some((_, roots)) = &self.load.roots {
            roots.tls_metrics().meter_with(meter.clone());
        }
        let _ = self.load.meter.set(meter);
    }

    fn skipped(&self, key: &str, error: &DeliveryError) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let (load, key, error) = (Arc::clone(&self.load), key.to_string(), error.clone());
        Box::pin(async move { load.skipped(&key, &error).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mapping: &Mapping, record: &str) -> String {
        let mut out = Vec::new();
        StagedRows::new(mapping.clone())
            .encode(record.as_bytes(), &mut out)
            .unwrap_or_else(|e| panic!("{e}: {record}"));
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn records_become_csv_rows_of_their_paths() {
        let m = Mapping::columns(&["a", "b.c", "missing", "n", "flag", "obj", "none"]);
        assert_eq!(
            row(&m, r#"{"a":"say \"hi\", then\nbye","b":{"c":""},"n":1.5,"flag":true,"obj":{"x":[1]},"none":null}"#),
            "\"say \"\"hi\"\", then\nbye\",\"\",,\"1.5\",\"true\",\"{\"\"x\"\":[1]}\",\n"
        );
        assert_eq!(row(&Mapping::Json, r#"{"k": "v"}"#), "\"{\"\"k\"\": \"\"v\"\"}\"\n");
    }

    /// A record whose keys hold escapes gets the row the same record without them gets; numbers
    /// keep their digits (a tree would have made `1.50` into `1.5`, a 30-digit integer into a
    /// float, and refused `1e400`).
    #[test]
    fn keys_with_escapes_give_the_row_of_the_same_keys_without() {
        let m = Mapping::columns(&["a", "b.c", "missing", "n", "flag", "obj", "none", "b.d.e", "big", "huge"]);
        for (escaped, plain) in [
            (
                r#"{"\u0061":"say \"hi\"","b":{"c":"","d":{"\u0065":"deep"}},"n":1.50,"flag":true,"obj":{ "x" : [1] },"none":null,"big":123456789012345678901234567890,"huge":1e400}"#,
                r#"{"a":"say \"hi\"","b":{"c":"","d":{"e":"deep"}},"n":1.50,"flag":true,"obj":{ "x" : [1] },"none":null,"big":123456789012345678901234567890,"huge":1e400}"#,
            ),
            (
                r#"{"a\u0041":"escaped key","a":"é ü","b":{"c\n":1,"c":"x"}}"#,
                r#"{"aA":"escaped key","a":"é ü","b":{"cx":1,"c":"x"}}"#,
            ),
            (r#"{"\u0061":1,"a":2,"b":{}}"#, r#"{"a":1,"a":2,"b":{}}"#),
            (r#"{"\u0062":"not an object","b":null}"#, r#"{"b":"not an object","b":null}"#),
            (r#"{"\u0062":"not an object"}"#, r#"{"b":"not an object"}"#),
        ] {
            assert_eq!(row(&m, escaped), row(&m, plain), "{escaped}");
            let keys = StagedRows::new(m.clone()).keys;
            json::decoding_way_agrees(&keys, escaped.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            json::decoding_way_agrees(&keys, plain.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(
            row(&m, r#"{"\u0061":1,"n":1.50,"big":123456789012345678901234567890,"huge":1e400}"#),
            "\"1\",,,\"1.50\",,,,,\"123456789012345678901234567890\",\"1e400\"\n"
        );
    }

    /// A dotted path is read as the csv format reads a column's name: a key as written first (ECS's
    /// flattened `"log.level"`), then the paths its dots make; through escaped keys the same.
    #[test]
    fn a_dotted_path_finds_a_flattened_key_first_then_a_nested_one() {
        let m = Mapping::columns(&["log.level", "a.b.c", "x"]);
        for (record, expected) in [
            (r#"{"log.level":"flat","log":{"level":"nested"},"x":1}"#, "\"flat\",,\"1\"\n"),
            (r#"{"log":{"level":"nested"},"a":{"b.c":1,"b":{"c":2}}}"#, "\"nested\",\"1\",\n"),
            (r#"{"log":"text","a":{"b":{"c":2}},"a.b":{"c":3}}"#, ",\"2\",\n"),
            (r#"{"log":null,"a":"text","a.b":{"c":3}}"#, ",\"3\",\n"),
            (r#"{"\u006cog.level":"flat","a":{"b":{"\u0063":2}}}"#, "\"flat\",\"2\",\n"),
        ] {
            assert_eq!(row(&m, record), expected, "{record}");
            json::decoding_way_agrees(&StagedRows::new(m.clone()).keys, record.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Two columns of one field (`mapping = { id = "eventID", id_copy = "eventID" }`) both have it.
    #[test]
    fn columns_of_the_same_path_each_have_its_value() {
        let m = Mapping::columns(&["a", "a", "b.c", "n", "b.c"]);
        assert_eq!(row(&m, r#"{"a":1,"b":{"c":"x"},"n":2}"#), "\"1\",\"1\",\"x\",\"2\",\"x\"\n");
        assert_eq!(row(&m, r#"{"\u0061":1,"b":{"c":"x"}}"#), "\"1\",\"1\",\"x\",,\"x\"\n");
    }

    #[test]
    fn only_json_objects_are_staged_each_as_one_row_and_rows_split_outside_quotes() {
        let staged = StagedRows::new(Mapping::columns(&["a", "b"]));
        let mut out = Vec::new();
        staged.encode(b"{\n \"a\": 1\r\n}\n", &mut out).unwrap_or_else(|e| panic!("{e}"));
        staged.encode(br#"{"a":"two\nlines, \"quoted\"","b":null}"#, &mut out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(String::from_utf8_lossy(&out), "\"1\",\n\"two\nlines, \"\"quoted\"\"\",\n");
        for bad in [&b"not json"[..], b"[1]", b"\"s\"", b"{\"a\":1} {", b"{\"a\":\"\xff\"}"] {
            assert!(staged.encode(bad, &mut Vec::new()).is_err(), "{bad:?}");
        }
        let rows = staged.records_of(&out).unwrap_or_default();
        assert_eq!(rows, [b"\"1\",".to_vec(), b"\"two\nlines, \"\"quoted\"\"\",".to_vec()]);
        assert_eq!(super::rows(b"\"x\"\n\"y\"").count(), 2, "a last row without its line break");
        let json = StagedRows::new(Mapping::Json);
        let mut row = Vec::new();
        json.encode(br#"{"k":"v"}"#, &mut row).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(row, b"\"{\"\"k\"\":\"\"v\"\"}\"\n");
    }

    #[test]
    fn libpq_tls_options_become_what_tokio_postgres_reads() {
        let (url, root) =
            tls_options("postgres://u:p%40ss@h:5432/db?sslmode=verify-full&sslrootcert=ca.pem&application_name=x");
        assert_eq!(url, "postgres://u:p%40ss@h:5432/db?sslmode=require&application_name=x");
        assert_eq!(root.as_deref(), Some("ca.pem"));
        assert_eq!(
            tls_options("postgres://h/db?sslrootcert=/c.pem"),
            ("postgres://h/db".to_string(), Some("/c.pem".into()))
        );
        assert_eq!(tls_options("host=h sslmode=verify-ca").0, "host=h sslmode=require");
        assert!(tls_options("postgres://h/db").1.is_none());
    }

    #[test]
    fn names_are_quoted_as_identifiers() {
        assert_eq!(identifier("events"), "\"events\"");
        assert_eq!(identifier("lake.events"), "\"lake\".\"events\"");
        assert_eq!(identifier("we\"ird"), "\"we\"\"ird\"");
    }
}
