//! Clients over WebSocket (RFC 6455, tungstenite's protocol core over the
//! reactor's own glommio stream): the upgrade at `/ws` under the login
//! deadline and an `Origin` check, then one binary WebSocket message = one
//! `Envelope` body. `ourchat_protocol::ws::WsBytes` turns the message
//! stream back into the client protocol's byte stream (a 4-byte length,
//! then the body) and the connection's frames into messages, so a WebSocket
//! connection is served
//! by the very same `connection::serve` as TCP: same handlers, limits,
//! deadlines, slow-reader rule and metrics. Pings are answered by
//! tungstenite; text messages are refused (close 1003); a message over
//! `server.max_frame_bytes` is closed with 1009.
//!
//! With `tls.ws` the listener serves WSS: the rustls handshake (the
//! `tls.*` pair), then the upgrade.
//!
//! Cross-site WebSocket hijacking: a browser sends the page's `Origin`; it
//! must be this node's own origin (the `Host` the browser asked for) or
//! one of `server.ws_allowed_origins`. A client that is not a browser sends
//! none and is let through (it holds no one else's cookies).

use std::io;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use std::net::IpAddr;
use std::rc::Rc;

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::StatusCode;
use glommio::net::TcpStream;
use ourchat_protocol::ws::WsBytes;

use crate::core::Core;
use crate::metrics::CoreMetrics;

/// The only path that upgrades.
pub const WS_PATH: &str = "/ws";

/// Takes one accepted socket on the WebSocket listener: the TLS handshake
/// first when it serves WSS, then the upgrade, each under the login
/// deadline, then the connection.
pub async fn accept(
    core: Rc<Core>,
    stream: Box<TcpStream>,
    tls: Option<futures_rustls::TlsAcceptor>,
) {
    let Ok((fd, peer, slot)) = crate::connection::admit(&core, &stream) else {
        return;
    };
    let Some(acceptor) = tls else {
        // Boxed: the handshake's state is large and lives only until it ends.
        return Box::pin(upgrade_then_serve(core, *stream, fd, peer, slot)).await;
    };
    if let Some(stream) = crate::connection::tls_handshake(&core, *stream, acceptor).await {
        Box::pin(upgrade_then_serve(core, stream, fd, peer, slot)).await
    }
}

async fn upgrade_then_serve<S>(
    core: Rc<Core>,
    stream: S,
    fd: std::os::fd::RawFd,
    peer: Option<IpAddr>,
    slot: Option<crate::limits::IpSlot>,
) where
    S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin + 'static,
{
    let server = &core.shared.config.server;
    let deadline = std::time::Duration::from_millis(server.login_timeout_ms);
    // The request head first: an upgrade goes on to the handshake (which
    // reads it again from `Rewind`), anything else is a web app file.
    let mut stream = stream;
    let read = Box::pin(async {
        read_head(&mut stream)
            .await
            .map_err(glommio::GlommioError::IoError)
    });
    let (head, bytes) = match glommio::timer::timeout(deadline, read).await {
        Ok(read) => read,
        Err(e) => {
            CoreMetrics::inc(&core.metrics().ws_upgrades_refused);
            tracing::debug!(error = %e, "no request head");
            return;
        }
    };
    if !head.upgrade {
        let answer = crate::web::respond(core.shared.web.as_deref(), &head);
        let _ = stream.write_all(&answer).await;
        let _ = stream.flush().await;
        let _ = stream.close().await;
        return;
    }
    let stream = Rewind {
        prefix: bytes,
        at: 0,
        inner: stream,
    };
    let max_frame = server.max_frame_bytes;
    let config = ourchat_protocol::ws::lean_config(max_frame);
    let allowed = server.ws_allowed_origins.clone();
    // tungstenite's callback type returns its response by value.
    #[allow(clippy::result_large_err)]
    let check =
        move |request: &Request, response: Response| check_upgrade(request, response, &allowed);
    let upgrade = Box::pin(async {
        async_tungstenite::accept_hdr_async_with_config(stream, check, Some(config))
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

/// Reads until a whole request head has arrived: the head and every byte
/// read. A malformed or oversized head is answered 400 / 431 here.
async fn read_head<S>(stream: &mut S) -> io::Result<(crate::web::Head, Vec<u8>)>
where
    S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin,
{
    let mut bytes = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&chunk[..n]);
        match crate::web::parse_head(&bytes) {
            Ok(Some(head)) => return Ok((head, bytes)),
            Ok(None) => {}
            Err(error) => {
                let status = match error {
                    crate::web::HeadError::TooLarge => "431 Request Header Fields Too Large",
                    crate::web::HeadError::Malformed => "400 Bad Request",
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.close().await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
        }
    }
}

/// A stream that first gives back bytes already read from it (the request
/// head), so the WebSocket handshake can read the request itself.
struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: futures::io::AsyncRead + Unpin> futures::io::AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.len().min(this.prefix.len() - this.at);
            buf[..n].copy_from_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return std::task::Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: futures::io::AsyncWrite + Unpin> futures::io::AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
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
