//! Clients over WebSocket (RFC 6455, tungstenite's protocol core over the
//! reactor's own glommio stream): the upgrade at `/ws` under the login
//! deadline and an `Origin` check, then one binary WebSocket message = one
//! `Envelope` body. [`WsBytes`] turns the message stream back into the
//! client protocol's byte stream (a 4-byte length, then the body) and the
//! connection's frames into messages, so a WebSocket connection is served
//! by the very same `connection::serve` as TCP: same handlers, limits,
//! deadlines, slow-reader rule and metrics. Pings are answered by
//! tungstenite; text messages are refused (close 1003); a message over
//! `server.max_frame_bytes` is closed with 1009.
//!
//! Cross-site WebSocket hijacking: a browser sends the page's `Origin`; it
//! must be this node's own origin (the `Host` the browser asked for) or
//! one of `server.ws_allowed_origins`. A client that is not a browser sends
//! none and is let through (it holds no one else's cookies).

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::StatusCode;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use futures::io::{AsyncRead, AsyncWrite};
use futures::{Sink, Stream};
use glommio::net::TcpStream;
use ourchat_protocol::codec::HEADER_LEN;

use crate::core::Core;
use crate::metrics::CoreMetrics;

/// The only path that upgrades.
pub const WS_PATH: &str = "/ws";

/// Takes one accepted socket on the WebSocket listener: the upgrade under
/// the login deadline, then the connection.
pub async fn accept(core: Rc<Core>, stream: Box<TcpStream>) {
    let Ok((fd, peer, slot)) = crate::connection::admit(&core, &stream) else {
        return;
    };
    // Boxed: the handshake's state is large and lives only until it ends.
    Box::pin(upgrade_then_serve(core, stream, fd, peer, slot)).await
}

async fn upgrade_then_serve(
    core: Rc<Core>,
    stream: Box<TcpStream>,
    fd: std::os::fd::RawFd,
    peer: Option<IpAddr>,
    slot: Option<crate::limits::IpSlot>,
) {
    let server = &core.shared.config.server;
    let max_frame = server.max_frame_bytes;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    let allowed = server.ws_allowed_origins.clone();
    // tungstenite's callback type returns its response by value.
    #[allow(clippy::result_large_err)]
    let check =
        move |request: &Request, response: Response| check_upgrade(request, response, &allowed);
    let deadline = std::time::Duration::from_millis(server.login_timeout_ms);
    let upgrade = Box::pin(async {
        async_tungstenite::accept_hdr_async_with_config(*stream, check, Some(config))
            .await
            .map_err(|e| glommio::GlommioError::IoError(io::Error::other(e)))
    });
    match glommio::timer::timeout(deadline, upgrade).await {
        Ok(ws) => {
            let bytes = Box::new(WsBytes::new(ws, max_frame));
            crate::connection::serve(core, bytes, fd, peer, slot).await
        }
        Err(e) => {
            CoreMetrics::inc(&core.metrics().ws_upgrades_refused);
            tracing::debug!(error = %e, "WebSocket upgrade refused or failed");
        }
    }
}

/// The upgrade's checks: the path, and the `Origin` of a browser.
#[allow(clippy::result_large_err)] // tungstenite's callback type
fn check_upgrade(
    request: &Request,
    response: Response,
    allowed: &[String],
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: &str| {
        let mut refusal = ErrorResponse::new(Some(why.to_string()));
        *refusal.status_mut() = status;
        Err(refusal)
    };
    if request.uri().path() != WS_PATH {
        return refuse(StatusCode::NOT_FOUND, "WebSocket clients connect to /ws");
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    match header("origin") {
        None => Ok(response),
        Some(origin) if origin_allowed(origin, header("host"), allowed) => Ok(response),
        Some(_) => refuse(
            StatusCode::FORBIDDEN,
            "this origin may not open a socket here",
        ),
    }
}

/// A browser's `Origin` is allowed when it is the node's own (the host
/// it asked for, over http or https) or listed.
fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let own = host.is_some_and(|host| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
    });
    own || allowed
        .iter()
        .any(|listed| listed.eq_ignore_ascii_case(origin))
}

/// A WebSocket as the client protocol's byte stream.
pub struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// The frame (length, then body) of the last binary message, and how
    /// much of it was read out.
    incoming: Vec<u8>,
    read_at: usize,
    /// What the connection wrote that is not yet a whole frame.
    outgoing: Vec<u8>,
    max_frame: usize,
}

impl<S> WsBytes<S> {
    fn new(ws: WebSocketStream<S>, max_frame: usize) -> Self {
        WsBytes {
            ws,
            incoming: Vec::new(),
            read_at: 0,
            outgoing: Vec::new(),
            max_frame,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsBytes<S> {
    /// Starts closing with `code` (best effort: the peer is being dropped).
    fn close_with(&mut self, cx: &mut Context<'_>, code: CloseCode, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let mut ws = Pin::new(&mut self.ws);
        if let Poll::Ready(Ok(())) = ws.as_mut().poll_ready(cx) {
            let _ = ws.as_mut().start_send(Message::Close(Some(frame)));
            let _ = ws.poll_flush(cx);
        }
    }

    /// Sends every whole frame written so far as a binary message.
    fn poll_send_frames(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Some(body_len) = self
                .outgoing
                .first_chunk::<HEADER_LEN>()
                .map(|header| u32::from_be_bytes(*header) as usize)
            else {
                return Poll::Ready(Ok(()));
            };
            let end = HEADER_LEN + body_len;
            if self.outgoing.len() < end {
                return Poll::Ready(Ok(()));
            }
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io::Error::other)?;
            let body = self.outgoing[HEADER_LEN..end].to_vec();
            self.outgoing.drain(..end);
            Pin::new(&mut self.ws)
                .start_send(Message::Binary(body.into()))
                .map_err(io::Error::other)?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if this.read_at < this.incoming.len() {
                let n = buf.len().min(this.incoming.len() - this.read_at);
                buf[..n].copy_from_slice(&this.incoming[this.read_at..this.read_at + n]);
                this.read_at += n;
                return Poll::Ready(Ok(n));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(body))) => {
                    this.incoming.clear();
                    this.incoming
                        .extend_from_slice(&(body.len() as u32).to_be_bytes());
                    this.incoming.extend_from_slice(&body);
                    this.read_at = 0;
                }
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    this.close_with(cx, CloseCode::Unsupported, "binary messages only");
                    return Poll::Ready(Ok(0));
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(0)),
                Some(Err(WsError::Capacity(_))) => {
                    let reason = format!("messages are at most {} bytes", this.max_frame);
                    this.close_with(cx, CloseCode::Size, &reason);
                    return Poll::Ready(Ok(0));
                }
                Some(Err(error)) => return Poll::Ready(Err(io::Error::other(error))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.outgoing.extend_from_slice(buf);
        // Queued whole frames go out with the flush that follows.
        match this.poll_send_frames(cx) {
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            _ => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send_frames(cx))?;
        Pin::new(&mut this.ws)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_nodes_own_or_listed_origins_may_connect() {
        let listed = vec!["https://chat.example".to_string()];
        assert!(origin_allowed(
            "http://localhost:8080",
            Some("localhost:8080"),
            &[]
        ));
        assert!(origin_allowed(
            "https://LOCALHOST:8080",
            Some("localhost:8080"),
            &[]
        ));
        assert!(origin_allowed(
            "https://chat.example",
            Some("node:443"),
            &listed
        ));
        assert!(!origin_allowed(
            "https://evil.example",
            Some("localhost:8080"),
            &listed
        ));
        assert!(!origin_allowed(
            "http://localhost:8081",
            Some("localhost:8080"),
            &[]
        ));
        assert!(!origin_allowed("http://localhost:8080", None, &[]));
    }
}
