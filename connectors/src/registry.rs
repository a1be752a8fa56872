//! The explicit list of connectors: one line per source, transform or sink type. Nothing registers itself.

use sluice_engine::config::{Registry, SinkType, SourceType, TransformType};

use crate::{sinks, sources, transforms};

/// Every connector this build knows.
pub fn registry() -> Registry {
    Registry {
        sources: vec![
            SourceType { name: "file", configure: sources::file::configure },
            SourceType { name: "firehose", configure: sources::firehose::configure },
            SourceType { name: "fluent", configure: sources::fluent::configure },
            SourceType { name: "generator", configure: sources::generator::configure },
            SourceType { name: "http", configure: sources::http::configure },
            SourceType { name: "http_endpoint", configure: sources::http_endpoint::configure },
            SourceType { name: "kinesis", configure: sources::kinesis::configure },
            SourceType { name: "object_store", configure: sources::object_store::configure },
            SourceType { name: "otlp", configure: sources::otlp::configure },
            SourceType { name: "splunk_hec", configure: sources::splunk_hec::configure },
            SourceType { name: "syslog", configure: sources::syslog::configure },
        ],
        transforms: vec![
            TransformType { name: "cloudwatch_logs", configure: transforms::cloudwatch_logs::configure },
            TransformType { name: "dedup", configure: transforms::dedup::configure },
            TransformType { name: "enrich", configure: transforms::enrich::configure },
            TransformType { name: "jq", configure: transforms::jq::configure },
            TransformType { name: "lambda", configure: transforms::lambda::configure },
            TransformType { name: "parse", configure: transforms::parse::configure },
            TransformType { name: "redact", configure: transforms::redact::configure },
        ],
        key_query: Some(transforms::jq::key_query),
        sinks: vec![
            SinkType {
                name: "http_endpoint",
                configure: sinks::http_endpoint::configure,
                reads: &[],
                fixed_body: Some(sinks::http_endpoint::BODY),
            },
            SinkType { name: "object_store", configure: sinks::object_store::configure, reads: &[], fixed_body: None },
            SinkType {
                name: "opensearch",
                configure: sinks::opensearch::configure,
                reads: &[],
                fixed_body: Some(sinks::opensearch::BODY),
            },
            SinkType {
                name: "postgres",
                configure: sinks::postgres::configure,
                reads: &["format", "columns"],
                fixed_body: Some(sinks::postgres::BODY),
            },
            SinkType {
                name: "splunk",
                configure: sinks::splunk::configure,
                reads: &[],
                fixed_body: Some(sinks::splunk::BODY),
            },
        ],
    }
}
