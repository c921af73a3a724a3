//! Whole client sessions against a real node (in-process, one core, the
//! embedded store in a temporary directory): each input is a sequence of
//! chunks `[kind: u8][len: u16 BE][bytes]`. Kind 0 writes the bytes to the
//! socket as they are (broken framing, garbage); any other kind decodes
//! them as an `Envelope` and sends it as a frame with a fresh req_id. The
//! session is logged in by token first, so every request handler is in
//! reach. After the input the harness hangs up its sending side; the node
//! must then answer the final heartbeat or close the connection (never hang), and must not panic (libFuzzer turns a panic on any thread
//! into a crash).
//!
//! Left out: Logout, ChangePassword and KickDevice, which would revoke the
//! one token every input logs in with (integration tests cover them).

#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ourchat_gateway::Config;
use ourchat_protocol::codec::{self, FrameDecoder};
use ourchat_protocol::pb;
use ourchat_protocol::{Body, Envelope};
use prost::Message;

const LAST_REQ: u32 = u32::MAX;

struct Node {
    addr: SocketAddr,
    token: String,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(start_node)
}

fn start_node() -> Node {
    let dir = std::env::temp_dir().join(format!("ourchat-fuzz-{}", std::process::id()));
    let overrides: Vec<(String, String)> = [
        ("storage.data_dir", dir.display().to_string()),
        ("storage.durability", "normal".into()),
        ("server.listen", "127.0.0.1:0".into()),
        ("server.admin_listen", String::new()),
        ("server.grpc_listen", String::new()),
        ("server.cores", "1".into()),
        ("server.pin_cores", "false".into()),
        ("limits.frames_per_sec", "1e9".into()),
        ("limits.frame_burst", "1e9".into()),
        ("limits.user_sends_per_sec", "1e9".into()),
        ("limits.user_send_burst", "1e9".into()),
        ("limits.registration_burst", "1e9".into()),
        ("limits.login_failures_per_user", "1000000".into()),
        ("limits.login_failures_per_ip", "1000000".into()),
        ("limits.max_connections_per_ip", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = Config::load(None, [], &overrides).expect("fuzz config");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let shutdown = Arc::new(AtomicBool::new(false));
        let _ = ourchat_gateway::serve(config, shutdown, |listening| {
            let _ = ready_tx.send(listening.client);
        });
    });
    let addr = ready_rx.recv().expect("node started");
    let mut stream = connect(addr);
    let register = pb::RegisterRequest {
        username: "fuzzer".into(),
        password: "fuzzer-password".into(),
        ..Default::default()
    };
    roundtrip(&mut stream, Body::Register(register));
    let login = pb::LoginRequest {
        username: "fuzzer".into(),
        password: "fuzzer-password".into(),
        device_id: "fuzz".into(),
        ..Default::default()
    };
    let token = match roundtrip(&mut stream, Body::Login(login)) {
        Some(Body::LoginResp(reply)) if reply.success => reply.token,
        other => panic!("fuzz login failed: {other:?}"),
    };
    Node { addr, token }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the fuzz node");
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_nodelay(true);
    stream
}

/// Sends one request and returns its reply body (`None`: closed).
fn roundtrip(stream: &mut TcpStream, body: Body) -> Option<Body> {
    let _ = stream.write_all(&codec::encode_to_vec(&Envelope::new(1, body)));
    read_until(stream, 1).and_then(|e| e.body)
}

/// Reads frames until the reply to `req_id`; `None` when the connection
/// closes. A read timeout means the node hung: that is a finding.
fn read_until(stream: &mut TcpStream, req_id: u32) -> Option<Envelope> {
    let decoder = FrameDecoder::new(16 << 20);
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Ok(Some(envelope)) = decoder.decode(&mut buf) {
            if envelope.req_id == req_id {
                return Some(envelope);
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("the node neither answered nor closed within 5 s")
            }
            Err(_) => return None,
        }
    }
}

fn revokes_the_token(body: &Body) -> bool {
    matches!(body, Body::Logout(_) | Body::ChangePassword(_) | Body::KickDevice(_))
}

fuzz_target!(|data: &[u8]| {
    let node = node();
    let mut stream = connect(node.addr);
    let login = pb::LoginRequest {
        token: node.token.clone(),
        ..Default::default()
    };
    match roundtrip(&mut stream, Body::Login(login)) {
        Some(Body::LoginResp(reply)) if reply.success => {}
        other => panic!("token login failed: {other:?}"),
    }
    let mut out = Vec::new();
    let mut rest = data;
    let mut req_id = 2u32;
    while let [kind, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        if *kind == 0 {
            out.extend_from_slice(bytes);
            continue;
        }
        let Ok(mut envelope) = Envelope::decode(bytes) else {
            continue;
        };
        if envelope.body.as_ref().is_some_and(revokes_the_token) {
            continue;
        }
        envelope.req_id = req_id;
        req_id += 1;
        out.extend(codec::encode_to_vec(&envelope));
    }
    out.extend(codec::encode_to_vec(&Envelope::new(
        LAST_REQ,
        Body::Heartbeat(pb::Heartbeat::default()),
    )));
    if stream.write_all(&out).is_ok() {
        // Raw chunks can leave a frame unfinished, which the node rightly
        // waits for (up to the idle timeout); hanging up says there is no
        // more, so the node must now answer or close at once.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Answered, or closed for a reason (bad frame, flood...): both fine.
        let _ = read_until(&mut stream, LAST_REQ);
    }
});
