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
//! `EnrichmentHits{part}` (counted on the worker, added to the metrics after each batch). A record
//! that is not a JSON object passes unchanged. A part that finds nothing writes nothing (no empty
//! object); of a found address only the values the database has are written, keys in order.
//!
//! A record is read once: one validating pass finds every part's field, and when every target is a
//! top-level key the record does not have, the answers are appended to the record's own bytes before
//! its closing brace (its keys, order and formatting stay as they were); otherwise (nested or
//! existing targets, escaped keys) it goes through a parsed tree, with the same values.
//!
//! Databases are MaxMind DB files (GeoIP2/GeoLite2 City and ASN, or any database with their
//! layout, e.g. DB-IP's), checked at validation (the file opens, with the database type in the
//! error), read into memory once per process and shared by every worker: a lookup is a tree walk in
//! that memory, and each worker decodes a database record once (many networks share one) and keeps
//! the answer. Before a batch's records are enriched, one pass scans them all and walks the search
//! trees for all their addresses together ([`super::mmdb`]: a walk in a database larger than the
//! caches waits on memory at nearly every node, and walks side by side wait together). (A memory map would avoid the copy, but maxminddb's is `unsafe`: a file written in
//! place under the map is undefined behaviour, and this workspace forbids unsafe code.) **Live
//! reload**: after each batch a worker looks at the file's size, modification time and inode (at
//! most once a second for the process); when they change (an updater's atomic rename, or a copy)
//! the file is read again and every worker's next batch reads the new data (`EnrichmentReloads{part}`); a file that does not open (truncated,
//! half written) keeps the loaded data and counts `EnrichmentReloadFailures{part}`, logged once per
//! change of the file.
//!
//! User agents are parsed by the `ua-parser` crate with uap-core 0.18.0's regexes (embedded,
//! `connectors/uap-core/`), compiled once per process, in parallel (browser, OS and two slices of
//! the device parsers, while the databases are read: [`UserAgentParser`]); each worker remembers
//! the answers for the last few thousand distinct user agents (logs repeat them).
//! `url_decoded = true` decodes `%XX` escapes first (CloudFront's logs write
//! `Mozilla/5.0%20(Windows…`). A user agent uap-core does not know is written as `Other`, as every
//! uap port does.
//!
//! Reference tables (`tables = [{ path, field, key, target }]`) are differential-dataflow
//! collections arranged by key across workers, reloaded by differences and read as of each
//! record's epoch: [`super::tables`]. They run after the parts above, in the configured order.

use rustc_hash::FxHashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::{
    DataflowTransform, Emit, PassThrough, RecordByRecord, RecordTransform, StageContext, Transform, TransformContext,
    TransformError, TransformFailure, TransformWorker,
};
use sluice_engine::metrics::{Family, TransformMetrics};
use sluice_engine::operators::Epoch;
use sluice_engine::record::now_ms;
use sluice_engine::record::{RecordBatch, Records};
use timely::dataflow::Stream;

use super::json;
use super::mmdb;
use super::tables::{Table, TableSpec};

/// Parts written into records, by part (this transform's and the `tables` transform's).
pub(crate) const ENRICHMENT_HITS: Family = Family { name: "EnrichmentHits", help: "Records enriched, by part." };
/// Parts not written, by `<part>.<reason>`.
pub(crate) const ENRICHMENT_MISSES: Family = Family {
    name: "EnrichmentMisses",
    help: "Records passed on without a part, by part and reason (field missing, not found, ...).",
};
/// Databases or tables read again after their file changed, by part.
pub(crate) const ENRICHMENT_RELOADS: Family =
    Family { name: "EnrichmentReloads", help: "Databases or tables read again after their file changed, by part." };
/// Changed files that could not be read (the data before is kept), by part.
pub(crate) const ENRICHMENT_RELOAD_FAILURES: Family = Family {
    name: "EnrichmentReloadFailures",
    help: "Changed database or table files that could not be read (the data before is kept), by part.",
};

/// uap-core's regexes, converted once from its `regexes.yaml` to JSON (scripts/uap-core-json.sh).
const UAP_REGEXES: &str = include_str!("../../uap-core/regexes.json");
/// How often a worker looks at a database file for a change.
const RELOAD_CHECK_MS: i64 = 1_000;
/// Distinct user agents a worker remembers the answer for.
const UA_CACHE: usize = 4_096;
/// Database records a worker remembers the decoded answer of.
const DECODED_CACHE: usize = 65_536;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrichConfig {
    geoip: Option<DatabasePart>,
    asn: Option<DatabasePart>,
    user_agent: Option<UserAgentPart>,
    #[serde(default)]
    tables: Vec<TableSpec>,
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
    loaded: Mutex<Arc<mmdb::Loaded>>,
    /// The file's stamp when it was last read (or last found unreadable).
    stamp: Mutex<Option<FileStamp>>,
    /// When a worker last looked at the file (ms since the epoch).
    checked_ms: AtomicI64,
}

/// What tells that a file changed: its size, modification time and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

pub(super) fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp { len: m.len(), modified: m.modified().ok(), inode: m.ino() })
}

/// Opens a database, checking it has the layout `kind` reads.
fn open_database(kind: Kind, path: &Path) -> Result<mmdb::Loaded, String> {
    let loaded = mmdb::Loaded::open(path)?;
    let reader = &loaded.reader;
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
    Ok(loaded)
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
    fn current(&self, metrics: &TransformMetrics) -> Arc<mmdb::Loaded> {
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
                metrics.count(ENRICHMENT_RELOADS, "part", self.kind.name(), 1);
                tracing::info!(database = %self.path.display(), "enrichment database reloaded");
            }
            Err(e) => {
                metrics.count(ENRICHMENT_RELOAD_FAILURES, "part", self.kind.name(), 1);
                tracing::error!(error = %e, "enrichment database changed but cannot be read; keeping the loaded one");
            }
        }
    }
}

/// A dotted path, split into its keys.
pub(super) fn dotted(path: &str) -> Vec<String> {
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

/// What every worker of one enrich transform shares: its parts and the search over a record.
struct Lookups {
    geoip: Option<DatabaseLookup>,
    asn: Option<DatabaseLookup>,
    user_agent: Option<UserAgentLookup>,
    extractor: Option<&'static UserAgentParser>,
    search: Search,
}

/// The configured parts, in [`PARTS`] order: (index in [`PARTS`], field, target).
fn parts_of<'a>(
    geoip: &'a Option<DatabaseLookup>,
    asn: &'a Option<DatabaseLookup>,
    user_agent: &'a Option<UserAgentLookup>,
) -> impl Iterator<Item = (usize, &'a [String], &'a [String])> {
    let database = |part: usize, l: &'a Option<DatabaseLookup>| l.as_ref().map(|l| (part, &l.field[..], &l.target[..]));
    database(0, geoip)
        .into_iter()
        .chain(database(1, asn))
        .chain(user_agent.as_ref().map(|u| (2, &u.field[..], &u.target[..])))
}

impl Lookups {
    fn parts(&self) -> impl Iterator<Item = (usize, &[String], &[String])> {
        parts_of(&self.geoip, &self.asn, &self.user_agent)
    }

    /// The database part `part` (0: geoip, 1: asn), if configured.
    fn database(&self, part: usize) -> Option<&DatabaseLookup> {
        [&self.geoip, &self.asn].get(part).and_then(|l| l.as_ref())
    }
}

/// A configured enrich transform: its parts read on each worker, and its reference tables.
pub struct EnrichTransform {
    lookups: Arc<Lookups>,
    tables: Vec<Arc<Table>>,
}

/// uap-core's regexes, compiled: what [`ua_parser::Extractor`] holds, with the device parsers (the
/// slowest quarter-second of the compile) in consecutive slices, each compiled on a thread of its
/// own. Each slice answers with its first matching parser (regex-filtered yields matches in
/// ascending order), so the first slice that answers gives the first matching parser of the
/// whole list: what one extractor over the whole list gives.
pub struct UserAgentParser {
    ua: ua_parser::user_agent::Extractor<'static>,
    os: ua_parser::os::Extractor<'static>,
    devices: Vec<ua_parser::device::Extractor<'static>>,
}

/// Slices the device parsers are compiled in (their compile takes about as long as the
/// browser and OS parsers' together).
const DEVICE_SLICES: usize = 2;

impl UserAgentParser {
    /// What uap-core says of `agent`: its browser, OS and device, as `ua_parser::Extractor::extract`.
    pub fn extract<'a>(
        &'a self,
        agent: &'a str,
    ) -> (
        Option<ua_parser::user_agent::ValueRef<'a>>,
        Option<ua_parser::os::ValueRef<'a>>,
        Option<ua_parser::device::ValueRef<'a>>,
    ) {
        (self.ua.extract(agent), self.os.extract(agent), self.devices.iter().find_map(|d| d.extract(agent)))
    }

    /// The process's parser, compiled on first use (the browser, OS and device slices each on a
    /// core of its own).
    pub fn shared() -> Result<&'static UserAgentParser, String> {
        static PARSER: OnceLock<Result<UserAgentParser, String>> = OnceLock::new();
        PARSER.get_or_init(Self::compile).as_ref().map_err(Clone::clone)
    }

    fn compile() -> Result<UserAgentParser, String> {
        let regexes: ua_parser::Regexes<'static> =
            serde_json::from_str(UAP_REGEXES).map_err(|e| format!("uap-core's regexes do not load: {e}"))?;
        let failed = |e: &dyn std::fmt::Display| format!("uap-core's regexes do not compile: {e}");
        let joined = |name: &str| format!("compiling uap-core's {name} regexes failed");
        let ua_parser::Regexes { user_agent_parsers, os_parsers, mut device_parsers } = regexes;
        let per_slice = device_parsers.len().div_ceil(DEVICE_SLICES).max(1);
        let mut slices = Vec::new();
        while !device_parsers.is_empty() {
            let rest = device_parsers.split_off(per_slice.min(device_parsers.len()));
            slices.push(std::mem::replace(&mut device_parsers, rest));
        }
        std::thread::scope(|scope| {
            let os = scope.spawn(|| {
                ua_parser::os::Builder::new()
                    .push_all(os_parsers)
                    .map_err(|e| failed(&e))?
                    .build()
                    .map_err(|e| failed(&e))
            });
            let devices: Vec<_> = slices
                .into_iter()
                .map(|slice| {
                    scope.spawn(move || {
                        let builder = ua_parser::device::Builder::new().push_all(slice).map_err(|e| failed(&e))?;
                        builder.build().map_err(|e| failed(&e))
                    })
                })
                .collect();
            let ua = ua_parser::user_agent::Builder::new()
                .push_all(user_agent_parsers)
                .map_err(|e| failed(&e))?
                .build()
                .map_err(|e| failed(&e))?;
            let os = os.join().map_err(|_| joined("os"))??;
            let devices = devices
                .into_iter()
                .map(|d| d.join().map_err(|_| joined("device"))?)
                .collect::<Result<Vec<_>, String>>()?;
            Ok(UserAgentParser { ua, os, devices })
        })
    }
}

/// Builds the transform from `[transforms.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Transform>, Problems> {
    let span = config.table.span.clone();
    let spans = |key: &str| config.table.value_span(key).unwrap_or(span.clone());
    let (geoip_span, asn_span, tables_span) = (spans("geoip"), spans("asn"), spans("tables"));
    let base_dir = config.base_dir.clone();
    // Whether anything to add was written, however wrong (then its own problem is reported, not this one).
    let writes_any = ["geoip", "asn", "user_agent", "tables"].iter().any(|key| config.table.contains(key));
    let mut problems = Problems::default();
    let Some(c) = config.table.deserialize::<EnrichConfig>(&mut problems) else { return Err(problems) };
    if !writes_any {
        problems.push(Diagnostic::new(span.clone(), "an enrich transform with nothing to add changes nothing").with_hint(
            "add geoip = { database, field, target }, asn = { … }, user_agent = { field, target } or tables = [{ path, field, key, target }]",
        ));
    }
    let mut tables = Vec::new();
    for spec in c.tables {
        match Table::configure(spec, &base_dir) {
            Ok(table) => tables.push(Arc::new(table)),
            Err(e) => problems.push(
                Diagnostic::new(tables_span.clone(), format!("tables: {e}"))
                    .with_hint("a CSV file with a header row, or NDJSON, relative to the pipeline file"),
            ),
        }
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
    // The user agent parser compiles (a quarter of a CPU-second) while the databases are read.
    let (geoip, asn, extractor) = std::thread::scope(|scope| {
        let extractor = c.user_agent.is_some().then(|| scope.spawn(UserAgentParser::shared));
        let geoip = database(c.geoip, Kind::Geoip, geoip_span);
        let asn = database(c.asn, Kind::Asn, asn_span);
        let extractor = extractor
            .map(|compiling| compiling.join().unwrap_or_else(|_| Err("compiling uap-core's regexes failed".into())))
            .transpose()
            .map_err(|e| Diagnostic::new(span.clone(), e));
        (geoip, asn, extractor)
    });
    let (geoip, asn, extractor) = (problems.take(geoip), problems.take(asn), problems.take(extractor));
    let (geoip, asn, extractor) = problems.finish((|| Some((geoip?, asn?, extractor?)))())?;
    let user_agent = c.user_agent.map(|u| UserAgentLookup {
        field: dotted(&u.field),
        target: dotted(&u.target),
        url_decoded: u.url_decoded,
    });
    let search = Search::new(parts_of(&geoip, &asn, &user_agent));
    Ok(Arc::new(EnrichTransform { lookups: Arc::new(Lookups { geoip, asn, user_agent, extractor, search }), tables }))
}

impl Transform for EnrichTransform {
    fn describe(&self) -> String {
        let lookups = &self.lookups;
        let mut parts = Vec::new();
        for (name, lookup) in [("geoip", &lookups.geoip), ("asn", &lookups.asn)] {
            if let Some(l) = lookup {
                parts.push(format!("{name} {} → {}", l.database.path.display(), l.target.join(".")));
            }
        }
        if let Some(u) = &lookups.user_agent {
            parts.push(format!("user agent {} → {}", u.field.join("."), u.target.join(".")));
        }
        parts.extend(self.tables.iter().map(|t| t.describe()));
        format!("enrich: {}", parts.join(", "))
    }

    fn open(&self, context: &TransformContext) -> Result<Box<dyn TransformWorker>, TransformError> {
        if self.lookups.parts().next().is_none() {
            // Tables only: the records are counted through, and enriched in the tables' operators.
            return Ok(Box::new(PassThrough));
        }
        let metrics = Arc::clone(&context.metrics);
        let decoded = [0, 1]
            .map(|part| self.lookups.database(part).map(|l| (l.database.current(&metrics), FxHashMap::default())));
        let state = WorkerState { agents: FxHashMap::default(), decoded, found: Vec::new(), counts: Counts::default() };
        let lookahead = Lookahead::default();
        Ok(Box::new(RecordByRecord(Enricher { lookups: Arc::clone(&self.lookups), state, lookahead, metrics })))
    }

    fn dataflow(&self) -> Option<&dyn DataflowTransform> {
        (!self.tables.is_empty()).then_some(self as &dyn DataflowTransform)
    }
}

impl DataflowTransform for EnrichTransform {
    fn build<'scope>(
        &self,
        records: Stream<'scope, Epoch, Vec<Records>>,
        stage: &StageContext,
    ) -> Stream<'scope, Epoch, Vec<Records>> {
        let mut records = stage.per_worker(records);
        for table in &self.tables {
            records = table.build(records, stage);
        }
        records
    }
}

/// One worker's enricher.
struct Enricher {
    lookups: Arc<Lookups>,
    state: WorkerState,
    lookahead: Lookahead,
    metrics: Arc<TransformMetrics>,
}

/// Where a database part's address was found, and the address, or why it has no answer (`None`:
/// not worked out).
type Ahead = [Option<Result<(mmdb::Located, IpAddr), Miss>>; 2];

/// What [`RecordTransform::begin_batch`] worked out for the records of a batch before they are
/// enriched one by one: each record's scan and, for the database parts, where each address's data
/// is, every address of the batch walked together ([`mmdb::SearchTree::locate_many`]: the walks'
/// cache misses overlap). A record it does not recognise is worked out as it comes.
#[derive(Default)]
struct Lookahead {
    /// Per record, in order: its bytes' address and length (to recognise it), what its scan said,
    /// and where its found values start in `found`.
    records: Vec<(usize, usize, Option<json::Scanned>, usize)>,
    found: Vec<json::Found>,
    located: Vec<Ahead>,
    /// The next record expected.
    next: usize,
    /// Per database part: the batch's addresses and the records they came from.
    addresses: [Vec<IpAddr>; 2],
    owners: [Vec<usize>; 2],
    walked: Vec<mmdb::Located>,
}

impl Lookahead {
    /// The index of `record` among the batch's records if it is the next one expected.
    fn take(&mut self, record: &[u8]) -> Option<usize> {
        let &(at, len, ..) = self.records.get(self.next)?;
        if at != record.as_ptr() as usize || len != record.len() {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    /// The found values of the batch's record `i`.
    fn found(&self, i: usize) -> &[json::Found] {
        let start = self.records[i].3;
        let end = self.records.get(i + 1).map_or(self.found.len(), |r| r.3);
        &self.found[start..end]
    }
}

/// What a worker keeps between records.
struct WorkerState {
    /// Answers (JSON objects) for user agents seen lately.
    agents: FxHashMap<String, Vec<u8>>,
    /// Per database part: the database this batch reads (taken again after each batch, so a
    /// reload is seen by the next one) and the answers decoded from it, by data record.
    decoded: [Option<DecodedCache>; 2],
    /// What the last search found (a buffer kept between records).
    found: Vec<json::Found>,
    counts: Counts,
}

/// Answers decoded from one loaded database, by data record (`None`: the record has none of the
/// values the part writes).
type DecodedCache = (Arc<mmdb::Loaded>, FxHashMap<usize, Option<Vec<u8>>>);

/// The paths one validating pass over a record looks for: each part's field and target.
struct Search {
    tree: json::PathTree,
    /// Per part: its index in [`PARTS`], the slot of its field, and of its target key.
    fields: Vec<(usize, usize, usize)>,
    /// The slots of the targets (a record that has one takes the slow way).
    targets: Vec<usize>,
    /// The targets' keys, when every target is one top-level key (else the slow way always).
    target_keys: Vec<String>,
    top_level_targets: bool,
}

impl Search {
    fn new<'a>(parts: impl Iterator<Item = (usize, &'a [String], &'a [String])>) -> Self {
        // One slot per distinct path: parts often read the same field (geoip and asn of `c_ip`).
        let mut paths: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut slot = |path: &[String]| {
            let keys: Vec<Vec<u8>> = path.iter().map(|key| key.as_bytes().to_vec()).collect();
            match paths.iter().position(|p| *p == keys) {
                Some(at) => at,
                None => {
                    paths.push(keys);
                    paths.len() - 1
                }
            }
        };
        let (mut fields, mut targets, mut target_keys) = (Vec::new(), Vec::new(), Vec::new());
        let mut all_top_level = true;
        for (k, (part, field, target)) in parts.enumerate() {
            fields.push((part, slot(field), k));
            targets.push(slot(target));
            target_keys.push(target.join("."));
            all_top_level &= target.len() == 1;
        }
        let distinct: std::collections::BTreeSet<&String> = target_keys.iter().collect();
        let top_level_targets = all_top_level && distinct.len() == target_keys.len();
        Search { tree: json::PathTree::new(&paths), fields, targets, target_keys, top_level_targets }
    }
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

/// The address a field's text holds (surrounding spaces allowed).
fn address(text: &str) -> Result<IpAddr, Miss> {
    text.trim().parse().map_err(|_| Miss::NotAnAddress)
}

/// The string at `path` in `record`.
fn string_at<'v>(record: &'v Value, path: &[String]) -> Option<&'v str> {
    path.iter().try_fold(record, |v, key| v.get(key))?.as_str()
}

/// Puts `value` at `path` in `record`, making objects on the way (replacing what is not one).
pub(super) fn put(record: &mut Value, path: &[String], value: Value) {
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

/// The part of a City or Country record the transform writes (the decoder skips the rest).
#[derive(Deserialize)]
struct GeoRecord<'a> {
    #[serde(borrow, default)]
    country: Option<Place<'a>>,
    #[serde(borrow, default)]
    city: Option<Place<'a>>,
    #[serde(default)]
    location: Option<Location>,
}

#[derive(Deserialize)]
struct Place<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    names: Option<EnglishName<'a>>,
}

#[derive(Deserialize)]
struct EnglishName<'a> {
    #[serde(borrow, default)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct Location {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

#[derive(Deserialize)]
struct AsnRecord<'a> {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    #[serde(borrow, default)]
    autonomous_system_organization: Option<&'a str>,
}

/// Writes a JSON object of `members` (in key order, as a `serde_json::Value` would be written) to
/// `out`; nothing when there is none. Returns whether it wrote.
fn write_object(members: &[(&str, Option<Value>)], out: &mut Vec<u8>) -> bool {
    let mut first = true;
    for (key, value) in members {
        let Some(value) = value else { continue };
        out.push(if first { b'{' } else { b',' });
        first = false;
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, value);
    }
    if !first {
        out.push(b'}');
    }
    !first
}

/// A lookup's answer from a database of this transform.
type Found<'a> = maxminddb::LookupResult<'a, bytes::Bytes>;

/// A City (or Country) record's fields as the crate decodes them.
fn geo_by_crate<'a>(found: &Found<'a>) -> Result<mmdb::GeoFields<'a>, Miss> {
    let record: GeoRecord = found.decode().ok().flatten().ok_or(Miss::NotFound)?;
    let name = |p: &Option<Place<'a>>| p.as_ref().and_then(|p| p.names.as_ref()).and_then(|n| n.en);
    let location = record.location.as_ref();
    Ok(mmdb::GeoFields {
        city: name(&record.city),
        country: name(&record.country),
        country_code: record.country.as_ref().and_then(|c| c.iso_code),
        latitude: location.and_then(|l| l.latitude),
        longitude: location.and_then(|l| l.longitude),
    })
}

/// An ASN record's fields as the crate decodes them.
fn asn_by_crate<'a>(found: &Found<'a>) -> Result<mmdb::AsnFields<'a>, Miss> {
    let record: AsnRecord = found.decode().ok().flatten().ok_or(Miss::NotFound)?;
    Ok(mmdb::AsnFields { number: record.autonomous_system_number, organization: record.autonomous_system_organization })
}

/// What a City (or Country) database's record says, as JSON into `out`.
fn geo(fields: &mmdb::GeoFields<'_>, out: &mut Vec<u8>) -> Result<(), Miss> {
    let (lat, lon) = match (fields.latitude, fields.longitude) {
        (Some(lat), Some(lon)) => (Some(Value::from(lat)), Some(Value::from(lon))),
        _ => (None, None),
    };
    let members = [
        ("city", fields.city.map(Value::from)),
        ("country", fields.country.map(Value::from)),
        ("country_code", fields.country_code.map(Value::from)),
        ("lat", lat),
        ("lon", lon),
    ];
    if write_object(&members, out) { Ok(()) } else { Err(Miss::NotFound) }
}

/// What an ASN database's record says, as JSON into `out`.
fn asn(fields: &mmdb::AsnFields<'_>, out: &mut Vec<u8>) -> Result<(), Miss> {
    let members = [("number", fields.number.map(Value::from)), ("org", fields.organization.map(Value::from))];
    if write_object(&members, out) { Ok(()) } else { Err(Miss::NotFound) }
}

/// What database part `part` (0: City, 1: ASN) of `loaded` says of the record at `record`, as JSON
/// into `out`: read by hand, or by the crate (a second walk down the tree to the same record, for
/// `address`) when the record is laid out unusually.
fn database_answer(
    loaded: &mmdb::Loaded,
    part: usize,
    record: usize,
    address: IpAddr,
    out: &mut Vec<u8>,
) -> Result<(), Miss> {
    let by_crate = || loaded.reader.lookup(address).map_err(|_| Miss::NotFound);
    if part == 0 {
        match loaded.tree.geo_fields(record) {
            Ok(fields) => geo(&fields, out),
            Err(mmdb::Unusual) => geo(&geo_by_crate(&by_crate()?)?, out),
        }
    } else {
        match loaded.tree.asn_fields(record) {
            Ok(fields) => asn(&fields, out),
            Err(mmdb::Unusual) => asn(&asn_by_crate(&by_crate()?)?, out),
        }
    }
}

/// A version from its parts, as far as they go.
fn version<'a>(parts: impl IntoIterator<Item = Option<&'a str>>) -> Option<String> {
    let parts: Vec<&str> = parts.into_iter().map_while(|p| p.filter(|p| !p.is_empty())).collect();
    (!parts.is_empty()).then(|| parts.join("."))
}

/// What uap-core says of a user agent, as a JSON object.
pub fn parse_user_agent(extractor: &UserAgentParser, agent: &str) -> Vec<u8> {
    let (browser, os, device) = extractor.extract(agent);
    let members = [
        ("browser", Some(browser.as_ref().map_or("Other".into(), |b| Value::from(b.family.as_ref())))),
        ("browser_version", browser.as_ref().and_then(|b| version([b.major, b.minor, b.patch])).map(Value::from)),
        ("device", Some(device.as_ref().map_or("Other".into(), |d| Value::from(d.device.as_ref())))),
        ("os", Some(os.as_ref().map_or("Other".into(), |o| Value::from(o.os.as_ref())))),
        (
            "os_version",
            os.as_ref()
                .and_then(|o| {
                    version([o.major.as_deref(), o.minor.as_deref(), o.patch.as_deref(), o.patch_minor.as_deref()])
                })
                .map(Value::from),
        ),
    ];
    let mut out = Vec::new();
    write_object(&members, &mut out);
    out
}

/// The parts, in the order they are applied and counted.
const PARTS: [&str; 3] = ["geoip", "asn", "user_agent"];

/// Counts kept on the worker and added to the metrics after each batch.
#[derive(Default)]
struct Counts {
    hits: [u64; 3],
    misses: [[u64; 3]; 3],
    not_json: u64,
}

/// The text of the string at `slot` of what a search found in `record` (`None`: missing or not
/// a string).
fn text_at<'r>(record: &'r [u8], found: &[json::Found], slot: usize) -> Option<std::borrow::Cow<'r, str>> {
    let json::Found::At(range) = found.get(slot)? else { return None };
    json::string_text(record.get(range.clone())?)
}

impl WorkerState {
    /// The JSON object part `part` adds for the field's text `text`, into `out`; `located`: where
    /// a database part's address was found already (by the batch's lookahead), if it was.
    fn answer(
        &mut self,
        lookups: &Lookups,
        part: usize,
        text: Option<&str>,
        located: Option<Result<(mmdb::Located, IpAddr), Miss>>,
        out: &mut Vec<u8>,
    ) -> Result<(), Miss> {
        if part == 2 {
            let text = text.ok_or(Miss::FieldMissing)?;
            let (Some(lookup), Some(extractor)) = (&lookups.user_agent, lookups.extractor) else {
                return Err(Miss::FieldMissing);
            };
            // Remembered by the field's text as written (before any decoding): a repeat costs one
            // hash lookup.
            if let Some(known) = self.agents.get(text) {
                out.extend_from_slice(known);
                return Ok(());
            }
            let agent = if lookup.url_decoded {
                percent_encoding::percent_decode_str(text).decode_utf8_lossy()
            } else {
                std::borrow::Cow::Borrowed(text)
            };
            let parsed = parse_user_agent(extractor, &agent);
            out.extend_from_slice(&parsed);
            if self.agents.len() >= UA_CACHE {
                self.agents.clear();
            }
            self.agents.insert(text.to_string(), parsed);
            return Ok(());
        }
        let Some(Some((loaded, cache))) = self.decoded.get_mut(part) else { return Err(Miss::FieldMissing) };
        let (located, address) = match located {
            Some(located) => located?,
            None => {
                let address = address(text.ok_or(Miss::FieldMissing)?)?;
                (loaded.tree.locate(address), address)
            }
        };
        let record = located.ok_or(Miss::NotFound)?;
        // Many networks share one data record: its answer is decoded once per worker (and again
        // after a reload: the cache belongs to the database it was filled from).
        if let Some(answer) = cache.get(&record) {
            return match answer {
                Some(bytes) => {
                    out.extend_from_slice(bytes);
                    Ok(())
                }
                None => Err(Miss::NotFound),
            };
        }
        let start = out.len();
        let answer = database_answer(loaded, part, record, address, out);
        if cache.len() >= DECODED_CACHE {
            cache.clear();
        }
        cache.insert(record, answer.is_ok().then(|| out[start..].to_vec()));
        answer
    }

    fn counted(&mut self, part: usize, answer: Result<(), Miss>) {
        match answer {
            Ok(()) => self.counts.hits[part] += 1,
            Err(miss) => self.counts.misses[part][miss as usize] += 1,
        }
    }
}

impl Enricher {
    /// The fast way: one validating pass finds the fields, and the answers are appended to the
    /// record's own bytes before its closing brace (targets are top-level keys the record lacks).
    /// `None` when the record needs the slow way.
    fn in_place(&mut self, record: &[u8], emit: &mut Emit<'_>) -> Option<()> {
        let Enricher { lookups, state, lookahead, .. } = self;
        let search = &lookups.search;
        let mut own = std::mem::take(&mut state.found);
        let (scanned, found, ahead): (_, &[json::Found], Ahead) = match lookahead.take(record) {
            Some(i) => (lookahead.records[i].2, lookahead.found(i), lookahead.located[i]),
            None => (json::find_paths(record, &search.tree, &mut own), &own, [None, None]),
        };
        let usable = scanned == Some(json::Scanned::Valid)
            && search.top_level_targets
            && search.targets.iter().all(|&t| matches!(found.get(t), Some(json::Found::Missing)));
        let trimmed = record.trim_ascii_end();
        let written = match trimmed.len().checked_sub(1) {
            Some(close) if usable => {
                let open = json::skip_ws(record, 0);
                let mut members_before = json::skip_ws(record, open + 1) < close;
                let written = emit.record_with(|out| {
                    out.extend_from_slice(&trimmed[..close]);
                    for &(part, field, target) in &search.fields {
                        // The member is written, then taken back if there is no answer: the
                        // answer goes straight into the record (through a scratch buffer it was
                        // copied twice: 1 % of the pipeline's CPU).
                        let member = out.len();
                        if members_before {
                            out.push(b',');
                        }
                        let _ = serde_json::to_writer(&mut *out, &search.target_keys[target]);
                        out.push(b':');
                        let located = ahead.get(part).copied().flatten();
                        // A database part worked out ahead needs no text (its address was parsed).
                        let text = if located.is_none() { text_at(record, found, field) } else { None };
                        let result = state.answer(lookups, part, text.as_deref(), located, out);
                        if result.is_ok() {
                            members_before = true;
                        } else {
                            out.truncate(member);
                        }
                        state.counted(part, result);
                    }
                    out.push(b'}');
                    Ok::<(), ()>(())
                });
                written.ok()
            }
            _ => None,
        };
        state.found = own;
        written
    }

    /// The slow way, through a parsed tree: nested or present targets, escaped keys.
    fn through_tree(&mut self, record: &[u8], emit: &mut Emit<'_>) {
        let Enricher { lookups, state, .. } = self;
        let mut value = match serde_json::from_slice::<Value>(record) {
            Ok(value @ Value::Object(_)) => value,
            _ => {
                state.counts.not_json += 1;
                emit.record(record);
                return;
            }
        };
        let mut answer = Vec::new();
        for (part, field, target) in lookups.parts() {
            let text = string_at(&value, field).map(str::to_string);
            answer.clear();
            let result = state.answer(lookups, part, text.as_deref(), None, &mut answer);
            if result.is_ok()
                && let Ok(object) = serde_json::from_slice::<Value>(&answer)
            {
                put(&mut value, target, object);
            }
            state.counted(part, result);
        }
        // Serializing a Value cannot fail; the record passes unchanged if it did.
        if emit.record_with(|out| serde_json::to_writer(out, &value)).is_err() {
            emit.record(record);
        }
    }
}

impl RecordTransform for Enricher {
    /// Scans every record of the batch and walks the search trees for all their addresses at
    /// once; `transform` then takes each record's scan and walk from here.
    fn begin_batch(&mut self, batch: &RecordBatch) {
        let Enricher { lookups, state, lookahead: ahead, .. } = self;
        let search = &lookups.search;
        ahead.records.clear();
        ahead.found.clear();
        ahead.located.clear();
        ahead.next = 0;
        for part in 0..2 {
            ahead.addresses[part].clear();
            ahead.owners[part].clear();
        }
        for (i, record) in batch.iter().enumerate() {
            let scanned = json::find_paths(record, &search.tree, &mut state.found);
            ahead.records.push((record.as_ptr() as usize, record.len(), scanned, ahead.found.len()));
            ahead.found.extend_from_slice(&state.found);
            let mut located: Ahead = [None, None];
            if scanned == Some(json::Scanned::Valid) {
                // The address of each field, parsed once (Geo-IP and ASN usually read the same).
                let mut parsed: Option<(usize, Result<IpAddr, Miss>)> = None;
                for &(part, field, _) in search.fields.iter().filter(|f| f.0 < 2) {
                    let ip = match parsed {
                        Some((same, ip)) if same == field => ip,
                        _ => {
                            let ip = text_at(record, &state.found, field)
                                .ok_or(Miss::FieldMissing)
                                .and_then(|text| address(&text));
                            parsed = Some((field, ip));
                            ip
                        }
                    };
                    located[part] = Some(ip.map(|ip| {
                        ahead.addresses[part].push(ip);
                        ahead.owners[part].push(i);
                        (None, ip)
                    }));
                }
            }
            ahead.located.push(located);
        }
        for (part, slot) in state.decoded.iter().enumerate() {
            let Some((loaded, _)) = slot else { continue };
            loaded.tree.locate_many(&ahead.addresses[part], &mut ahead.walked);
            for ((&owner, &walked), &ip) in ahead.owners[part].iter().zip(&ahead.walked).zip(&ahead.addresses[part]) {
                ahead.located[owner][part] = Some(Ok((walked, ip)));
            }
        }
    }

    fn transform(&mut self, record: &[u8], emit: &mut Emit<'_>) -> Result<(), TransformFailure> {
        if self.in_place(record, emit).is_none() {
            self.through_tree(record, emit);
        }
        Ok(())
    }

    fn end_of_batch(&mut self) {
        // The next batch reads the database as it is now (reloaded if its file changed).
        for (part, slot) in self.state.decoded.iter_mut().enumerate() {
            if let (Some(lookup), Some((reader, cache))) = (self.lookups.database(part), slot.as_mut()) {
                let current = lookup.database.current(&self.metrics);
                if !Arc::ptr_eq(reader, &current) {
                    *reader = current;
                    cache.clear();
                }
            }
        }
        let counts = std::mem::take(&mut self.state.counts);
        for (part, name) in PARTS.iter().enumerate() {
            if counts.hits[part] > 0 {
                self.metrics.count(ENRICHMENT_HITS, "part", name, counts.hits[part]);
            }
            for miss in [Miss::FieldMissing, Miss::NotAnAddress, Miss::NotFound] {
                let n = counts.misses[part][miss as usize];
                if n > 0 {
                    self.metrics.count(ENRICHMENT_MISSES, "reason", &format!("{name}.{}", miss.reason()), n);
                }
            }
        }
        if counts.not_json > 0 {
            self.metrics.count(ENRICHMENT_MISSES, "reason", "record.not_json", counts.not_json);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> mmdb::Loaded {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mmdb").join(name);
        mmdb::Loaded::open(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every network of MaxMind's test databases: the fields read by hand are the crate's, and
    /// the JSON written from them is the same.
    #[test]
    fn records_read_by_hand_say_what_the_crate_decodes() {
        for (name, part) in [("GeoIP2-City-Test.mmdb", 0), ("GeoLite2-ASN-Test.mmdb", 1)] {
            let loaded = fixture(name);
            let mut compared = 0;
            for network in loaded.reader.networks(Default::default()).unwrap_or_else(|e| panic!("{e}")).flatten() {
                let Ok(net) = network.network() else { continue };
                let address = net.network();
                let Some(record) = loaded.tree.locate(address) else { continue };
                let found = loaded.reader.lookup(address).unwrap_or_else(|e| panic!("{e}"));
                let (mut answered, mut by_crate) = (Vec::new(), Vec::new());
                if part == 0 {
                    let hand = loaded.tree.geo_fields(record).unwrap_or_else(|_| panic!("{name} {address}"));
                    let crate_fields = geo_by_crate(&found);
                    assert_eq!(Ok(hand), crate_fields, "{name} {address}");
                    let _ = crate_fields.and_then(|f| geo(&f, &mut by_crate));
                } else {
                    let hand = loaded.tree.asn_fields(record).unwrap_or_else(|_| panic!("{name} {address}"));
                    let crate_fields = asn_by_crate(&found);
                    assert_eq!(Ok(hand), crate_fields, "{name} {address}");
                    let _ = crate_fields.and_then(|f| asn(&f, &mut by_crate));
                }
                let answer = database_answer(&loaded, part, record, address, &mut answered);
                assert_eq!(answer.is_ok(), !by_crate.is_empty(), "{name} {address}");
                assert_eq!(answered, by_crate, "{name} {address}");
                compared += 1;
            }
            assert!(compared > 100, "{name}: {compared} records compared");
        }
    }

    /// A record read by hand at any place of the data section (most are no record at all) is
    /// read or found unusual, never a panic; so is a damaged database's.
    #[test]
    fn records_read_anywhere_are_read_or_unusual() {
        for name in ["GeoIP2-City-Test.mmdb", "GeoLite2-ASN-Test.mmdb"] {
            let loaded = fixture(name);
            let (mut read, mut unusual) = (0, 0);
            for located in 0..loaded.tree_bytes() {
                let geo = loaded.tree.geo_fields(located).is_ok();
                let asn = loaded.tree.asn_fields(located).is_ok();
                if geo || asn {
                    read += 1;
                } else {
                    unusual += 1;
                }
            }
            assert!(read > 0 && unusual > 0, "{name}: {read} read, {unusual} unusual");
        }
    }

    #[test]
    fn targets_are_made_where_they_are_asked_for() {
        let mut record = serde_json::json!({"a": 1, "b": "not an object"});
        put(&mut record, &dotted("b.c.d"), Value::from(7));
        put(&mut record, &dotted("top"), Value::from("x"));
        assert_eq!(record, serde_json::json!({"a": 1, "b": {"c": {"d": 7}}, "top": "x"}));
    }

    /// The device parsers compiled in slices answer as one extractor over the whole list does, for
    /// uap-core's test user agents (fixtures) and device-heavy ones written here.
    #[test]
    fn device_slices_answer_as_one_extractor_does() {
        let regexes: ua_parser::Regexes<'static> = serde_json::from_str(UAP_REGEXES).unwrap_or_else(|e| panic!("{e}"));
        let whole = ua_parser::device::Builder::new()
            .push_all(regexes.device_parsers)
            .unwrap_or_else(|e| panic!("{e}"))
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let parser = UserAgentParser::shared().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parser.devices.len(), DEVICE_SLICES);
        let mut agents: Vec<String> = [
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)",
            "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 Chrome/119.0 Mobile Safari/537.36",
            "Mozilla/5.0 (Linux; Android 13; Pixel 7 Pro) AppleWebKit/537.36 Chrome/118.0 Mobile Safari/537.36",
            "Mozilla/5.0 (Linux; U; Android 4.0.3; ko-kr; LG-L160L Build/IML74K) AppleWebkit/534.30",
            "Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 Silk/118.4.1 like Chrome/118.0",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
            "Mozilla/5.0 (PlayStation 5 3.20) AppleWebKit/605.1.15 (KHTML, like Gecko)",
            "Dalvik/2.1.0 (Linux; U; Android 11; Redmi Note 8 Pro MIUI/V12.5.1.0.RGGMIXM)",
            "curl/8.4.0",
            "",
        ]
        .map(String::from)
        .to_vec();
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/uap");
        for file in [
            "firefox_user_agent_strings.json",
            "opera_mini_user_agent_strings.json",
            "podcasting_user_agent_strings.json",
        ] {
            let text = std::fs::read(fixtures.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            let cases: Value = serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            let strings = cases["test_cases"].as_array().into_iter().flatten();
            agents.extend(strings.filter_map(|c| c["user_agent_string"].as_str().map(String::from)));
        }
        let mut devices_found = 0;
        for agent in &agents {
            let (_, _, sliced) = parser.extract(agent);
            assert_eq!(sliced, whole.extract(agent), "{agent}");
            devices_found += usize::from(sliced.is_some());
        }
        // Matches come from both slices, not only the first.
        let from_second = agents
            .iter()
            .filter(|a| parser.devices[0].extract(a).is_none() && parser.devices[1].extract(a).is_some())
            .count();
        assert!(
            agents.len() > 300 && devices_found > 100 && from_second > 0,
            "{} agents, {devices_found} devices, {from_second} from the second slice",
            agents.len()
        );
    }

    #[test]
    fn versions_stop_at_the_first_missing_part() {
        assert_eq!(version([Some("1"), Some("2"), None]), Some("1.2".into()));
        assert_eq!(version([None, Some("2")]), None);
    }
}
