//! The buffer operator: `stream.build_objects(...)` turns record batches into sealed objects with an
//! [`ObjectBatcher`], holding the capability of the oldest epoch it still buffers.
//!
//! Guarantees: objects are sealed by size or interval while the input runs (a timer activation is
//! set for the next deadline) and all at end of input; each sealed object is sent at its own oldest
//! epoch; no capability is held when nothing is buffered. A partitioned sink seals its due
//! partitions only while the sink's [`DeliveryQueue`] has room (the rest stay open, their epochs
//! held, until the deliver operator wakes it), so memory follows the open partitions' bytes, not a
//! sealed object per partition; and it seals them in slices of [`SEAL_SLICE_BYTES`], handing each
//! slice on before it compresses the next, so the stores of the first objects overlap the rest.
//! Early seals (past `max_open_mb`) take the queue's room too: when neither the budget nor the
//! queue has room, the records not yet added are parked in order, their epochs held and their bytes
//! counted in the in-flight budget (sources pause), and added once the deliver operator wakes it.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use super::{DeliveryQueue, Epoch, InflightBudget, Stage, pending_slot};
use crate::buffer::{ObjectBatcher, PART_BYTES, SealedObject};
use crate::config::SinkSettings;
use crate::metrics::PipelineMetrics;
use crate::partitions::{PartitionedBatchers, SealRoom, Sealing};
use crate::record::Records;

/// Open partitions' bytes one activation seals before it hands the sealed objects on: at
/// end of input (or when many partitions fall due together) a worker finishing hundreds of
/// partitions would otherwise compress all their last blocks before the first object's write and
/// fsync began; in slices, the stores of one slice run while the next is compressed.
const SEAL_SLICE_BYTES: u64 = 4 << 20;

/// Extension trait for the buffer operator.
pub trait BuildObjects<'scope> {
    /// Buffers, encodes and compresses records into objects for one sink.
    fn build_objects(
        self,
        sink: &str,
        index: usize,
        settings: Arc<SinkSettings>,
        in_parts: bool,
        metrics: Arc<PipelineMetrics>,
        queue: Rc<DeliveryQueue>,
    ) -> Stream<'scope, Epoch, Vec<SealedObject>>;
}

impl<'scope> BuildObjects<'scope> for Stream<'scope, Epoch, Vec<Records>> {
    fn build_objects(
        self,
        sink: &str,
        index: usize,
        settings: Arc<SinkSettings>,
        in_parts: bool,
        metrics: Arc<PipelineMetrics>,
        queue: Rc<DeliveryQueue>,
    ) -> Stream<'scope, Epoch, Vec<SealedObject>> {
        let scope = self.scope();
        let sink_name = sink.to_string();
        self.unary_frontier::<CapacityContainerBuilder<Vec<SealedObject>>, _, _, _>(
            Pipeline,
            &format!("BuildObjects({sink})"),
            move |initial, info| {
                drop(initial);
                let activator = scope.activator_for(info.address);
                let mut batcher = match &settings.partitioning {
                    Some(p) => Buffers::Partitioned(PartitionedBatchers::new(
                        Arc::clone(&settings),
                        p.max_open_bytes,
                        in_parts.then_some(PART_BYTES),
                    )),
                    None if in_parts => {
                        Buffers::Plain(ObjectBatcher::new(Arc::clone(&settings)).with_parts(PART_BYTES))
                    }
                    None => Buffers::Plain(ObjectBatcher::new(Arc::clone(&settings))),
                };
                let mut held: Option<Capability<Epoch>> = None;
                let mut sealed = Vec::new();
                let mut parked =
                    Parked { waiting: std::collections::VecDeque::new(), budget: metrics.inflight.get().cloned() };
                let worker_index = scope.index();
                let pending_slot = pending_slot(worker_index, Stage::Buffering);
                move |(input, frontier), output| {
                    let now = Instant::now();
                    let mut room = queue.room();
                    let mut add = |time: Epoch, records: Records, from: usize, room: &mut usize| match batcher.append(
                        &records,
                        from,
                        time,
                        now,
                        &mut sealed,
                        room,
                    ) {
                        Ok(None) => None,
                        Ok(Some(at)) => Some((time, records, at)),
                        Err(e) => {
                            tracing::error!(sink = %sink_name, error = %e, "cannot encode a batch");
                            let m = &metrics.sinks[index];
                            let lost = records.len().saturating_sub(from) as u64;
                            m.records_undelivered.fetch_add(lost, Ordering::Relaxed);
                            m.count_reason("EncodingFailed", lost);
                            None
                        }
                    };
                    while room > 0
                        && let Some((time, records, from)) = parked.take()
                    {
                        if let Some(rest) = add(time, records, from, &mut room) {
                            parked.put_back(rest);
                        }
                    }
                    input.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        if held.as_ref().is_none_or(|h| time < *h.time()) {
                            held = cap.retain_least(0);
                        }
                        for mut records in data.drain(..) {
                            // Taken in: what the sender counted for the way here is released (a
                            // parked batch is counted again, as parked).
                            if let Records::Deliver(batch) = &mut records {
                                batch.release_budget();
                            }
                            // Behind parked records, records wait their turn (a partition's
                            // records stay in order).
                            let waiting = if parked.is_empty() {
                                add(time, records, 0, &mut room)
                            } else {
                                Some((time, records, 0))
                            };
                            if let Some(rest) = waiting {
                                parked.park(rest);
                            }
                        }
                    });
                    if !parked.is_empty() {
                        queue.block(activator.clone());
                    }
                    let end_of_input = frontier.frontier().is_empty() && parked.is_empty();
                    let room = SealRoom { objects: room, bytes: SEAL_SLICE_BYTES };
                    let result = if end_of_input {
                        batcher.seal_all(&mut sealed, room)
                    } else {
                        batcher.seal_expired(now, &mut sealed, room)
                    };
                    match result {
                        Ok(Sealing::Done) => {}
                        Ok(Sealing::QueueFull) => queue.block(activator.clone()),
                        // The deliver operator runs before this one is scheduled again.
                        Ok(Sealing::SliceFull) => activator.activate(),
                        Err(e) => tracing::error!(sink = %sink_name, error = %e, "cannot finish an object"),
                    }
                    if let Some(h) = held.as_ref() {
                        // One session (one container) per epoch, not per object: a partitioned
                        // sink may seal thousands of objects in one step. The sort is stable, so
                        // the parts of an object keep their order.
                        let floor = *h.time();
                        sealed.sort_by_key(|o| o.epoch.max(floor));
                        let mut objects = sealed.drain(..).peekable();
                        while let Some(first) = objects.next() {
                            let epoch = first.epoch.max(floor);
                            let at = h.delayed(&epoch);
                            let mut session = output.session(&at);
                            session.give(first);
                            while let Some(next) = objects.next_if(|o| o.epoch.max(floor) == epoch) {
                                session.give(next);
                            }
                        }
                    }
                    let oldest_parked = parked.oldest_epoch();
                    match (crate::partitions::min(batcher.oldest_epoch(), oldest_parked), held.as_mut()) {
                        (None, _) => held = None,
                        (Some(oldest), Some(h)) if oldest > *h.time() => h.downgrade(&oldest),
                        _ => {}
                    }
                    let oldest_arrival_ms = batcher.oldest_arrival_ms();
                    metrics.sinks[index].pending.set(pending_slot, oldest_arrival_ms);
                    metrics.sinks[index].set_buffered(worker_index, batcher.buffered_bytes(), oldest_arrival_ms);
                    metrics.sinks[index].count_conversions(batcher.take_conversions());
                    if let Buffers::Partitioned(p) = &mut batcher {
                        let m = &metrics.sinks[index];
                        m.set_open_partitions(worker_index, p.open_partitions() as u64);
                        let (early, written) = p.take_counts();
                        m.partitions_sealed_early.fetch_add(early, Ordering::Relaxed);
                        if !written.is_empty()
                            && let Ok(mut records) = m.partition_records.lock()
                        {
                            for (keys, (n, bytes)) in written {
                                records.add(&keys, n, bytes);
                            }
                        }
                    }
                    // Due objects left open wait for the deliver operator's wake, not a timer.
                    if let Some(deadline) = batcher.next_deadline()
                        && !queue.is_blocked()
                    {
                        activator.activate_after(deadline.saturating_duration_since(now));
                    }
                }
            },
        )
    }
}

/// Records a partitioned sink could not add yet (its budget and its delivery queue were both
/// full), oldest first, each with the record to resume from. Their bytes are counted in the
/// in-flight budget while they wait here, so sources pause.
struct Parked {
    waiting: std::collections::VecDeque<(Epoch, Records, usize)>,
    budget: Option<Arc<InflightBudget>>,
}

impl Parked {
    /// Parks `rest` behind what waits.
    fn park(&mut self, rest: (Epoch, Records, usize)) {
        self.count(&rest, true);
        self.waiting.push_back(rest);
    }

    /// Puts back in front what an append stopped in again.
    fn put_back(&mut self, rest: (Epoch, Records, usize)) {
        self.count(&rest, true);
        self.waiting.push_front(rest);
    }

    /// The oldest parked records, no longer counted.
    fn take(&mut self) -> Option<(Epoch, Records, usize)> {
        let first = self.waiting.pop_front()?;
        self.count(&first, false);
        Some(first)
    }

    fn count(&self, (_, records, _): &(Epoch, Records, usize), held: bool) {
        if let Some(budget) = &self.budget {
            let bytes = records.byte_len() as u64;
            if held { budget.acquire(bytes) } else { budget.release(bytes) }
        }
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    fn oldest_epoch(&self) -> Option<Epoch> {
        self.waiting.iter().map(|(epoch, _, _)| *epoch).min()
    }
}

/// A sink's buffers on one worker: one batcher, or one per open partition.
enum Buffers {
    Plain(ObjectBatcher),
    Partitioned(PartitionedBatchers),
}

impl Buffers {
    /// Adds `records` from record `from` on; says where it stopped if a partitioned sink's budget
    /// and `room` were both spent ([`PartitionedBatchers::append`]).
    fn append(
        &mut self,
        records: &Records,
        from: usize,
        epoch: u64,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
        room: &mut usize,
    ) -> std::io::Result<Option<usize>> {
        match self {
            Buffers::Partitioned(p) => p.append(records, from, epoch, now, sealed, room),
            Buffers::Plain(b) => b.append_records(records, epoch, now, sealed).map(|()| None),
        }
    }

    /// Seals everything, or (partitioned) what fits in `room`.
    fn seal_all(&mut self, sealed: &mut Vec<SealedObject>, room: SealRoom) -> std::io::Result<Sealing> {
        match self {
            Buffers::Plain(b) => b.seal_all(sealed).map(|()| Sealing::Done),
            Buffers::Partitioned(p) => p.seal_all(sealed, room),
        }
    }

    /// Seals what is due, or (partitioned) what of it fits in `room`.
    fn seal_expired(
        &mut self,
        now: Instant,
        sealed: &mut Vec<SealedObject>,
        room: SealRoom,
    ) -> std::io::Result<Sealing> {
        match self {
            Buffers::Plain(b) => b.seal_expired(now, sealed).map(|()| Sealing::Done),
            Buffers::Partitioned(p) => p.seal_expired(now, sealed, room),
        }
    }

    fn take_conversions(&self) -> crate::buffer::Conversions {
        match self {
            Buffers::Plain(b) => b.take_conversions(),
            Buffers::Partitioned(p) => p.take_conversions(),
        }
    }

    fn oldest_epoch(&self) -> Option<u64> {
        match self {
            Buffers::Plain(b) => b.oldest_epoch(),
            Buffers::Partitioned(p) => p.oldest_epoch(),
        }
    }

    fn buffered_bytes(&self) -> u64 {
        match self {
            Buffers::Plain(b) => b.buffered_bytes(),
            Buffers::Partitioned(p) => p.buffered_bytes(),
        }
    }

    fn oldest_arrival_ms(&self) -> Option<i64> {
        match self {
            Buffers::Plain(b) => b.oldest_arrival_ms(),
            Buffers::Partitioned(p) => p.oldest_arrival_ms(),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match self {
            Buffers::Plain(b) => b.next_deadline(),
            Buffers::Partitioned(p) => p.next_deadline(),
        }
    }
}
