//! Moving a plain-TCP connection to its user's core at login. The kernel
//! hashes a connection to a core at accept, before anyone knows whose it
//! is; the user's own core (`Core::owner_of_user`) keeps the user's online
//! devices. Left where it landed, every push to the user crosses from that
//! core to the connection's, and with N cores that is most of them. Moved,
//! the user's core pushes to the user's connections itself.
//!
//! The move happens once the login is granted and before it takes effect:
//! the connection on the core that accepted it stops at a frame boundary
//! (the parking machinery: nothing buffered, nothing queued), its socket
//! and what the connection knows (its address's slot, its frame limiter,
//! its failed logins, the grant) cross the mesh as [`CoreMsg::Adopt`], and
//! the user's core registers the device, answers the login and serves the
//! connection from then on. Nothing was registered for it on the first
//! core, so no push or answer can be on its way there. A connection that
//! already sent more bytes after its login (a pipelined request) stays
//! where it is: correct either way, only slower.

use std::os::fd::OwnedFd;
use std::rc::Rc;

use glommio::net::TcpStream;

use super::parked::serve_plain;
use super::{Connection, Lot};
use crate::account::LoginGrant;
use crate::core::{Core, CoreMsg};
use crate::limits::{FrameLimiter, IpSlot};
use crate::metrics::CoreMetrics;

/// A granted login waiting for its connection to stop, to move.
pub(super) struct Moving {
    req_id: u32,
    grant: LoginGrant,
    device_type: String,
}

/// A connection crossing to its user's core: its socket, at a frame
/// boundary, and all its first core knew of it.
pub struct Handover {
    socket: OwnedFd,
    peer: Option<std::net::IpAddr>,
    slot: Option<IpSlot>,
    frames: FrameLimiter,
    login_failures: u32,
    req_id: u32,
    grant: LoginGrant,
    device_type: String,
}

impl Connection {
    /// Asks this connection to stop and move to the granted user's core;
    /// the grant comes back when it stays (already there, moves turned
    /// off, not parkable, more bytes read after the login).
    pub(super) fn move_to_owner(
        &mut self,
        req_id: u32,
        grant: LoginGrant,
        device_type: &str,
    ) -> Result<(), LoginGrant> {
        let core = &self.caller.core;
        let owner = core.owner_of_user(grant.user_id());
        let stays =
            owner == core.id || !core.shared.config.server.move_to_user_core || self.reads_ahead;
        if stays || !self.outbox.ask_to_park() {
            return Err(grant);
        }
        self.moving = Some(Box::new(Moving {
            req_id,
            grant,
            device_type: device_type.to_string(),
        }));
        Ok(())
    }
}

/// Sends a connection, stopped because its login asked it to move, to its
/// user's core.
pub(super) fn hand_over(conn: Connection, moving: Moving, stream: TcpStream, slot: Option<IpSlot>) {
    let Moving {
        req_id,
        grant,
        device_type,
    } = moving;
    let core = conn.caller.core.clone();
    let owner = core.owner_of_user(grant.user_id());
    core.remove_connection(conn.caller.conn_id);
    CoreMetrics::inc(&core.metrics().handed_over);
    let handover = Handover {
        socket: OwnedFd::from(stream),
        peer: conn.caller.peer,
        slot,
        frames: conn.frames,
        login_failures: conn.login_failures,
        req_id,
        grant,
        device_type,
    };
    core.forward(owner, CoreMsg::Adopt(Box::new(handover)));
}

/// Takes a connection handed over by another core: registers its device
/// here, answers its login, and serves it as a task of this core.
pub fn adopt(core: &Rc<Core>, handover: Box<Handover>, lot: Option<Rc<Lot>>) {
    let Handover {
        socket,
        peer,
        slot,
        frames,
        login_failures,
        req_id,
        grant,
        device_type,
    } = *handover;
    let mut conn = Connection::register(core.clone(), peer, lot.is_some(), frames);
    conn.login_failures = login_failures;
    let stream = TcpStream::from(socket);
    glommio::spawn_local(async move {
        conn.finish_login(req_id, grant, &device_type).await;
        // A task of its own, as an accepted connection's: this one's state
        // (the login's, and the handover's fields) is not carried for the
        // connection's life.
        glommio::spawn_local(serve_plain(conn, stream, slot, lot)).detach();
    })
    .detach();
}
