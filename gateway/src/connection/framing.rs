//! Cutting a connection's byte stream into envelopes. A read goes into the
//! core's scratch buffer, which usually brings a whole frame (often
//! several) at once: one `recv` per frame where reading the header and
//! then the body took two, plus a third that found the socket empty. A
//! connection keeps bytes of its own only while a frame is split across
//! reads, or a second frame came with the first; an idle one keeps none.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::io::AsyncRead;
use ourchat_protocol::codec::{self, FrameError, HEADER_LEN};
use ourchat_protocol::Envelope;

/// Big enough for any chat frame of the default limits in one read; a
/// frame larger than this is read straight into the connection's buffer.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    /// One per core: connections on a core never read at the same time.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// What the rest of the connection asks of its reader, looked at before
/// each read and whenever the connection's task is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// Go on reading.
    Nothing,
    /// Park, once no frame is begun.
    Park,
    /// Stop now: the connection is closing (a kick, a timeout, a flood, a
    /// slow reader: the reason is already queued). Frames read and not
    /// yet handled are dropped with the connection.
    Close,
}

/// Why reading stopped.
#[derive(Debug)]
pub(super) enum ReadEnd {
    /// The socket failed, or the connection is closing.
    Closed,
    /// The peer ended its stream: everything it sent was read.
    PeerEnded,
    /// A frame the protocol does not allow.
    Bad(FrameError),
    /// Asked to park, with no frame begun.
    Park,
}

/// A connection's reading side: the bytes read past the last whole frame.
#[derive(Default)]
pub(super) struct FrameReader {
    buffered: Vec<u8>,
}

impl FrameReader {
    /// The next frame's envelope, unless `asked` says to stop first.
    pub(super) async fn next<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        max_frame: usize,
        asked: impl Fn() -> Asked,
    ) -> Result<Envelope, ReadEnd> {
        std::future::poll_fn(|cx| self.poll_next(cx, reader, max_frame, &asked)).await
    }

    fn poll_next<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        max_frame: usize,
        asked: &impl Fn() -> Asked,
    ) -> Poll<Result<Envelope, ReadEnd>> {
        loop {
            if asked() == Asked::Close {
                return Poll::Ready(Err(ReadEnd::Closed));
            }
            if let Some(envelope) = self.take_buffered(max_frame).map_err(ReadEnd::Bad)? {
                return Poll::Ready(Ok(envelope));
            }
            if self.buffered.is_empty() && asked() == Asked::Park {
                return Poll::Ready(Err(ReadEnd::Park));
            }
            let large = frame_len(&self.buffered, max_frame)
                .map_err(ReadEnd::Bad)?
                .filter(|&len| len > SCRATCH_BYTES);
            if let Some(len) = large {
                ready!(self.poll_read_large(cx, reader, len))?;
                continue;
            }
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let read = ready!(Pin::new(&mut *reader).poll_read(cx, &mut scratch[..]));
                let n = match read {
                    Ok(0) => return Poll::Ready(Err(ReadEnd::PeerEnded)),
                    Err(_) => return Poll::Ready(Err(ReadEnd::Closed)),
                    Ok(n) => n,
                };
                let fresh = &scratch[..n];
                if !self.buffered.is_empty() {
                    self.buffered.extend_from_slice(fresh);
                    return Poll::Ready(Ok(None));
                }
                // The common case: decoded straight from the scratch.
                match frame_at(fresh, max_frame).map_err(ReadEnd::Bad)? {
                    Some((envelope, used)) => {
                        self.buffered.extend_from_slice(&fresh[used..]);
                        Poll::Ready(Ok(Some(envelope)))
                    }
                    None => {
                        self.buffered.extend_from_slice(fresh);
                        Poll::Ready(Ok(None))
                    }
                }
            });
            if let Some(envelope) = ready!(read)? {
                return Poll::Ready(Ok(envelope));
            }
        }
    }

    /// Whether bytes past the last frame taken were read already.
    pub(super) fn holds_bytes(&self) -> bool {
        !self.buffered.is_empty()
    }

    /// Reads part of a frame too large for the scratch buffer straight
    /// into the connection's buffer, grown to the frame's length.
    fn poll_read_large<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        frame_len: usize,
    ) -> Poll<Result<(), ReadEnd>> {
        let have = self.buffered.len();
        self.buffered.resize(frame_len, 0);
        let read = Pin::new(&mut *reader).poll_read(cx, &mut self.buffered[have..]);
        let n = match read {
            Poll::Ready(Ok(n)) if n > 0 => n,
            Poll::Pending => {
                self.buffered.truncate(have);
                return Poll::Pending;
            }
            Poll::Ready(Ok(_)) => return Poll::Ready(Err(ReadEnd::PeerEnded)),
            Poll::Ready(Err(_)) => return Poll::Ready(Err(ReadEnd::Closed)),
        };
        self.buffered.truncate(have + n);
        Poll::Ready(Ok(()))
    }

    /// The first buffered frame, when it is whole. The buffer's memory is
    /// given back once it holds nothing.
    fn take_buffered(&mut self, max_frame: usize) -> Result<Option<Envelope>, FrameError> {
        let Some((envelope, used)) = frame_at(&self.buffered, max_frame)? else {
            return Ok(None);
        };
        if used == self.buffered.len() {
            self.buffered = Vec::new();
        } else {
            self.buffered.drain(..used);
        }
        Ok(Some(envelope))
    }
}

/// Reads what has arrived and drops it: how a closing connection empties
/// its socket. The bytes go through the core's scratch buffer, so a
/// connection that lingers holds no buffer of its own. `Ok(0)` is the
/// peer's end.
pub(super) fn poll_discard<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    reader: &mut R,
) -> Poll<std::io::Result<usize>> {
    SCRATCH.with(|scratch| Pin::new(reader).poll_read(cx, &mut scratch.borrow_mut()[..]))
}

/// The length of the frame `bytes` begins with, header included, once
/// its header is there.
fn frame_len(bytes: &[u8], max_frame: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    Ok(Some(HEADER_LEN + codec::body_len(*header, max_frame)?))
}

/// The envelope of the whole frame at the start of `bytes` and the bytes
/// it took, or `None` while the frame is incomplete. A bad header is an
/// error as soon as it is read, before its body.
fn frame_at(bytes: &[u8], max_frame: usize) -> Result<Option<(Envelope, usize)>, FrameError> {
    match frame_len(bytes, max_frame)? {
        Some(len) if len <= bytes.len() => {
            Ok(Some((codec::decode_body(&bytes[HEADER_LEN..len])?, len)))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use futures::executor::block_on;
    use ourchat_protocol::pb;
    use ourchat_protocol::Body;
    use std::collections::VecDeque;
    use std::io;

    /// Gives its chunks one per read, as a socket gives what has arrived;
    /// `Pending` between chunks when `stalls` (woken at once).
    struct Chunks {
        chunks: VecDeque<Vec<u8>>,
        reads: usize,
        stalls: bool,
        stalled: bool,
    }

    impl Chunks {
        fn new(chunks: Vec<Vec<u8>>) -> Chunks {
            Chunks {
                chunks: chunks.into(),
                reads: 0,
                stalls: false,
                stalled: false,
            }
        }
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            if self.stalls && !self.stalled {
                self.stalled = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.stalled = false;
            self.reads += 1;
            let Some(mut chunk) = self.chunks.pop_front() else {
                return Poll::Ready(Ok(0));
            };
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.chunks.push_front(chunk.split_off(n));
            }
            Poll::Ready(Ok(n))
        }
    }

    fn heartbeat(req_id: u32) -> Envelope {
        Envelope {
            req_id,
            body: Some(Body::Heartbeat(pb::Heartbeat::default())),
        }
    }

    fn text_of(len: usize) -> Envelope {
        Envelope {
            req_id: 7,
            body: Some(Body::Send(pb::SendMessageRequest {
                content: "x".repeat(len),
                ..Default::default()
            })),
        }
    }

    fn framed(envelopes: &[Envelope]) -> Vec<u8> {
        let mut bytes = BytesMut::new();
        for envelope in envelopes {
            codec::encode(envelope, &mut bytes);
        }
        bytes.to_vec()
    }

    fn read_all(mut source: Chunks, max_frame: usize) -> (Vec<Envelope>, ReadEnd, usize) {
        let mut frames = FrameReader::default();
        let mut got = Vec::new();
        loop {
            match block_on(frames.next(&mut source, max_frame, || Asked::Nothing)) {
                Ok(envelope) => got.push(envelope),
                Err(end) => return (got, end, source.reads),
            }
        }
    }

    #[test]
    fn a_whole_frame_takes_one_read_and_leaves_nothing_buffered() {
        let mut source = Chunks::new(vec![framed(&[heartbeat(1)])]);
        let mut frames = FrameReader::default();
        let envelope = block_on(frames.next(&mut source, 1024, || Asked::Nothing)).unwrap();
        assert_eq!(envelope, heartbeat(1));
        assert_eq!(source.reads, 1);
        assert_eq!(frames.buffered.capacity(), 0);
    }

    #[test]
    fn frames_arriving_together_are_served_without_more_reads() {
        let sent: Vec<_> = (1..=5).map(heartbeat).collect();
        let (got, end, reads) = read_all(Chunks::new(vec![framed(&sent)]), 1024);
        assert_eq!(got, sent);
        assert!(matches!(end, ReadEnd::PeerEnded));
        assert_eq!(reads, 2, "one read for five frames, one for the end");
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let sent = vec![heartbeat(1), text_of(300), heartbeat(2), text_of(5)];
        let bytes = framed(&sent);
        for size in [1, 2, 3, 4, 5, 7, 64, 301, 310] {
            let mut source = Chunks::new(bytes.chunks(size).map(<[u8]>::to_vec).collect());
            source.stalls = true;
            let (got, end, _) = read_all(source, 1024);
            assert_eq!(got, sent, "chunks of {size}");
            assert!(matches!(end, ReadEnd::PeerEnded), "chunks of {size}");
        }
    }

    #[test]
    fn a_frame_larger_than_the_scratch_buffer_is_read_whole() {
        let sent = vec![text_of(3 * SCRATCH_BYTES), heartbeat(9)];
        let bytes = framed(&sent);
        for size in [1000, SCRATCH_BYTES + 5, bytes.len()] {
            let source = Chunks::new(bytes.chunks(size).map(<[u8]>::to_vec).collect());
            let (got, _, _) = read_all(source, 4 * SCRATCH_BYTES);
            assert_eq!(got, sent, "chunks of {size}");
        }
    }

    #[test]
    fn a_bad_header_is_refused_before_its_body_arrives() {
        let (_, end, _) = read_all(Chunks::new(vec![vec![0, 1, 0, 0]]), 1024);
        assert!(matches!(
            end,
            ReadEnd::Bad(FrameError::TooLarge {
                len: 65536,
                max: 1024
            })
        ));
        let (_, end, _) = read_all(Chunks::new(vec![vec![0, 0, 0, 0]]), 1024);
        assert!(matches!(end, ReadEnd::Bad(FrameError::Empty)));
        let mut garbage = vec![0, 0, 0, 3];
        garbage.extend([0xff, 0xff, 0xff]);
        let (got, end, _) = read_all(Chunks::new(vec![framed(&[heartbeat(1)]), garbage]), 1024);
        assert_eq!(got, vec![heartbeat(1)]);
        assert!(matches!(end, ReadEnd::Bad(FrameError::Decode(_))));
    }

    #[test]
    fn an_unfinished_frame_at_the_end_is_a_close() {
        let mut bytes = framed(&[heartbeat(1), text_of(50)]);
        bytes.truncate(bytes.len() - 10);
        let (got, end, _) = read_all(Chunks::new(vec![bytes]), 1024);
        assert_eq!(got, vec![heartbeat(1)]);
        assert!(matches!(end, ReadEnd::PeerEnded));
    }

    #[test]
    fn a_closing_connection_stops_reading_even_with_frames_buffered() {
        let mut source = Chunks::new(vec![framed(&[heartbeat(1), heartbeat(2)])]);
        let mut frames = FrameReader::default();
        let first = block_on(frames.next(&mut source, 1024, || Asked::Nothing));
        assert_eq!(first.unwrap(), heartbeat(1));
        assert!(matches!(
            block_on(frames.next(&mut source, 1024, || Asked::Close)),
            Err(ReadEnd::Closed)
        ));
        assert_eq!(source.reads, 1, "no read once closing");
    }

    #[test]
    fn parks_only_between_frames() {
        let bytes = framed(&[heartbeat(1), heartbeat(2)]);
        let mut source = Chunks::new(vec![bytes[..3].to_vec(), bytes[3..].to_vec()]);
        let mut frames = FrameReader::default();
        // Asked while nothing is begun: parks without reading.
        assert!(matches!(
            block_on(frames.next(&mut source, 1024, || Asked::Park)),
            Err(ReadEnd::Park)
        ));
        assert_eq!(source.reads, 0);
        // A frame begun is finished first, and one buffered is served.
        let checks = std::cell::Cell::new(0);
        let first = block_on(frames.next(&mut source, 1024, || {
            checks.set(checks.get() + 1);
            // The close check, then the park check, come first.
            if checks.get() > 2 {
                Asked::Park
            } else {
                Asked::Nothing
            }
        }));
        assert_eq!(first.unwrap(), heartbeat(1));
        assert_eq!(
            block_on(frames.next(&mut source, 1024, || Asked::Park)).unwrap(),
            heartbeat(2)
        );
        assert!(matches!(
            block_on(frames.next(&mut source, 1024, || Asked::Park)),
            Err(ReadEnd::Park)
        ));
    }
}
