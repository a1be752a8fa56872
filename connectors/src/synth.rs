//! Synthetic logs: realistic CloudFront, CloudTrail and VPC Flow Logs records as JSON lines.
//!
//! Guarantees: record `i` of a profile depends only on `(seed, i)`, so any split of the index range
//! across workers produces the same multiset of records, and `sluice gen` and the generator source
//! produce the same records for the same seed. Timestamps advance 7 ms per record from
//! 2026-11-01T00:00:00Z, independent of the wall clock.

use std::io::Write;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// A log shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// CloudFront access logs (~330 bytes).
    Cloudfront,
    /// CloudTrail management events of an organization trail (~900 bytes).
    Cloudtrail,
    /// VPC Flow Logs (~250 bytes).
    Vpcflow,
}

const BASE_MS: i64 = 1_793_491_200_000; // 2026-11-01T00:00:00Z

/// The CloudTrail profile is an organization trail: this (busy) account receives half the events,
/// the other half spread evenly over [`MEMBER_ACCOUNTS`] member accounts, so account × region (three
/// regions) makes about a thousand partitions, the layout a security lake is partitioned by.
const MAIN_ACCOUNT: u64 = 123_456_789_012;

/// Member accounts of the organization trail besides [`MAIN_ACCOUNT`].
const MEMBER_ACCOUNTS: u64 = 339;

/// Writes record `index` of `profile` for `seed` (JSON, no trailing newline) into `out`.
#[derive(Debug, Clone)]
pub struct Synthesizer {
    profile: Profile,
    rng: ChaCha8Rng,
}

fn pick<'a, R: Rng>(rng: &mut R, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

fn ipv4<R: Rng>(rng: &mut R) -> String {
    format!("{}.{}.{}.{}", rng.random_range(1..224), rng.random::<u8>(), rng.random::<u8>(), rng.random_range(1..255))
}

fn iso(ms: i64, millis: bool) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    if millis { t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string() } else { t.format("%Y-%m-%dT%H:%M:%SZ").to_string() }
}

fn hex_id<R: Rng>(rng: &mut R, len: usize) -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    (0..len).map(|_| HEX[rng.random_range(0..16)] as char).collect()
}

#[derive(Serialize)]
struct CloudFront<'a> {
    timestamp: String,
    x_edge_location: &'a str,
    sc_bytes: u32,
    c_ip: String,
    cs_method: &'a str,
    cs_host: &'a str,
    cs_uri_stem: String,
    sc_status: u16,
    cs_referer: &'a str,
    cs_user_agent: &'a str,
    cs_uri_query: &'a str,
    x_edge_result_type: &'a str,
    x_edge_request_id: String,
    cs_protocol: &'a str,
    cs_bytes: u32,
    time_taken: f32,
    ssl_protocol: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserIdentity<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    principal_id: String,
    arn: String,
    account_id: String,
    user_name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CloudTrail<'a> {
    event_version: &'a str,
    user_identity: UserIdentity<'a>,
    event_time: String,
    event_source: &'a str,
    event_name: &'a str,
    aws_region: &'a str,
    #[serde(rename = "sourceIPAddress")]
    source_ip_address: String,
    user_agent: &'a str,
    request_parameters: serde_json::Value,
    response_elements: Option<serde_json::Value>,
    #[serde(rename = "requestID")]
    request_id: String,
    #[serde(rename = "eventID")]
    event_id: String,
    read_only: bool,
    event_type: &'a str,
    management_event: bool,
    recipient_account_id: String,
    tags: Vec<&'a str>,
}

#[derive(Serialize)]
struct VpcFlow<'a> {
    version: u8,
    account_id: &'a str,
    interface_id: String,
    srcaddr: String,
    dstaddr: String,
    srcport: u16,
    dstport: u16,
    protocol: u8,
    packets: u32,
    bytes: u64,
    start: i64,
    end: i64,
    action: &'a str,
    log_status: &'a str,
}

impl Synthesizer {
    /// A synthesizer for `profile` and `seed`.
    pub fn new(profile: Profile, seed: u64) -> Self {
        Synthesizer { profile, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// Appends record `index` to `out` (no newline).
    pub fn write(&mut self, index: u64, out: &mut Vec<u8>) {
        // Record i reads its own ChaCha stream: independent of which worker makes it, or when.
        self.rng.set_stream(index);
        self.rng.set_word_pos(0);
        let rng = &mut self.rng;
        let ms = BASE_MS + index as i64 * 7;
        // Serializing these structs into a Vec cannot fail.
        let _ = match self.profile {
            Profile::Cloudfront => {
                let status =
                    *[200u16, 200, 200, 200, 304, 206, 403, 404, 500, 503].get(rng.random_range(0..10)).unwrap_or(&200);
                let record = CloudFront {
                    timestamp: iso(ms, true),
                    x_edge_location: pick(rng, &["IAD89-C1", "FRA56-P7", "NRT57-C3", "SFO5-P2", "LHR61-P4", "GRU3-C1"]),
                    sc_bytes: rng.random_range(200..2_000_000),
                    c_ip: ipv4(rng),
                    cs_method: pick(rng, &["GET", "GET", "GET", "HEAD", "POST", "OPTIONS"]),
                    cs_host: pick(rng, &["d111111abcdef8.cloudfront.net", "d2ykzqfe1l2z9x.cloudfront.net"]),
                    cs_uri_stem: format!(
                        "/{}/{}.{}",
                        pick(rng, &["static", "img", "api/v1", "assets", "video"]),
                        hex_id(rng, 12),
                        pick(rng, &["js", "css", "png", "json", "mp4", "html"])
                    ),
                    sc_status: status,
                    cs_referer: pick(rng, &["-", "https://www.example.com/", "https://shop.example.org/cart"]),
                    cs_user_agent: pick(
                        rng,
                        &[
                            "Mozilla/5.0%20(Windows%20NT%2010.0;%20Win64;%20x64)",
                            "Mozilla/5.0%20(Macintosh;%20Intel%20Mac%20OS%20X%2014_5)",
                            "curl/8.5.0",
                            "Amazon%20CloudFront",
                        ],
                    ),
                    cs_uri_query: pick(rng, &["-", "v=3", "size=large&fmt=webp"]),
                    x_edge_result_type: pick(rng, &["Hit", "Hit", "Miss", "RefreshHit", "Error"]),
                    x_edge_request_id: hex_id(rng, 40),
                    cs_protocol: pick(rng, &["https", "https", "http"]),
                    cs_bytes: rng.random_range(100..4000),
                    time_taken: (rng.random_range(1..5000) as f32) / 1000.0,
                    ssl_protocol: pick(rng, &["TLSv1.3", "TLSv1.2"]),
                };
                serde_json::to_writer(&mut *out, &record)
            }
            Profile::Cloudtrail => {
                let user = pick(rng, &["alice", "bob", "ci-deployer", "breakglass", "terraform"]);
                let (source, name, read_only) = *[
                    ("s3.amazonaws.com", "GetObject", true),
                    ("s3.amazonaws.com", "PutObject", false),
                    ("iam.amazonaws.com", "CreateAccessKey", false),
                    ("ec2.amazonaws.com", "DescribeInstances", true),
                    ("sts.amazonaws.com", "AssumeRole", true),
                    ("kms.amazonaws.com", "Decrypt", true),
                ]
                .get(rng.random_range(0..6))
                .unwrap_or(&("s3.amazonaws.com", "GetObject", true));
                let bucket = pick(rng, &["prod-logs", "billing-exports", "ml-datasets"]);
                let mut record = CloudTrail {
                    event_version: "1.09",
                    user_identity: UserIdentity {
                        kind: "IAMUser",
                        principal_id: format!("AIDA{}", hex_id(rng, 16).to_uppercase()),
                        arn: String::new(),
                        account_id: String::new(),
                        user_name: user,
                    },
                    event_time: iso(ms, false),
                    event_source: source,
                    event_name: name,
                    aws_region: pick(rng, &["us-east-1", "eu-west-1", "ap-northeast-1"]),
                    source_ip_address: ipv4(rng),
                    user_agent: pick(rng, &["aws-cli/2.17.0 Python/3.11.9", "Boto3/1.34.0", "console.amazonaws.com"]),
                    request_parameters: serde_json::json!({"bucketName": bucket, "key": format!("data/{}.parquet", hex_id(rng, 8))}),
                    response_elements: if read_only {
                        None
                    } else {
                        Some(serde_json::json!({"x-amz-version-id": hex_id(rng, 32)}))
                    },
                    request_id: hex_id(rng, 16).to_uppercase(),
                    event_id: uuid_like(rng),
                    read_only,
                    event_type: "AwsApiCall",
                    management_event: !source.starts_with("s3"),
                    recipient_account_id: String::new(),
                    tags: if rng.random_bool(0.3) { vec!["prod", "pci"] } else { Vec::new() },
                };
                // Drawn last, so the other fields are what they were before accounts varied.
                let account = if rng.random_bool(0.5) {
                    MAIN_ACCOUNT
                } else {
                    // Twelve-digit ids, spread out as an organization's accounts are.
                    210_000_000_000 + rng.random_range(0..MEMBER_ACCOUNTS) * 7_919
                };
                record.user_identity.arn = format!("arn:aws:iam::{account}:user/{user}");
                record.user_identity.account_id = account.to_string();
                record.recipient_account_id = account.to_string();
                serde_json::to_writer(&mut *out, &record)
            }
            Profile::Vpcflow => {
                let start = ms / 1000;
                let record = VpcFlow {
                    version: 2,
                    account_id: "123456789012",
                    interface_id: format!("eni-{}", hex_id(rng, 17)),
                    srcaddr: format!("10.0.{}.{}", rng.random::<u8>(), rng.random_range(1..255)),
                    dstaddr: ipv4(rng),
                    srcport: rng.random_range(1024..65535),
                    dstport: *[443u16, 80, 22, 53, 3306, 5432].get(rng.random_range(0..6)).unwrap_or(&443),
                    protocol: *[6u8, 6, 17, 1].get(rng.random_range(0..4)).unwrap_or(&6),
                    packets: rng.random_range(1..5000),
                    bytes: rng.random_range(40..5_000_000),
                    start,
                    end: start + rng.random_range(1..60),
                    action: pick(rng, &["ACCEPT", "ACCEPT", "ACCEPT", "REJECT"]),
                    log_status: "OK",
                };
                serde_json::to_writer(&mut *out, &record)
            }
        };
    }
}

fn uuid_like<R: Rng>(rng: &mut R) -> String {
    format!("{}-{}-{}-{}-{}", hex_id(rng, 8), hex_id(rng, 4), hex_id(rng, 4), hex_id(rng, 4), hex_id(rng, 12))
}

/// The seed `sluice gen` and the generator source use when none is given (one default for both,
/// so `sluice gen` prints what a generator source without `seed` produces).
pub const DEFAULT_SEED: u64 = 42;

/// Writes records `0..records` as NDJSON to `out` (what `sluice gen` does).
pub fn write_ndjson(profile: Profile, seed: u64, records: u64, out: &mut impl Write) -> std::io::Result<()> {
    let mut synth = Synthesizer::new(profile, seed);
    let mut buf = Vec::with_capacity(1 << 20);
    for i in 0..records {
        synth.write(i, &mut buf);
        buf.push(b'\n');
        if buf.len() >= 1 << 20 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_depends_only_on_seed_and_index() {
        for profile in [Profile::Cloudfront, Profile::Cloudtrail, Profile::Vpcflow] {
            let mut a = Synthesizer::new(profile, 42);
            let mut b = Synthesizer::new(profile, 42);
            let (mut x, mut y) = (Vec::new(), Vec::new());
            a.write(5, &mut x);
            b.write(9, &mut y);
            y.clear();
            b.write(5, &mut y);
            assert_eq!(x, y);
            let v: serde_json::Value = serde_json::from_slice(&x).unwrap_or_default();
            assert!(v.is_object(), "{profile:?}");
            let mut other_seed = Vec::new();
            Synthesizer::new(profile, 43).write(5, &mut other_seed);
            assert_ne!(x, other_seed);
        }
    }

    #[test]
    fn cloudtrail_spreads_over_about_a_thousand_account_region_pairs() {
        let mut synth = Synthesizer::new(Profile::Cloudtrail, 42);
        let (mut pairs, mut main) = (std::collections::BTreeSet::new(), 0);
        for i in 0..20_000 {
            let mut out = Vec::new();
            synth.write(i, &mut out);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
            let account = v["recipientAccountId"].as_str().unwrap_or_default().to_string();
            assert_eq!(account.len(), 12, "{account}");
            assert_eq!(v["userIdentity"]["accountId"], account.as_str());
            assert!(v["userIdentity"]["arn"].as_str().unwrap_or_default().contains(&format!("::{account}:")));
            main += usize::from(account == MAIN_ACCOUNT.to_string());
            pairs.insert((account, v["awsRegion"].to_string()));
        }
        assert_eq!(pairs.len(), (MEMBER_ACCOUNTS as usize + 1) * 3);
        assert!((9_000..11_000).contains(&main), "{main} of 20,000 in the main account");
    }
}
