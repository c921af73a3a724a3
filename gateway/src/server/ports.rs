//! The client ports checked before and after the cores bind them: another
//! process listening there (which SO_REUSEPORT would let share them)
//! refuses the start; and the node's own listeners bound with their names
//! in the error.

use std::net::SocketAddr;
use std::time::Duration;

use super::{CoreAddrs, ServeError};
use crate::config::Config;

/// Refuses to start when another process already listens on a client
/// port. The cores bind with SO_REUSEPORT (one listener each), which the
/// kernel also grants to another process of the same user: it would then
/// split the connections between the two nodes without a word. Whether
/// something listens is asked by connecting (a plain bind would also trip
/// over the sockets a killed node left behind, and refuse a restart).
/// Two nodes started at the same instant both pass it; once bound, they
/// are caught by [`refuse_shared_listeners`].
pub(super) fn refuse_taken_ports(config: &Config) -> Result<(), ServeError> {
    let client_ports = client_listeners(
        config.server.listen,
        config.tls.listen.parse().ok(),
        config.server.ws_listen.parse().ok(),
    );
    for (what, addr) in client_ports {
        let Some(addr) = addr.filter(|addr| addr.port() != 0) else {
            continue;
        };
        let mut probe = addr;
        if addr.ip().is_unspecified() {
            probe.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(300)).is_ok() {
            let source = std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "Address already in use: another process listens on it",
            );
            return Err(ServeError::Listen { what, addr, source });
        }
    }
    Ok(())
}

/// Refuses to go on when the kernel lists more sockets listening on one
/// of the cores' client addresses than the cores opened there: another
/// process bound it too, between the connect probe of
/// [`refuse_taken_ports`] and now (`shared_port`).
pub(super) fn refuse_shared_listeners(bound: &[CoreAddrs]) -> Result<(), ServeError> {
    // Each address once, with how many of the cores listen on it.
    let mut ours: Vec<(&'static str, SocketAddr, usize)> = Vec::new();
    let listeners = bound.iter().flat_map(CoreAddrs::client_listeners);
    for (what, addr) in listeners.filter_map(|(what, addr)| Some((what, addr?))) {
        match ours.iter_mut().find(|(_, seen, _)| *seen == addr) {
            Some((_, _, cores)) => *cores += 1,
            None => ours.push((what, addr, 1)),
        }
    }
    let tables = crate::shared_port::ListenTables::read();
    for (what, addr, cores) in ours {
        if let Some(listening) = tables.listeners_on(addr).filter(|n| *n > cores) {
            let source = std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another process listens on it too ({listening} listening sockets, \
                     {cores} of them this node's)"
                ),
            );
            return Err(ServeError::Listen { what, addr, source });
        }
    }
    Ok(())
}

/// A node's client listeners, each named as its setting is.
pub(super) fn client_listeners(
    plain: SocketAddr,
    tls: Option<SocketAddr>,
    ws: Option<SocketAddr>,
) -> [(&'static str, Option<SocketAddr>); 3] {
    [
        ("the client listener (server.listen)", Some(plain)),
        ("the TLS listener (tls.listen)", tls),
        ("the WebSocket listener (server.ws_listen)", ws),
    ]
}

/// Binds a listener of the node's own (admin, gRPC), naming it and its
/// address when the port is taken.
pub(super) fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<std::net::TcpListener, ServeError> {
    std::net::TcpListener::bind(addr).map_err(|source| ServeError::Listen { what, addr, source })
}
