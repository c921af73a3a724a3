//! TLS beside plain TCP, with a pair from `ourchat gen-cert`: a TLS client
//! and a plain one share a conversation; TLS 1.2 works as well as 1.3; a
//! client trusting another CA, a plain-text peer on the TLS port and a
//! peer that never finishes its handshake are refused without disturbing
//! anyone else; gRPC serves TLS with the same certificate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ourchat_client::{Client, TlsSettings};
use ourchat_testkit::{free_port, start_node, user_on, ServerProcess, TEST_PASSWORD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

/// Runs `ourchat gen-cert` into `dir`.
fn gen_cert(dir: &Path) {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ourchat"))
        .args(["gen-cert", "--out"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run ourchat gen-cert");
    assert!(status.success());
    for file in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(dir.join(file).exists(), "{file} written");
    }
}

/// A node with client TLS on a free port and gRPC over TLS.
fn tls_node(dir: &Path) -> (ServerProcess, SocketAddr) {
    let tls: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let server = start_node!(2,
        "tls.listen" => tls,
        "tls.cert_file" => dir.join("cert.pem").display(),
        "tls.key_file" => dir.join("key.pem").display(),
        "tls.grpc" => true,
        "server.login_timeout_ms" => 1000,
    );
    (server, tls)
}

async fn tls_user(tls: SocketAddr, settings: &TlsSettings, name: &str) -> (Client, i64) {
    let client = Client::connect_with(tls, Some(settings))
        .await
        .expect("TLS connect");
    let user_id = client
        .register(name, TEST_PASSWORD)
        .await
        .expect("register");
    client
        .login(name, TEST_PASSWORD, "tls-device")
        .await
        .expect("login");
    (client, user_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plain_clients_chat_and_bad_peers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    gen_cert(dir.path());
    let (server, tls) = tls_node(dir.path());
    let settings = TlsSettings::from_ca_file(&dir.path().join("ca.pem"), "localhost").unwrap();

    // A peer that connects to the TLS port and never says a word: it must
    // not hold up anyone else's handshake, and is dropped at the deadline.
    let mut stalled = tokio::net::TcpStream::connect(tls).await.unwrap();

    let (alice, alice_id) = tls_user(tls, &settings, "alice").await;
    let (bob, bob_session) = user_on(server.addr, "bob", "plain").await;
    let ack = alice
        .send_text(bob_session.user_id, "over TLS")
        .await
        .unwrap();
    let pushed = bob.next_message(WAIT).await.expect("pushed to plain");
    assert_eq!((pushed.content.as_str(), pushed.seq), ("over TLS", ack.seq));
    bob.send_text(alice_id, "over TCP").await.unwrap();
    assert_eq!(alice.next_message(WAIT).await.unwrap().content, "over TCP");

    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(WAIT, stalled.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "stalled handshake closed at the login deadline"
    );

    // TLS 1.2 only client.
    let ca = rustls_roots(&dir.path().join("ca.pem"));
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(ca)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls12));
    let socket = tokio::net::TcpStream::connect(tls).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, socket).await.expect("TLS 1.2");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let old = Client::over(stream);
    old.login("alice", TEST_PASSWORD, "tls12")
        .await
        .expect("login over TLS 1.2");

    // A client trusting another CA refuses the server.
    let other = tempfile::tempdir().unwrap();
    gen_cert(other.path());
    let wrong = TlsSettings::from_ca_file(&other.path().join("ca.pem"), "localhost").unwrap();
    let refused = Client::connect_with(tls, Some(&wrong)).await;
    assert!(refused.is_err(), "unknown CA must fail the handshake");
    // And a name the certificate does not carry.
    let misnamed = TlsSettings::from_ca_file(&dir.path().join("ca.pem"), "example.org").unwrap();
    assert!(Client::connect_with(tls, Some(&misnamed)).await.is_err());

    // Plain-text protocol on the TLS port: refused, and the node goes on.
    let mut plain = tokio::net::TcpStream::connect(tls).await.unwrap();
    plain
        .write_all(&ourchat_protocol::codec::encode_to_vec(
            &ourchat_protocol::Envelope::new(
                1,
                ourchat_protocol::Body::Heartbeat(Default::default()),
            ),
        ))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut rest)).await;
    let (carol, carol_id) = tls_user(tls, &settings, "carol").await;
    carol.send_text(alice_id, "still fine").await.unwrap();
    // A TLS client that only waits gets pushes too.
    let (dave, dave_id) = tls_user(tls, &settings, "dave").await;
    bob.send_text(dave_id, "to a waiting TLS client")
        .await
        .unwrap();
    assert_eq!(
        dave.next_message(WAIT)
            .await
            .expect("push over TLS")
            .content,
        "to a waiting TLS client"
    );
    let _ = carol_id;
    assert!(server.metric("ourchat_tls_handshake_failures_total") >= 3.0);

    // A CA file that is not one is a clear error, not a panic.
    let err = TlsSettings::from_ca_file(&dir.path().join("key.pem"), "localhost").unwrap_err();
    assert!(err.to_string().contains("key.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_serves_tls_with_the_same_certificate() {
    use ourchat_protocol::pb::{auth_service_client::AuthServiceClient, *};
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let dir = tempfile::tempdir().unwrap();
    gen_cert(dir.path());
    let (server, _) = tls_node(dir.path());
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let channel = Channel::from_shared(format!("https://localhost:{}", server.grpc.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("gRPC over TLS");
    let mut auth = AuthServiceClient::new(channel);
    let registered = auth
        .register(RegisterRequest {
            username: "grpc-tls".into(),
            password: TEST_PASSWORD.into(),
            ..Default::default()
        })
        .await
        .expect("register over gRPC TLS")
        .into_inner();
    assert!(registered.success && registered.user_id > 0);

    // Plain HTTP/2 to the TLS port is refused.
    let plain = Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let mut auth = AuthServiceClient::new(plain);
        assert!(auth.register(RegisterRequest::default()).await.is_err());
    }
}

fn rustls_roots(ca: &Path) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}
