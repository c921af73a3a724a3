//! A socket's way in: admitted under its address's connection limit,
//! through a TLS handshake when the listener has one (under the login
//! deadline), then served as a [`Connection`] until it closes.

use std::cell::RefCell;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use futures::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use ourchat_protocol::{Envelope, ErrorCode};

use super::parked::serve_plain;
use super::writing::close_gracefully;
use super::{Connection, Ended, Lot};
use crate::core::{encode_frame, Core};
use crate::limits::{IpSlot, Limit};
use crate::metrics::CoreMetrics;

/// A socket over the per-address connection limit (counted).
pub(crate) struct OverLimit;

/// An accepted socket's fd and peer, with Nagle off, and its place under
/// its address's connection limit.
pub(crate) fn admit(
    core: &Core,
    stream: &TcpStream,
) -> Result<(RawFd, Option<IpAddr>, Option<IpSlot>), OverLimit> {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok().map(|addr| addr.ip());
    let slot = match peer {
        Some(ip) => match core.shared.limits.open_connection(ip) {
            Some(slot) => Some(slot),
            None => {
                core.metrics().limited(Limit::ConnectionsPerIp);
                return Err(OverLimit);
            }
        },
        None => None,
    };
    Ok((stream.as_raw_fd(), peer, slot))
}

/// Takes one accepted socket: plain, or TLS once its handshake completes.
/// The handshake runs in this task, interleaved with every other task of
/// the core, and must finish within the login deadline (a peer that stalls
/// it holds nothing but its socket meanwhile).
pub async fn accept(
    core: Rc<Core>,
    mut stream: Box<TcpStream>,
    tls: Option<futures_rustls::TlsAcceptor>,
    lot: Option<Rc<Lot>>,
) {
    let Ok((fd, peer, slot)) = admit(&core, &stream) else {
        if tls.is_none() {
            let refusal = encode_frame(&Envelope::error(
                0,
                ErrorCode::RateLimited,
                "too many connections from your address",
            ));
            let _ = stream.write_all(&refusal).await;
        }
        return;
    };
    let Some(acceptor) = tls else {
        let conn = Connection::open(core, peer, lot.is_some());
        return serve_plain(conn, *stream, slot, lot).await;
    };
    // Boxed: this function's future is as large as its largest state, and
    // the handshake's timer and TLS session are large; unboxed, every plain
    // connection would carry room for them.
    Box::pin(handshake_then_serve(core, stream, acceptor, fd, peer, slot)).await
}

/// Takes a connection a gRPC `Subscribe` stream opened to this core over
/// its local socket: from here it is a client connection like a TCP one
/// (same handlers, limits, deadlines, metrics and presence). Per-address
/// limits were not applied: the gRPC server owns the peer.
pub async fn accept_local(core: Rc<Core>, stream: Box<glommio::net::UnixStream>) {
    let fd = stream.as_raw_fd();
    serve(core, stream, fd, None, None).await
}

/// The TLS path of [`accept`]: the handshake under the login deadline, then
/// the connection.
async fn handshake_then_serve(
    core: Rc<Core>,
    stream: Box<TcpStream>,
    acceptor: futures_rustls::TlsAcceptor,
    fd: RawFd,
    peer: Option<IpAddr>,
    slot: Option<IpSlot>,
) {
    if let Some(stream) = tls_handshake(&core, *stream, acceptor).await {
        Box::pin(serve(core, Box::new(stream), fd, peer, slot)).await
    }
}

/// A server-side TLS handshake under the login deadline (a peer that
/// stalls it holds nothing but its socket meanwhile); `None`: it failed or
/// ran out of time (counted).
pub(crate) async fn tls_handshake(
    core: &Core,
    stream: TcpStream,
    acceptor: futures_rustls::TlsAcceptor,
) -> Option<futures_rustls::server::TlsStream<TcpStream>> {
    let deadline = std::time::Duration::from_millis(core.shared.config.server.login_timeout_ms);
    // Boxed: its TLS session in the making is kilobytes, and the caller's
    // future lives as long as the connection; the box goes with the
    // handshake.
    let handshake = Box::pin(async {
        acceptor
            .accept(stream)
            .await
            .map_err(glommio::GlommioError::IoError)
    });
    match glommio::timer::timeout(deadline, handshake).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            CoreMetrics::inc(&core.metrics().tls_handshake_failures);
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
    }
}

/// Serves one connection that never parks (TLS, WebSocket, a gRPC
/// stream) until it closes. `fd` is its socket, under whatever `stream`
/// wraps it in; `_slot` counts it against its address until it ends.
pub(crate) async fn serve<S>(
    core: Rc<Core>,
    stream: Box<S>,
    fd: RawFd,
    peer: Option<IpAddr>,
    _slot: Option<IpSlot>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let mut conn = Connection::open(core, peer, false);
    let mut stream = RefCell::new(*stream);
    // Whatever wraps the socket (TLS, WebSocket) writes to it: no frame
    // goes to the socket directly.
    let ended = conn.run(&stream, None).await;
    debug_assert_eq!(
        ended,
        Ended::Closed,
        "only a parkable outbox is asked to park"
    );
    conn.caller.core.remove_connection(conn.caller.conn_id);
    let peer_ended = conn.peer_ended;
    drop(conn);
    // Boxed: only a closing connection carries its state.
    Box::pin(close_gracefully(stream.get_mut(), fd, peer_ended)).await;
}
