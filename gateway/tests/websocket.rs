//! Browsers' WebSocket listener (`server.ws_listen`): a client over
//! WebSocket registers, logs in and chats both ways with a plain TCP client
//! (one binary message = one envelope, also sent in fragments); pings are
//! answered; another
//! site's page (`Origin`) and any path but `/ws` are refused at the
//! upgrade; a text message is closed with 1003 and a message over
//! `server.max_frame_bytes` with 1009. With `tls.ws` the listener speaks
//! WSS with the `tls.*` pair, and a plain upgrade there gets nowhere. With
//! `server.web_root` the same port serves the web app's files (CSP,
//! precompressed forms, cache lifetimes, nothing outside the folder),
//! and a folder without `index.html` stops the node at start.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::{self, Message, WebSocket};
use ourchat_protocol::{codec, pb, Body, Envelope};
use ourchat_testkit::{free_port, start_node, user_on, TEST_PASSWORD};

const WAIT: Duration = Duration::from_secs(10);

type Ws = WebSocket<TcpStream>;

// tungstenite's own error type, as the client returns it.
#[allow(clippy::result_large_err)]
fn connect(addr: SocketAddr, path: &str, origin: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("a header value"));
    }
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    tungstenite::client(request, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => {
                tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
            }
        })
}

/// The envelope as one binary message: the frame without its length.
fn send(ws: &mut Ws, req_id: u32, body: Body) {
    let frame = codec::encode_to_vec(&Envelope::new(req_id, body));
    ws.send(Message::Binary(frame[codec::HEADER_LEN..].to_vec().into()))
        .expect("send");
}

/// The next envelope (pings and pongs skipped).
fn next(ws: &mut Ws) -> Envelope {
    loop {
        match ws.read().expect("a message") {
            Message::Binary(body) => return codec::decode_body(&body).expect("an envelope"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The answer to `req_id` (pushes before it skipped).
fn call(ws: &mut Ws, req_id: u32, body: Body) -> Body {
    send(ws, req_id, body);
    loop {
        let envelope = next(ws);
        if envelope.req_id == req_id {
            return envelope.body.expect("a body");
        }
    }
}

/// The close code the server ends with.
fn closed_with(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

#[test]
fn a_browser_client_chats_with_a_tcp_client_and_bad_peers_are_refused() {
    let ws_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let server = start_node!(2,
        "server.ws_listen" => ws_addr,
        "server.ws_allowed_origins" => "[\"https://chat.example\"]",
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let mut alice =
        connect(ws_addr, "/ws", Some(&format!("http://{ws_addr}"))).expect("own origin");
    let register = pb::RegisterRequest {
        username: "alice_ws".into(),
        password: TEST_PASSWORD.into(),
        ..Default::default()
    };
    let Body::RegisterResp(registered) = call(&mut alice, 1, Body::Register(register)) else {
        panic!("no register reply");
    };
    assert!(registered.success, "{registered:?}");
    let login = pb::LoginRequest {
        username: "alice_ws".into(),
        password: TEST_PASSWORD.into(),
        device_id: "browser".into(),
        device_type: "web".into(),
        ..Default::default()
    };
    let Body::LoginResp(logged_in) = call(&mut alice, 2, Body::Login(login)) else {
        panic!("no login reply");
    };
    assert!(logged_in.success, "{logged_in:?}");
    let alice_id = logged_in.user_id;

    let (bob, bob_session) = runtime.block_on(user_on(server.addr, "bob", "plain"));
    let text = pb::SendMessageRequest {
        receiver_id: bob_session.user_id,
        content: "over WebSocket".into(),
        client_message_id: 1,
        ..Default::default()
    };
    let Body::SendResp(sent) = call(&mut alice, 3, Body::Send(text)) else {
        panic!("no send reply");
    };
    assert!(sent.success, "{sent:?}");
    let pushed = runtime
        .block_on(bob.next_message(WAIT))
        .expect("pushed over TCP");
    assert_eq!(
        (pushed.content.as_str(), pushed.seq),
        ("over WebSocket", sent.seq)
    );
    runtime
        .block_on(bob.send_text(alice_id, "over TCP"))
        .expect("bob sends");
    let push = loop {
        if let Some(Body::PushMessage(message)) = next(&mut alice).body {
            break message;
        }
    };
    assert_eq!(push.content, "over TCP");
    alice
        .send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    let pong = loop {
        if let Message::Pong(data) = alice.read().unwrap() {
            break data;
        }
    };
    assert_eq!(&pong[..], b"are you there");
    alice.send(Message::Text("hello".into())).unwrap();
    assert_eq!(closed_with(&mut alice), Some(CloseCode::Unsupported));

    // Another site's page, and any other path, are refused at the upgrade;
    // a listed origin and a client that sends none are let in.
    let refused = |result: Result<Ws, tungstenite::Error>| match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        other => panic!("expected a refusal, got {:?}", other.map(|_| "a socket")),
    };
    assert_eq!(
        refused(connect(ws_addr, "/ws", Some("https://evil.example"))),
        403
    );
    assert_eq!(refused(connect(ws_addr, "/other", None)), 404);
    connect(ws_addr, "/ws", Some("https://chat.example")).expect("a listed origin");
    let mut tool = connect(ws_addr, "/ws", None).expect("no origin: not a browser");
    assert!(server.metric("ourchat_ws_upgrades_refused_total") >= 2.0);

    // Bigger than a frame may be: closed with 1009.
    tool.send(Message::Binary(vec![7u8; 70 * 1024].into()))
        .unwrap();
    assert_eq!(closed_with(&mut tool), Some(CloseCode::Size));
}

#[test]
fn wss_serves_the_protocol_over_tls_with_the_nodes_pair() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let certs = ourchat_gateway::tls::generate_dev_pair(dir.path(), &["localhost".into()]).unwrap();
    let wss: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _server = start_node!(1,
        "server.ws_listen" => wss,
        "tls.ws" => true,
        "tls.cert_file" => certs.cert.display(),
        "tls.key_file" => certs.key.display(),
    );
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(&certs.ca_cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let session = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let socket = TcpStream::connect(wss).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let tls = rustls::StreamOwned::new(session, socket);
    let request = format!("wss://localhost:{}/ws", wss.port())
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tungstenite::client(request, tls).expect("WSS upgrade");
    let register = pb::RegisterRequest {
        username: "carol_wss".into(),
        password: TEST_PASSWORD.into(),
        ..Default::default()
    };
    let frame = codec::encode_to_vec(&Envelope::new(1, Body::Register(register)));
    ws.send(Message::Binary(frame[codec::HEADER_LEN..].to_vec().into()))
        .unwrap();
    let reply = loop {
        if let Message::Binary(body) = ws.read().unwrap() {
            break codec::decode_body(&body).unwrap();
        }
    };
    match reply.body {
        Some(Body::RegisterResp(registered)) => assert!(registered.success, "{registered:?}"),
        other => panic!("no register reply: {other:?}"),
    }
    // A plain upgrade on the WSS port gets no socket.
    assert!(connect(wss, "/ws", None).is_err());
}

/// One raw HTTP/1.1 exchange: the whole answer (the node closes after it).
fn http(addr: SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("writes");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("reads to the close");
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn the_same_port_serves_the_web_app_and_the_upgrade() {
    let root = tempfile::tempdir().expect("a temp dir");
    std::fs::create_dir_all(root.path().join("assets")).expect("mkdir");
    std::fs::write(root.path().join("index.html"), "<!doctype html><p>hi").expect("write");
    std::fs::write(root.path().join("assets/app-9f8e.js"), "plain()").expect("write");
    std::fs::write(root.path().join("assets/app-9f8e.js.gz"), "gzipped").expect("write");
    let ws_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _server = start_node!(2,
        "server.ws_listen" => ws_addr,
        "server.web_root" => format!("{:?}", root.path().display().to_string()),
    );

    let index = http(ws_addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(index.starts_with("HTTP/1.1 200 OK\r\n"), "{index}");
    assert!(index.contains("Content-Security-Policy: default-src 'none'"));
    assert!(index.contains("Cache-Control: no-cache\r\n"));
    assert!(index.ends_with("<!doctype html><p>hi"));
    let script = http(
        ws_addr,
        "GET /assets/app-9f8e.js HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, br\r\n\r\n",
    );
    assert!(script.contains("Content-Encoding: gzip\r\n"), "{script}");
    assert!(script.contains("immutable"));
    assert!(script.ends_with("gzipped"));
    let missing = http(ws_addr, "GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    let garbage = http(ws_addr, "\x16\x03\x01garbage\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");

    // The upgrade still works on the same port, its request read twice.
    let mut ws = connect(ws_addr, "/ws", Some(&format!("http://{ws_addr}"))).expect("upgrades");
    let register = pb::RegisterRequest {
        username: "web_root_user".into(),
        password: TEST_PASSWORD.into(),
        ..Default::default()
    };
    let Body::RegisterResp(registered) = call(&mut ws, 1, Body::Register(register)) else {
        panic!("a register reply");
    };
    assert!(registered.success, "{registered:?}");
}

#[test]
fn a_web_root_needs_the_websocket_listener_and_an_index() {
    let root = tempfile::tempdir().expect("a temp dir");
    let dir = format!("{:?}", root.path().display().to_string());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ourchat"))
        .args(["serve", "--data-dir"])
        .arg(root.path().join("data"))
        .args(["--set", &format!("server.web_root={dir}")])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("server.ws_listen"), "{said}");

    let ws_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ourchat"))
        .args(["serve", "--data-dir"])
        .arg(root.path().join("data"))
        .args(["--set", &format!("server.web_root={dir}")])
        .args(["--set", &format!("server.ws_listen=\"{ws_addr}\"")])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("has no index.html"), "{said}");
}
