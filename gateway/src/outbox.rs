//! A connection's outbound queue: frames waiting to be written, bounded.
//! Single-threaded (it lives on the connection's core), so plain cells; it
//! holds no allocation while empty, which matters for idle connections.
//! Closing it wakes both the writer (flush, then close) and the reader
//! (stop reading).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::task::{Poll, Waker};

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
    reader: Cell<Option<Waker>>,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Outbox {
            frames: RefCell::new(VecDeque::new()),
            capacity,
            closing: Cell::new(false),
            writer: Cell::new(None),
            reader: Cell::new(None),
        }
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
    /// flushes what is queued and shuts the socket; the reader stops.
    pub fn close_with(&self, last: Option<Bytes>) {
        if self.closing.replace(true) {
            return;
        }
        if let Some(frame) = last {
            self.frames.borrow_mut().push_back(frame);
        }
        wake(&self.writer);
        wake(&self.reader);
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

    /// Resolves once the outbox is closing.
    pub fn closed(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.closing.get() {
                Poll::Ready(())
            } else {
                self.reader.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
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
        futures::executor::block_on(outbox.closed());
    }
}
