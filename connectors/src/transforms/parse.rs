//! `type = "parse"`: text log lines into JSON objects, for the logs AWS writes as text (VPC Flow Logs
//! delivered to S3, CloudFront standard logs, Application Load Balancer and S3 server access logs)
//! and any delimited format, so that they can become
//! Parquet, CSV columns, OpenSearch documents or partition keys (beyond Firehose, which needs a
//! Lambda function for it).
//!
//! ```toml
//! [transforms.flows]
//! type = "parse"
//! inputs = ["archive"]
//! format = "vpc_flow"          # vpc_flow | cloudfront | alb | elb | s3_access | delimited | csv
//! # fields = ["version", "vpc-id", "srcaddr", …]   # a custom format's fields, in order (the presets know theirs)
//! # delimiter = ","            # delimited only: one ASCII character (default " ")
//! # numbers = ["bytes"]        # delimited and csv: fields written as JSON numbers
//! ```
//!
//! Each record is one line (its `\n` or `\r\n` at the end, as Firehose producers append one, not
//! part of it), cut at every delimiter (one space for `vpc_flow`, a tab for
//! `cloudfront`; two delimiters in a row make an empty field), or for `csv` read as an RFC 4180
//! row (commas; a quoted field may hold commas and `""` for a quote; the same reader as the
//! enrich transform's CSV tables). Its fields become one JSON object, a
//! key per field in order: the field's name lowercased, `-` and `(` made `_` and `)` dropped
//! (`account-id` → `account_id`, `cs(User-Agent)` → `cs_user_agent`: as Athena's tables for these
//! logs name them, but for `cs_referer`, which Athena's CloudFront table spells `cs_referrer`). A
//! value `-` (these logs' "none") is `null`; a number field's value is written as a JSON number, its
//! digits as they are; every other value is a string, as written. The number
//! fields: `vpc_flow`'s `version`, `srcport`, `dstport`, `protocol`, `packets`, `bytes`, `start`,
//! `end`, `tcp-flags` and `traffic-path`; `cloudfront`'s `sc-bytes`, `sc-status`, `cs-bytes`,
//! `time-taken`, `c-port`, `time-to-first-byte`, `sc-content-len`, `sc-range-start` and
//! `sc-range-end`; `delimited`'s `numbers`. `cloudfront` writes `timestamp` first
//! (`<date>T<time>Z`, from its `date` and `time` fields).
//!
//! Lines that are no records are dropped, counted: a header (the field names, as each VPC Flow Logs
//! file starts) and, for `cloudfront`, directives (`#Version`, `#Fields`). A line with another number
//! of fields, a number field holding something else, or bytes that are not UTF-8 goes to the error
//! output as `processing-failed` (`Parse.FieldCount`, `Parse.NotANumber`, `Parse.NotUtf8`) with the
//! reason; so does a `#Fields` directive that names other fields, or the same in another order,
//! than the transform reads (`Parse.FieldsDiffer`: a standard logging v2 selection of fields read
//! as the 33), so that a file's lines are never read under the wrong names without a word.
//!
//! `alb`, `elb` (Classic Load Balancer) and `s3_access` cut AWS's lines at each space but keep a
//! `"quoted"` field (`\` escapes the next character) and, for S3, the `[bracketed]` time whole;
//! their keys are the columns of Athena's tables for these logs (an ALB's `client:port` as
//! `client_ip` and `client_port`, its request line as `request_verb`, `request_url` and
//! `request_proto`; a Classic Load Balancer's as `request_ip`, `request_port`, `request_verb`, `url`
//! and `protocol`; S3's time also as an ISO 8601 `timestamp`, first). Fields AWS adds at the end of a line are ignored and fields a line of an
//! older layout lacks are null, as AWS tells readers of these logs to do; a quoted field left open
//! fails the line (`Parse.BadQuoting`), and so does an S3 time of another shape (`Parse.NotATime`).

use std::borrow::Cow;
use std::sync::Arc;

use super::json;
use super::tables::parse_csv_row;
use serde::Deserialize;
use sluice_engine::config::{ConnectorConfig, Diagnostic, Problems};
use sluice_engine::contract::{
    Emit, RecordByRecord, RecordTransform, Transform, TransformContext, TransformError, TransformFailure,
    TransformWorker,
};

/// The error code of a line with another number of fields than `fields`.
pub const FIELD_COUNT: &str = "Parse.FieldCount";
/// The error code of a number field holding something else.
pub const NOT_A_NUMBER: &str = "Parse.NotANumber";
/// The error code of a line that is not UTF-8.
pub const NOT_UTF8: &str = "Parse.NotUtf8";
/// The error code of a `csv` line that is no RFC 4180 row (a quote left open, text after one).
pub const BAD_CSV: &str = "Parse.BadCsv";
/// The error code of a `#Fields` directive naming other fields than `fields`.
pub const FIELDS_DIFFER: &str = "Parse.FieldsDiffer";
/// The error code of an `alb` or `s3_access` line whose quoted (`"…"`) or bracketed (`[…]`) field
/// is left open or runs into the next.
pub const BAD_QUOTING: &str = "Parse.BadQuoting";
/// The error code of an `s3_access` line whose time is not `[dd/Mon/yyyy:hh:mm:ss ±hhmm]`.
pub const NOT_A_TIME: &str = "Parse.NotATime";

/// VPC Flow Logs' default format (version 2), as its `${field}` names.
pub const VPC_FLOW_FIELDS: &[&str] = &[
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
];
/// The VPC Flow Logs fields that are numbers.
pub const VPC_FLOW_NUMBERS: &[&str] =
    &["version", "srcport", "dstport", "protocol", "packets", "bytes", "start", "end", "tcp-flags", "traffic-path"];
/// CloudFront's standard log fields, in the order its files hold them (33).
const CLOUDFRONT_FIELDS: &[&str] = &[
    "date",
    "time",
    "x-edge-location",
    "sc-bytes",
    "c-ip",
    "cs-method",
    "cs(Host)",
    "cs-uri-stem",
    "sc-status",
    "cs(Referer)",
    "cs(User-Agent)",
    "cs-uri-query",
    "cs(Cookie)",
    "x-edge-result-type",
    "x-edge-request-id",
    "x-host-header",
    "cs-protocol",
    "cs-bytes",
    "time-taken",
    "x-forwarded-for",
    "ssl-protocol",
    "ssl-cipher",
    "x-edge-response-result-type",
    "cs-protocol-version",
    "fle-status",
    "fle-encrypted-fields",
    "c-port",
    "time-to-first-byte",
    "x-edge-detailed-result-type",
    "sc-content-type",
    "sc-content-len",
    "sc-range-start",
    "sc-range-end",
];
/// The CloudFront fields that are numbers.
const CLOUDFRONT_NUMBERS: &[&str] = &[
    "sc-bytes",
    "sc-status",
    "cs-bytes",
    "time-taken",
    "c-port",
    "time-to-first-byte",
    "sc-content-len",
    "sc-range-start",
    "sc-range-end",
];

/// Application Load Balancer access log fields, in their order, named as Athena's table for them
/// names its columns (`error_reason` is its `lambda_error_reason`); `client:port` and
/// `target:port` become `*_ip` and `*_port`, `request` becomes `request_verb`, `request_url`
/// and `request_proto`, as there.
const ALB_FIELDS: &[&str] = &[
    "type",
    "time",
    "elb",
    "client:port",
    "target:port",
    "request_processing_time",
    "target_processing_time",
    "response_processing_time",
    "elb_status_code",
    "target_status_code",
    "received_bytes",
    "sent_bytes",
    "request",
    "user_agent",
    "ssl_cipher",
    "ssl_protocol",
    "target_group_arn",
    "trace_id",
    "domain_name",
    "chosen_cert_arn",
    "matched_rule_priority",
    "request_creation_time",
    "actions_executed",
    "redirect_url",
    "lambda_error_reason",
    "target_port_list",
    "target_status_code_list",
    "classification",
    "classification_reason",
    "conn_trace_id",
];
/// The ALB fields that are numbers (and the ports split from `client:port` and `target:port`).
const ALB_NUMBERS: &[&str] = &[
    "request_processing_time",
    "target_processing_time",
    "response_processing_time",
    "elb_status_code",
    "received_bytes",
    "sent_bytes",
];
/// The fields of the first ALB logs (to `trace_id`): AWS has added the others at the end of the
/// line since, so an older file's lines lack them (read as null).
const ALB_FIRST_FIELDS: usize = 18;
/// Classic Load Balancer access log fields, in their order, named as Athena's table for them
/// names its columns (`client:port` is its `request_ip` and `request_port`, `backend:port` its
/// `backend_ip` and `backend_port`, `request` its `request_verb`, `url` and `protocol`).
const ELB_FIELDS: &[&str] = &[
    "request_timestamp",
    "elb_name",
    "client:port",
    "backend:port",
    "request_processing_time",
    "backend_processing_time",
    "client_response_time",
    "elb_response_code",
    "backend_response_code",
    "received_bytes",
    "sent_bytes",
    "request",
    "user_agent",
    "ssl_cipher",
    "ssl_protocol",
];
/// The Classic Load Balancer fields that are numbers (and the ports).
const ELB_NUMBERS: &[&str] =
    &["request_processing_time", "backend_processing_time", "client_response_time", "received_bytes", "sent_bytes"];
/// Network Load Balancer (TLS listener) access log fields, in their order, named as Athena's
/// `nlb_tls_logs` table names its columns (`listener` is its `listener_id`, `connection_time` its
/// `tcp_connection_time_ms`, `chosen_cert_arn` its `cert_arn`, …); `client:port` and
/// `destination:port` become `client_ip`/`client_port` and `target_ip`/`target_port`, as there.
const NLB_FIELDS: &[&str] = &[
    "type",
    "version",
    "time",
    "elb",
    "listener_id",
    "client:port",
    "target:port",
    "tcp_connection_time_ms",
    "tls_handshake_time_ms",
    "received_bytes",
    "sent_bytes",
    "incoming_tls_alert",
    "cert_arn",
    "certificate_serial",
    "tls_cipher_suite",
    "tls_protocol_version",
    "tls_named_group",
    "domain_name",
    "alpn_fe_protocol",
    "alpn_be_protocol",
    "alpn_client_preference_list",
    "tls_connection_creation_time",
];
/// The NLB fields that are numbers (and the ports).
const NLB_NUMBERS: &[&str] =
    &["tcp_connection_time_ms", "tls_handshake_time_ms", "received_bytes", "sent_bytes", "incoming_tls_alert"];
/// The fields of the first NLB logs (to `domain_name`), as for ALB's.
const NLB_FIRST_FIELDS: usize = 18;
/// Amazon S3 server access log fields, in their order, named as Athena's table for them names its
/// columns.
const S3_ACCESS_FIELDS: &[&str] = &[
    "bucketowner",
    "bucket_name",
    "requestdatetime",
    "remoteip",
    "requester",
    "requestid",
    "operation",
    "key",
    "request_uri",
    "httpstatus",
    "errorcode",
    "bytessent",
    "objectsize",
    "totaltime",
    "turnaroundtime",
    "referrer",
    "useragent",
    "versionid",
    "hostid",
    "sigv",
    "ciphersuite",
    "authtype",
    "endpoint",
    "tlsversion",
    "accesspointarn",
    "aclrequired",
];
/// The S3 server access log fields that are numbers.
const S3_ACCESS_NUMBERS: &[&str] = &["httpstatus", "bytessent", "objectsize", "totaltime", "turnaroundtime"];
/// The fields of the first S3 server access logs (to `useragent`), as for ALB's.
const S3_ACCESS_FIRST_FIELDS: usize = 17;

/// The formats, as `format` names them.
const FORMATS: &str = "`vpc_flow` (VPC Flow Logs as delivered to S3), `cloudfront` (CloudFront standard logs), `alb` (Application Load Balancer access logs), `elb` (Classic Load Balancer access logs), `nlb` (Network Load Balancer TLS access logs), `s3_access` (S3 server access logs), `delimited` (your own `fields` and `delimiter`) or `csv` (RFC 4180 rows of your `fields`)";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParseConfig {
    format: String,
    fields: Option<Vec<String>>,
    delimiter: Option<String>,
    numbers: Option<Vec<String>>,
}

/// What `format` says of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    VpcFlow,
    Cloudfront,
    Alb,
    Elb,
    Nlb,
    S3Access,
    Delimited,
    Csv,
}

impl Format {
    /// As `format` names it.
    fn name(self) -> &'static str {
        match self {
            Format::VpcFlow => "vpc_flow",
            Format::Cloudfront => "cloudfront",
            Format::Alb => "alb",
            Format::Elb => "elb",
            Format::Nlb => "nlb",
            Format::S3Access => "s3_access",
            Format::Delimited => "delimited",
            Format::Csv => "csv",
        }
    }

    /// AWS's space-separated logs whose fields may be quoted (`"…"`) or bracketed (`[…]`), and
    /// may gain fields at the end of the line.
    fn is_quoted(self) -> bool {
        matches!(self, Format::Alb | Format::Elb | Format::S3Access)
    }

    /// AWS's logs of one layout to which fields are added at the end of the line over time: a
    /// line has at least the first layout's fields, and those past the known ones are ignored.
    fn grows(self) -> bool {
        self.is_quoted() || self == Format::Nlb
    }
}

/// What a field becomes.
#[derive(Debug)]
enum Split {
    /// One value, under its key.
    Whole,
    /// `address:port` (an ALB's `client:port`): the address, and the port as a number (split at
    /// the last `:`, so an IPv6 address stays whole); `-` both null.
    HostPort { ip: Vec<u8>, port: Vec<u8> },
    /// An HTTP request line (`GET https://host:443/path HTTP/1.1`): its verb (to the first space),
    /// its URL (to the next) and its protocol (the rest).
    Request { verb: Vec<u8>, url: Vec<u8>, proto: Vec<u8> },
}

/// Where a line's time is, for `timestamp`.
#[derive(Debug, Clone, Copy)]
enum Stamp {
    /// CloudFront's `date` and `time` fields.
    DateAndTime(usize, usize),
    /// S3's `[06/Feb/2019:00:00:38 +0000]` field.
    Bracketed(usize),
}

/// A configured parse transform: how a line is cut and what each field becomes (shared by its
/// workers).
#[derive(Debug)]
pub struct ParseTransform {
    spec: Arc<Spec>,
}

/// How a line is cut and what each field becomes.
#[derive(Debug)]
struct Spec {
    format: Format,
    delimiter: u8,
    /// The fields' names as configured (for the header line, `#Fields` and messages).
    names: Vec<String>,
    /// Each field's `"key":` (JSON text).
    keys: Vec<Vec<u8>>,
    /// Whether each field is written as a number.
    numbers: Vec<bool>,
    /// What each field becomes.
    splits: Vec<Split>,
    /// The fewest fields a line holds; the fields after them may be missing (null), and a line
    /// may hold more than `names` (ignored), when the format is AWS's (`alb`, `s3_access`).
    required: usize,
    /// The header line (the names joined by the delimiter): dropped.
    header: Vec<u8>,
    /// Where a line's time is, for `timestamp`.
    timestamp: Option<Stamp>,
}

/// A field's JSON key: its name lowercased, `-` and `(` made `_`, `)` dropped.
pub fn key_of(name: &str) -> String {
    name.chars()
        .filter(|c| *c != ')')
        .map(|c| if c == '-' || c == '(' { '_' } else { c.to_ascii_lowercase() })
        .collect()
}

/// Builds the transform from `[transforms.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Transform>, Problems> {
    let span = config.table.span.clone();
    let spans = |key: &str| config.table.value_span(key).unwrap_or(span.clone());
    let (format_span, fields_span, delimiter_span, numbers_span) =
        (spans("format"), spans("fields"), spans("delimiter"), spans("numbers"));
    let mut problems = Problems::default();
    let Some(c) = config.table.deserialize::<ParseConfig>(&mut problems) else { return Err(problems) };
    let format = match c.format.as_str() {
        "vpc_flow" => Format::VpcFlow,
        "cloudfront" => Format::Cloudfront,
        "alb" => Format::Alb,
        "elb" => Format::Elb,
        "nlb" => Format::Nlb,
        "s3_access" => Format::S3Access,
        "delimited" => Format::Delimited,
        "csv" => Format::Csv,
        other => {
            problems.push(Diagnostic::new(format_span, format!("unknown format `{other}`")).with_hint(FORMATS));
            return Err(problems);
        }
    };
    let only_delimited = |key: &str, at: std::ops::Range<usize>, problems: &mut Problems| {
        problems.push(
            Diagnostic::new(
                at,
                if key == "numbers" {
                    "`numbers` applies only to format = \"delimited\" or \"csv\"".to_string()
                } else {
                    format!("`{key}` applies only to format = \"delimited\"")
                },
            )
            .with_hint(format!("format = \"{}\" knows its delimiter and its number fields", c.format)),
        );
    };
    let (default_fields, preset_numbers, delimiter): (&[&str], &[&str], u8) = match format {
        Format::VpcFlow => (VPC_FLOW_FIELDS, VPC_FLOW_NUMBERS, b' '),
        Format::Cloudfront => (CLOUDFRONT_FIELDS, CLOUDFRONT_NUMBERS, b'\t'),
        Format::Alb => (ALB_FIELDS, ALB_NUMBERS, b' '),
        Format::Elb => (ELB_FIELDS, ELB_NUMBERS, b' '),
        Format::Nlb => (NLB_FIELDS, NLB_NUMBERS, b' '),
        Format::S3Access => (S3_ACCESS_FIELDS, S3_ACCESS_NUMBERS, b' '),
        Format::Delimited => (&[], &[], b' '),
        Format::Csv => (&[], &[], b','),
    };
    if format != Format::Delimited && c.delimiter.is_some() {
        only_delimited("delimiter", delimiter_span.clone(), &mut problems);
    }
    if (matches!(format, Format::VpcFlow | Format::Cloudfront) || format.grows()) && c.numbers.is_some() {
        only_delimited("numbers", numbers_span.clone(), &mut problems);
    }
    if format.grows() && c.fields.is_some() {
        problems.push(
            Diagnostic::new(fields_span.clone(), format!("`fields` does not apply to format = \"{}\"", c.format))
                .with_hint("these logs have one layout; fields AWS adds at the end of a line are ignored"),
        );
    }
    let delimiter = match c.delimiter.as_deref() {
        None => delimiter,
        Some(d) if d.len() == 1 && d.is_ascii() && d != "\n" && d != "\"" => d.as_bytes()[0],
        Some(d) => {
            problems.push(
                Diagnostic::new(delimiter_span, format!("delimiter {d:?} is not one ASCII character"))
                    .with_hint("e.g. delimiter = \",\", \"\\t\", \"|\" or \" \""),
            );
            b' '
        }
    };
    let names: Vec<String> = match (&c.fields, format) {
        (Some(fields), _) => fields.clone(),
        (None, Format::Delimited | Format::Csv) => {
            problems.push(
                Diagnostic::new(span.clone(), format!("format = \"{}\" needs `fields`", c.format))
                    .with_hint("the fields of a line, in order: fields = [\"time\", \"host\", \"bytes\"]"),
            );
            Vec::new()
        }
        (None, _) => default_fields.iter().map(|f| f.to_string()).collect(),
    };
    if c.fields.is_some() && names.is_empty() {
        problems.push(
            Diagnostic::new(fields_span.clone(), "`fields` is empty").with_hint("the fields of a line, in order"),
        );
    }
    let keys: Vec<String> = names.iter().map(|n| key_of(n)).collect();
    for (i, key) in keys.iter().enumerate() {
        if key.is_empty() {
            problems.push(Diagnostic::new(fields_span.clone(), format!("field {} has no name", i + 1)));
        } else if let Some(first) = keys[..i].iter().position(|k| k == key) {
            problems.push(
                Diagnostic::new(
                    fields_span.clone(),
                    format!("`{}` and `{}` are both the key `{key}`", names[first], names[i]),
                )
                .with_hint("keys are the names lowercased, with `-` and `(` made `_` and `)` dropped"),
            );
        }
    }
    let number_names: Vec<&str> = match &c.numbers {
        Some(numbers) => numbers.iter().map(String::as_str).collect(),
        None => preset_numbers.to_vec(),
    };
    if let Some(unknown) = c.numbers.iter().flatten().find(|n| !names.contains(n)) {
        problems.push(
            Diagnostic::new(numbers_span, format!("`numbers` names `{unknown}`, which is not in `fields`"))
                .with_hint("numbers lists fields of `fields` whose values are written as JSON numbers"),
        );
    }
    let position = |name: &str| names.iter().position(|n| n == name);
    let timestamp = match format {
        Format::Cloudfront => position("date").zip(position("time")).map(|(d, t)| Stamp::DateAndTime(d, t)),
        Format::S3Access => position("requestdatetime").map(Stamp::Bracketed),
        _ => None,
    };
    let json_key = |key: &str| format!("{}:", serde_json::Value::from(key)).into_bytes();
    let splits = names
        .iter()
        .map(|name| match (format, name.as_str()) {
            (Format::Alb | Format::Nlb, "client:port" | "target:port") | (Format::Elb, "backend:port") => {
                let host = name.trim_end_matches(":port");
                Split::HostPort { ip: json_key(&format!("{host}_ip")), port: json_key(&format!("{host}_port")) }
            }
            (Format::Elb, "client:port") => {
                Split::HostPort { ip: json_key("request_ip"), port: json_key("request_port") }
            }
            (Format::Alb, "request") => Split::Request {
                verb: json_key("request_verb"),
                url: json_key("request_url"),
                proto: json_key("request_proto"),
            },
            (Format::Elb, "request") => {
                Split::Request { verb: json_key("request_verb"), url: json_key("url"), proto: json_key("protocol") }
            }
            _ => Split::Whole,
        })
        .collect();
    let required = match format {
        Format::Alb => ALB_FIRST_FIELDS,
        Format::Nlb => NLB_FIRST_FIELDS,
        Format::S3Access => S3_ACCESS_FIRST_FIELDS,
        _ => names.len(),
    };
    let spec = Spec {
        format,
        delimiter,
        header: names.join(std::str::from_utf8(&[delimiter]).unwrap_or(" ")).into_bytes(),
        numbers: names.iter().map(|n| number_names.contains(&n.as_str())).collect(),
        keys: keys.iter().map(|k| json_key(k)).collect(),
        splits,
        required,
        names,
        timestamp,
    };
    let transform = ParseTransform { spec: Arc::new(spec) };
    problems.finish(Some(Arc::new(transform) as Arc<dyn Transform>))
}

impl Transform for ParseTransform {
    fn describe(&self) -> String {
        let Spec { format, names, delimiter, .. } = &*self.spec;
        match format {
            Format::Csv | Format::Alb | Format::Elb | Format::Nlb | Format::S3Access => {
                format!("parse: {}, {} fields", format.name(), names.len())
            }
            _ => format!("parse: {}, {} fields split on {:?}", format.name(), names.len(), *delimiter as char),
        }
    }

    fn open(&self, _context: &TransformContext) -> Result<Box<dyn TransformWorker>, TransformError> {
        Ok(Box::new(RecordByRecord(LineParser { spec: Arc::clone(&self.spec) })))
    }
}

/// One worker's parser.
struct LineParser {
    spec: Arc<Spec>,
}

/// Appends `text` as a JSON string.
fn string(text: &str, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

impl RecordTransform for LineParser {
    fn transform(&mut self, record: &[u8], emit: &mut Emit<'_>) -> Result<(), TransformFailure> {
        let spec = &*self.spec;
        // Its line end, which Firehose producers append to each record (the Kinesis Agent, the
        // SDK examples): not part of the last field.
        let record = sluice_engine::record::without_line_end(record);
        // CloudFront's W3C directives (`#Version`, `#Fields`) are no records.
        let directives = spec.format == Format::Cloudfront;
        if directives && let Some(named) = record.strip_prefix(b"#Fields:") {
            let named: Vec<&[u8]> = named.split(u8::is_ascii_whitespace).filter(|n| !n.is_empty()).collect();
            if named.iter().copied().ne(spec.names.iter().map(String::as_bytes)) {
                return Err(TransformFailure::processing(
                    FIELDS_DIFFER,
                    format!(
                        "the file's #Fields name {} fields, {}, where the transform reads {}: list the file's fields in `fields`",
                        named.len(),
                        String::from_utf8_lossy(&named.join(&b' ')),
                        spec.names.join(" ")
                    ),
                ));
            }
        }
        if (directives && record.first() == Some(&b'#')) || record == spec.header.as_slice() {
            return Ok(());
        }
        let line = std::str::from_utf8(record).map_err(|e| {
            TransformFailure::processing(NOT_UTF8, format!("the line is not UTF-8 text (at byte {})", e.valid_up_to()))
        })?;
        let fields: Vec<Cow<'_, str>> = match spec.format {
            Format::Csv => parse_csv_row(line.as_bytes())
                .map_err(|why| TransformFailure::processing(BAD_CSV, format!("the line is no CSV row: {why}")))?
                .into_iter()
                .map(Cow::Owned)
                .collect(),
            format if format.is_quoted() => split_quoted(line, format == Format::S3Access)?,
            _ => line.split(spec.delimiter as char).map(Cow::Borrowed).collect(),
        };
        let expected = spec.keys.len();
        let fits = if spec.format.grows() { fields.len() >= spec.required } else { fields.len() == expected };
        if !fits {
            let (has, wants) = (fields.len(), spec.required);
            return Err(TransformFailure::processing(
                FIELD_COUNT,
                if spec.format.grows() {
                    format!("the line has {has} fields where format = \"{}\" has at least {wants}", spec.format.name())
                } else {
                    format!(
                        "the line has {has} fields split on {:?} where `fields` names {wants}",
                        spec.delimiter as char
                    )
                },
            ));
        }
        // Fields AWS added after a line's last are null; fields after `names` are ignored.
        let value = |i: usize| fields.get(i).map_or("-", |f| f.as_ref());
        for i in 0..expected {
            let field = value(i);
            let number = match &spec.splits[i] {
                Split::HostPort { .. } => host_port(field).1,
                _ if spec.numbers[i] => field,
                _ => continue,
            };
            if number != "-" && !json::is_number(number.as_bytes()) {
                return Err(TransformFailure::processing(
                    NOT_A_NUMBER,
                    format!("field {} ({}) is {field:?}, not a number", i + 1, spec.names[i]),
                ));
            }
        }
        let stamp = match spec.timestamp {
            Some(Stamp::DateAndTime(date, time)) => match (value(date), value(time)) {
                ("-", _) | (_, "-") => None,
                (date, time) => Some(format!("{date}T{time}Z")),
            },
            Some(Stamp::Bracketed(at)) => match value(at) {
                "-" => None,
                text => Some(iso_8601_of_common_log_time(text).ok_or_else(|| {
                    TransformFailure::processing(
                        NOT_A_TIME,
                        format!(
                            "field {} ({}) is {text:?}, not a time such as [06/Feb/2019:00:00:38 +0000]",
                            at + 1,
                            spec.names[at]
                        ),
                    )
                })?),
            },
            None => None,
        };
        emit.record_with(|out| {
            out.push(b'{');
            if spec.timestamp.is_some() {
                out.extend_from_slice(b"\"timestamp\":");
                match &stamp {
                    Some(stamp) => string(stamp, out),
                    None => out.extend_from_slice(b"null"),
                }
                out.push(b',');
            }
            for i in 0..expected {
                if i > 0 {
                    out.push(b',');
                }
                let field = value(i);
                match &spec.splits[i] {
                    Split::Whole => {
                        out.extend_from_slice(&spec.keys[i]);
                        write_value(field, spec.numbers[i], out);
                    }
                    Split::HostPort { ip, port } => {
                        let (address, number) = host_port(field);
                        out.extend_from_slice(ip);
                        write_value(address, false, out);
                        out.push(b',');
                        out.extend_from_slice(port);
                        write_value(number, true, out);
                    }
                    Split::Request { verb, url, proto } => {
                        // Cut at its first two spaces, as Athena's tables cut it (a URL holds
                        // none: the load balancer encodes them); a TCP listener's `- - - ` is none.
                        let mut parts = field.splitn(3, ' ');
                        let method = parts.next().unwrap_or("-");
                        let target = parts.next().unwrap_or("-");
                        let version = parts.next().map_or("-", |v| if v == "- " { "-" } else { v });
                        out.extend_from_slice(verb);
                        write_value(method, false, out);
                        for (key, part) in [(url, target), (proto, version)] {
                            out.push(b',');
                            out.extend_from_slice(key);
                            write_value(part, false, out);
                        }
                    }
                }
            }
            out.push(b'}');
            Ok::<(), TransformFailure>(())
        })
    }
}

/// Appends a field's value: `-` (none) as null, a number field's digits as they are, other text
/// as a JSON string.
fn write_value(field: &str, number: bool, out: &mut Vec<u8>) {
    match field {
        "-" => out.extend_from_slice(b"null"),
        digits if number => out.extend_from_slice(digits.as_bytes()),
        text => string(text, out),
    }
}

/// An ALB's `address:port`, cut at its last `:` (an IPv6 address keeps its own, and loses the
/// brackets of `[2001:db8::1]:443`); `-` is both none.
fn host_port(field: &str) -> (&str, &str) {
    match field.rsplit_once(':') {
        Some((address, port)) if field != "-" => {
            let address = address.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(address);
            (address, if port.is_empty() { "-" } else { port })
        }
        _ => (field, "-"),
    }
}

/// The fields of an `alb` or `s3_access` line: cut at each space, but a field that starts with
/// `"` runs to its closing `"` (a `\` escaping the character after it; the quotes and escapes
/// not part of the value) and, with `brackets` (S3's time), one that starts with `[` to its `]`,
/// spaces and all. A field left open, or followed by anything but a space, fails the line.
fn split_quoted(line: &str, brackets: bool) -> Result<Vec<Cow<'_, str>>, TransformFailure> {
    let bad = |why: String| TransformFailure::processing(BAD_QUOTING, why);
    let bytes = line.as_bytes();
    let mut fields = Vec::with_capacity(32);
    let mut at = 0;
    loop {
        let (field, end) = match bytes.get(at) {
            Some(b'"') => {
                let start = at + 1;
                let mut i = start;
                let mut escaped = false;
                loop {
                    match bytes.get(i) {
                        None => {
                            return Err(bad(format!(
                                "field {} opens a quote at byte {at} that is never closed",
                                fields.len() + 1
                            )));
                        }
                        Some(b'\\') => {
                            escaped = true;
                            i += 2;
                        }
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                let inner = &line[start..i];
                (if escaped { Cow::Owned(unescaped(inner)) } else { Cow::Borrowed(inner) }, i + 1)
            }
            Some(b'[') if brackets => match memchr::memchr(b']', &bytes[at..]) {
                Some(close) => (Cow::Borrowed(&line[at + 1..at + close]), at + close + 1),
                None => {
                    return Err(bad(format!("field {} opens a [ at byte {at} that is never closed", fields.len() + 1)));
                }
            },
            _ => {
                let end = memchr::memchr(b' ', &bytes[at..]).map_or(bytes.len(), |i| at + i);
                (Cow::Borrowed(&line[at..end]), end)
            }
        };
        fields.push(field);
        match bytes.get(end) {
            None => return Ok(fields),
            Some(b' ') => at = end + 1,
            Some(_) => {
                return Err(bad(format!("field {} is followed by text, not a space, at byte {end}", fields.len())));
            }
        }
    }
}

/// A quoted field's text without its escapes (`\"` is `"`, `\\` is `\`).
fn unescaped(inner: &str) -> String {
    let mut text = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        text.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
    }
    text
}

/// `06/Feb/2019:00:00:38 +0000` (the time of an S3 server access log, Apache's common log
/// format) as ISO 8601: `2019-02-06T00:00:38Z` (another offset kept: `+01:30`). None when it is
/// not of that shape.
fn iso_8601_of_common_log_time(text: &str) -> Option<String> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (stamp, offset) = text.split_once(' ')?;
    let (date, time) = stamp.split_once(':')?;
    let mut parts = date.split('/');
    let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
    let month = MONTHS.iter().position(|m| *m == month)? + 1;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let clock = time.split(':').collect::<Vec<_>>();
    let valid = parts.next().is_none()
        && digits(day, 2)
        && digits(year, 4)
        && clock.len() == 3
        && clock.iter().all(|c| digits(c, 2))
        && offset.len() == 5
        && matches!(offset.as_bytes()[0], b'+' | b'-')
        && digits(&offset[1..], 4);
    if !valid {
        return None;
    }
    let zone = if &offset[1..] == "0000" { "Z".to_string() } else { format!("{}:{}", &offset[..3], &offset[3..]) };
    Some(format!("{year}-{month:02}-{day}T{time}{zone}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_engine::record::RecordBatch;
    use sluice_engine::testkit::transform::{TransformCheck, TransformRun, conformance, run_transform};

    use super::*;

    /// The parse transform of `table` (its keys besides `type` and `inputs`), or the pipeline's
    /// config errors.
    fn transform(table: &str) -> Result<Arc<dyn Transform>, String> {
        let toml = format!(
            "[pipeline]\nname = \"p\"\n[sources.in]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 1\n\
             [transforms.t]\ntype = \"parse\"\ninputs = [\"in\"]\n{table}\n\
             [sinks.out]\ntype = \"object_store\"\ninputs = [\"t\"]\nurl = \"memory://parse/t\"\n"
        );
        let plan = sluice_engine::testkit::plan_from_str(&toml, &crate::registry()).map_err(|e| e.to_string())?;
        Ok(Arc::clone(&plan.transforms[0].transform))
    }

    fn parse(table: &str, lines: &[&str]) -> TransformRun {
        let mut batch = RecordBatch::with_capacity(1_000, 0);
        lines.iter().for_each(|l| batch.push(l.as_bytes()));
        let t = transform(table).unwrap_or_else(|e| panic!("{e}"));
        run_transform(&t, vec![batch], Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn delivered(run: &TransformRun) -> Vec<serde_json::Value> {
        run.delivered.iter().map(|r| serde_json::from_slice(r).unwrap_or_else(|e| panic!("{e}: {r:?}"))).collect()
    }

    /// A VPC Flow Logs file as delivered to S3: its header dropped, each line the object the
    /// generator's `vpcflow` profile writes (numbers as numbers), `-` as null (a NODATA line).
    #[test]
    fn vpc_flow_lines_become_the_objects_of_their_fields() {
        let lines = [
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status",
            "2 123456789012 eni-0a1b2c3d 10.0.1.5 52.95.110.1 49152 443 6 20 4249 1418530010 1418530070 ACCEPT OK",
            "2 123456789012 eni-0a1b2c3d - - - - - - - 1431280876 1431280934 - NODATA",
        ];
        let run = parse("format = \"vpc_flow\"", &lines);
        assert_eq!(run.dropped, 1, "the header");
        assert_eq!(
            String::from_utf8_lossy(&run.delivered[0]),
            r#"{"version":2,"account_id":"123456789012","interface_id":"eni-0a1b2c3d","srcaddr":"10.0.1.5","dstaddr":"52.95.110.1","srcport":49152,"dstport":443,"protocol":6,"packets":20,"bytes":4249,"start":1418530010,"end":1418530070,"action":"ACCEPT","log_status":"OK"}"#
        );
        let nodata = &delivered(&run)[1];
        assert_eq!(
            (nodata["srcaddr"].is_null(), nodata["bytes"].is_null(), &nodata["log_status"]),
            (true, true, &"NODATA".into())
        );
        // A custom format (version 5's fields), its own header dropped.
        let custom = parse(
            "format = \"vpc_flow\"\nfields = [\"version\", \"vpc-id\", \"srcaddr\", \"tcp-flags\", \"flow-direction\"]",
            &["version vpc-id srcaddr tcp-flags flow-direction", "5 vpc-1a2b 10.0.0.1 19 ingress"],
        );
        assert_eq!(
            String::from_utf8_lossy(&custom.delivered[0]),
            r#"{"version":5,"vpc_id":"vpc-1a2b","srcaddr":"10.0.0.1","tcp_flags":19,"flow_direction":"ingress"}"#
        );
    }

    /// A CloudFront standard log file: directives dropped, `timestamp` from `date` and `time`,
    /// `cs(User-Agent)` as `cs_user_agent`, the text as written (CloudFront's URL encoding kept).
    #[test]
    fn cloudfront_standard_log_lines_become_objects_with_a_timestamp() {
        let line = "2019-12-04\t21:02:31\tLAX1\t392\t192.0.2.100\tGET\td111111abcdef8.cloudfront.net\t/index.html\t200\t-\tMozilla/5.0%20(Windows%20NT%2010.0)\t-\t-\tHit\tSOX4xwn4XV6Q4rgb7XiVGOHms_BGlTAC4KyHmureZmBNrjGdRLiNIQ==\td111111abcdef8.cloudfront.net\thttps\t23\t0.001\t-\tTLSv1.2\tECDHE-RSA-AES128-GCM-SHA256\tHit\tHTTP/2.0\t-\t-\t11040\t0.001\tHit\ttext/html\t78\t-\t-";
        let run = parse(
            "format = \"cloudfront\"",
            &["#Version: 1.0", &format!("#Fields: {}", CLOUDFRONT_FIELDS.join(" ")), line],
        );
        assert_eq!(run.dropped, 2, "the directives");
        let v = &delivered(&run)[0];
        assert_eq!(v["timestamp"], "2019-12-04T21:02:31Z");
        assert_eq!(v["cs_user_agent"], "Mozilla/5.0%20(Windows%20NT%2010.0)");
        assert_eq!(
            (&v["sc_status"], &v["time_taken"], &v["sc_bytes"], &v["c_port"]),
            (&200.into(), &0.001.into(), &392.into(), &11040.into())
        );
        assert!(v["cs_referer"].is_null() && v["sc_range_end"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 34);
        // A file of a selection of fields (standard logging v2) read as the 33: its `#Fields` fails,
        // naming both lists; read with its fields, it is dropped and its lines parsed.
        let selection = ["#Fields: date time c-ip sc-status", "2019-12-04\t21:02:31\t192.0.2.1\t404"];
        let wrong = parse("format = \"cloudfront\"", &selection);
        assert_eq!(wrong.failed.len(), 2, "the directive and the line");
        assert_eq!(wrong.failed[0].2, FIELDS_DIFFER);
        let right =
            parse("format = \"cloudfront\"\nfields = [\"date\", \"time\", \"c-ip\", \"sc-status\"]", &selection);
        assert_eq!(
            String::from_utf8_lossy(&right.delivered[0]),
            r#"{"timestamp":"2019-12-04T21:02:31Z","date":"2019-12-04","time":"21:02:31","c_ip":"192.0.2.1","sc_status":404}"#
        );
        assert!(String::from_utf8_lossy(&run.delivered[0]).starts_with(r#"{"timestamp":"2019-12-04T21:02:31Z","date":"2019-12-04","time":"21:02:31","x_edge_location":"LAX1","sc_bytes":392,"#));
    }

    /// Application Load Balancer access log lines (AWS's examples): the columns of Athena's table
    /// for them, `client:port` and the request line split as there, quoted fields unquoted,
    /// numbers as numbers, `-` and `"-"` as null. A line of an older layout has the later fields
    /// null, fields AWS adds at the end are ignored, and a line that is none fails with the reason.
    #[test]
    fn alb_access_log_lines_become_the_columns_athena_names() {
        let http = r#"http 2018-07-02T22:23:00.186641Z app/my-loadbalancer/50dc6c495c0c9188 192.168.131.39:2817 10.0.0.1:80 0.000 0.001 0.000 200 200 34 366 "GET http://www.example.com:80/ HTTP/1.1" "curl/7.46.0" - - arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/my-targets/73e2d6bc24d8a067 "Root=1-58337262-36d228ad5d99923122bbe354" "-" "-" 0 2018-07-02T22:22:48.364000Z "forward" "-" "-" "10.0.0.1:80" "200" "-" "-" TID_1234abcd5678ef90"#;
        let lambda_failed = r#"http 2018-11-30T22:23:00.186641Z app/my-loadbalancer/50dc6c495c0c9188 192.168.131.39:2817 - 0.000 0.001 0.000 502 - 34 366 "GET http://www.example.com:80/ HTTP/1.1" "curl/7.46.0" - - arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/my-targets/73e2d6bc24d8a067 "Root=1-58337364-23a8c76965a2ef7629b185e3" "-" "-" 0 2018-11-30T22:22:48.364000Z "forward" "-" "LambdaInvalidResponse" "-" "-" "-" "-""#;
        let newer = format!("{http} \"a field AWS added\" 42");
        let older = r#"https 2016-08-10T23:39:43.065466Z app/my-loadbalancer/50dc6c495c0c9188 2001:db8::1:46532 [2001:db8::2]:80 0.000 0.002 0.000 200 200 0 57 "GET https://www.example.com:443/ HTTP/1.1" "Mozilla/5.0 \"quoted\" \\ x" ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2 arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/my-targets/73e2d6bc24d8a067 "Root=1-58337281-1d84f3d73c47ec4e58577259""#;
        let run = parse("format = \"alb\"", &[http, lambda_failed, &newer, older]);
        assert_eq!(run.failed.len(), 0, "{:?}", run.failed);
        let v = delivered(&run);
        assert_eq!(
            v[0],
            serde_json::json!({
                "type": "http", "time": "2018-07-02T22:23:00.186641Z", "elb": "app/my-loadbalancer/50dc6c495c0c9188",
                "client_ip": "192.168.131.39", "client_port": 2817, "target_ip": "10.0.0.1", "target_port": 80,
                "request_processing_time": 0.0, "target_processing_time": 0.001, "response_processing_time": 0.0,
                "elb_status_code": 200, "target_status_code": "200", "received_bytes": 34, "sent_bytes": 366,
                "request_verb": "GET", "request_url": "http://www.example.com:80/", "request_proto": "HTTP/1.1",
                "user_agent": "curl/7.46.0", "ssl_cipher": null, "ssl_protocol": null,
                "target_group_arn": "arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/my-targets/73e2d6bc24d8a067",
                "trace_id": "Root=1-58337262-36d228ad5d99923122bbe354", "domain_name": null, "chosen_cert_arn": null,
                "matched_rule_priority": "0", "request_creation_time": "2018-07-02T22:22:48.364000Z",
                "actions_executed": "forward", "redirect_url": null, "lambda_error_reason": null,
                "target_port_list": "10.0.0.1:80", "target_status_code_list": "200", "classification": null,
                "classification_reason": null, "conn_trace_id": "TID_1234abcd5678ef90"
            })
        );
        // The numbers' digits as written (Athena's doubles and ints read them as such).
        assert!(String::from_utf8_lossy(&run.delivered[0]).contains(r#""request_processing_time":0.000,"#));
        assert_eq!(
            (&v[1]["target_ip"], &v[1]["target_port"], &v[1]["target_status_code"], &v[1]["lambda_error_reason"]),
            (
                &serde_json::Value::Null,
                &serde_json::Value::Null,
                &serde_json::Value::Null,
                &"LambdaInvalidResponse".into()
            )
        );
        assert!(v[1]["conn_trace_id"].is_null(), "a line before the field was added");
        assert_eq!(v[2], v[0], "fields after the known ones are ignored");
        assert_eq!((&v[3]["client_ip"], &v[3]["client_port"]), (&"2001:db8::1".into(), &46532.into()));
        assert_eq!((&v[3]["target_ip"], &v[3]["target_port"]), (&"2001:db8::2".into(), &80.into()));
        assert_eq!(v[3]["user_agent"], "Mozilla/5.0 \"quoted\" \\ x");
        assert!(v[3]["domain_name"].is_null() && v[3]["conn_trace_id"].is_null());
        assert_eq!(v.iter().map(|v| v.as_object().unwrap().len()).collect::<Vec<_>>(), [34; 4]);

        let bad = parse(
            "format = \"alb\"",
            &[
                &http.replace("\"curl/7.46.0\"", "\"curl/7.46.0"),
                &http.replace("\"forward\"", "\"forward\"x"),
                &http.replace(" 0.001 ", " soon "),
                &http.replace("192.168.131.39:2817", "192.168.131.39:x"),
                "http 2018-07-02T22:23:00.186641Z app/my-loadbalancer/50dc6c495c0c9188 192.168.131.39:2817",
            ],
        );
        let codes: Vec<&str> = bad.failed.iter().map(|(_, _, code)| code.as_str()).collect();
        assert_eq!(codes, [BAD_QUOTING, BAD_QUOTING, NOT_A_NUMBER, NOT_A_NUMBER, FIELD_COUNT]);
        let request = parse(
            "format = \"alb\"",
            &[&http.replace("GET http://www.example.com:80/ HTTP/1.1", "- http://www.example.com:80- ")],
        );
        let v = &delivered(&request)[0];
        assert_eq!(
            (&v["request_verb"], &v["request_url"], &v["request_proto"]),
            (&serde_json::Value::Null, &"http://www.example.com:80-".into(), &"".into())
        );
    }

    /// Classic Load Balancer access log lines (AWS's HTTP and TCP listener examples): the columns of
    /// Athena's `elb_logs` table, a TCP listener's `- - - ` request and `-` codes null.
    #[test]
    fn classic_elb_access_log_lines_become_the_columns_athena_names() {
        let http = r#"2015-05-13T23:39:43.945958Z my-loadbalancer 192.168.131.39:2817 10.0.0.1:80 0.000073 0.001048 0.000057 200 200 0 29 "GET http://www.example.com:80/ HTTP/1.1" "curl/7.38.0" - -"#;
        let tcp = r#"2015-05-13T23:39:43.945958Z my-loadbalancer 192.168.131.39:2817 10.0.0.1:80 0.001069 0.000028 0.000041 - - 82 305 "- - - " "-" - -"#;
        let run = parse("format = \"elb\"", &[http, tcp]);
        assert_eq!(run.failed.len(), 0, "{:?}", run.failed);
        let v = delivered(&run);
        assert_eq!(
            v[0],
            serde_json::json!({
                "request_timestamp": "2015-05-13T23:39:43.945958Z", "elb_name": "my-loadbalancer",
                "request_ip": "192.168.131.39", "request_port": 2817, "backend_ip": "10.0.0.1", "backend_port": 80,
                "request_processing_time": 0.000073, "backend_processing_time": 0.001048, "client_response_time": 0.000057,
                "elb_response_code": "200", "backend_response_code": "200", "received_bytes": 0, "sent_bytes": 29,
                "request_verb": "GET", "url": "http://www.example.com:80/", "protocol": "HTTP/1.1",
                "user_agent": "curl/7.38.0", "ssl_cipher": null, "ssl_protocol": null
            })
        );
        for key in ["request_verb", "url", "protocol", "user_agent", "elb_response_code", "backend_response_code"] {
            assert!(v[1][key].is_null(), "{key}: {}", v[1]);
        }
        assert_eq!((&v[1]["received_bytes"], &v[1]["sent_bytes"]), (&82.into(), &305.into()));
    }

    /// Network Load Balancer TLS access log lines (the layout of AWS's examples, with and without
    /// ALPN, an older line that ends at `domain_name`, a newer one with a field more): the
    /// columns of Athena's `nlb_tls_logs` table; the ALPN preference list, quotes and commas and
    /// all, one field, as Athena's regex takes it.
    #[test]
    fn network_load_balancer_tls_log_lines_become_the_columns_athena_names() {
        let line = "tls 2.0 2020-04-01T08:51:42 net/my-network-loadbalancer/c6e77e28c25b2234 g3d4b5e8bb8464cd \
                    72.21.218.154:51341 172.100.100.185:443 5 2 98 246 - \
                    arn:aws:acm:us-east-2:671290407336:certificate/2a108f19-aded-46b0-8493-c63eb1ef4a99 - \
                    ECDHE-RSA-AES128-SHA tlsv12 - my-network-loadbalancer-c6e77e28c25b2234.elb.us-east-2.amazonaws.com \
                    h2 h2 \"h2\",\"http/1.1\" 2020-04-01T08:51:20";
        let no_alpn = line.replace("h2 h2 \"h2\",\"http/1.1\"", "- - -");
        let older = line.split(' ').take(18).collect::<Vec<_>>().join(" ");
        let newer = format!("{line} a-field-added-later");
        let run = parse("format = \"nlb\"", &[line, &no_alpn, &older, &newer, "tls 2.0 2020-04-01T08:51:42 too short"]);
        assert_eq!(run.failed.len(), 1, "{:?}", run.failed);
        let v = delivered(&run);
        assert_eq!(
            v[0],
            serde_json::json!({
                "type": "tls", "version": "2.0", "time": "2020-04-01T08:51:42",
                "elb": "net/my-network-loadbalancer/c6e77e28c25b2234", "listener_id": "g3d4b5e8bb8464cd",
                "client_ip": "72.21.218.154", "client_port": 51341, "target_ip": "172.100.100.185", "target_port": 443,
                "tcp_connection_time_ms": 5, "tls_handshake_time_ms": 2, "received_bytes": 98, "sent_bytes": 246,
                "incoming_tls_alert": null,
                "cert_arn": "arn:aws:acm:us-east-2:671290407336:certificate/2a108f19-aded-46b0-8493-c63eb1ef4a99",
                "certificate_serial": null, "tls_cipher_suite": "ECDHE-RSA-AES128-SHA", "tls_protocol_version": "tlsv12",
                "tls_named_group": null, "domain_name": "my-network-loadbalancer-c6e77e28c25b2234.elb.us-east-2.amazonaws.com",
                "alpn_fe_protocol": "h2", "alpn_be_protocol": "h2", "alpn_client_preference_list": "\"h2\",\"http/1.1\"",
                "tls_connection_creation_time": "2020-04-01T08:51:20"
            })
        );
        for key in ["alpn_fe_protocol", "alpn_be_protocol", "alpn_client_preference_list"] {
            assert!(v[1][key].is_null(), "{key}: {}", v[1]);
        }
        assert!(v[2]["alpn_fe_protocol"].is_null() && v[2]["tls_connection_creation_time"].is_null(), "{}", v[2]);
        assert_eq!(v[2]["domain_name"], v[0]["domain_name"]);
        assert_eq!(v[3], v[0], "a field added at the end is ignored");
    }

    proptest::proptest! {
        /// Any fields written as AWS writes them (bare, `"quoted"` with `\` escapes, `[bracketed]`)
        /// and joined by spaces are cut back into the same fields.
        #[test]
        fn quoted_fields_are_cut_back_as_written(
            fields in proptest::collection::vec(
                (0..3u8, "[^ \"\\[\\n][^ \\n]{0,8}", "[^\\n]{0,12}", "[^\\]\\n]{0,12}"),
                1..12,
            )
        ) {
            let mut line = Vec::new();
            let mut expected = Vec::new();
            for (kind, bare, quoted, bracketed) in &fields {
                match kind {
                    0 => {
                        line.push(bare.clone());
                        expected.push(bare.clone());
                    }
                    1 => {
                        line.push(format!("\"{}\"", quoted.replace('\\', "\\\\").replace('"', "\\\"")));
                        expected.push(quoted.clone());
                    }
                    _ => {
                        line.push(format!("[{bracketed}]"));
                        expected.push(bracketed.clone());
                    }
                }
            }
            let line = line.join(" ");
            let cut = split_quoted(&line, true).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e:?}")))?;
            proptest::prop_assert_eq!(cut.iter().map(|f| f.to_string()).collect::<Vec<_>>(), expected);
        }
    }

    /// S3 server access log lines (AWS's example): the columns of Athena's table for them, the
    /// bracketed time whole and as `timestamp` in ISO 8601, quoted fields unquoted.
    #[test]
    fn s3_server_access_log_lines_become_the_columns_athena_names() {
        let line = r#"79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be amzn-s3-demo-bucket1 [06/Feb/2019:00:00:38 +0000] 192.0.2.3 79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be 3E57427F3EXAMPLE REST.GET.VERSIONING - "GET /amzn-s3-demo-bucket1?versioning HTTP/1.1" 200 - 113 - 7 - "-" "S3Console/0.4" - s9lzHYrFp76ZVxRcpX9+5cjAnEH2ROuNkd2BHfIa6UkFVdtjf5mKR3/eTPFvsiP/XV/VLi31234= SigV4 ECDHE-RSA-AES128-GCM-SHA256 AuthHeader amzn-s3-demo-bucket1.s3.us-west-1.amazonaws.com TLSV1.2 arn:aws:s3:us-west-1:123456789012:accesspoint/example-AP Yes"#;
        let run = parse("format = \"s3_access\"", &[line, &line.replace("+0000]", "-0130]")]);
        assert_eq!(run.failed.len(), 0, "{:?}", run.failed);
        let v = delivered(&run);
        assert_eq!(
            v[0],
            serde_json::json!({
                "timestamp": "2019-02-06T00:00:38Z",
                "bucketowner": "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be",
                "bucket_name": "amzn-s3-demo-bucket1", "requestdatetime": "06/Feb/2019:00:00:38 +0000",
                "remoteip": "192.0.2.3", "requester": "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be",
                "requestid": "3E57427F3EXAMPLE", "operation": "REST.GET.VERSIONING", "key": null,
                "request_uri": "GET /amzn-s3-demo-bucket1?versioning HTTP/1.1", "httpstatus": 200, "errorcode": null,
                "bytessent": 113, "objectsize": null, "totaltime": 7, "turnaroundtime": null, "referrer": null,
                "useragent": "S3Console/0.4", "versionid": null,
                "hostid": "s9lzHYrFp76ZVxRcpX9+5cjAnEH2ROuNkd2BHfIa6UkFVdtjf5mKR3/eTPFvsiP/XV/VLi31234=",
                "sigv": "SigV4", "ciphersuite": "ECDHE-RSA-AES128-GCM-SHA256", "authtype": "AuthHeader",
                "endpoint": "amzn-s3-demo-bucket1.s3.us-west-1.amazonaws.com", "tlsversion": "TLSV1.2",
                "accesspointarn": "arn:aws:s3:us-west-1:123456789012:accesspoint/example-AP", "aclrequired": "Yes"
            })
        );
        assert_eq!(v[1]["timestamp"], "2019-02-06T00:00:38-01:30");
        let bad = parse(
            "format = \"s3_access\"",
            &[
                &line.replace("[06/Feb/2019:00:00:38 +0000]", "[06/Feb/2019:00:00:38 +0000"),
                &line.replace("Feb", "Fev"),
            ],
        );
        let codes: Vec<&str> = bad.failed.iter().map(|(_, _, code)| code.as_str()).collect();
        assert_eq!(codes, [BAD_QUOTING, NOT_A_TIME]);
        for text in [
            "06/Feb/2019:00:00:38",
            "6/Feb/2019:00:00:38 +0000",
            "06/Feb/2019:0:00:38 +0000",
            "06/Feb/2019:00:00:38 0000",
            "06/Feb/2019/1:00:00:38 +0000",
        ] {
            assert_eq!(iso_8601_of_common_log_time(text), None, "{text}");
        }
    }

    /// Your own fields: numbers where asked (a JSON number's digits kept), strings escaped, empty
    /// fields as empty strings; a line not of the fields' shape fails with the reason.
    #[test]
    fn delimited_lines_and_lines_that_fail() {
        let table =
            "format = \"delimited\"\ndelimiter = \",\"\nfields = [\"at\", \"Host-Name\", \"n\"]\nnumbers = [\"n\"]";
        let run = parse(
            table,
            &["at,Host-Name,n", "t1,a \"quoted\" \\ name,1.50", "t2,,-1e3\r\n", "t3,x", "t4,y,12abc", "t5,z,01"],
        );
        assert_eq!(run.dropped, 1);
        let text: Vec<String> = run.delivered.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
        assert_eq!(
            text,
            [r#"{"at":"t1","host_name":"a \"quoted\" \\ name","n":1.50}"#, r#"{"at":"t2","host_name":"","n":-1e3}"#]
        );
        let failed: Vec<(&str, &str)> = run.failed.iter().map(|(_, kind, code)| (*kind, code.as_str())).collect();
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert!(run.failed.iter().all(|(_, kind, _)| *kind == "processing-failed"));
        let mut not_utf8 = RecordBatch::with_capacity(0, 0);
        not_utf8.push(b"t,\xff,1");
        let t = transform(table).unwrap();
        let bad = run_transform(&t, vec![not_utf8], Duration::from_secs(10)).unwrap();
        assert_eq!(bad.failed.len(), 1);
    }

    /// The generator's VPC Flow Logs (the JSON of version 2's fields) written as the text S3
    /// delivery writes, header first, then parsed: each line is the generator's record again, byte
    /// for byte.
    #[test]
    fn vpc_flow_text_parses_back_to_the_generators_records() {
        let mut ndjson = Vec::new();
        crate::synth::write_ndjson(crate::synth::Profile::Vpcflow, 3, 2_000, &mut ndjson).unwrap();
        let records: Vec<serde_json::Map<String, serde_json::Value>> =
            String::from_utf8(ndjson.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let mut lines = vec![VPC_FLOW_FIELDS.join(" ")];
        lines.extend(records.iter().map(|r| {
            let field = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            VPC_FLOW_FIELDS.iter().map(|name| field(&r[&key_of(name)])).collect::<Vec<_>>().join(" ")
        }));
        let run = parse("format = \"vpc_flow\"", &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let parsed: Vec<String> = run.delivered.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
        let generated: Vec<&str> = std::str::from_utf8(&ndjson).unwrap().lines().collect();
        assert_eq!((run.dropped, run.failed.len()), (1, 0));
        assert_eq!(parsed, generated);
    }

    /// RFC 4180 rows: quoted fields holding commas and doubled quotes, the header dropped, a row
    /// with a quote left open failed.
    #[test]
    fn csv_rows_become_objects() {
        let table = "format = \"csv\"\nfields = [\"time\", \"src\", \"rule name\", \"bytes\"]\nnumbers = [\"bytes\"]";
        let run = parse(
            table,
            &["time,src,rule name,bytes", "2026-12-01T00:00:00Z,10.0.0.1,\"allow, \"\"web\"\"\",1200", "t,\"open,2"],
        );
        assert_eq!(run.dropped, 1);
        assert_eq!(
            String::from_utf8_lossy(&run.delivered[0]),
            r#"{"time":"2026-12-01T00:00:00Z","src":"10.0.0.1","rule name":"allow, \"web\"","bytes":1200}"#
        );
        assert_eq!(run.failed.len(), 1);
        assert_eq!(run.failed[0].2, BAD_CSV);
    }

    #[test]
    fn json_numbers_are_told_from_other_text() {
        for number in ["0", "-0", "12", "1.50", "-1e3", "2E+10", "0.001"] {
            assert!(json::is_number(number.as_bytes()), "{number}");
        }
        for text in ["", "-", "01", "1.", ".5", "1e", "0x10", "12abc", "NaN", "1 2", "+1", " 1"] {
            assert!(!json::is_number(text.as_bytes()), "{text}");
        }
    }

    /// The transform of `table` runs the conformance kit over `lines`: every record accounted for,
    /// each failed one as it entered.
    fn passes_the_kit_with(table: &str, lines: &[String]) {
        let t = transform(table).unwrap();
        let records: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
        let report = conformance(&t, &records, true, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            report.passed(TransformCheck::AccountsForEveryRecord)
                && report.passed(TransformCheck::FailsRecordsAsTheyEntered)
        );
    }

    #[test]
    fn passes_the_transform_conformance_kit() {
        let header = VPC_FLOW_FIELDS.join(" ");
        passes_the_kit_with(
            "format = \"vpc_flow\"",
            &[
                header,
                "2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 3 4 5 6 ACCEPT OK".into(),
                "2 1 eni-1 too few".into(),
                "2 1 eni-1 10.0.0.1 10.0.0.2 x 2 6 3 4 5 6 ACCEPT OK".into(),
            ],
        );
        // AWS's quoted layout: whole lines, one left open, one too short, one with a later field.
        let line = r#"h2 2026-12-01T00:00:00.000001Z app/lb/1 10.0.0.1:1 - 0 0 0 200 - 1 2 "GET https://h:443/ HTTP/2.0" "ua x" - - arn:tg "Root=1""#;
        passes_the_kit_with(
            "format = \"alb\"",
            &[line.to_string(), line.replace("\"ua x\"", "\"ua x"), "h2 t".into(), format!("{line} \"later\"")],
        );
    }

    /// Every mistake at once, each where it was written.
    #[test]
    fn config_mistakes_are_reported() {
        let said = |table: &str| transform(table).err().unwrap_or_default();
        assert!(said("format = \"w3c\"").contains("unknown format `w3c`"));
        let preset = said("format = \"vpc_flow\"\ndelimiter = \",\"\nnumbers = [\"bytes\"]");
        assert!(
            preset.contains("`delimiter` applies only to format = \"delimited\"")
                && preset.contains("`numbers` applies only"),
            "{preset}"
        );
        assert!(said("format = \"delimited\"").contains("needs `fields`"));
        assert!(said("format = \"csv\"").contains("format = \"csv\" needs `fields`"));
        assert!(said("format = \"csv\"\nfields = [\"a\"]\ndelimiter = \";\"").contains("`delimiter` applies only"));
        assert!(
            said("format = \"delimited\"\nfields = [\"a\"]\ndelimiter = \"::\"").contains("not one ASCII character")
        );
        assert!(said("format = \"delimited\"\nfields = [\"a\"]\nnumbers = [\"b\"]").contains("`numbers` names `b`"));
        assert!(said("format = \"delimited\"\nfields = [\"a-b\", \"A_B\"]").contains("both the key `a_b`"));
        let alb = said("format = \"alb\"\nfields = [\"type\"]\nnumbers = [\"type\"]");
        assert!(
            alb.contains("`fields` does not apply to format = \"alb\"") && alb.contains("`numbers` applies only"),
            "{alb}"
        );
    }
}
