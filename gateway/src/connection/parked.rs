//! Parked connections, the connection's side: a plain-TCP connection asked
//! to park leaves its socket and a [`Parked`] record in the core's
//! [`ParkingLot`], and [`resume_parked`] makes it a task again when it is
//! woken. One request is answered without that: a heartbeat, the only
//! thing an idle client sends (every `server.heartbeat_secs`). Resuming for
//! it would make every idle connection a task again for a moment, twice a
//! minute, on a node that holds a million of them.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use glommio::net::TcpStream;
use nix::sys::socket::{recv, send, MsgFlags};
use ourchat_protocol::codec::{self, HEADER_LEN};
use ourchat_protocol::ids::now_ms;
use ourchat_protocol::pb;
use ourchat_protocol::{Body, Envelope};

use super::handover::hand_over;
use super::writing::close_gracefully;
use super::{Connection, Ended};
use crate::core::encode_frame;
use crate::limits::{IpSlot, Verdict};
use crate::metrics::CoreMetrics;
use crate::parking::{ParkingLot, Woken};

/// A core's parked connections.
pub type Lot = ParkingLot<Parked>;

/// What a parked connection keeps besides its socket.
pub struct Parked {
    conn: Connection,
    /// Its place under its address's connection limit.
    slot: Option<IpSlot>,
}

/// Serves a plain TCP connection until it closes or parks; a parked one is
/// resumed by [`resume_parked`] in a task of its own.
///
/// A plain function returning an async block: an async fn would keep its
/// arguments beside the locals made of them (the connection and the stream
/// twice), and this future is what every connection at work holds.
pub(super) fn serve_plain(
    mut conn: Connection,
    stream: TcpStream,
    mut slot: Option<IpSlot>,
    lot: Option<Rc<Lot>>,
) -> impl Future<Output = ()> {
    let mut stream = RefCell::new(stream);
    async move {
        loop {
            let socket = stream.borrow().as_raw_fd();
            let ended = conn.run(&stream, Some(socket)).await;
            // A login asked it to move to its user's core.
            if let Some(moving) = conn.moving.take().filter(|_| ended == Ended::Parked) {
                return hand_over(conn, *moving, stream.into_inner(), slot);
            }
            let Some(lot) = lot.as_ref().filter(|_| ended == Ended::Parked) else {
                conn.caller.core.remove_connection(conn.caller.conn_id);
                let peer_ended = conn.peer_ended;
                drop(conn);
                let fd = stream.get_mut().as_raw_fd();
                // Boxed: only a closing connection carries its state.
                return Box::pin(close_gracefully(stream.get_mut(), fd, peer_ended)).await;
            };
            let socket = OwnedFd::from(stream.into_inner());
            let outbox = conn.outbox();
            outbox.parked(lot.unparks().clone(), conn.caller.conn_id);
            match park(lot, socket, Parked { conn, slot }) {
                Ok(()) => return,
                // Not watched: it goes on as a task.
                Err((socket, parked)) => {
                    outbox.resumed();
                    (conn, slot) = (parked.conn, parked.slot);
                    stream = RefCell::new(socket.into());
                }
            }
        }
    }
}

/// Puts a connection in the lot, counted.
#[expect(
    clippy::result_large_err,
    reason = "the error hands back what was passed in, on a path taken only when epoll refuses"
)]
fn park(lot: &Lot, socket: OwnedFd, parked: Parked) -> Result<(), (OwnedFd, Parked)> {
    let (conn_id, core) = (parked.conn.caller.conn_id, parked.conn.caller.core.clone());
    lot.park(conn_id, socket, parked)?;
    CoreMetrics::inc(&core.metrics().parked);
    Ok(())
}

/// Resumes this core's parked connections as they are woken (readable, or
/// written to), each in a task of its own again, except those whose only
/// news was a heartbeat: answered here, they stay parked.
pub async fn resume_parked(lot: Rc<Lot>) {
    let mut woken = Vec::new();
    loop {
        lot.woken(&mut woken).await;
        for (_, socket, mut parked, why) in woken.drain(..) {
            let core = parked.conn.caller.core.clone();
            core.metrics().parked.fetch_sub(1, Ordering::Relaxed);
            let parked_again =
                if why == Woken::Readable && answered_while_parked(&mut parked.conn, &socket) {
                    CoreMetrics::inc(&core.metrics().parked_heartbeats);
                    park(&lot, socket, parked)
                } else {
                    Err((socket, parked))
                };
            if let Err((socket, parked)) = parked_again {
                resume(&lot, socket, parked);
            }
        }
    }
}

/// Makes a parked connection a task again.
fn resume(lot: &Rc<Lot>, socket: OwnedFd, Parked { conn, slot }: Parked) {
    // Before anything else can run: a push from here on wakes the task,
    // not the lot.
    conn.outbox().resumed();
    let resumed = serve_plain(conn, socket.into(), slot, Some(lot.clone()));
    glommio::spawn_local(resumed).detach();
}

/// Largest frame answered while parked: a heartbeat is a dozen bytes.
const PARKED_FRAME_MAX: usize = 64;

/// Answers a heartbeat waiting alone on a parked connection's socket, as
/// its task would: the frame is counted against the rate, the idle clock
/// restarts, the ack goes straight to the socket. `false` leaves the
/// socket untouched (anything else, more than one frame, a frame over the
/// rate, a closed peer): the task reads it. Once the heartbeat is
/// consumed, an ack the socket cannot take whole goes, or its rest goes,
/// into the outbox and the connection is resumed to write it.
fn answered_while_parked(conn: &mut Connection, socket: &OwnedFd) -> bool {
    let fd = socket.as_raw_fd();
    let mut frame = [0u8; PARKED_FRAME_MAX];
    let peeked = match recv(fd, &mut frame, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(peeked) if peeked > HEADER_LEN => peeked,
        _ => return false,
    };
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&frame[..HEADER_LEN]);
    let max_frame = conn.caller.core.shared.config.server.max_frame_bytes;
    let Ok(body_len) = codec::body_len(header, max_frame) else {
        return false;
    };
    if HEADER_LEN + body_len != peeked {
        return false;
    }
    let Ok(envelope) = codec::decode_body(&frame[HEADER_LEN..peeked]) else {
        return false;
    };
    let (Some(Body::Heartbeat(_)), Some(session)) = (&envelope.body, &conn.session) else {
        return false;
    };
    let user_id = session.user_id;
    // A refused frame costs the task's check a second token: rare, and
    // only stricter.
    let now = std::time::Instant::now();
    if conn.frame_verdict(now) != Verdict::Allow {
        return false;
    }
    match recv(fd, &mut frame[..peeked], MsgFlags::MSG_DONTWAIT) {
        Ok(read) if read == peeked => {}
        // Not possible with the bytes peeked; the task finds out.
        _ => return false,
    }
    let outbox = conn.outbox();
    outbox.touch(now);
    let metrics = conn.caller.core.metrics();
    CoreMetrics::inc(&metrics.frames_in);
    conn.caller.core.touch_directory(user_id);
    let ack = encode_frame(&Envelope::new(
        envelope.req_id,
        Body::HeartbeatAck(pb::HeartbeatAck {
            server_time_ms: now_ms() as i64,
        }),
    ));
    let sent = send(fd, &ack, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL).unwrap_or(0);
    if sent == ack.len() {
        CoreMetrics::inc(&metrics.frames_out);
        return true;
    }
    // The peer does not read; its task writes the rest (or closes it as a
    // slow reader).
    let _ = outbox.push(ack.slice(sent..));
    false
}
