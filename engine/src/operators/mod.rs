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

/// Compressed bytes handed to sinks and not yet answered, records held by dataflow transforms, and
/// records on their way from one worker to another of this process (a partitioned sink's exchange,
/// through a [`BudgetClaim`]). Sources stop reading while it is over its limit: the backpressure
/// that bounds memory when a destination (or a transform waiting for another worker, or the worker
/// that owns the busiest partitions) is slower than the input.
#[derive(Debug)]
pub struct InflightBudget {
    bytes: AtomicU64,
    limit: u64,
    /// The most bytes counted at once.
    peak: AtomicU64,
}

impl InflightBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(InflightBudget { bytes: AtomicU64::new(0), limit, peak: AtomicU64::new(0) })
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

    /// Counts `n` more bytes held: an object handed to a sink, records a transform holds across
    /// workers (a dataflow transform waiting for its state to be complete), or a batch on its way
    /// to another worker ([`BudgetClaim`]).
    pub fn acquire(&self, n: u64) {
        let held = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(held, Ordering::Relaxed);
    }

    /// The most bytes counted at once since the budget was made.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Counts `n` bytes no longer held.
    pub fn release(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Bytes counted in an [`InflightBudget`] for as long as the claim is held: a batch of records
/// crossing from one worker to another of the same process, counted by the partition operator that
/// sends it and released by the worker that takes it in. Timely's channels between workers have no
/// bound of their own: a worker that owns the busiest partitions falls behind the others, and what
/// they send it would pile up without limit (measured: 88 MiB waiting on one of two workers for 6
/// partitions of 200 MB of CloudTrail); counted, it pauses the sources instead.
///
/// Guarantees: the bytes are released exactly once, by [`Self::release`] or when the claim is
/// dropped, whatever becomes of the batch; a copy of a claim holds nothing (only the batch that
/// was counted releases); a claim is never sent to another process (a batch arriving from one was
/// never counted here).
#[derive(Default)]
pub struct BudgetClaim(Option<(Arc<InflightBudget>, u64)>);

impl BudgetClaim {
    /// Counts `bytes` in `budget` until released.
    pub fn new(budget: &Arc<InflightBudget>, bytes: u64) -> Self {
        budget.acquire(bytes);
        BudgetClaim(Some((Arc::clone(budget), bytes)))
    }

    /// The bytes still counted.
    pub fn bytes(&self) -> u64 {
        self.0.as_ref().map_or(0, |(_, n)| *n)
    }

    /// Releases the bytes (once; later calls do nothing).
    pub fn release(&mut self) {
        if let Some((budget, bytes)) = self.0.take() {
            budget.release(bytes);
        }
    }
}

impl Drop for BudgetClaim {
    fn drop(&mut self) {
        self.release();
    }
}

impl Clone for BudgetClaim {
    /// A copy counts nothing: the bytes are released once, by the claim that counted them.
    fn clone(&self) -> Self {
        BudgetClaim(None)
    }
}

impl PartialEq for BudgetClaim {
    /// Claims are bookkeeping, not content: batches compare by their records.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for BudgetClaim {}

impl std::fmt::Debug for BudgetClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BudgetClaim").field(&self.bytes()).finish()
    }
}

/// The in-flight budget as a stage that sends records to other workers uses it: the budget, and
/// the workers of this process (timely numbers workers process by process). What goes to a worker
/// of this process is counted until that worker takes it in; what goes to another process is not
/// counted here, since this process never sees it taken in (and the other never counted it).
#[derive(Clone)]
pub struct ExchangeBudget {
    /// The run's in-flight budget.
    pub inflight: Arc<InflightBudget>,
    /// This process's workers.
    pub local_workers: std::ops::Range<usize>,
}

impl ExchangeBudget {
    /// A claim on `bytes` sent to worker `to`: counted when `to` is a worker of this process.
    pub fn claim(&self, to: usize, bytes: u64) -> BudgetClaim {
        if self.local_workers.contains(&to) { BudgetClaim::new(&self.inflight, bytes) } else { BudgetClaim::default() }
    }
}

/// The whole objects one sink's deliver operator holds on this worker and has not finished
/// (waiting for a slot or being stored), shared with the sink's buffer operator on the same worker.
///
/// The buffer operator seals objects that are merely due (their interval passed, or the input
/// ended) only while the queue has room: a partitioned sink with thousands of due partitions keeps
/// them in their compact open form (bytes, no compressor) instead of turning them all at once into
/// sealed objects that wait here. When it leaves due objects open it says so (`block`), and
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
