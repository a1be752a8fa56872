//! `type = "enrich"`: adds Geo-IP, ASN and user-agent fields to JSON records (issue 17; what
//! Firehose needs a Lambda function for).
//!
//! ```toml
//! [transforms.geo]
//! type = "enrich"
//! inputs = ["cf"]
//! geoip = { database = "geo/GeoLite2-City.mmdb", field = "c_ip", target = "geo" }   # geo.country_code, .country, .city, .lat, .lon
//! asn = { database = "geo/GeoLite2-ASN.mmdb", field = "c_ip", target = "asn" }      # asn.number, asn.org
//! user_agent = { field = "cs_user_agent", target = "ua", url_decoded = true }       # ua.browser, .browser_version, .os, .os_version, .device
//! ```
//!
//! Fields and targets are dotted JSON paths (as in the redact transform); a target's objects are
//! created as needed and replace what was there. Each part is independent: a record whose field is
//! missing, not a string, not an address, or not in the database is passed on without that part,
//! counted in `EnrichmentMisses{reason}` (`<part>.field_missing`, `<part>.not_an_address`,
//! `<part>.not_found`, or `record.not_json`), never failed; enriched parts count
//! `EnrichmentHits{part}`. A record that is not a
//! JSON object passes unchanged. A part that finds nothing writes nothing (no empty object); of a
//! found address only the values the database has are written.
//!
//! Databases are MaxMind DB files (GeoIP2/GeoLite2 City and ASN, or any database with their
//! layout, e.g. DB-IP's), checked at validation (the file opens, with the database type in the
//! error), read into memory once per process and shared by every worker: a lookup is a tree walk in
//! that memory. (A memory map would avoid the copy, but maxminddb's is `unsafe`: a file written in
//! place under the map is undefined behaviour, and this workspace forbids unsafe code.) **Live
//! reload**: a worker looks at the file's size, modification time and inode at most once a second;
//! when they change (an updater's atomic rename, or a copy) the file is read again and swapped in for
//! records that arrive afterwards (`EnrichmentReloads{part}`); a file that does not open (truncated,
//! half written) keeps the loaded data and counts `EnrichmentReloadFailures{part}`, logged once per
//! change of the file.
//!
//! User agents are parsed by the `ua-parser` crate with uap-core 0.18.0's regexes (embedded,
//! `connectors/uap-core/`), compiled once per process; each worker remembers the answers for
//! the last few thousand distinct user agents (logs repeat them). `url_decoded = true` decodes
//! `%XX` escapes first (CloudFront's logs write `Mozilla/5.0%20(Windows…`). A user agent uap-core
//! does not know is written as `Other`, as every uap port does.
//!
//! Reference tables (`tables = [...]`, differential-dataflow arrangements updated by differences)
//! are refused with a clear error until they are built.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_engine::config::{ConnectorConfig, Diagnostic};
use sluice_engine::contract::{
    Emit, RecordByRecord, RecordTransform, Transform, TransformContext, TransformError, TransformFailure,
    TransformWorker,
};
use sluice_engine::metrics::TransformMetrics;
use sluice_engine::record::now_ms;

/// uap-core's regexes, converted once from its `regexes.yaml` to JSON (scripts/uap-core-json.sh).
const UAP_REGEXES: &str = include_str!("../../uap-core/regexes.json");
/// How often a worker looks at a database file for a change.
const RELOAD_CHECK_MS: i64 = 1_000;
/// Distinct user agents a worker remembers the answer for.
const UA_CACHE: usize = 4_096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrichConfig {
    geoip: Option<DatabasePart>,
    asn: Option<DatabasePart>,
    user_agent: Option<UserAgentPart>,
    tables: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabasePart {
    database: String,
    field: String,
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserAgentPart {
    field: String,
    target: String,
    #[serde(default)]
    url_decoded: bool,
}

/// Which database lookup a part does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Geoip,
    Asn,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Geoip => "geoip",
            Kind::Asn => "asn",
        }
    }
}

/// A MaxMind DB file as loaded, and how to notice that it changed.
struct Database {
    kind: Kind,
    path: PathBuf,
    loaded: Mutex<Arc<maxminddb::Reader<Vec<u8>>>>,
    /// The file's stamp when it was last read (or last found unreadable).
    stamp: Mutex<Option<FileStamp>>,
    /// When a worker last looked at the file (ms since the epoch).
    checked_ms: AtomicI64,
}

/// What tells that a file changed: its size, modification time and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp { len: m.len(), modified: m.modified().ok(), inode: m.ino() })
}

/// Opens a database, checking it has the layout `kind` reads.
fn open_database(kind: Kind, path: &Path) -> Result<maxminddb::Reader<Vec<u8>>, String> {
    let reader = maxminddb::Reader::open_readfile(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let database_type = reader.metadata().database_type.to_ascii_lowercase();
    let fits = match kind {
        Kind::Geoip => database_type.contains("city") || database_type.contains("country"),
        Kind::Asn => database_type.contains("asn") || database_type.contains("isp"),
    };
    if !fits {
        return Err(format!(
            "{} is a `{}` database; `{}` needs {}",
            path.display(),
            reader.metadata().database_type,
            kind.name(),
            if kind == Kind::Geoip { "a City or Country database" } else { "an ASN database" }
        ));
    }
    Ok(reader)
}

impl Database {
    fn open(kind: Kind, path: PathBuf) -> Result<Self, String> {
        let before = stamp(&path);
        let reader = open_database(kind, &path)?;
        Ok(Database {
            kind,
            loaded: Mutex::new(Arc::new(reader)),
            stamp: Mutex::new(before),
            checked_ms: AtomicI64::new(now_ms()),
            path,
        })
    }

    /// The database to use now, read again first if the file changed (looked at at most once a
    /// second, by one worker at a time).
    fn current(&self, metrics: &TransformMetrics) -> Arc<maxminddb::Reader<Vec<u8>>> {
        let now = now_ms();
        let last = self.checked_ms.load(Ordering::Relaxed);
        if now - last >= RELOAD_CHECK_MS
            && self.checked_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            self.reload_if_changed(metrics);
        }
        let loaded = self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&loaded)
    }

    fn reload_if_changed(&self, metrics: &TransformMetrics) {
        let now = stamp(&self.path);
        let mut known = self.stamp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.is_none() || *known == now {
            return;
        }
        *known = now;
        match open_database(self.kind, &self.path) {
            Ok(reader) => {
                *self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(reader);
                metrics.count("EnrichmentReloads", "part", self.kind.name(), 1);
                tracing::info!(database = %self.path.display(), "enrichment database reloaded");
            }
            Err(e) => {
                metrics.count("EnrichmentReloadFailures", "part", self.kind.name(), 1);
                tracing::error!(error = %e, "enrichment database changed but cannot be read; keeping the loaded one");
            }
        }
    }
}

/// A dotted path, split into its keys.
fn dotted(path: &str) -> Vec<String> {
    path.split('.').map(str::to_string).collect()
}

/// A database part: where the address is, where the answer goes.
struct DatabaseLookup {
    database: Arc<Database>,
    field: Vec<String>,
    target: Vec<String>,
}

/// The user-agent part.
struct UserAgentLookup {
    field: Vec<String>,
    target: Vec<String>,
    url_decoded: bool,
}

/// A configured enrich transform.
pub struct EnrichTransform {
    geoip: Option<DatabaseLookup>,
    asn: Option<DatabaseLookup>,
    user_agent: Option<UserAgentLookup>,
    extractor: Option<&'static ua_parser::Extractor<'static>>,
}

/// uap-core's extractor, compiled once per process.
fn uap_extractor() -> Result<&'static ua_parser::Extractor<'static>, String> {
    static EXTRACTOR: OnceLock<Result<ua_parser::Extractor<'static>, String>> = OnceLock::new();
    EXTRACTOR
        .get_or_init(|| {
            let regexes: ua_parser::Regexes<'static> =
                serde_json::from_str(UAP_REGEXES).map_err(|e| format!("uap-core's regexes do not load: {e}"))?;
            ua_parser::Extractor::try_from(regexes).map_err(|e| format!("uap-core's regexes do not compile: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Builds the transform from `[transforms.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Transform>, Diagnostic> {
    let span = config.table.span.clone();
    let spans = |key: &str| config.table.value_span(key).unwrap_or(span.clone());
    let (geoip_span, asn_span, tables_span) = (spans("geoip"), spans("asn"), spans("tables"));
    let base_dir = config.base_dir.clone();
    let c: EnrichConfig = config.table.deserialize()?;
    if c.tables.is_some() {
        return Err(Diagnostic::new(tables_span, "reference `tables` are not supported yet")
            .with_hint("enrich from `geoip`, `asn` and `user_agent` for now (issue 17 tracks tables)"));
    }
    if c.geoip.is_none() && c.asn.is_none() && c.user_agent.is_none() {
        return Err(Diagnostic::new(span, "an enrich transform with nothing to add changes nothing")
            .with_hint("add geoip = { database, field, target }, asn = { … } or user_agent = { field, target }"));
    }
    let database = |part: Option<DatabasePart>, kind: Kind, span: std::ops::Range<usize>| {
        part.map(|p| {
            let path = base_dir.join(&p.database);
            Database::open(kind, path)
                .map(|database| DatabaseLookup {
                    database: Arc::new(database),
                    field: dotted(&p.field),
                    target: dotted(&p.target),
                })
                .map_err(|e| {
                    Diagnostic::new(span, format!("{}: {e}", kind.name())).with_hint(
                        "a MaxMind DB file (GeoLite2-City.mmdb, GeoLite2-ASN.mmdb), relative to the pipeline file",
                    )
                })
        })
        .transpose()
    };
    let geoip = database(c.geoip, Kind::Geoip, geoip_span)?;
    let asn = database(c.asn, Kind::Asn, asn_span)?;
    let extractor = match &c.user_agent {
        Some(_) => Some(uap_extractor().map_err(|e| Diagnostic::new(span.clone(), e))?),
        None => None,
    };
    let user_agent = c.user_agent.map(|u| UserAgentLookup {
        field: dotted(&u.field),
        target: dotted(&u.target),
        url_decoded: u.url_decoded,
    });
    Ok(Arc::new(EnrichTransform { geoip, asn, user_agent, extractor }))
}

impl Transform for EnrichTransform {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, lookup) in [("geoip", &self.geoip), ("asn", &self.asn)] {
            if let Some(l) = lookup {
                parts.push(format!("{name} {} → {}", l.database.path.display(), l.target.join(".")));
            }
        }
        if let Some(u) = &self.user_agent {
            parts.push(format!("user agent {} → {}", u.field.join("."), u.target.join(".")));
        }
        format!("enrich: {}", parts.join(", "))
    }

    fn open(&self, context: &TransformContext) -> Result<Box<dyn TransformWorker>, TransformError> {
        let lookup = |l: &Option<DatabaseLookup>| {
            l.as_ref().map(|l| DatabaseLookup {
                database: Arc::clone(&l.database),
                field: l.field.clone(),
                target: l.target.clone(),
            })
        };
        Ok(Box::new(RecordByRecord(Enricher {
            geoip: lookup(&self.geoip),
            asn: lookup(&self.asn),
            user_agent: self.user_agent.as_ref().map(|u| UserAgentLookup {
                field: u.field.clone(),
                target: u.target.clone(),
                url_decoded: u.url_decoded,
            }),
            extractor: self.extractor,
            agents: HashMap::new(),
            metrics: Arc::clone(&context.metrics),
        })))
    }
}

/// One worker's enricher.
struct Enricher {
    geoip: Option<DatabaseLookup>,
    asn: Option<DatabaseLookup>,
    user_agent: Option<UserAgentLookup>,
    extractor: Option<&'static ua_parser::Extractor<'static>>,
    /// Answers for user agents seen lately.
    agents: HashMap<String, Value>,
    metrics: Arc<TransformMetrics>,
}

/// Why a part added nothing to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    FieldMissing,
    NotAnAddress,
    NotFound,
}

impl Miss {
    fn reason(self) -> &'static str {
        match self {
            Miss::FieldMissing => "field_missing",
            Miss::NotAnAddress => "not_an_address",
            Miss::NotFound => "not_found",
        }
    }
}

/// The string at `path` in `record`.
fn string_at<'v>(record: &'v Value, path: &[String]) -> Option<&'v str> {
    path.iter().try_fold(record, |v, key| v.get(key))?.as_str()
}

/// Puts `value` at `path` in `record`, making objects on the way (replacing what is not one).
fn put(record: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut at = record;
    for key in parents {
        let Value::Object(map) = at else { return };
        let next = map.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        at = next;
    }
    if let Value::Object(map) = at {
        map.insert(last.clone(), value);
    }
}

/// What a City (or Country) database says of `ip`.
fn geo(reader: &maxminddb::Reader<Vec<u8>>, ip: IpAddr) -> Result<Value, Miss> {
    let found = reader.lookup(ip).map_err(|_| Miss::NotFound)?;
    let city: maxminddb::geoip2::City = found.decode().ok().flatten().ok_or(Miss::NotFound)?;
    let mut out = Map::new();
    if let Some(code) = city.country.iso_code {
        out.insert("country_code".into(), code.into());
    }
    if let Some(name) = city.country.names.english {
        out.insert("country".into(), name.into());
    }
    if let Some(name) = city.city.names.english {
        out.insert("city".into(), name.into());
    }
    if let (Some(lat), Some(lon)) = (city.location.latitude, city.location.longitude) {
        out.insert("lat".into(), lat.into());
        out.insert("lon".into(), lon.into());
    }
    if out.is_empty() { Err(Miss::NotFound) } else { Ok(Value::Object(out)) }
}

/// What an ASN database says of `ip`.
fn asn(reader: &maxminddb::Reader<Vec<u8>>, ip: IpAddr) -> Result<Value, Miss> {
    let found = reader.lookup(ip).map_err(|_| Miss::NotFound)?;
    let asn: maxminddb::geoip2::Asn = found.decode().ok().flatten().ok_or(Miss::NotFound)?;
    let mut out = Map::new();
    if let Some(number) = asn.autonomous_system_number {
        out.insert("number".into(), number.into());
    }
    if let Some(org) = asn.autonomous_system_organization {
        out.insert("org".into(), org.into());
    }
    if out.is_empty() { Err(Miss::NotFound) } else { Ok(Value::Object(out)) }
}

/// A version from its parts, as far as they go.
fn version<'a>(parts: impl IntoIterator<Item = Option<&'a str>>) -> Option<String> {
    let parts: Vec<&str> = parts.into_iter().map_while(|p| p.filter(|p| !p.is_empty())).collect();
    (!parts.is_empty()).then(|| parts.join("."))
}

/// What uap-core says of a user agent.
pub fn parse_user_agent(extractor: &ua_parser::Extractor<'_>, agent: &str) -> Value {
    let (browser, os, device) = extractor.extract(agent);
    let mut out = Map::new();
    match browser {
        Some(b) => {
            out.insert("browser".into(), b.family.as_ref().into());
            if let Some(v) = version([b.major, b.minor, b.patch]) {
                out.insert("browser_version".into(), v.into());
            }
        }
        None => {
            out.insert("browser".into(), "Other".into());
        }
    }
    match os {
        Some(o) => {
            out.insert("os".into(), o.os.as_ref().into());
            if let Some(v) =
                version([o.major.as_deref(), o.minor.as_deref(), o.patch.as_deref(), o.patch_minor.as_deref()])
            {
                out.insert("os_version".into(), v.into());
            }
        }
        None => {
            out.insert("os".into(), "Other".into());
        }
    }
    out.insert("device".into(), device.map_or("Other".into(), |d| d.device.as_ref().into()));
    Value::Object(out)
}

impl Enricher {
    fn count_miss(&self, part: &'static str, miss: Miss) {
        self.metrics.count("EnrichmentMisses", "reason", &format!("{part}.{}", miss.reason()), 1);
    }

    fn database_part(&self, record: &mut Value, lookup: &DatabaseLookup) {
        let part = lookup.database.kind.name();
        let answer = match string_at(record, &lookup.field) {
            None => Err(Miss::FieldMissing),
            Some(text) => match text.trim().parse::<IpAddr>() {
                Err(_) => Err(Miss::NotAnAddress),
                Ok(ip) => {
                    let reader = lookup.database.current(&self.metrics);
                    match lookup.database.kind {
                        Kind::Geoip => geo(&reader, ip),
                        Kind::Asn => asn(&reader, ip),
                    }
                }
            },
        };
        match answer {
            Ok(value) => {
                put(record, &lookup.target, value);
                self.metrics.count("EnrichmentHits", "part", part, 1);
            }
            Err(miss) => self.count_miss(part, miss),
        }
    }

    fn user_agent_part(&mut self, record: &mut Value) {
        let (Some(lookup), Some(extractor)) = (&self.user_agent, self.extractor) else { return };
        let Some(raw) = string_at(record, &lookup.field) else {
            self.count_miss("user_agent", Miss::FieldMissing);
            return;
        };
        let agent = if lookup.url_decoded {
            percent_encoding::percent_decode_str(raw).decode_utf8_lossy().into_owned()
        } else {
            raw.to_string()
        };
        let value = match self.agents.get(&agent) {
            Some(value) => value.clone(),
            None => {
                let value = parse_user_agent(extractor, &agent);
                if self.agents.len() >= UA_CACHE {
                    self.agents.clear();
                }
                self.agents.insert(agent, value.clone());
                value
            }
        };
        let target = lookup.target.clone();
        put(record, &target, value);
        self.metrics.count("EnrichmentHits", "part", "user_agent", 1);
    }
}

impl RecordTransform for Enricher {
    fn transform(&mut self, record: &[u8], emit: &mut Emit<'_>) -> Result<(), TransformFailure> {
        let mut value = match serde_json::from_slice::<Value>(record) {
            Ok(value @ Value::Object(_)) => value,
            _ => {
                self.metrics.count("EnrichmentMisses", "reason", "record.not_json", 1);
                emit.record(record);
                return Ok(());
            }
        };
        let parts = [self.geoip.take(), self.asn.take()];
        for lookup in parts.iter().flatten() {
            self.database_part(&mut value, lookup);
        }
        [self.geoip, self.asn] = parts;
        self.user_agent_part(&mut value);
        // Serializing a Value cannot fail; the record passes unchanged if it did.
        if emit.record_with(|out| serde_json::to_writer(out, &value)).is_err() {
            emit.record(record);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_made_where_they_are_asked_for() {
        let mut record = serde_json::json!({"a": 1, "b": "not an object"});
        put(&mut record, &dotted("b.c.d"), Value::from(7));
        put(&mut record, &dotted("top"), Value::from("x"));
        assert_eq!(record, serde_json::json!({"a": 1, "b": {"c": {"d": 7}}, "top": "x"}));
    }

    #[test]
    fn versions_stop_at_the_first_missing_part() {
        assert_eq!(version([Some("1"), Some("2"), None]), Some("1.2".into()));
        assert_eq!(version([None, Some("2")]), None);
    }
}
