//! A connection's writing half and its end: the stream shared by the
//! reading and the writing half one poll at a time, the loop that writes
//! the outbox's batches, and the close that lets the peer read its last
//! frames.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{framing, Ended};
use crate::core::Core;
use crate::outbox::{Next, Outbox, LINGER};

/// A connection's stream as its reading and its writing half each see it:
/// borrowed for one poll at a time, never across an await.
pub(super) struct Shared<'a, S>(pub(super) &'a RefCell<S>);

impl<S: AsyncRead + Unpin> AsyncRead for Shared<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Shared<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// The writing half as the writer sees it: its writes fail once the close
/// is given up ([`Outbox::give_up`]: the peer reads nothing), and a write
/// the socket keeps waiting leaves the task's waker with the outbox, so
/// that giving up reaches a writer stuck on a full socket.
struct UnlessGivenUp<'a, W> {
    writer: W,
    outbox: &'a Outbox,
}

impl<W: AsyncWrite + Unpin> UnlessGivenUp<'_, W> {
    fn poll_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut W>, &mut Context<'_>) -> Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if self.outbox.is_given_up() {
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        let written = write(Pin::new(&mut self.writer), cx);
        if written.is_pending() {
            self.outbox.register(cx);
        }
        written
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for UnlessGivenUp<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_with(cx, |writer, cx| writer.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_with(cx, |writer, cx| writer.poll_flush(cx).map_ok(|()| 0))
            .map_ok(|_| ())
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.writer).poll_close(cx)
    }
}

/// Writes whatever is queued, in batches, until the outbox closes (what
/// was queued is then written: the socket is closed after the task, by
/// [`close_gracefully`]) or the connection is to park. `socket`: the plain
/// socket under `writer`, which frames pushed while this waits idle are
/// written to directly ([`Outbox::push_now`]).
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    writer: W,
    outbox: Rc<Outbox>,
    core: Rc<Core>,
    socket: Option<RawFd>,
) -> Ended {
    let mut writer = UnlessGivenUp {
        writer,
        outbox: &outbox,
    };
    let mut batch: Vec<Bytes> = Vec::new();
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        match outbox.take_batch(&mut batch, socket).await {
            Next::Write => {}
            Next::Park => return Ended::Parked,
            Next::Close => break,
        }
        core.metrics()
            .frames_out
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let bytes = if batch.len() == 1 {
            &batch[0][..]
        } else {
            buffer.clear();
            for frame in &batch {
                buffer.extend_from_slice(frame);
            }
            &buffer[..]
        };
        let result = writer.write_all(bytes).await;
        // TLS keeps records it could not write yet in its own buffer (the
        // socket said "later"); only a flush pushes them out. Plain TCP
        // has nothing to flush.
        let result = match result {
            Ok(()) => writer.flush().await,
            error => error,
        };
        batch.clear();
        if buffer.capacity() > 64 * 1024 {
            buffer = Vec::new();
        }
        if result.is_err() {
            outbox.close_with(None);
            break;
        }
    }
    Ended::Closed
}

/// Ends a connection so that its last frames (the reason for the close,
/// the last acks) reach the peer. Closing a socket with received bytes
/// unread makes the kernel answer with a reset, and a reset makes the
/// peer's kernel drop what it had not yet handed to the client: a flooding
/// client lost the flood error and the acks before it (`limits.rs`,
/// `a_flood_close_acks_every_message_it_stored_first`). So this sends the
/// end of the stream after what is queued (TLS's close_notify first), then
/// reads and drops until the peer closes too, for at most [`LINGER`].
/// A peer that ended first (`peer_ended`) left nothing unread: the drain
/// and the last shutdown would be two system calls that find nothing, and
/// in a reconnect storm every connection closes that way.
/// The connection is gone from its core by then; only the socket lingers.
pub(super) async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    fd: RawFd,
    peer_ended: bool,
) {
    let drained = async {
        let _ = stream.flush().await;
        let _ = stream.close().await;
        if !peer_ended {
            loop {
                match std::future::poll_fn(|cx| framing::poll_discard(cx, stream)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        Ok(())
    };
    let _ = glommio::timer::timeout(LINGER, drained).await;
    if !peer_ended {
        // A stream whose own close does not shut the socket (a WebSocket's)
        // still ends here, before the socket is dropped.
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    }
}
