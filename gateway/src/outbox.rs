//! A connection's shared handle: its bounded outbound queue (frames waiting
//! to be written) and the timestamps the core's sweeper checks for login
//! deadlines and idle timeouts. Single-threaded (it lives on the
//! connection's core), so plain cells; it holds no allocation while empty,
//! which matters for idle connections. Closing it wakes the writer, which
//! flushes, then shuts the socket down, which ends the reader's read.
//!
//! It also carries a connection's parking: the sweeper asks an idle one to
//! park, its task ends once both halves are at rest, and while it is parked
//! a frame or a close asks the core's parking lot for it back.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::Bytes;

use crate::parking::Unparks;

/// The queue is at its bound: the peer reads too slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Who is woken when a frame or a close arrives.
#[derive(Default)]
enum Waiter {
    #[default]
    Nobody,
    /// The connection's task, waiting for frames.
    Task(Waker),
    /// The connection is parked: the lot is asked for it back.
    Parked { unparks: Rc<Unparks>, conn_id: u64 },
}

/// Where a connection is in its parking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parking {
    /// Served by its task.
    Active,
    /// Asked to park: its task ends once both halves are at rest.
    Asked,
    /// Parked in its core's lot.
    Parked,
}

/// What the writer does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Write the frames now in the batch.
    Write,
    /// Closed and drained: shut the socket down.
    Close,
    /// Nothing to write and asked to park: stop without closing.
    Park,
}

/// Frames for one connection.
pub struct Outbox {
    frames: RefCell<VecDeque<Bytes>>,
    capacity: usize,
    closing: Cell<bool>,
    waiter: Cell<Waiter>,
    opened_at: Instant,
    last_frame_at: Cell<Instant>,
    logged_in: Cell<bool>,
    /// Only plain TCP connections park (a TLS or WebSocket session's state
    /// would have to be kept anyway).
    parkable: bool,
    parking: Cell<Parking>,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` frames; `parkable` when
    /// its connection can be parked.
    pub fn new(capacity: usize, parkable: bool) -> Self {
        Outbox {
            frames: RefCell::new(VecDeque::new()),
            capacity,
            closing: Cell::new(false),
            waiter: Cell::new(Waiter::Nobody),
            opened_at: Instant::now(),
            last_frame_at: Cell::new(Instant::now()),
            logged_in: Cell::new(false),
            parkable,
            parking: Cell::new(Parking::Active),
        }
    }

    /// Asks an active, parkable connection to park (its task is woken to
    /// notice); `false` if it cannot or is not active.
    pub fn ask_to_park(&self) -> bool {
        if !self.parkable || self.closing.get() || self.parking.get() != Parking::Active {
            return false;
        }
        self.parking.set(Parking::Asked);
        self.wake();
        true
    }

    /// Where the connection is in its parking.
    pub fn parking(&self) -> Parking {
        self.parking.get()
    }

    /// Whether an asked connection may park now: nothing queued, not
    /// closing.
    pub fn may_park(&self) -> bool {
        self.parking.get() == Parking::Asked
            && !self.closing.get()
            && self.frames.borrow().is_empty()
    }

    /// The connection is parked: a frame or a close now asks `unparks`
    /// for it back.
    pub fn parked(&self, unparks: Rc<Unparks>, conn_id: u64) {
        self.parking.set(Parking::Parked);
        // A queue that held a burst keeps its capacity; a parked
        // connection should hold nothing.
        self.frames.borrow_mut().shrink_to(0);
        self.waiter.set(Waiter::Parked { unparks, conn_id });
    }

    /// The connection is served by a task again.
    pub fn resumed(&self) {
        self.parking.set(Parking::Active);
        self.waiter.set(Waiter::Nobody);
    }

    /// Records that a whole frame arrived (the idle clock restarts).
    pub fn touch(&self) {
        self.last_frame_at.set(Instant::now());
    }

    /// Records that the connection logged in (the idle rule applies now,
    /// not the login deadline).
    pub fn set_logged_in(&self) {
        self.logged_in.set(true);
    }

    /// Whether the connection logged in.
    pub fn is_logged_in(&self) -> bool {
        self.logged_in.get()
    }

    /// When the connection was accepted.
    pub fn opened_at(&self) -> Instant {
        self.opened_at
    }

    /// When its last whole frame arrived.
    pub fn last_frame_at(&self) -> Instant {
        self.last_frame_at.get()
    }

    /// Queues a frame. Past the bound the frame is refused; the caller
    /// closes the connection (the client resyncs by seq).
    pub fn push(&self, frame: Bytes) -> Result<(), Overflow> {
        if self.closing.get() {
            return Ok(());
        }
        let mut frames = self.frames.borrow_mut();
        if frames.len() >= self.capacity {
            return Err(Overflow);
        }
        frames.push_back(frame);
        drop(frames);
        self.wake();
        Ok(())
    }

    /// Queues a last frame (even past the bound) and closes: the writer
    /// flushes what is queued and shuts the socket down, ending the read.
    pub fn close_with(&self, last: Option<Bytes>) {
        if self.closing.replace(true) {
            return;
        }
        if let Some(frame) = last {
            self.frames.borrow_mut().push_back(frame);
        }
        self.wake();
    }

    /// Whether the connection is closing.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Moves every queued frame into `batch`, waiting while there are none
    /// and the connection is neither closing nor asked to park.
    pub async fn take_batch(&self, batch: &mut Vec<Bytes>) -> Next {
        std::future::poll_fn(|cx| {
            let mut frames = self.frames.borrow_mut();
            if !frames.is_empty() {
                batch.extend(frames.drain(..));
                if frames.capacity() > 64 {
                    // Give back a burst's memory once it is written out.
                    frames.shrink_to(0);
                }
                return Poll::Ready(Next::Write);
            }
            if self.closing.get() {
                return Poll::Ready(Next::Close);
            }
            if self.parking.get() == Parking::Asked {
                // The reader half shares this task: a wake makes sure it
                // looks at the request too, whatever it waits on.
                cx.waker().wake_by_ref();
                return Poll::Ready(Next::Park);
            }
            self.waiter.set(Waiter::Task(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    fn wake(&self) {
        match self.waiter.take() {
            Waiter::Nobody => {}
            Waiter::Task(waker) => waker.wake(),
            Waiter::Parked { unparks, conn_id } => unparks.unpark(conn_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn bounded_then_closed() {
        let outbox = Outbox::new(2, false);
        assert!(outbox.push(Bytes::from_static(b"a")).is_ok());
        assert!(outbox.push(Bytes::from_static(b"b")).is_ok());
        assert_eq!(outbox.push(Bytes::from_static(b"c")), Err(Overflow));
        outbox.close_with(Some(Bytes::from_static(b"bye")));
        let mut batch = Vec::new();
        assert_eq!(block_on(outbox.take_batch(&mut batch)), Next::Write);
        assert_eq!(batch.len(), 3);
        assert_eq!(block_on(outbox.take_batch(&mut batch)), Next::Close);
        assert!(outbox.is_closing());
    }

    #[test]
    fn only_a_parkable_connection_parks_and_only_when_at_rest() {
        let fixed = Outbox::new(4, false);
        assert!(!fixed.ask_to_park());

        let outbox = Outbox::new(4, true);
        assert!(outbox.push(Bytes::from_static(b"reply")).is_ok());
        assert!(outbox.ask_to_park());
        assert!(!outbox.ask_to_park(), "asked once");
        assert!(!outbox.may_park(), "a frame is queued");
        let mut batch = Vec::new();
        // Queued frames are written before the writer stops to park.
        assert_eq!(block_on(outbox.take_batch(&mut batch)), Next::Write);
        assert_eq!(block_on(outbox.take_batch(&mut batch)), Next::Park);
        assert!(outbox.may_park());
    }

    #[test]
    fn a_frame_or_a_close_asks_for_a_parked_connection() {
        let unparks = Rc::new(Unparks::default());
        let outbox = Outbox::new(4, true);
        assert!(outbox.ask_to_park());
        outbox.parked(unparks.clone(), 42);
        assert_eq!(outbox.parking(), Parking::Parked);
        assert!(!outbox.ask_to_park());
        assert!(outbox.push(Bytes::from_static(b"push")).is_ok());
        // Asked once: the lot resumes it, and the frame waits for its task.
        assert!(outbox.push(Bytes::from_static(b"more")).is_ok());
        assert_eq!(unparks.taken(), vec![42]);
        outbox.resumed();
        assert_eq!(outbox.parking(), Parking::Active);

        assert!(outbox.ask_to_park());
        let mut batch = Vec::new();
        assert_eq!(block_on(outbox.take_batch(&mut batch)), Next::Write);
        assert_eq!(block_on(outbox.take_batch(&mut batch)), Next::Park);
        outbox.parked(unparks.clone(), 42);
        outbox.close_with(None);
        assert_eq!(unparks.taken(), vec![42]);
        assert!(!outbox.may_park(), "closing");
    }
}
