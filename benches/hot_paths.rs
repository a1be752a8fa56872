//! The hot paths one at a time, with criterion, each as bytes/s of input:
//! - `encode_compress`: CloudTrail-style records through a sink's buffer into NDJSON objects, for each
//!   compression, and into CSV of ten columns, four of them nested (the work a worker does per
//!   record for text formats);
//! - `json_to_parquet`: CloudFront-style records into Parquet objects against the declared schema
//!   (JSON → Arrow columns → Parquet pages), snappy and zstd;
//! - `transforms`: CloudTrail records through one transform worker (`redact` with every built-in
//!   detector, the `jq` reshape of `sluice bench`'s transform scenario), the per-record work of the
//!   transform stage;
//! - `key_query`: the partition scenario's partitioning query (`sluice bench --scenario partition`:
//!   account and region) answered for every CloudTrail record, as the partition operator asks it
//!   (one validating JSON walk finds both paths);
//! - `object_keys`: rendering a Firehose prefix with timestamp expressions into an object key;
//! - `log_append`: write-ahead log entries of one PutRecordBatch (~140 KB), without a sync and with
//!   one fsync per 16 entries (group commit);
//! - `record_data`: the base64 `Data` of 500 CloudTrail records (one PutRecordBatch) decoded as the
//!   Firehose API does (`record_data::decode_append`, base64-simd) and, for the same bytes into the
//!   same buffer, with the `base64` crate's STANDARD engine it replaced.
//!
//! `cargo bench --bench hot_paths` (a filter after `--` picks groups, e.g. `-- object_keys`).
//! Whole-pipeline comparisons with other tools are `sluice bench`.

// A benchmark has no caller to report to: a failed set-up aborts it with its reason.
#![allow(clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_connectors::registry;
use sluice_connectors::synth::{Profile, write_ndjson};
use sluice_engine::buffer::ObjectBatcher;
use sluice_engine::config::SinkSettings;
use sluice_engine::contract::TransformOutput;
use sluice_engine::metrics::TransformMetrics;
use sluice_engine::record::RecordBatch;
use sluice_engine::testkit::plan_from_str;
use sluice_engine::testkit::transform::lone_worker;
use sluice_engine::wal::Wal;

/// `records` generated records of `profile` as batches of 500 (one PutRecordBatch each), and their bytes.
fn batches(profile: Profile, records: u64) -> (Vec<RecordBatch>, u64) {
    let mut text = Vec::new();
    write_ndjson(profile, 3, records, &mut text).expect("generate records");
    let mut out = Vec::new();
    let mut batch = RecordBatch::with_capacity(1_764_000_000_000, 0);
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        batch.push(line);
        if batch.len() == 500 {
            out.push(std::mem::replace(&mut batch, RecordBatch::with_capacity(1_764_000_000_000, 0)));
        }
    }
    out.push(batch);
    (out, text.len() as u64)
}

/// The settings of a sink with `keys` (format, compression, …), as a pipeline file would give them.
fn sink_settings(keys: &str) -> Arc<SinkSettings> {
    let toml = format!(
        "[pipeline]\nname = \"bench\"\n[sources.in]\ntype = \"generator\"\nprofile = \"cloudfront\"\nrecords = 1\n\
         [sinks.out]\ntype = \"object_store\"\ninputs = [\"in\"]\nurl = \"memory://bench\"\n{keys}\n"
    );
    let plan = plan_from_str(&toml, &registry()).expect("bench pipeline");
    Arc::clone(&plan.sinks[0].settings)
}

/// Every batch through a fresh batcher, then every object sealed.
fn build_objects(settings: &Arc<SinkSettings>, batches: &[RecordBatch]) -> usize {
    let mut batcher = ObjectBatcher::new(Arc::clone(settings));
    let mut sealed = Vec::new();
    let now = Instant::now();
    for batch in batches {
        batcher.append(batch, 1, now, &mut sealed).expect("encode");
    }
    batcher.seal_all(&mut sealed).expect("seal");
    sealed.iter().map(|o| o.payload.body.len()).sum()
}

fn encode_compress(c: &mut Criterion) {
    let (records, bytes) = batches(Profile::Cloudtrail, 20_000);
    let mut group = c.benchmark_group("encode_compress");
    group.throughput(Throughput::Bytes(bytes)).sample_size(10).measurement_time(Duration::from_secs(5));
    for compression in ["none", "gzip", "zstd", "snappy", "hadoop_snappy"] {
        let settings = sink_settings(&format!(
            "format = \"ndjson\"\ncompression = \"{compression}\"\nbuffer = {{ size_mb = 64, interval_s = 900 }}"
        ));
        group.bench_function(format!("ndjson {compression}"), |b| b.iter(|| build_objects(&settings, &records)));
    }
    // CSV of top-level and nested columns, as a SIEM export takes CloudTrail.
    let settings = sink_settings(
        "format = \"csv\"\ncolumns = [\"eventTime\", \"eventName\", \"awsRegion\", \"sourceIPAddress\", \
         \"userIdentity.type\", \"userIdentity.arn\", \"userIdentity.accountId\", \"requestParameters.bucketName\", \
         \"requestParameters.key\", \"readOnly\"]\nbuffer = { size_mb = 64, interval_s = 900 }",
    );
    group.bench_function("csv none", |b| b.iter(|| build_objects(&settings, &records)));
    group.finish();
}

fn json_to_parquet(c: &mut Criterion) {
    let (records, bytes) = batches(Profile::Cloudfront, 40_000);
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/schemas/cloudfront.toml");
    let mut group = c.benchmark_group("json_to_parquet");
    group.throughput(Throughput::Bytes(bytes)).sample_size(10).measurement_time(Duration::from_secs(5));
    for codec in ["snappy", "zstd"] {
        let settings = sink_settings(&format!(
            "format = \"parquet\"\ncompression = \"{codec}\"\nschema = {:?}\nbuffer = {{ size_mb = 128, interval_s = 900 }}",
            schema.display().to_string()
        ));
        group.bench_function(format!("cloudfront {codec}"), |b| b.iter(|| build_objects(&settings, &records)));
    }
    group.finish();
}

/// One worker of the transform `[transforms.t]` (`keys` its table) over every batch.
fn transforms(c: &mut Criterion) {
    let (records, bytes) = batches(Profile::Cloudtrail, 20_000);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("transforms");
    group.throughput(Throughput::Bytes(bytes)).sample_size(10).measurement_time(Duration::from_secs(5));
    let reshape = "{time: .eventTime, user: .userIdentity.userName, event: .eventName, ip: .sourceIPAddress, region: .awsRegion, key: .userIdentity.accessKeyId}";
    for (name, keys) in [
        ("redact, every detector", "type = \"redact\"".to_string()),
        ("jq reshape", format!("type = \"jq\"\nquery = '{reshape}'")),
    ] {
        let toml = format!(
            "[pipeline]\nname = \"bench\"\n[sources.in]\ntype = \"generator\"\nprofile = \"cloudtrail\"\nrecords = 1\n\
             [transforms.t]\ninputs = [\"in\"]\n{keys}\n[sinks.out]\ntype = \"object_store\"\ninputs = [\"t\"]\nurl = \"memory://bench\"\n"
        );
        let plan = plan_from_str(&toml, &registry()).expect("bench pipeline");
        let context = lone_worker(runtime.handle().clone(), Arc::new(TransformMetrics::default()));
        let mut worker = plan.transforms[0].transform.open(&context).expect("open the transform");
        let mut out = TransformOutput::default();
        group.bench_function(name, |b| {
            b.iter(|| {
                for (epoch, batch) in records.iter().enumerate() {
                    worker.push(batch.clone(), epoch as u64, &mut out);
                    out.take();
                }
            })
        });
    }
    group.finish();
}

/// One worker of the partition scenario's key query over every record.
fn key_query(c: &mut Criterion) {
    let (records, bytes) = batches(Profile::Cloudtrail, 20_000);
    let mut group = c.benchmark_group("key_query");
    group.throughput(Throughput::Bytes(bytes)).sample_size(10).measurement_time(Duration::from_secs(5));
    // The partition scenario's query (`PARTITION_QUERY` in connectors/src/bin/sluice/bench/plan.rs).
    let query = "{account: .recipientAccountId, region: .awsRegion}";
    let wanted: Vec<String> = ["account", "region"].map(String::from).to_vec();
    let mut worker = sluice_connectors::transforms::jq::key_query(query)
        .expect("the query compiles")
        .open(&wanted)
        .expect("open the query");
    let mut values = Vec::new();
    group.bench_function("partition scenario's account and region", |b| {
        b.iter(|| {
            for batch in &records {
                for record in batch.iter() {
                    worker.values(record, &mut values).expect("every generated record has the keys");
                }
            }
        })
    });
    group.finish();
}

fn object_keys(c: &mut Criterion) {
    let settings = sink_settings(
        "format = \"ndjson\"\nprefix = \"logs/!{timestamp:'year='yyyy'/month='MM'/day='dd'/hour='HH}/\"\nerror_prefix = \"errors/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/\"",
    );
    let key_bytes = settings.keys.data_key(1_764_000_000_000, ".gz").len() as u64;
    let mut group = c.benchmark_group("object_keys");
    group.throughput(Throughput::Bytes(key_bytes));
    let mut ms = 1_764_000_000_000i64;
    group.bench_function("data key with timestamp expressions", |b| {
        b.iter(|| {
            ms += 997;
            settings.keys.data_key(ms, ".gz")
        })
    });
    group.finish();
}

fn log_append(c: &mut Criterion) {
    const ENTRY: usize = 140_000;
    let payload: Vec<u8> = (0..ENTRY).map(|i| (i % 251) as u8).collect();
    let mut group = c.benchmark_group("log_append");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for sync_every in [0usize, 16] {
        let dir = tempfile::tempdir().expect("log folder");
        let (mut wal, _) = Wal::open(dir.path(), 64 << 20).expect("open log");
        let label =
            if sync_every == 0 { "16 entries, no sync".to_string() } else { "16 entries, one fsync".to_string() };
        group.throughput(Throughput::Bytes((16 * ENTRY) as u64));
        group.bench_function(label, |b| {
            b.iter(|| {
                for _ in 0..16 {
                    wal.append(&payload, 500).expect("append");
                }
                if sync_every > 0 {
                    wal.sync().expect("sync");
                }
            })
        });
    }
    group.finish();
}

fn record_data(c: &mut Criterion) {
    use base64::Engine as _;
    let (batches, _) = batches(Profile::Cloudtrail, 500);
    let records = &batches[0];
    let encoded: Vec<String> = records.iter().map(|r| base64::engine::general_purpose::STANDARD.encode(r)).collect();
    let mut group = c.benchmark_group("record_data");
    group.throughput(Throughput::Bytes(records.byte_len() as u64));
    let mut out = Vec::with_capacity(records.byte_len());
    let mut decode_all = |decode: &dyn Fn(&[u8], &mut Vec<u8>)| {
        out.clear();
        encoded.iter().for_each(|text| decode(text.as_bytes(), &mut out));
        // The same output both ways: every record's bytes back to back.
        assert_eq!(out.len(), records.byte_len());
    };
    group.bench_function("base64-simd (the API's)", |b| {
        b.iter(|| decode_all(&|text, out| sluice_connectors::record_data::decode_append(text, out).expect("base64")))
    });
    group.bench_function("base64 STANDARD", |b| {
        b.iter(|| {
            decode_all(&|text, out| base64::engine::general_purpose::STANDARD.decode_vec(text, out).expect("base64"))
        })
    });
    group.finish();
}

criterion_group!(
    hot_paths,
    encode_compress,
    json_to_parquet,
    transforms,
    key_query,
    object_keys,
    log_append,
    record_data
);
criterion_main!(hot_paths);
