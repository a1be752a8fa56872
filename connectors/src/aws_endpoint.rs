//! The public endpoint of an AWS service in a region, as the AWS SDKs derive it when no endpoint is
//! configured: `https://<service>.<region>.<DNS suffix>`, the suffix being that of the region's
//! partition (botocore's `endpoints.json`): `amazonaws.com` (the commercial regions and GovCloud),
//! `amazonaws.com.cn` (China), `c2s.ic.gov` (`us-iso-*`), `sc2s.sgov.gov` (`us-isob-*`),
//! `cloud.adc-e.uk` (`eu-isoe-*`), `csp.hci.ic.gov` (`us-isof-*`) and `amazonaws.eu` (the European
//! Sovereign Cloud, `eusc-*`).
//!
//! Guarantees: the one place sluice derives an AWS endpoint (STS, IAM Identity Center, Lambda,
//! Kinesis); a connector given an `endpoint`, or an `AWS_ENDPOINT_URL_*` variable, never asks it.

/// The DNS suffix of the partition `region` is in.
pub fn dns_suffix(region: &str) -> &'static str {
    const PARTITIONS: [(&str, &str); 6] = [
        ("cn-", "amazonaws.com.cn"),
        ("us-isob-", "sc2s.sgov.gov"),
        ("us-isof-", "csp.hci.ic.gov"),
        ("us-iso-", "c2s.ic.gov"),
        ("eu-isoe-", "cloud.adc-e.uk"),
        ("eusc-", "amazonaws.eu"),
    ];
    PARTITIONS.iter().find(|(prefix, _)| region.starts_with(prefix)).map_or("amazonaws.com", |(_, suffix)| suffix)
}

/// `https://<service>.<region>.<suffix>` (no trailing slash); `service` may have dots of its own
/// (`portal.sso`).
pub fn service_endpoint(service: &str, region: &str) -> String {
    format!("https://{service}.{region}.{}", dns_suffix(region))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each partition of botocore's endpoints.json (its `regionRegex` and `dnsSuffix`).
    #[test]
    fn each_partition_has_its_own_domain() {
        for (region, endpoint) in [
            ("eu-west-1", "https://sts.eu-west-1.amazonaws.com"),
            ("us-gov-west-1", "https://sts.us-gov-west-1.amazonaws.com"),
            ("cn-north-1", "https://sts.cn-north-1.amazonaws.com.cn"),
            ("us-iso-east-1", "https://sts.us-iso-east-1.c2s.ic.gov"),
            ("us-isob-east-1", "https://sts.us-isob-east-1.sc2s.sgov.gov"),
            ("eu-isoe-west-1", "https://sts.eu-isoe-west-1.cloud.adc-e.uk"),
            ("us-isof-south-1", "https://sts.us-isof-south-1.csp.hci.ic.gov"),
            ("eusc-de-east-1", "https://sts.eusc-de-east-1.amazonaws.eu"),
        ] {
            assert_eq!(service_endpoint("sts", region), endpoint);
        }
        assert_eq!(
            service_endpoint("portal.sso", "cn-northwest-1"),
            "https://portal.sso.cn-northwest-1.amazonaws.com.cn"
        );
    }
}
