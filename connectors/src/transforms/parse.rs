//! `type = "parse"`: text log lines into JSON objects, for the logs AWS writes as text (VPC Flow Logs
//! delivered to S3, CloudFront standard logs) and any delimited format, so that they can become
//! Parquet, CSV columns, OpenSearch documents or partition keys (beyond Firehose, which needs a
//! Lambda function for it).
//!
//! ```toml
//! [transforms.flows]
//! type = "parse"
//! inputs = ["archive"]
//! format = "vpc_flow"          # vpc_flow | cloudfront | delimited | csv
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

/// The formats, as `format` names them.
const FORMATS: &str = "`vpc_flow` (VPC Flow Logs as delivered to S3), `cloudfront` (CloudFront standard logs), `delimited` (your own `fields` and `delimiter`) or `csv` (RFC 4180 rows of your `fields`)";

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
    Delimited,
    Csv,
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
    /// The header line (the names joined by the delimiter): dropped.
    header: Vec<u8>,
    /// `cloudfront`'s `date` and `time` fields, for `timestamp`.
    timestamp: Option<(usize, usize)>,
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
        Format::Delimited => (&[], &[], b' '),
        Format::Csv => (&[], &[], b','),
    };
    if format != Format::Delimited && c.delimiter.is_some() {
        only_delimited("delimiter", delimiter_span.clone(), &mut problems);
    }
    if matches!(format, Format::VpcFlow | Format::Cloudfront) && c.numbers.is_some() {
        only_delimited("numbers", numbers_span.clone(), &mut problems);
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
        Format::Cloudfront => position("date").zip(position("time")),
        _ => None,
    };
    let spec = Spec {
        format,
        delimiter,
        header: names.join(std::str::from_utf8(&[delimiter]).unwrap_or(" ")).into_bytes(),
        numbers: names.iter().map(|n| number_names.contains(&n.as_str())).collect(),
        keys: keys.iter().map(|k| format!("{}:", serde_json::Value::from(k.as_str())).into_bytes()).collect(),
        names,
        timestamp,
    };
    let transform = ParseTransform { spec: Arc::new(spec) };
    problems.finish(Some(Arc::new(transform) as Arc<dyn Transform>))
}

impl Transform for ParseTransform {
    fn describe(&self) -> String {
        let Spec { format, names, delimiter, .. } = &*self.spec;
        let format = match format {
            Format::VpcFlow => "vpc_flow",
            Format::Cloudfront => "cloudfront",
            Format::Delimited => "delimited",
            Format::Csv => return format!("parse: csv, {} fields", names.len()),
        };
        format!("parse: {format}, {} fields split on {:?}", names.len(), *delimiter as char)
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
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        let record = record.strip_suffix(b"\r").unwrap_or(record);
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
        let quoted;
        let fields: Vec<&str> = if spec.format == Format::Csv {
            quoted = parse_csv_row(line.as_bytes())
                .map_err(|why| TransformFailure::processing(BAD_CSV, format!("the line is no CSV row: {why}")))?;
            quoted.iter().map(String::as_str).collect()
        } else {
            line.split(spec.delimiter as char).collect()
        };
        if fields.len() != spec.keys.len() {
            return Err(TransformFailure::processing(
                FIELD_COUNT,
                format!(
                    "the line has {} fields split on {:?} where `fields` names {}",
                    fields.len(),
                    spec.delimiter as char,
                    spec.keys.len()
                ),
            ));
        }
        if let Some((i, value)) =
            fields.iter().enumerate().find(|(i, v)| spec.numbers[*i] && **v != "-" && !json::is_number(v.as_bytes()))
        {
            return Err(TransformFailure::processing(
                NOT_A_NUMBER,
                format!("field {} ({}) is {value:?}, not a number", i + 1, spec.names[i]),
            ));
        }
        emit.record_with(|out| {
            out.push(b'{');
            if let Some((date, time)) = spec.timestamp {
                out.extend_from_slice(b"\"timestamp\":");
                match (fields[date], fields[time]) {
                    ("-", _) | (_, "-") => out.extend_from_slice(b"null"),
                    (date, time) => string(&format!("{date}T{time}Z"), out),
                }
                out.push(b',');
            }
            for (i, value) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&spec.keys[i]);
                match *value {
                    "-" => out.extend_from_slice(b"null"),
                    number if spec.numbers[i] => out.extend_from_slice(number.as_bytes()),
                    text => string(text, out),
                }
            }
            out.push(b'}');
            Ok::<(), TransformFailure>(())
        })
    }
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

    #[test]
    fn passes_the_transform_conformance_kit() {
        let t = transform("format = \"vpc_flow\"").unwrap();
        let records: Vec<Vec<u8>> = [
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status",
            "2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 3 4 5 6 ACCEPT OK",
            "2 1 eni-1 too few",
            "2 1 eni-1 10.0.0.1 10.0.0.2 x 2 6 3 4 5 6 ACCEPT OK",
        ]
        .iter()
        .map(|l| l.as_bytes().to_vec())
        .collect();
        let report = conformance(&t, &records, true, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            report.passed(TransformCheck::AccountsForEveryRecord)
                && report.passed(TransformCheck::FailsRecordsAsTheyEntered)
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
    }
}
