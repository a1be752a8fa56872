//! The hand-over between a listener and the timely workers: request batches accepted by the API wait
//! here until a worker's reader takes them into the dataflow.
//!
//! Guarantees: the queue never holds more than its byte limit (a push that would pass it is refused,
//! which the API turns into throttling); every accepted batch is taken exactly once; once closed, no
//! push is accepted, and readers see [`Popped::Closed`] only after every accepted batch was taken.

use std::collections::VecDeque;
use std::sync::Mutex;

use sluice_engine::record::RecordBatch;

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Accepting it would pass the byte limit: throttle the producer.
    Full,
    /// The run is stopping.
    Closed,
}

/// What a reader got.
#[derive(Debug)]
pub enum Popped {
    /// The oldest accepted batch, with its write-ahead-log sequence number when logged.
    Batch(RecordBatch, Option<u64>),
    /// Nothing now; more may come.
    Empty,
    /// Closed and drained: nothing will come again.
    Closed,
}

/// Room taken in the queue for a batch that is being logged.
#[derive(Debug)]
#[must_use = "push the batch with it or cancel it"]
pub struct Reservation(usize);

#[derive(Debug, Default)]
struct State {
    batches: VecDeque<(RecordBatch, Option<u64>)>,
    bytes: usize,
    closed: bool,
}

/// A byte-bounded multi-producer, multi-consumer queue of record batches.
#[derive(Debug)]
pub struct IngestQueue {
    state: Mutex<State>,
    limit: usize,
}

impl IngestQueue {
    /// A queue holding at most `limit` bytes of records.
    pub fn new(limit: usize) -> Self {
        IngestQueue { state: Mutex::new(State::default()), limit }
    }

    /// The byte limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes of records waiting.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().map_or(0, |s| s.bytes)
    }

    /// Bytes that can still be accepted now.
    pub fn room(&self) -> usize {
        self.state.lock().map_or(0, |s| if s.closed { 0 } else { self.limit.saturating_sub(s.bytes) })
    }

    /// Takes room for `bytes` (so a batch being logged cannot be refused afterwards for lack of it).
    pub fn reserve(&self, bytes: usize) -> Result<Reservation, Refused> {
        let Ok(mut state) = self.state.lock() else { return Err(Refused::Closed) };
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.bytes + bytes > self.limit {
            return Err(Refused::Full);
        }
        state.bytes += bytes;
        Ok(Reservation(bytes))
    }

    /// Gives reserved room back.
    pub fn cancel(&self, reservation: Reservation) {
        if let Ok(mut state) = self.state.lock() {
            state.bytes -= reservation.0;
        }
    }

    /// Queues `batch` (logged as `seq`) in room reserved for it; refused only when closed.
    pub fn push_reserved(&self, reservation: Reservation, batch: RecordBatch, seq: Option<u64>) -> Result<(), Refused> {
        let Ok(mut state) = self.state.lock() else { return Err(Refused::Closed) };
        if state.closed {
            state.bytes -= reservation.0;
            return Err(Refused::Closed);
        }
        // The reservation's size stands for the batch until it is popped.
        state.bytes = state.bytes - reservation.0 + batch.byte_len();
        state.batches.push_back((batch, seq));
        Ok(())
    }

    /// Queues a batch replayed from the log whatever the limit (one larger than the whole limit
    /// must still go through); nothing once closed (it stays in the log for the next start).
    pub fn push_replayed(&self, batch: RecordBatch, seq: u64) {
        if let Ok(mut state) = self.state.lock()
            && !state.closed
        {
            state.bytes += batch.byte_len();
            state.batches.push_back((batch, Some(seq)));
        }
    }

    /// Takes the oldest batch.
    pub fn pop(&self) -> Popped {
        let Ok(mut state) = self.state.lock() else { return Popped::Closed };
        match state.batches.pop_front() {
            Some((batch, seq)) => {
                state.bytes = state.bytes.saturating_sub(batch.byte_len());
                Popped::Batch(batch, seq)
            }
            None if state.closed => Popped::Closed,
            None => Popped::Empty,
        }
    }

    /// Refuses every later push; readers drain what was accepted, then see [`Popped::Closed`].
    pub fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.closed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: &[&[u8]]) -> RecordBatch {
        let mut b = RecordBatch::with_capacity(0, 64);
        records.iter().for_each(|r| b.push(r));
        b
    }

    #[test]
    fn refuses_past_the_limit_and_drains_before_reporting_closed() {
        let q = IngestQueue::new(10);
        let push = |b: RecordBatch| q.reserve(b.byte_len()).and_then(|r| q.push_reserved(r, b, None));
        assert_eq!(push(batch(&[b"12345", b"678"])), Ok(()));
        assert_eq!(push(batch(&[b"abc"])), Err(Refused::Full));
        assert_eq!(q.room(), 2);
        q.close();
        assert_eq!(push(batch(&[b"a"])), Err(Refused::Closed));
        assert!(matches!(q.pop(), Popped::Batch(b, None) if b.len() == 2));
        assert!(matches!(q.pop(), Popped::Closed));
        assert_eq!(q.queued_bytes(), 0);
    }
}
