//! Retrying a delivery: Firehose's back-off (docs/firehose.md §5) for the sink's retry duration.
//!
//! Back-off starts at 1 s, doubles, has ±15 % jitter and is capped at 120 s. Only
//! [`DeliveryError::Retryable`] is retried, and only while the retry duration (counted from the first
//! failure) has not run out; a permanent error ends at once. The error output is the exception:
//! [`until_stored`] retries it whatever the error and for as long as it takes (docs/firehose.md §4: an
//! error output that cannot be written is retried forever and delivery waits), except an
//! [`DeliveryError::Unstorable`] payload, which no retry can store: that is returned, for the run to
//! stop loudly. "Retry forever" is for destinations that are down, not for keys that are invalid.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::contract::DeliveryError;

/// How long and how fast to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total time to keep retrying after the first failure (`retry.duration_s`, 0..=7200, default 300).
    pub duration: Duration,
    /// First back-off.
    pub initial_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            duration: Duration::from_secs(300),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based), with jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.initial_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let base = base.min(self.max_backoff);
        let jitter: f64 = rand::rng().random_range(0.85..=1.15);
        base.mul_f64(jitter)
    }
}

/// The policy applied to one delivery: after each failure, how long to wait before trying again,
/// or that it is time to give up (a permanent error, or the duration, counted from the first
/// failure, would run out).
#[derive(Debug, Clone)]
pub struct RetryClock {
    policy: RetryPolicy,
    first_failure: Option<Instant>,
}

impl RetryClock {
    /// A delivery that has not failed yet.
    pub fn new(policy: RetryPolicy) -> Self {
        RetryClock { policy, first_failure: None }
    }

    /// After failed attempt number `attempts` (1-based) with `error`: the wait before the next
    /// attempt, or `None` to give up.
    pub fn after_failure(&mut self, attempts: u32, error: &DeliveryError) -> Option<Duration> {
        let since = *self.first_failure.get_or_insert_with(Instant::now);
        let wait = self.policy.backoff(attempts);
        (error.is_retryable() && since.elapsed() + wait <= self.policy.duration).then_some(wait)
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or the policy's duration runs out; returns
/// the attempts made and the last result. Each failed attempt is counted in `counts` as it fails,
/// and one that will be tried again is told to `retrying` (attempts so far, the error, the wait),
/// which reports it; the last failure is the caller's to say.
pub async fn with_retries<T, F, Fut>(
    policy: RetryPolicy,
    counts: &crate::metrics::SinkMetrics,
    mut retrying: impl FnMut(u32, &DeliveryError, Duration),
    mut attempt: F,
) -> (u32, Result<T, DeliveryError>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DeliveryError>>,
{
    let (mut attempts, mut clock) = (0, RetryClock::new(policy));
    loop {
        attempts += 1;
        match attempt().await {
            Ok(v) => return (attempts, Ok(v)),
            Err(e) => match clock.after_failure(attempts, &e).inspect(|_| counts.count_failed_attempt(true)) {
                None => {
                    counts.count_failed_attempt(false);
                    return (attempts, Err(e));
                }
                Some(wait) => {
                    retrying(attempts, &e, wait);
                    tokio::time::sleep(wait).await;
                }
            },
        }
    }
}

/// Runs `attempt` until it succeeds, whatever the errors but [`DeliveryError::Unstorable`], with
/// the policy's back-off; returns the attempts made. Every failure is counted in `failures` and
/// told to `failed` (attempts so far, the error, the wait before the next), which reports it: this
/// is the path where giving up would drop records, so it blocks instead.
pub async fn until_stored<F, Fut>(
    policy: RetryPolicy,
    failures: &AtomicU64,
    mut failed: impl FnMut(u32, &DeliveryError, Duration),
    mut attempt: F,
) -> Result<u32, DeliveryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), DeliveryError>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(()) => return Ok(attempts),
            Err(e @ DeliveryError::Unstorable { .. }) => {
                failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            Err(e) => {
                failures.fetch_add(1, Ordering::Relaxed);
                let wait = policy.backoff(attempts);
                failed(attempts, &e, wait);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = RetryPolicy::default();
        for (attempt, base) in [(1u32, 1.0f64), (2, 2.0), (3, 4.0), (8, 120.0), (30, 120.0)] {
            let got = p.backoff(attempt).as_secs_f64();
            assert!(got >= base * 0.85 - 1e-9 && got <= base * 1.15 + 1e-9, "attempt {attempt}: {got}");
        }
    }

    /// An attempt that fails with `error` until its `succeeds_at`th call.
    fn fails_until(
        succeeds_at: u32,
        error: DeliveryError,
    ) -> impl FnMut() -> std::future::Ready<Result<(), DeliveryError>> {
        let mut calls = 0;
        move || {
            calls += 1;
            std::future::ready(if calls < succeeds_at { Err(error.clone()) } else { Ok(()) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_and_stops_at_permanent_ones() {
        let policy = RetryPolicy { duration: Duration::from_secs(10), ..RetryPolicy::default() };
        let mut told = 0;
        let busy = DeliveryError::Retryable { code: "x".into(), message: "busy".into() };
        let (attempts, result) =
            with_retries(policy, &crate::metrics::SinkMetrics::default(), |_, _, _| told += 1, fails_until(3, busy))
                .await;
        assert_eq!(attempts, 3);
        assert!(result.is_ok());
        assert_eq!(told, 2, "each failure tried again is told");

        let (attempts, _) = with_retries(
            policy,
            &crate::metrics::SinkMetrics::default(),
            |_, _, _| {},
            || async { Err::<(), _>(DeliveryError::Permanent { code: "p".into(), message: "no".into() }) },
        )
        .await;
        assert_eq!(attempts, 1);

        let (attempts, result) = with_retries(
            policy,
            &crate::metrics::SinkMetrics::default(),
            |_, _, _| {},
            || async { Err::<(), _>(DeliveryError::Retryable { code: "r".into(), message: "down".into() }) },
        )
        .await;
        assert!(result.is_err());
        assert!((3..=5).contains(&attempts), "{attempts}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_error_output_is_retried_through_permanent_errors_until_stored() {
        let failures = AtomicU64::new(0);
        let mut told = Vec::new();
        let denied = DeliveryError::Permanent { code: "S3.AccessDenied".into(), message: "no".into() };
        let attempts = until_stored(
            RetryPolicy::default(),
            &failures,
            |n, e, _| told.push((n, e.code().to_string())),
            fails_until(6, denied),
        )
        .await;
        assert_eq!(attempts.ok(), Some(6));
        assert_eq!(failures.load(Ordering::Relaxed), 5);
        assert_eq!(told, (1..=5).map(|n| (n, "S3.AccessDenied".to_string())).collect::<Vec<_>>());

        // A payload no retry can store is given back at once, for the run to stop.
        let unstorable = until_stored(
            RetryPolicy::default(),
            &failures,
            |_, _, _| {},
            || async { Err(DeliveryError::Unstorable { code: "S3.InvalidKey".into(), message: "bad key".into() }) },
        )
        .await;
        assert!(matches!(unstorable, Err(DeliveryError::Unstorable { .. })));
    }
}
