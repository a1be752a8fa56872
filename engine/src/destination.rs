//! The kinds of destination a sink can be, as Firehose names them: what a sink's delivery metrics
//! are called (`DeliveryTo<Kind>.Records`), which error-output type holds what it did not take, and
//! how DescribeDeliveryStream describes it (docs/firehose.md §7).
//!
//! Guarantees: one place maps a kind to each of its names; a new sink picks its kind here and adds
//! nothing elsewhere in the engine.

/// A Firehose destination kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum DestinationKind {
    /// An object store (S3 and every store `object_store` speaks).
    S3,
    /// An HTTP endpoint speaking Firehose's HTTP endpoint protocol.
    HttpEndpoint,
    /// OpenSearch or Elasticsearch (`_bulk`).
    OpenSearch,
    /// Splunk's HTTP Event Collector.
    Splunk,
    /// A warehouse loaded with COPY (Redshift, PostgreSQL).
    Redshift,
}

impl DestinationKind {
    /// The name in metric families: `DeliveryTo<name>.Records`.
    pub fn metric_name(self) -> &'static str {
        match self {
            DestinationKind::S3 => "S3",
            DestinationKind::HttpEndpoint => "HttpEndpoint",
            DestinationKind::OpenSearch => "AmazonOpenSearchService",
            DestinationKind::Splunk => "Splunk",
            DestinationKind::Redshift => "Redshift",
        }
    }

    /// The `!{firehose:error-output-type}` of records this kind of destination did not take.
    /// Firehose appends `AmazonOpenSearchService-failed/` (older guides: `elasticsearch_failed/`)
    /// and documents `splunk-failed`; the S3 and HTTP endpoint names are sluice's (Firehose has none
    /// for S3).
    pub fn failed_output_type(self) -> &'static str {
        match self {
            DestinationKind::S3 => "s3-failed",
            DestinationKind::HttpEndpoint => "http-endpoint-failed",
            DestinationKind::OpenSearch => "AmazonOpenSearchService-failed",
            DestinationKind::Splunk => "splunk-failed",
            DestinationKind::Redshift => "redshift-failed",
        }
    }

    /// Its `S3BackupMode` in DescribeDeliveryStream: every record backed up (`backup = "all"`), or
    /// only what it did not take, in the names of its Firehose configuration.
    pub fn backup_mode(self, all: bool) -> &'static str {
        match (self, all) {
            (DestinationKind::S3 | DestinationKind::Redshift, true) => "Enabled",
            (DestinationKind::S3 | DestinationKind::Redshift, false) => "Disabled",
            (DestinationKind::HttpEndpoint, true) => "AllData",
            (DestinationKind::HttpEndpoint, false) => "FailedDataOnly",
            (DestinationKind::OpenSearch, true) => "AllDocuments",
            (DestinationKind::OpenSearch, false) => "FailedDocumentsOnly",
            (DestinationKind::Splunk, true) => "AllEvents",
            (DestinationKind::Splunk, false) => "FailedEventsOnly",
        }
    }

    /// The key of its description in DescribeDeliveryStream's `Destinations`.
    pub fn description_key(self) -> &'static str {
        match self {
            DestinationKind::S3 => "ExtendedS3DestinationDescription",
            DestinationKind::HttpEndpoint => "HttpEndpointDestinationDescription",
            DestinationKind::OpenSearch => "AmazonopensearchserviceDestinationDescription",
            DestinationKind::Splunk => "SplunkDestinationDescription",
            DestinationKind::Redshift => "RedshiftDestinationDescription",
        }
    }
}
