//! The log's on-disk unit, without I/O. A batch is a 32-byte header and a
//! body of records, written with one `write` and made durable with one
//! fsync; `scan` reads a segment's bytes back and says where its whole
//! batches are and how its data ends: cleanly, in a torn tail (a final
//! batch whose fsync cannot have returned, so nobody was told it was
//! stored), or in damage (bytes that were durable no longer read back).
//!
//! Why a torn tail can be told from damage: segments are created full of
//! zeros and each byte is written once; the disk writes 512-byte sectors
//! whole; a header never straddles a sector (it moves to the next one);
//! and only the final batch can be caught half-written, since the next is
//! written only after its fsync returns. So a torn final batch leaves its
//! header sector unwritten (zeros, with some of its body after it) or a
//! whole header whose body has an unwritten sector — and nothing after
//! it. A garbled header, a batch that fails its checksum with every sector
//! written, a missing batch number, or anything after a bad batch, is
//! damage.

use std::ops::Range;

/// "OCL1": the first four bytes of every batch header.
pub const MAGIC: u32 = 0x4f43_4c31;
/// Header bytes: magic, header CRC, batch number, body length, body CRC,
/// record count, reserved.
pub const HEADER: usize = 32;
/// The disk's atomic write unit the torn-write proof relies on.
pub const SECTOR: usize = 512;
/// Largest body a batch may have.
pub const MAX_BODY: usize = 16 << 20;

/// A decoded batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Numbers every batch of the log, from 1, without gaps.
    pub batch_no: u64,
    /// Bytes of records after the header.
    pub body_len: u32,
    /// CRC-32 of the body.
    pub body_crc: u32,
    /// Records in the body.
    pub records: u32,
}

/// Where the header of a batch written at `end` goes: here, or at the
/// next sector if it would straddle one (the gap stays zeros).
pub fn header_offset(end: usize) -> usize {
    if end % SECTOR + HEADER > SECTOR {
        end.next_multiple_of(SECTOR)
    } else {
        end
    }
}

/// Appends the batch (its header at `header_offset(segment_end)`, zeros
/// before it if it moved) to `out`, which will be written at `segment_end`.
/// Returns the segment's new end.
pub fn encode(
    segment_end: usize,
    batch_no: u64,
    records: u32,
    body: &[u8],
    out: &mut Vec<u8>,
) -> usize {
    let at = header_offset(segment_end);
    out.resize(out.len() + (at - segment_end), 0);
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&batch_no.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(&records.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let header_crc = crc32fast::hash(&out[start + 8..start + HEADER]);
    out[start + 4..start + 8].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(body);
    at + HEADER + body.len()
}

/// How a segment's data ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Zeros from `at` to the end of the segment.
    Clean,
    /// A half-written final batch from `at`: drop it (zero it) and go on.
    TornTail,
    /// Durable data no longer reads back at `at`: refuse to start.
    Damage(&'static str),
}

/// What `scan` found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// Every whole batch, in order: its header and its body's place.
    pub batches: Vec<(Header, Range<usize>)>,
    /// Where the whole batches end (the next batch is written here).
    pub end: usize,
    /// What lies from `end` on.
    pub ending: Ending,
}

/// A segment as read: `data` holds every byte that was ever written (it
/// may stop short of the segment's `len`: the rest are zeros, known so
/// without reading them).
#[derive(Clone, Copy)]
struct Segment<'a> {
    data: &'a [u8],
    len: usize,
}

impl Segment<'_> {
    /// Whether `range` (clamped to the segment) holds only zeros.
    fn zeros(&self, range: Range<usize>) -> bool {
        let end = range.end.min(self.data.len());
        range.start >= end || is_zero(&self.data[range.start..end])
    }

    /// The bytes of `range` when all of them were read.
    fn get(&self, range: Range<usize>) -> Option<&[u8]> {
        self.data.get(range)
    }
}

/// Reads every batch of a segment of `len` bytes whose written part is
/// `data` (the rest is zeros). `first_no` is the number due for its first
/// batch; `last` says whether this is the log's last segment, the only
/// place a torn tail can be.
pub fn scan(data: &[u8], len: usize, first_no: u64, last: bool) -> Scanned {
    let segment = Segment { data, len };
    let mut batches = Vec::new();
    let mut end = 0;
    let ending = loop {
        match batch_at(segment, end, first_no + batches.len() as u64) {
            Ok((header, body)) => {
                end = body.end;
                batches.push((header, body));
            }
            Err(Ending::Damage(why)) => break Ending::Damage(why),
            Err(_) if segment.zeros(end..len) => break Ending::Clean,
            Err(_) if last && torn_final_batch(segment, end) => break Ending::TornTail,
            Err(_) => break Ending::Damage("a batch fails its checksum, or data follows the end"),
        }
    };
    Scanned {
        batches,
        end,
        ending,
    }
}

/// The whole batch at `end`, or why not: `Clean` stands for "no valid
/// batch here" (the caller proves which ending it is), `Damage` for a
/// header that is there and wrong.
fn batch_at(
    segment: Segment<'_>,
    end: usize,
    expected_no: u64,
) -> Result<(Header, Range<usize>), Ending> {
    let at = header_offset(end);
    if at + HEADER > segment.len {
        return Err(Ending::Clean);
    }
    if !segment.zeros(end..at) {
        return Err(Ending::Damage("bytes where a batch header was skipped"));
    }
    let Some(raw) = segment.get(at..at + HEADER).filter(|raw| !is_zero(raw)) else {
        return Err(Ending::Clean);
    };
    let Some(header) = decode_header(raw) else {
        // A header is one sector's part, and sectors are written whole.
        return Err(Ending::Damage("a batch header fails its checksum"));
    };
    if header.batch_no != expected_no {
        return Err(Ending::Damage("batch numbers skip (a batch is missing)"));
    }
    let body = at + HEADER..at + HEADER + header.body_len as usize;
    if body.end > segment.len {
        return Err(Ending::Damage("a batch runs past the end of its segment"));
    }
    match segment.get(body.clone()) {
        Some(bytes) if crc32fast::hash(bytes) == header.body_crc => Ok((header, body)),
        // Fails its checksum, or ends among the never-written zeros.
        _ => Err(Ending::Clean),
    }
}

/// Whether everything from `end` on can be one final batch caught
/// half-written: some sector of its extent unwritten (zeros), and nothing
/// after the extent.
fn torn_final_batch(segment: Segment<'_>, end: usize) -> bool {
    let at = header_offset(end);
    let extent_end = match segment.get(at..at + HEADER).and_then(decode_header) {
        Some(header) => at + HEADER + header.body_len as usize,
        // Header sector unwritten: the batch was at most this long.
        None => at + HEADER + MAX_BODY,
    };
    let extent_end = extent_end.min(segment.len);
    let unwritten_sector = (at / SECTOR * SECTOR..extent_end)
        .step_by(SECTOR)
        .any(|sector| segment.zeros(sector.max(at)..(sector + SECTOR).min(extent_end)));
    unwritten_sector && segment.zeros(extent_end..segment.len)
}

/// The header in `bytes` if its magic and checksum hold.
pub fn decode_header(bytes: &[u8]) -> Option<Header> {
    if bytes.len() < HEADER {
        return None;
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if word(0) != MAGIC || crc32fast::hash(&bytes[8..HEADER]) != word(4) {
        return None;
    }
    let mut batch_no = [0; 8];
    batch_no.copy_from_slice(&bytes[8..16]);
    let header = Header {
        batch_no: u64::from_le_bytes(batch_no),
        body_len: word(16),
        body_crc: word(20),
        records: word(24),
    };
    (header.body_len as usize <= MAX_BODY).then_some(header)
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment of `size` zero bytes with `bodies` written as batches 1..
    fn segment(size: usize, bodies: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        let mut end = 0;
        for (i, body) in bodies.iter().enumerate() {
            end = encode(end, i as u64 + 1, 1, body, &mut bytes);
            ends.push(end);
        }
        bytes.resize(size, 0);
        (bytes, ends)
    }

    #[test]
    fn whole_batches_read_back_and_end_cleanly() {
        let bodies: Vec<Vec<u8>> = (1..40).map(|i| vec![i as u8; i * 37]).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let (bytes, ends) = segment(64 << 10, &refs);
        let scanned = scan(&bytes, bytes.len(), 1, true);
        assert_eq!(scanned.ending, Ending::Clean);
        assert_eq!(scanned.batches.len(), bodies.len());
        assert_eq!(scanned.end, *ends.last().unwrap());
        for ((header, range), body) in scanned.batches.iter().zip(&bodies) {
            assert_eq!(&bytes[range.clone()], body.as_slice());
            assert_eq!(header.body_len as usize, body.len());
            assert!(range.start % SECTOR + HEADER <= SECTOR || range.start % SECTOR >= HEADER);
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_acked_data_is_damage() {
        let (bytes, ends) = segment(8 << 10, &[&[7; 900], &[8; 1300], &[9; 40]]);
        for at in 0..ends[2] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            let scanned = scan(&damaged, damaged.len(), 1, true);
            // Not even the final batch reads as torn: every sector of it
            // is written, which a torn write cannot leave.
            assert!(
                matches!(scanned.ending, Ending::Damage(_)),
                "flip at {at}: {scanned:?}"
            );
        }
    }

    #[test]
    fn the_never_written_rest_need_not_be_read() {
        let (bytes, ends) = segment(16 << 10, &[&[7; 900], &[8; 3000]]);
        let mut torn = bytes.clone();
        torn[ends[1] - 700..ends[1]].fill(0);
        let mut garbage = bytes.clone();
        garbage[12_000] = 1;
        for image in [&bytes, &torn, &garbage] {
            let whole = scan(image, image.len(), 1, true);
            // Cut anywhere past the last written byte: the same answer.
            let written = image.iter().rposition(|b| *b != 0).unwrap() + 1;
            for cut in [written, written + 1, written + 4_000] {
                assert_eq!(
                    scan(&image[..cut], image.len(), 1, true),
                    whole,
                    "cut {cut}"
                );
            }
        }
        assert_eq!(scan(&torn, torn.len(), 1, true).ending, Ending::TornTail);
        // Stray bytes after the end: a torn header-less batch in the last
        // segment (zeroed, harmless), damage in any other.
        assert_eq!(
            scan(&garbage, garbage.len(), 1, true).ending,
            Ending::TornTail
        );
        let cut = &garbage[..12_001];
        assert!(matches!(
            scan(cut, garbage.len(), 1, false).ending,
            Ending::Damage(_)
        ));
    }

    #[test]
    fn an_unwritten_sector_of_the_final_batch_is_a_torn_tail() {
        let (bytes, ends) = segment(16 << 10, &[&[7; 900], &[8; 3000]]);
        for sector in (ends[0] / SECTOR * SECTOR..ends[1]).step_by(SECTOR) {
            let mut torn = bytes.clone();
            let from = sector.max(ends[0]);
            torn[from..(sector + SECTOR).min(ends[1])].fill(0);
            let scanned = scan(&torn, torn.len(), 1, true);
            assert_eq!(scanned.ending, Ending::TornTail, "sector {sector}");
            assert_eq!(scanned.batches.len(), 1);
            assert_eq!(scanned.end, ends[0]);
            assert!(matches!(
                scan(&torn, torn.len(), 1, false).ending,
                Ending::Damage(_)
            ));
        }
    }
}
