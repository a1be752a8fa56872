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

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use timely::scheduling::Activator;

pub use build_objects::BuildObjects;
pub use deliver::{Deliver, DeliveryContext, DeliveryReceipt};
pub use partition::PartitionRecords;
pub use read::read_source;
pub use transform::TransformRecords;

/// The dataflow's timestamp: an epoch counter.
pub type Epoch = u64;

/// Compressed bytes handed to sinks and not yet answered, and records held by dataflow transforms.
/// Sources stop reading while it is over its limit: the backpressure that bounds memory when a
/// destination (or a transform waiting for another worker) is slower than the input.
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

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The bytes counted now.
    pub fn held(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether sources should wait.
    pub fn is_exhausted(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= self.limit
    }

    /// Counts `n` more bytes held: an object handed to a sink, or records a transform holds
    /// across workers (a dataflow transform waiting for its state to be complete).
    pub fn acquire(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` bytes no longer held.
    pub fn release(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The whole objects one sink's deliver operator holds on this worker and has not finished
/// (waiting for a slot or being stored), shared with the sink's buffer operator on the same worker.
///
/// The buffer operator seals objects that are merely due (their interval passed, or the input
/// ended) only while the queue has room: a partitioned sink with thousands of due partitions keeps
/// them in their compact open form (bytes, no compressor) instead of turning them all at once into
/// sealed objects that wait here. When it leaves due objects open it says so ([`Self::block`]), and
/// the deliver operator wakes it once half the room is free. Partitions sealed early to keep a
/// partitioned sink within `max_open_mb` take room too: with none left, the records that would
/// need them wait in the buffer operator (counted in the [`InflightBudget`], so sources pause).
/// Objects sealed by size are sealed whatever the queue holds.
#[derive(Default)]
pub struct DeliveryQueue {
    objects: Cell<usize>,
    /// The buffer operator's activator while it waits for room.
    waiting: RefCell<Option<Activator>>,
}

impl DeliveryQueue {
    /// Objects the queue takes before due objects wait in the buffer operator.
    pub const LIMIT: usize = 16 * deliver::MAX_DELIVERIES;

    /// How many more objects the buffer operator may seal now: none until half the queue is free,
    /// so due objects are sealed in steps of hundreds, not one at a time.
    pub(crate) fn room(&self) -> usize {
        let room = Self::LIMIT.saturating_sub(self.objects.get());
        if room >= Self::LIMIT / 2 { room } else { 0 }
    }

    /// The buffer operator left due objects open for want of room: wake it through `activator`.
    pub(crate) fn block(&self, activator: Activator) {
        *self.waiting.borrow_mut() = Some(activator);
    }

    /// Whether the buffer operator is waiting for room.
    pub(crate) fn is_blocked(&self) -> bool {
        self.waiting.borrow().is_some()
    }

    pub(crate) fn add(&self) {
        self.objects.set(self.objects.get() + 1);
    }

    /// An object is finished; wakes a waiting buffer operator when half the room is free.
    pub(crate) fn done(&self) {
        self.objects.set(self.objects.get().saturating_sub(1));
        if self.objects.get() <= Self::LIMIT / 2
            && let Some(activator) = self.waiting.borrow_mut().take()
        {
            activator.activate();
        }
    }
}

impl std::fmt::Debug for DeliveryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryQueue")
            .field("objects", &self.objects.get())
            .field("blocked", &self.is_blocked())
            .finish()
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
