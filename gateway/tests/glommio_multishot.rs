//! The patched glommio's stream reads (`vendor/glommio/OURCHAT-PATCH.md`):
//! a stream keeps one multishot readiness poll armed for its life instead
//! of a new one-shot poll after every read. This checks what that must
//! keep: every byte is read, including what a read that filled its buffer
//! left behind (no new readiness event tells of it), and the end of the
//! stream is seen; a stream dropped while its poll is armed leaves the
//! next streams (which reuse its descriptor) working; and the poll is
//! really kept: five for a thousand reads (four one-shot, then one kept),
//! where one-shot polls take one per read.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream as StdStream};
use std::thread;
use std::time::Duration;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;

/// Runs `serve` on a fresh executor with a listener on a free loopback
/// port, and `client` on a thread of its own against that port.
fn with_server<S, F, C, T>(serve: S, client: C) -> (T, F::Output)
where
    S: FnOnce(TcpListener) -> F + Send + 'static,
    F: std::future::Future + 'static,
    F::Output: Send + 'static,
    C: FnOnce(u16) -> T,
{
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let server = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
            let port = listener.local_addr().expect("its address").port();
            port_tx.send(port).expect("the test waits for the port");
            serve(listener).await
        })
        .expect("an executor");
    let port = port_rx.recv().expect("the server's port");
    let client = client(port);
    (client, server.join().expect("the server ran"))
}

/// One-byte round trips a stream makes first: the patch keeps its poll
/// armed only after a stream's first four reads, which are one-shot.
const WARM_UP: u8 = 5;

/// The server's side of the warm-up: echo [`WARM_UP`] bytes one by one.
async fn warm_up(stream: &mut glommio::net::TcpStream) {
    let mut byte = [0u8; 1];
    for _ in 0..WARM_UP {
        stream.read_exact(&mut byte).await.expect("a warm-up byte");
        stream.write_all(&byte).await.expect("echoed");
    }
}

/// The client's side of the warm-up.
fn warm_up_client(client: &mut StdStream) {
    for i in 0..WARM_UP {
        client.write_all(&[i]).expect("written");
        let mut echo = [0u8; 1];
        client.read_exact(&mut echo).expect("echo");
        assert_eq!(echo, [i]);
    }
}

/// Everything until the end of the stream, read `chunk` bytes at a time.
async fn read_to_end_by(stream: &mut glommio::net::TcpStream, chunk: usize) -> Vec<u8> {
    let mut read = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        let n = stream.read(&mut buf).await.expect("a read");
        if n == 0 {
            return read;
        }
        read.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn every_piece_is_read_with_what_a_full_buffer_left_and_the_end() {
    let pieces: [&[u8]; 3] = [b"0123456789", b"abc", b"z"];
    let sent: Vec<u8> = pieces.concat();
    let ((), read) = with_server(
        |listener| async move {
            let mut stream = listener.accept().await.expect("a connection");
            warm_up(&mut stream).await;
            // Four bytes at a time: the first piece fills the buffer twice
            // and leaves two bytes that no new event announces.
            read_to_end_by(&mut stream, 4).await
        },
        |port| {
            let mut client = StdStream::connect(("127.0.0.1", port)).expect("connected");
            warm_up_client(&mut client);
            for piece in pieces {
                client.write_all(piece).expect("written");
                thread::sleep(Duration::from_millis(30));
            }
            client.shutdown(Shutdown::Write).expect("ended");
        },
    );
    assert_eq!(read, sent);
}

#[test]
fn streams_dropped_with_their_poll_armed_leave_the_next_ones_working() {
    const STREAMS: usize = 200;
    let (clients, answered) = with_server(
        |listener| async move {
            let mut answered = 0;
            for _ in 0..STREAMS {
                let mut stream = listener.accept().await.expect("a connection");
                warm_up(&mut stream).await;
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).await.expect("its byte");
                stream.write_all(&byte).await.expect("echoed");
                answered += 1;
                // Dropped with its poll armed and its client still there:
                // the next accept most likely reuses the descriptor.
            }
            answered
        },
        |port| {
            (0..STREAMS)
                .map(|i| {
                    let mut client = StdStream::connect(("127.0.0.1", port)).expect("connected");
                    warm_up_client(&mut client);
                    let byte = [i as u8];
                    client.write_all(&byte).expect("written");
                    let mut echo = [0u8; 1];
                    client.read_exact(&mut echo).expect("echo");
                    assert_eq!(echo, byte, "stream {i}");
                    client
                })
                .collect::<Vec<_>>()
        },
    );
    assert_eq!(answered, STREAMS);
    // The server ended: its end of every stream is closed.
    for mut client in clients {
        let mut rest = Vec::new();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a timeout");
        assert_eq!(client.read_to_end(&mut rest).expect("the end"), 0);
    }
}

#[test]
fn a_stream_keeps_one_poll_over_a_thousand_reads_after_its_first_four() {
    const ROUND_TRIPS: u64 = 1_000;
    let ((), [kept, one_shot]) = with_server(
        |listener| async move {
            let mut armed = [0u64; 2];
            for keep in [true, false] {
                glommio::net::keep_read_polls(keep);
                let before = glommio::net::read_polls_armed();
                let mut stream = listener.accept().await.expect("a connection");
                // Room for more than a round trip's byte, as a connection's
                // reads have: each read leaves the socket empty.
                let mut buf = [0u8; 64];
                for _ in 0..ROUND_TRIPS {
                    let n = stream.read(&mut buf).await.expect("a byte");
                    assert_eq!(n, 1);
                    stream.write_all(&buf[..n]).await.expect("echoed");
                }
                armed[usize::from(!keep)] = glommio::net::read_polls_armed() - before;
            }
            glommio::net::keep_read_polls(true);
            armed
        },
        |port| {
            for _ in 0..2 {
                let mut client = StdStream::connect(("127.0.0.1", port)).expect("connected");
                client.set_nodelay(true).expect("no delay");
                for i in 0..ROUND_TRIPS {
                    let byte = [i as u8];
                    client.write_all(&byte).expect("written");
                    let mut echo = [0u8; 1];
                    client.read_exact(&mut echo).expect("echo");
                    assert_eq!(echo, byte);
                }
            }
        },
    );
    // One-shot for a stream's first reads (the patch's ONE_SHOT_READS,
    // four), then one poll for the rest of its life.
    assert!(kept <= 5, "{kept} polls kept");
    // Glommio as published: a poll per read (and one when the stream opens).
    assert!(one_shot >= ROUND_TRIPS, "{one_shot} polls one-shot");
}

#[test]
fn bytes_and_the_end_that_arrive_together_are_both_read() {
    for round in 0..50 {
        let ((), read) = with_server(
            |listener| async move {
                let mut stream = listener.accept().await.expect("a connection");
                warm_up(&mut stream).await;
                let reading = read_to_end_by(&mut stream, 64);
                glommio::timer::timeout(Duration::from_secs(5), async { Ok(reading.await) })
                    .await
                    .ok()
            },
            |port| {
                let mut client = StdStream::connect(("127.0.0.1", port)).expect("connected");
                warm_up_client(&mut client);
                // An unfinished frame and the end, back to back: the end
                // may come in the same readiness event as the bytes.
                client.write_all(b"\x00\x00\x05").expect("written");
                client.shutdown(Shutdown::Write).expect("ended");
            },
        );
        assert_eq!(
            read.as_deref(),
            Some(&b"\x00\x00\x05"[..]),
            "round {round}: the end never came"
        );
    }
}
