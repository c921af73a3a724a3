//! A core's parking lot: idle plain-TCP connections kept as their bare
//! socket and a small record, with no task, no stream state and no pending
//! operation on the ring. Most of a chat server's connections are idle most
//! of the time, and a task with its stream costs more than a kilobyte while
//! waiting (BENCHMARKS.md, "Parked connections").
//!
//! Two things wake a parked connection: its socket turns readable (one
//! epoll set per core holds every parked socket, one-shot; the reactor
//! polls that set as a single descriptor), or its outbox gets a frame or a
//! close (the outbox queues the connection here through [`Unparks`]).
//! Either way [`ParkingLot::woken`] hands the connection back, out of the
//! epoll set, for its owner to resume as a task.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

/// Most ready sockets taken from the epoll set in one call.
const EVENTS_PER_WAIT: usize = 256;

/// Parked connections that something other than their socket wants
/// resumed (a push, a close, a kick). Filled by outboxes, drained by the
/// lot.
#[derive(Default)]
pub struct Unparks {
    conn_ids: RefCell<Vec<u64>>,
    waker: Cell<Option<Waker>>,
}

impl Unparks {
    /// Asks for `conn_id` to be resumed.
    pub fn unpark(&self, conn_id: u64) {
        self.conn_ids.borrow_mut().push(conn_id);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// What was asked for so far, emptied.
    pub fn taken(&self) -> Vec<u64> {
        std::mem::take(&mut *self.conn_ids.borrow_mut())
    }
}

/// Why a parked connection was handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woken {
    /// Its socket is readable (bytes, or the peer hung up).
    Readable,
    /// Its outbox asked (a frame or a close for it).
    Asked,
}

/// A connection handed back: its id, socket, state and why.
pub type Handed<T> = (u64, OwnedFd, T, Woken);

/// One parked connection: its socket and what its owner keeps of it.
struct Parked<T> {
    socket: OwnedFd,
    state: T,
}

/// The parked connections of one core, keyed by connection id.
pub struct ParkingLot<T> {
    epoll: Epoll,
    parked: RefCell<HashMap<u64, Box<Parked<T>>>>,
    unparks: Rc<Unparks>,
    /// Where `epoll_wait` reports, made once.
    events: RefCell<Vec<EpollEvent>>,
}

impl<T> ParkingLot<T> {
    /// An empty lot with its epoll set.
    pub fn new() -> io::Result<Self> {
        Ok(ParkingLot {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            parked: RefCell::default(),
            unparks: Rc::default(),
            events: RefCell::new(vec![EpollEvent::empty(); EVENTS_PER_WAIT]),
        })
    }

    /// Where outboxes ask for their parked connection back.
    pub fn unparks(&self) -> &Rc<Unparks> {
        &self.unparks
    }

    /// Connections parked now.
    pub fn len(&self) -> usize {
        self.parked.borrow().len()
    }

    /// Whether no connection is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parks `socket` with `state` under `conn_id` until it is readable or
    /// unparked. If the kernel refuses to watch the socket, both come back
    /// with the error: the caller keeps serving the connection.
    pub fn park(&self, conn_id: u64, socket: OwnedFd, state: T) -> Result<(), (OwnedFd, T)> {
        // Level-triggered and one-shot: bytes already waiting report at
        // once, and a socket reports once however much more arrives.
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
        if let Err(error) = self.epoll.add(&socket, EpollEvent::new(interest, conn_id)) {
            tracing::warn!(%error, conn_id, "cannot watch a parked socket; serving it unparked");
            return Err((socket, state));
        }
        self.parked
            .borrow_mut()
            .insert(conn_id, Box::new(Parked { socket, state }));
        Ok(())
    }

    /// Waits until at least one parked connection is to be resumed, then
    /// moves every such connection into `woken`, out of the lot and its
    /// epoll set.
    pub async fn woken(&self, woken: &mut Vec<Handed<T>>) {
        loop {
            self.take_ready(woken);
            if !woken.is_empty() {
                return;
            }
            // Either the epoll set turns readable or an outbox asks; the
            // ring's poll of the set is dropped (cancelled) in the second
            // case.
            let readable = pin!(glommio::net::wait_readable(self.epoll.0.as_raw_fd()));
            let asked = std::future::poll_fn(|cx| {
                if self.unparks.conn_ids.borrow().is_empty() {
                    self.unparks.waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            });
            let asked = pin!(asked);
            if let futures::future::Either::Left((Err(error), _)) =
                futures::future::select(readable, asked).await
            {
                // Only a broken ring fails this poll; pausing keeps a
                // persistent failure from spinning the core.
                tracing::error!(%error, "cannot poll the parked connections");
                glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }

    /// Moves what is ready now (asked for, or readable) into `woken`.
    fn take_ready(&self, woken: &mut Vec<Handed<T>>) {
        let mut events = self.events.borrow_mut();
        let asked = self.unparks.taken();
        for conn_id in asked {
            self.take(conn_id, Woken::Asked, woken);
        }
        loop {
            let ready = match self.epoll.wait(&mut events, 0) {
                Ok(ready) => ready,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(error) => {
                    tracing::error!(%error, "epoll_wait on the parked connections failed");
                    0
                }
            };
            for event in &events[..ready] {
                self.take(event.data(), Woken::Readable, woken);
            }
            if ready < events.len() {
                return;
            }
        }
    }

    /// Takes `conn_id` out if it is still parked (a connection can be both
    /// readable and asked for; the second finds it gone).
    fn take(&self, conn_id: u64, why: Woken, woken: &mut Vec<Handed<T>>) {
        let Some(parked) = self.parked.borrow_mut().remove(&conn_id) else {
            return;
        };
        let Parked { socket, state } = *parked;
        // Out of the set before it is served again, so that parking it
        // later adds it afresh. Only a closed descriptor fails this, and
        // the lot owns the descriptor.
        let _ = self.epoll.delete(&socket);
        woken.push((conn_id, socket, state, why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn on_a_reactor<F: std::future::Future<Output = ()> + 'static>(
        test: impl FnOnce() -> F + Send + 'static,
    ) {
        glommio::LocalExecutorBuilder::default()
            .spawn(test)
            .and_then(|handle| handle.join())
            .unwrap();
    }

    #[test]
    fn a_readable_socket_or_an_ask_wakes_its_connection_once() {
        on_a_reactor(|| async {
            let lot = ParkingLot::new().unwrap();
            let (parked_end, mut peer) = UnixStream::pair().unwrap();
            let (quiet_end, _quiet_peer) = UnixStream::pair().unwrap();
            lot.park(1, parked_end.into(), "one").unwrap();
            lot.park(2, quiet_end.into(), "two").unwrap();
            assert_eq!(lot.len(), 2);

            // Readable and asked for at once: handed back once.
            peer.write_all(b"x").unwrap();
            lot.unparks().unpark(1);
            let mut woken = Vec::new();
            lot.woken(&mut woken).await;
            let ids: Vec<(u64, &str, Woken)> =
                woken.iter().map(|(id, _, s, w)| (*id, *s, *w)).collect();
            assert_eq!(ids, vec![(1, "one", Woken::Asked)]);
            assert_eq!(lot.len(), 1);

            // Parked again with its byte still unread: reported at once.
            let (id, socket, state, _) = woken.pop().unwrap();
            lot.park(id, socket, state).unwrap();
            lot.woken(&mut woken).await;
            assert_eq!(woken.len(), 1);
            assert_eq!(woken[0].3, Woken::Readable);
            woken.clear();

            // A quiet connection comes back only when asked; an ask for a
            // connection no longer parked is ignored.
            lot.unparks().unpark(2);
            lot.unparks().unpark(7);
            lot.woken(&mut woken).await;
            let ids: Vec<u64> = woken.iter().map(|(id, ..)| *id).collect();
            assert_eq!(ids, vec![2]);
            assert!(lot.is_empty());
        });
    }

    #[test]
    fn an_ask_while_waiting_wakes_the_lot() {
        on_a_reactor(|| async {
            let lot = Rc::new(ParkingLot::new().unwrap());
            let (end, _peer) = UnixStream::pair().unwrap();
            lot.park(3, end.into(), ()).unwrap();
            let asker = lot.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
                asker.unparks().unpark(3);
            })
            .detach();
            let mut woken = Vec::new();
            lot.woken(&mut woken).await;
            assert_eq!(woken.len(), 1);
        });
    }

    #[test]
    fn a_peer_that_hangs_up_wakes_its_connection() {
        on_a_reactor(|| async {
            let lot = ParkingLot::new().unwrap();
            let (end, peer) = UnixStream::pair().unwrap();
            lot.park(4, end.into(), ()).unwrap();
            drop(peer);
            let mut woken = Vec::new();
            lot.woken(&mut woken).await;
            assert_eq!(woken.len(), 1);
        });
    }
}
