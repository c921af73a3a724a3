//! A connection's shared handle: its bounded outbound queue (frames waiting
//! to be written) and the timestamps the core's sweeper checks for login
//! deadlines and idle timeouts. Single-threaded (it lives on the
//! connection's core), so plain cells; it holds no allocation while empty,
//! which matters for idle connections. Closing it wakes the writer, which
//! flushes, then shuts the socket down, which ends the reader's read.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::Bytes;

/// The queue is at its bound: the peer reads too slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Frames for one connection.
pub struct Outbox {
    frames: RefCell<VecDeque<Bytes>>,
    capacity: usize,
    closing: Cell<bool>,
    writer: Cell<Option<Waker>>,
    opened_at: Instant,
    last_frame_at: Cell<Instant>,
    logged_in: Cell<bool>,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Outbox {
            frames: RefCell::new(VecDeque::new()),
            capacity,
            closing: Cell::new(false),
            writer: Cell::new(None),
            opened_at: Instant::now(),
            last_frame_at: Cell::new(Instant::now()),
            logged_in: Cell::new(false),
        }
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
        wake(&self.writer);
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
        wake(&self.writer);
    }

    /// Whether the connection is closing.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Moves every queued frame into `batch`, waiting while there are none.
    /// `false` once closing and drained: the writer should stop.
    pub async fn take_batch(&self, batch: &mut Vec<Bytes>) -> bool {
        std::future::poll_fn(|cx| {
            let mut frames = self.frames.borrow_mut();
            if !frames.is_empty() {
                batch.extend(frames.drain(..));
                if frames.capacity() > 64 {
                    // Give back a burst's memory once it is written out.
                    frames.shrink_to(0);
                }
                return Poll::Ready(true);
            }
            if self.closing.get() {
                return Poll::Ready(false);
            }
            self.writer.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }
}

fn wake(slot: &Cell<Option<Waker>>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_then_closed() {
        let outbox = Outbox::new(2);
        assert!(outbox.push(Bytes::from_static(b"a")).is_ok());
        assert!(outbox.push(Bytes::from_static(b"b")).is_ok());
        assert_eq!(outbox.push(Bytes::from_static(b"c")), Err(Overflow));
        outbox.close_with(Some(Bytes::from_static(b"bye")));
        let mut batch = Vec::new();
        assert!(futures::executor::block_on(outbox.take_batch(&mut batch)));
        assert_eq!(batch.len(), 3);
        assert!(!futures::executor::block_on(outbox.take_batch(&mut batch)));
        assert!(outbox.is_closing());
    }
}
