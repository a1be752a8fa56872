//! `type = "generator"`: synthetic CloudFront, CloudTrail or VPC Flow Logs records.
//!
//! `records = N` is a batch source (ends after N records in all); `rate = R` is a stream source (R
//! records per second in all, until stopped). Worker `w` of `W` makes the records with index
//! `≡ w (mod W)`, so the multiset of records does not depend on the worker count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice_engine::config::ConnectorConfig;
use sluice_engine::config::{Diagnostic, Problems};
use sluice_engine::contract::{ReadStatus, Source, SourceContext, SourceError, SourceReader};
use sluice_engine::record::RecordBatch;

use crate::synth::{Profile, Synthesizer};

/// The generator's own keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GeneratorConfig {
    /// `cloudfront`, `cloudtrail` or `vpcflow`.
    profile: Profile,
    /// Total records (batch run).
    records: Option<u64>,
    /// Records per second (stream run).
    rate: Option<u64>,
    /// Seed; the same seed gives the same records (default 42, as `sluice gen`'s).
    #[serde(default = "default_seed")]
    seed: u64,
}

fn default_seed() -> u64 {
    crate::synth::DEFAULT_SEED
}

/// A configured generator.
#[derive(Debug)]
pub struct Generator {
    profile: Profile,
    amount: Amount,
    seed: u64,
}

#[derive(Debug, Clone, Copy)]
enum Amount {
    Records(u64),
    Rate(u64),
}

/// Builds a generator from `[sources.<name>]`.
pub fn configure(config: ConnectorConfig) -> Result<Arc<dyn Source>, Problems> {
    let span = config.table.span.clone();
    let records_span = config.table.key_span("records");
    let rate_span = config.table.key_span("rate");
    let mut problems = Problems::default();
    let Some(c) = config.table.deserialize::<GeneratorConfig>(&mut problems) else { return Err(problems) };
    let amount = problems.take(match (c.records, c.rate) {
        (Some(n), None) => Ok(Amount::Records(n)),
        (None, Some(r)) if r > 0 => Ok(Amount::Rate(r)),
        (None, Some(_)) => {
            Err(Diagnostic::new(rate_span.unwrap_or(span), "`rate` must be at least 1 record per second")
                .with_hint("or use records = N for a finite run"))
        }
        (Some(_), Some(_)) => {
            Err(Diagnostic::new(rate_span.unwrap_or(span), "set either `records` or `rate`, not both")
                .with_hint("records = N ends after N records; rate = R runs until stopped"))
        }
        (None, None) => Err(Diagnostic::new(records_span.unwrap_or(span), "the generator needs `records` or `rate`")
            .with_hint("records = 1000000 for a batch run, or rate = 5000 (per second) for a stream")),
    });
    let amount = problems.finish(amount)?;
    Ok(Arc::new(Generator { profile: c.profile, amount, seed: c.seed }))
}

impl Source for Generator {
    fn describe(&self) -> String {
        match self.amount {
            Amount::Records(n) => {
                format!("generator: {:?}, {n} records, seed {}", self.profile, self.seed).to_lowercase()
            }
            Amount::Rate(r) => {
                format!("generator: {:?}, {r} records/s, seed {}", self.profile, self.seed).to_lowercase()
            }
        }
    }

    fn is_finite(&self) -> bool {
        matches!(self.amount, Amount::Records(_))
    }

    fn open(&self, ctx: &SourceContext) -> Result<Box<dyn SourceReader>, SourceError> {
        Ok(Box::new(GeneratorReader {
            synth: Synthesizer::new(self.profile, self.seed),
            amount: self.amount,
            next: ctx.worker as u64,
            step: ctx.workers.max(1) as u64,
            started: Instant::now(),
            made: 0,
            scratch: Vec::new(),
        }))
    }
}

struct GeneratorReader {
    synth: Synthesizer,
    amount: Amount,
    next: u64,
    step: u64,
    started: Instant,
    made: u64,
    scratch: Vec<u8>,
}

impl SourceReader for GeneratorReader {
    fn read(&mut self, batch: &mut RecordBatch, max_bytes: usize) -> Result<ReadStatus, SourceError> {
        // How many this worker may make now.
        let allowed = match self.amount {
            Amount::Records(total) => {
                if self.next >= total {
                    return Ok(ReadStatus::Finished);
                }
                u64::MAX
            }
            Amount::Rate(rate) => {
                let due = (self.started.elapsed().as_secs_f64() * rate as f64 / self.step as f64) as u64 + 1;
                if due <= self.made {
                    return Ok(ReadStatus::Pending(Duration::from_millis(20)));
                }
                due - self.made
            }
        };
        let mut made = 0;
        while batch.byte_len() < max_bytes && made < allowed {
            if let Amount::Records(total) = self.amount
                && self.next >= total
            {
                return Ok(ReadStatus::Finished);
            }
            self.scratch.clear();
            self.synth.write(self.next, &mut self.scratch);
            batch.push(&self.scratch);
            self.next += self.step;
            made += 1;
        }
        self.made += made;
        Ok(ReadStatus::Ready)
    }
}

#[cfg(test)]
mod tests {
    use sluice_engine::testkit::source::{Check, SourceCase, conformance};

    use super::*;

    /// Records by index, split among workers: each once at 1, 2 and 4 workers; a stop ends it.
    #[test]
    fn passes_the_source_conformance_kit() {
        let dir = tempfile::tempdir().unwrap();
        let mut synth = Synthesizer::new(Profile::Vpcflow, 7);
        let expected = (0..20_000)
            .map(|i| {
                let mut record = Vec::new();
                synth.write(i, &mut record);
                record
            })
            .collect();
        let table = "type = \"generator\"\nprofile = \"vpcflow\"\nrecords = 20000\nseed = 7\n".to_string();
        let case = SourceCase::finite(table, expected, false, dir.path());
        let report = conformance(crate::registry(), &case).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.passed.contains(&Check::ExactlyOnce { workers: 4 }), "{report:?}");
        assert!(report.passed.contains(&Check::DrainOnStop), "{report:?}");
    }
}
