//! The timely operators of a delivery pipeline, one file each, each behind a small extension trait:
//! [`read_source`] (a source's share on this worker), [`TransformRecords::transform`] (a transform's
//! worker, holding the epochs of what it keeps), [`BuildObjects::build_objects`] (buffer, encode,
//! compress) and [`Deliver::deliver`] (hand objects to the async sink, hold their epoch until stored).
//!
//! Time is an epoch counter (`u64`). Capabilities are delivery promises: the buffer operator holds
//! the oldest epoch of its open objects, the deliver operator holds each object's epoch until the
//! sink answered, so a probe after `deliver` passing `t` means every record of epochs `< t` is
//! stored (or counted as failed).

mod build_objects;
mod deliver;
mod partition;
mod read;
mod transform;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use build_objects::BuildObjects;
pub use deliver::{Deliver, DeliveryContext, DeliveryReceipt};
pub use partition::PartitionRecords;
pub use read::read_source;
pub use transform::TransformRecords;

/// The dataflow's timestamp: an epoch counter.
pub type Epoch = u64;

/// Compressed bytes handed to sinks and not yet answered. Sources stop reading while it is over its
/// limit: the backpressure that bounds memory when a destination is slower than the input.
#[derive(Debug)]
pub struct InflightBudget {
    bytes: AtomicU64,
    limit: u64,
}

impl InflightBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(InflightBudget { bytes: AtomicU64::new(0), limit })
    }

    /// Whether sources should wait.
    pub fn is_exhausted(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= self.limit
    }

    fn acquire(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn release(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Where a sink's records wait: for the `DataFreshness` slots in
/// [`crate::metrics::OldestPending`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    /// In an open object.
    Buffering = 0,
    /// In a delivery in flight.
    Delivering = 1,
}

/// The freshness slot of `stage` on worker `worker`.
pub(crate) fn pending_slot(worker: usize, stage: Stage) -> usize {
    worker * 2 + stage as usize
}
