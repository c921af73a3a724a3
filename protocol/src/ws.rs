//! The client protocol over WebSocket (feature `ws`): one binary message =
//! one envelope body. [`WsBytes`] turns a WebSocket (either end, from
//! `async-tungstenite` over any futures-io stream) into the protocol's
//! byte stream — each binary message read out with its 4-byte length in
//! front, each frame written sent as one binary message — so code written
//! for a TCP stream serves a WebSocket unchanged: the gateway's connections
//! and the loadgen's sessions both use it. Text messages are refused
//! (close 1003); a message over the size limit is closed with 1009.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use futures_core::Stream;
use futures_io::{AsyncRead, AsyncWrite};
use futures_sink::Sink;

use crate::codec::HEADER_LEN;

/// Bytes of a message kept for the next one (larger ones are let go, so
/// an idle connection keeps no big buffer).
const KEEP: usize = 1024;

/// tungstenite's configuration for many mostly idle sockets of small
/// messages: a 1 KiB read buffer (its default, 128 KiB, is held for the
/// socket's life: 145 KB an idle connection, measured), writes not
/// buffered, messages and frames at most `max_frame` bytes.
pub fn lean_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(KEEP)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
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
    /// `ws` as a byte stream; a message over `max_frame` closes it (1009).
    pub fn new(ws: WebSocketStream<S>, max_frame: usize) -> Self {
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
            if self.outgoing.is_empty() && self.outgoing.capacity() > KEEP {
                self.outgoing = Vec::new();
            }
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
                if this.read_at == this.incoming.len() && this.incoming.capacity() > KEEP {
                    this.incoming = Vec::new();
                }
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
