//! A connection's shared handle: its bounded outbound queue (frames waiting
//! to be written) and the timestamps the core's sweeper checks for login
//! deadlines and idle timeouts. Single-threaded (it lives on the
//! connection's core), so plain cells; it holds no allocation while empty,
//! which matters for idle connections. Closing it wakes the writer, which
//! flushes, then shuts the socket down, which ends the reader's read.
//!
//! While the writer waits for frames with nothing queued, a frame pushed
//! to a plain TCP connection is written to its socket at once by whoever
//! pushes it ([`Outbox::push_now`]): the usual push (a delivery, a send's
//! answer) then costs one `send` and no turn of the connection's task.
//!
//! It also carries a connection's parking: the sweeper asks an idle one to
//! park, its task ends once both halves are at rest, and while it is parked
//! a frame or a close asks the core's parking lot for it back.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::OnceLock;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::parking::Unparks;

/// The queue is at its bound: the peer reads too slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Where a pushed frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Written to the socket whole.
    Written,
    /// Queued (whole or what the socket did not take) for the writer.
    Queued,
}

/// No socket to write to directly.
const NO_FD: RawFd = -1;

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

/// Where a connection is in its closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// Writing out what is queued, the reason for the close last.
    WritingOut,
    /// That took too long: the writer stops writing ([`Outbox::give_up`]).
    GivenUp,
}

/// Frames for one connection.
///
/// Kept to 88 bytes (hence the `u16` bounds, which the config checks), so
/// that with its `Rc` counts it is a 104-byte allocation in jemalloc's
/// 112-byte class: every connection holds one for as long as it lives,
/// parked or not, and in the 128-byte size class it shared slabs with the
/// queue and batch buffers a connection frees when it parks, which left
/// those slabs 30% full (BENCHMARKS.md, "Parked connections").
pub struct Outbox {
    frames: RefCell<VecDeque<Bytes>>,
    waiter: Cell<Waiter>,
    /// What the sweeper measures from, in [`clock_ms`]: the accept until
    /// login (the login deadline), then the last whole frame (idling),
    /// then the close (giving up on it).
    since_ms: Cell<u64>,
    capacity: u16,
    /// Sends of this connection not answered yet (see [`Outbox::begin_send`]).
    sends_in_flight: Cell<u16>,
    closing: Cell<Closing>,
    logged_in: Cell<bool>,
    /// Only plain TCP connections park (a TLS or WebSocket session's state
    /// would have to be kept anyway).
    parkable: bool,
    parking: Cell<Parking>,
    /// The socket, while the writer waits for frames with nothing queued
    /// and nothing half-written (plain TCP only; [`NO_FD`] otherwise): a
    /// frame pushed then is written at once ([`Outbox::push_now`]).
    idle_writer_fd: Cell<RawFd>,
    /// The reader waits for a send's answer ([`Outbox::begin_send`] at its
    /// limit, [`Outbox::all_sends_answered`]): only then does an answer
    /// wake the task.
    answers_awaited: Cell<bool>,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` frames; `parkable` when
    /// its connection can be parked.
    pub fn new(capacity: usize, parkable: bool) -> Self {
        Outbox {
            frames: RefCell::new(VecDeque::new()),
            waiter: Cell::new(Waiter::Nobody),
            since_ms: Cell::new(clock_ms()),
            capacity: u16::try_from(capacity).unwrap_or(u16::MAX),
            sends_in_flight: Cell::new(0),
            closing: Cell::new(Closing::Open),
            logged_in: Cell::new(false),
            parkable,
            parking: Cell::new(Parking::Active),
            idle_writer_fd: Cell::new(NO_FD),
            answers_awaited: Cell::new(false),
        }
    }

    /// Asks an active, parkable connection to park (its task is woken to
    /// notice); `false` if it cannot or is not active.
    pub fn ask_to_park(&self) -> bool {
        if !self.parkable || self.is_closing() || self.parking.get() != Parking::Active {
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
            && !self.is_closing()
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

    /// Records that a whole frame arrived: a logged-in connection's idle
    /// clock restarts (before login the deadline runs from the accept).
    /// `now`: the frame's arrival, read once for everything that asks.
    pub fn touch(&self, now: Instant) {
        if self.logged_in.get() && !self.is_closing() {
            self.since_ms.set(clock_ms_at(now));
        }
    }

    /// Records that the connection logged in (the idle rule applies now,
    /// not the login deadline).
    pub fn set_logged_in(&self) {
        self.logged_in.set(true);
        self.since_ms.set(clock_ms());
    }

    /// Whether the connection logged in.
    pub fn is_logged_in(&self) -> bool {
        self.logged_in.get()
    }

    /// How long it has been, at `now_ms` on [`clock_ms`], since the
    /// connection was accepted (not logged in yet), since its last whole
    /// frame (logged in), or since it began to close.
    pub fn quiet_for(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.since_ms.get()))
    }

    /// Queues a frame. Past the bound the frame is refused; the caller
    /// closes the connection (the client resyncs by seq).
    pub fn push(&self, frame: Bytes) -> Result<(), Overflow> {
        if self.is_closing() {
            return Ok(());
        }
        let mut frames = self.frames.borrow_mut();
        if frames.len() >= self.capacity as usize {
            return Err(Overflow);
        }
        frames.push_back(frame);
        drop(frames);
        // A frame queued goes before any pushed after it: those queue too,
        // until the writer has written it and waits again.
        self.idle_writer_fd.set(NO_FD);
        self.wake();
        Ok(())
    }

    /// Pushes a frame, written to the socket at once if the writer waits
    /// idle ([`Outbox::take_batch`] with a socket): no wake-up, no turn of
    /// the connection's task. What the socket does not take (it is full,
    /// or failed) is queued for the writer, which waits for room or meets
    /// the error and closes, as it does for any frame.
    pub fn push_now(&self, frame: Bytes) -> Result<Pushed, Overflow> {
        let fd = self.idle_writer_fd.get();
        if fd == NO_FD || self.is_closing() || self.parking.get() != Parking::Active {
            return self.push(frame).map(|()| Pushed::Queued);
        }
        let flags =
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
        let sent = nix::sys::socket::send(fd, &frame, flags).unwrap_or(0);
        if sent == frame.len() {
            return Ok(Pushed::Written);
        }
        self.push(frame.slice(sent..)).map(|()| Pushed::Queued)
    }

    /// Queues a last frame (even past the bound) and closes: the reader
    /// stops at once, the writer writes what is queued, then the socket is
    /// closed so that the peer can read it all (`connection.rs`,
    /// `close_gracefully`).
    pub fn close_with(&self, last: Option<Bytes>) {
        if self.closing.get() != Closing::Open {
            return;
        }
        self.closing.set(Closing::WritingOut);
        // From here the sweeper's clock times the close (see `give_up`).
        self.since_ms.set(clock_ms());
        if let Some(frame) = last {
            self.frames.borrow_mut().push_back(frame);
        }
        self.wake();
    }

    /// Whether the connection is closing.
    pub fn is_closing(&self) -> bool {
        self.closing.get() != Closing::Open
    }

    /// Stops writing to a connection that has been closing for too long:
    /// its peer reads nothing, so what is queued can never be written,
    /// and a writer waiting on the full socket would keep the connection
    /// (and the socket's buffers) for as long as the peer stays silent.
    pub fn give_up(&self) {
        if self.closing.get() == Closing::WritingOut {
            self.closing.set(Closing::GivenUp);
            self.wake();
        }
    }

    /// Whether the close was given up ([`Outbox::give_up`]).
    pub fn is_given_up(&self) -> bool {
        self.closing.get() == Closing::GivenUp
    }

    /// Moves every queued frame into `batch`, waiting while there are none
    /// and the connection is neither closing nor asked to park. While it
    /// waits, frames pushed with [`Outbox::push_now`] are written to
    /// `socket` (if given) directly; the caller must not write to it
    /// meanwhile. However this future ends (answered or dropped), nothing
    /// is written to the socket behind its back after it.
    pub async fn take_batch(&self, batch: &mut Vec<Bytes>, socket: Option<RawFd>) -> Next {
        let _waiting = IdleWriter(self);
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
            if self.is_closing() {
                return Poll::Ready(Next::Close);
            }
            if self.parking.get() == Parking::Asked {
                // The reader half shares this task: a wake makes sure it
                // looks at the request too, whatever it waits on.
                cx.waker().wake_by_ref();
                return Poll::Ready(Next::Park);
            }
            // The task is polled for each frame it reads too: its waker
            // is kept, not cloned again, when it is the same.
            let waiter = match self.waiter.take() {
                Waiter::Task(waker) if waker.will_wake(cx.waker()) => Waiter::Task(waker),
                _ => Waiter::Task(cx.waker().clone()),
            };
            self.waiter.set(waiter);
            self.idle_writer_fd.set(socket.unwrap_or(NO_FD));
            Poll::Pending
        })
        .await
    }

    /// Counts a send as in flight, first waiting while `limit` are. The
    /// answer comes back through [`Outbox::send_answered`] on this core,
    /// from wherever the send was sequenced, so no task waits for it.
    pub async fn begin_send(&self, limit: u16) {
        std::future::poll_fn(|cx| {
            if self.try_begin_send(limit) {
                return Poll::Ready(());
            }
            self.answers_awaited.set(true);
            self.register(cx);
            Poll::Pending
        })
        .await
    }

    /// Counts one more send in flight if `limit` leaves room now;
    /// `false`: none was counted ([`Outbox::begin_send`] waits for room).
    pub fn try_begin_send(&self, limit: u16) -> bool {
        let in_flight = self.sends_in_flight.get();
        let room = in_flight < limit;
        if room {
            self.sends_in_flight.set(in_flight + 1);
        }
        room
    }

    /// A send's answer is queued or written (or the send ended without
    /// one). The task is woken only if its reader waits for answers: a
    /// queued answer has woken it already, a written one needs nothing.
    pub fn send_answered(&self) {
        let in_flight = self.sends_in_flight.get();
        self.sends_in_flight.set(in_flight.saturating_sub(1));
        if self.answers_awaited.replace(false) {
            self.wake();
        }
    }

    /// Waits until every send in flight is answered.
    pub async fn all_sends_answered(&self) {
        std::future::poll_fn(|cx| {
            if self.sends_in_flight.get() == 0 {
                return Poll::Ready(());
            }
            self.answers_awaited.set(true);
            self.register(cx);
            Poll::Pending
        })
        .await
    }

    /// Leaves the task's waker here, so that news on this outbox (a frame,
    /// an answer, a close, giving up) wakes it. The waiter slot is the
    /// writer's, but the reader waiting on answers is the other half of
    /// the same task: one waker serves both, and whichever half registered
    /// last is woken with the other.
    pub fn register(&self, cx: &mut std::task::Context<'_>) {
        match self.waiter.take() {
            parked @ Waiter::Parked { .. } => self.waiter.set(parked),
            _ => self.waiter.set(Waiter::Task(cx.waker().clone())),
        }
    }

    fn wake(&self) {
        match self.waiter.take() {
            Waiter::Nobody => {}
            Waiter::Task(waker) => waker.wake(),
            Waiter::Parked { unparks, conn_id } => unparks.unpark(conn_id),
        }
    }
}

/// A writer waiting in [`Outbox::take_batch`]: when it stops waiting, its
/// socket is no longer written to directly.
struct IdleWriter<'a>(&'a Outbox);

impl Drop for IdleWriter<'_> {
    fn drop(&mut self) {
        self.0.idle_writer_fd.set(NO_FD);
    }
}

/// How long a closing connection has to write out what it queued (then
/// the close is given up, [`Outbox::give_up`]), and again, once written,
/// to let its peer read it before the socket is closed regardless
/// (`connection.rs`, `close_gracefully`).
pub const LINGER: Duration = Duration::from_secs(2);

/// Milliseconds on the node's monotonic clock (from its first reading):
/// eight bytes per connection where an `Instant` takes sixteen.
pub fn clock_ms() -> u64 {
    clock_ms_at(Instant::now())
}

/// [`clock_ms`] at `now`, read by the caller.
pub fn clock_ms_at(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = now.saturating_duration_since(*EPOCH.get_or_init(Instant::now));
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn the_login_deadline_runs_from_the_accept_and_the_idle_clock_from_the_last_frame() {
        let outbox = Outbox::new(2, false);
        let accepted = outbox.since_ms.get();
        let later = accepted + 5_000;
        outbox.since_ms.set(accepted);
        outbox.touch(Instant::now());
        assert_eq!(
            outbox.since_ms.get(),
            accepted,
            "a frame before login does not restart the deadline"
        );
        assert_eq!(outbox.quiet_for(later), Duration::from_secs(5));
        outbox.set_logged_in();
        let logged_in = outbox.since_ms.get();
        assert!(logged_in >= accepted);
        assert_eq!(outbox.quiet_for(logged_in + 3_000), Duration::from_secs(3));
        assert_eq!(outbox.quiet_for(0), Duration::ZERO, "never negative");
    }

    #[test]
    fn bounded_then_closed() {
        let outbox = Outbox::new(2, false);
        assert!(outbox.push(Bytes::from_static(b"a")).is_ok());
        assert!(outbox.push(Bytes::from_static(b"b")).is_ok());
        assert_eq!(outbox.push(Bytes::from_static(b"c")), Err(Overflow));
        outbox.close_with(Some(Bytes::from_static(b"bye")));
        let mut batch = Vec::new();
        assert_eq!(block_on(outbox.take_batch(&mut batch, None)), Next::Write);
        assert_eq!(batch.len(), 3);
        assert_eq!(block_on(outbox.take_batch(&mut batch, None)), Next::Close);
        assert!(outbox.is_closing());
    }

    #[test]
    fn a_close_is_timed_from_its_start_and_given_up_only_once_begun() {
        let outbox = Outbox::new(2, false);
        outbox.set_logged_in();
        outbox.give_up();
        assert!(!outbox.is_given_up(), "an open connection is not given up");
        outbox.since_ms.set(u64::MAX);
        outbox.close_with(None);
        let closed_at = outbox.since_ms.get();
        assert!(closed_at <= clock_ms(), "the clock restarts at the close");
        outbox.touch(Instant::now());
        assert_eq!(outbox.since_ms.get(), closed_at, "a late frame does not");
        outbox.give_up();
        assert!(outbox.is_given_up() && outbox.is_closing());
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
        assert_eq!(block_on(outbox.take_batch(&mut batch, None)), Next::Write);
        assert_eq!(block_on(outbox.take_batch(&mut batch, None)), Next::Park);
        assert!(outbox.may_park());
    }

    #[test]
    fn sends_in_flight_are_bounded_and_waited_for() {
        use futures::FutureExt;
        let outbox = Outbox::new(4, true);
        assert!(
            outbox.all_sends_answered().now_or_never().is_some(),
            "none in flight"
        );
        block_on(outbox.begin_send(2));
        block_on(outbox.begin_send(2));
        assert!(
            outbox.begin_send(2).now_or_never().is_none(),
            "a third waits at a limit of two"
        );
        assert!(outbox.all_sends_answered().now_or_never().is_none());
        outbox.send_answered();
        assert!(outbox.begin_send(2).now_or_never().is_some(), "room again");
        outbox.send_answered();
        outbox.send_answered();
        assert!(outbox.all_sends_answered().now_or_never().is_some());
        outbox.send_answered();
        assert!(
            outbox.all_sends_answered().now_or_never().is_some(),
            "an extra answer does not wrap the count"
        );
    }

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn counting_waker() -> (std::sync::Arc<Count>, Waker) {
        let count = std::sync::Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    fn wakes(count: &Count) -> usize {
        count.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the peer of a socket pair can read now.
    fn readable(peer: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        use std::io::Read;
        let mut read = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = peer.read(&mut buf) {
            if n == 0 {
                break;
            }
            read.extend_from_slice(&buf[..n]);
        }
        read
    }

    /// A socket pair whose peer reads without blocking.
    fn socket_pair() -> (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ) {
        let (socket, peer) = std::os::unix::net::UnixStream::pair().expect("a pair");
        peer.set_nonblocking(true).expect("nonblocking");
        (socket, peer)
    }

    /// The writer's wait for frames on `socket`, polled once: it waits.
    fn idle_writer<'a>(
        outbox: &'a Outbox,
        batch: &'a mut Vec<Bytes>,
        socket: &std::os::unix::net::UnixStream,
        cx: &mut std::task::Context<'_>,
    ) -> std::pin::Pin<Box<impl std::future::Future<Output = Next> + 'a>> {
        use std::future::Future;
        use std::os::fd::AsRawFd;
        let mut waiting = Box::pin(outbox.take_batch(batch, Some(socket.as_raw_fd())));
        assert!(waiting.as_mut().poll(cx).is_pending());
        waiting
    }

    #[test]
    fn a_frame_pushed_while_the_writer_idles_is_written_at_once_and_in_order() {
        use std::future::Future;
        let (socket, mut peer) = socket_pair();
        let (woken, waker) = counting_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let outbox = Outbox::new(4, true);
        let mut batch = Vec::new();
        {
            let mut waiting = idle_writer(&outbox, &mut batch, &socket, &mut cx);
            assert_eq!(
                outbox.push_now(Bytes::from_static(b"a")),
                Ok(Pushed::Written)
            );
            assert_eq!(readable(&mut peer), b"a");
            assert_eq!(wakes(&woken), 0, "nothing for the writer to do");
            // Queued while the writer idles (a broadcast): what comes
            // after it waits behind it.
            assert!(outbox.push(Bytes::from_static(b"b")).is_ok());
            assert_eq!(
                outbox.push_now(Bytes::from_static(b"c")),
                Ok(Pushed::Queued)
            );
            assert_eq!(wakes(&woken), 1);
            assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(Next::Write));
        }
        assert_eq!(batch, [Bytes::from_static(b"b"), Bytes::from_static(b"c")]);
        assert!(readable(&mut peer).is_empty());
        // Not waiting (writing the batch): pushes queue.
        assert_eq!(
            outbox.push_now(Bytes::from_static(b"d")),
            Ok(Pushed::Queued)
        );
        assert!(readable(&mut peer).is_empty());
    }

    #[test]
    fn what_a_full_socket_does_not_take_is_queued_whole() {
        use std::future::Future;
        use std::io::Write;
        let (mut socket, mut peer) = socket_pair();
        socket.set_nonblocking(true).expect("nonblocking");
        let mut filled = 0;
        while let Ok(n) = socket.write(&[7u8; 4096]) {
            filled += n;
        }
        let (woken, waker) = counting_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let outbox = Outbox::new(4, true);
        let mut batch = Vec::new();
        let mut waiting = idle_writer(&outbox, &mut batch, &socket, &mut cx);
        let frame = Bytes::from(vec![1u8; 1000]);
        assert_eq!(outbox.push_now(frame.clone()), Ok(Pushed::Queued));
        assert_eq!(wakes(&woken), 1, "the writer waits for room");
        assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(Next::Write));
        drop(waiting);
        // The peer reads the filler, then nothing of the frame: it was
        // queued whole, for the writer.
        assert_eq!(readable(&mut peer).len(), filled);
        assert_eq!(batch, [frame]);
    }

    #[test]
    fn nothing_is_written_directly_for_a_writer_that_stopped_waiting_or_a_closing_one() {
        use std::future::Future;
        let (socket, mut peer) = socket_pair();
        let (_woken, waker) = counting_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let outbox = Outbox::new(4, true);
        let mut batch = Vec::new();
        drop(idle_writer(&outbox, &mut batch, &socket, &mut cx));
        assert_eq!(
            outbox.push_now(Bytes::from_static(b"late")),
            Ok(Pushed::Queued)
        );
        assert!(readable(&mut peer).is_empty());

        let closing = Outbox::new(4, true);
        let mut batch = Vec::new();
        let mut waiting = idle_writer(&closing, &mut batch, &socket, &mut cx);
        closing.close_with(Some(Bytes::from_static(b"bye")));
        assert_eq!(
            closing.push_now(Bytes::from_static(b"after")),
            Ok(Pushed::Queued)
        );
        assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(Next::Write));
        drop(waiting);
        assert_eq!(
            batch,
            [Bytes::from_static(b"bye")],
            "nothing after the reason"
        );
        assert!(readable(&mut peer).is_empty());
    }

    #[test]
    fn an_answer_wakes_the_task_only_when_its_reader_waits_for_one() {
        use std::future::Future;
        let (woken, waker) = counting_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let outbox = Outbox::new(4, true);
        let mut batch = Vec::new();
        let mut waiting = Box::pin(outbox.take_batch(&mut batch, None));
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        block_on(outbox.begin_send(2));
        outbox.send_answered();
        assert_eq!(wakes(&woken), 0, "nobody waits for that answer");
        let mut closing = Box::pin(async {
            block_on(outbox.begin_send(2));
            outbox.all_sends_answered().await
        });
        assert!(closing.as_mut().poll(&mut cx).is_pending());
        outbox.send_answered();
        assert_eq!(wakes(&woken), 1, "the close waited for it");
        assert!(closing.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn an_answer_wakes_the_task_waiting_for_room() {
        use std::future::Future;
        let (woken, waker) = counting_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let outbox = Outbox::new(4, true);
        block_on(outbox.begin_send(1));
        let mut waiting = Box::pin(outbox.begin_send(1));
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        outbox.send_answered();
        assert_eq!(wakes(&woken), 1);
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
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
        assert_eq!(block_on(outbox.take_batch(&mut batch, None)), Next::Write);
        assert_eq!(block_on(outbox.take_batch(&mut batch, None)), Next::Park);
        outbox.parked(unparks.clone(), 42);
        outbox.close_with(None);
        assert_eq!(unparks.taken(), vec![42]);
        assert!(!outbox.may_park(), "closing");
    }
}
