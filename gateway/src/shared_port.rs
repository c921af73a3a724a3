//! Whether another process listens on one of the node's client ports
//! alongside it. The cores bind their client listeners with SO_REUSEPORT
//! (one each), which the kernel also grants to any other process of the
//! same user: two nodes started on one port at the same instant would
//! both pass the connect probe made before binding (neither listens yet)
//! and then split the connections between them without a word. Once
//! every core listens, the node counts the listening sockets the kernel
//! lists on its address (`/proc/net/tcp`, `/proc/net/tcp6`): more than
//! its cores means a stranger shares the port, and the node refuses to
//! start. Of two nodes racing, the later to count always sees both.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The state `/proc/net/tcp` gives a listening socket.
const LISTEN: &str = "0A";

/// The kernel's TCP socket tables, read once for all the node's addresses.
pub struct ListenTables {
    v4: Option<String>,
    v6: Option<String>,
}

impl ListenTables {
    /// `/proc/net/tcp` and `/proc/net/tcp6`, as far as they can be read.
    pub fn read() -> Self {
        ListenTables {
            v4: std::fs::read_to_string("/proc/net/tcp").ok(),
            v6: std::fs::read_to_string("/proc/net/tcp6").ok(),
        }
    }

    /// How many sockets listen on exactly `addr`; `None` when its table
    /// could not be read (not Linux, no /proc).
    pub fn listeners_on(&self, addr: SocketAddr) -> Option<usize> {
        let table = match addr {
            SocketAddr::V4(_) => self.v4.as_deref()?,
            SocketAddr::V6(_) => self.v6.as_deref()?,
        };
        Some(count_listeners(table, addr))
    }
}

/// The listening sockets on `addr` in the text of a `/proc/net/tcp`-style
/// table (a header line, then one socket per line: `sl local rem st ...`).
pub fn count_listeners(table: &str, addr: SocketAddr) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let (Some(local), Some(_remote), Some(state)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return false;
            };
            state == LISTEN && parse_local(local) == Some(addr)
        })
        .count()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the address
/// is printed as 32-bit words in the machine's byte order, the port in hex.
fn parse_local(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = [0u8; 16];
    let words = ip.len() / 8;
    if ip.len() % 8 != 0 || !(words == 1 || words == 4) {
        return None;
    }
    for (word, chunk) in ip.as_bytes().chunks(8).enumerate() {
        let hex = std::str::from_utf8(chunk).ok()?;
        let value = u32::from_str_radix(hex, 16).ok()?;
        bytes[word * 4..word * 4 + 4].copy_from_slice(&value.to_ne_bytes());
    }
    let ip = if words == 1 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_line_reads_back_as_its_address() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            \x20  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1\n\
            \x20  1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000 0 0 2 1\n\
            \x20  2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 3 1\n";
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        // The connected socket (01) is not a listener; 0.0.0.0 is another address.
        assert_eq!(count_listeners(table, addr), 1);
        assert_eq!(count_listeners(table, "0.0.0.0:8080".parse().unwrap()), 1);
        let v6 = "00000000000000000000000001000000:1F90";
        assert_eq!(parse_local(v6), Some("[::1]:8080".parse().unwrap()));
        assert_eq!(parse_local("garbage"), None);
        assert_eq!(parse_local("0100007F:zz"), None);
    }

    /// Listeners bound as the cores bind theirs (glommio: SO_REUSEPORT).
    #[test]
    fn a_second_process_on_the_port_is_counted() {
        glommio::LocalExecutor::default().run(async {
            let first = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = first.local_addr().unwrap();
            assert_eq!(ListenTables::read().listeners_on(addr), Some(1));
            // What a second node's core would add: the kernel lets it bind.
            let second = glommio::net::TcpListener::bind(addr).unwrap();
            assert_eq!(second.local_addr().unwrap(), addr);
            assert_eq!(ListenTables::read().listeners_on(addr), Some(2));
        });
    }
}
