//! The log: batches appended to fixed-size segments, one write and one
//! fsync each, and recovery that proves how the data ends. It owns the
//! segments' life (created full of zeros and made durable before use,
//! rolled when full) and refuses to go on after a failed write or fsync
//! (what reached the disk is unknown until a restart scans it). What the
//! batches hold is the caller's.

use std::io;

use super::batch::{self, Ending, HEADER};
use super::disk::Disk;

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Durable data no longer reads back: the store must not start.
    #[error(
        "segment {segment} is damaged at byte {offset}: {why}; restore the log from a backup \
         (every acknowledged message is in it up to this point)"
    )]
    Damaged {
        /// The segment's number.
        segment: u64,
        /// Where in it.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// The disk failed a read, write or fsync.
    #[error("log I/O on segment {segment}: {source}")]
    Io {
        /// The segment's number.
        segment: u64,
        /// What the system said.
        source: io::Error,
    },
    /// An earlier write or fsync failed: nothing more is appended until a
    /// restart has found what reached the disk.
    #[error("the log stopped after a failed write or fsync; restart to recover it")]
    Stopped,
    /// A batch larger than a segment can hold.
    #[error("a batch of {0} bytes does not fit in a segment")]
    TooLarge(usize),
    /// The log holds less than was acknowledged from it.
    #[error(
        "conversation {conversation} ends at seq {stored} in the log, but seq {acked} was \
         acknowledged (the high-water marks say so): a segment is missing or was cut; restore \
         the log from a backup"
    )]
    Lost {
        /// The conversation.
        conversation: String,
        /// Its last seq in the log.
        stored: i64,
        /// Its last acknowledged seq.
        acked: i64,
    },
    /// The log ends before a batch that was acknowledged.
    #[error(
        "the log ends at batch {ends_at}, but batch {acked} was acknowledged (the log-end file \
         says so): its newest part was lost or zeroed; restore the log from a backup"
    )]
    Cut {
        /// The last whole batch found.
        ends_at: u64,
        /// The last batch known durable.
        acked: u64,
    },
    /// The high-water marks file does not read back.
    #[error("the high-water marks file is damaged ({0}); restore it from a backup")]
    BadMarks(&'static str),
}

/// Where a batch's body was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The batch's number.
    pub batch_no: u64,
    /// The segment holding it.
    pub segment: u64,
    /// Offset of its body in the segment.
    pub body_at: u64,
}

/// The log, open for appends.
pub struct Log<D: Disk> {
    disk: D,
    segment_bytes: u64,
    segment: u64,
    end: u64,
    next_no: u64,
    stopped: bool,
    buffer: Vec<u8>,
    /// The log-end file's slot written next (two, alternating, so a torn
    /// write leaves the other).
    end_slot: u64,
    /// fsync each batch (off: batches survive a process crash only).
    sync: bool,
    /// The newest batch known durable.
    durable_no: u64,
    /// The current segment has writes not yet fsynced.
    unsynced: bool,
    /// How far into the current segment its blocks are written (with
    /// zeros ahead of the end, [`ZERO_AHEAD`]).
    zeroed: u64,
}

/// Zeros written ahead of the log's end, a step at a time. A segment is
/// made as a sparse file, and a batch written into a hole makes the file
/// system allocate its block: the fdatasync after it must then write the
/// file's block map too, one more synchronous write on the batch's path
/// (on ext4 without a journal, the inode: a third of the writer's fsync
/// CPU in a 1:1 run, BENCHMARKS.md "Zeros ahead of the log's end").
/// Written ahead, the blocks are allocated once per step, not per batch.
pub(crate) const ZERO_AHEAD: u64 = 128 << 10;

/// What a step of [`ZERO_AHEAD`] writes.
static ZEROS: [u8; ZERO_AHEAD as usize] = [0; ZERO_AHEAD as usize];

/// Bytes between the log-end file's two slots (one sector each).
const END_SLOT: u64 = 512;

/// The newest batch number a log-end file's slots hold (0: none valid).
fn acked_end(bytes: &[u8]) -> u64 {
    bytes
        .chunks(END_SLOT as usize)
        .filter_map(|slot| {
            let (no, rest) = slot.split_first_chunk::<8>()?;
            let crc = rest.first_chunk::<4>()?;
            (crc32fast::hash(no) == u32::from_le_bytes(*crc)).then(|| u64::from_le_bytes(*no))
        })
        .max()
        .unwrap_or(0)
}

/// What [`Log::open_replayed`] hands its caller, in log order.
pub enum Replayed<'a, D> {
    /// The scan enters a segment (`last`: the newest), before its batches.
    Segment {
        /// Its number.
        segment: u64,
        /// Whether it is the newest.
        last: bool,
        /// The disk, to read what lies beside the segment.
        disk: &'a D,
    },
    /// A whole batch: where it is, and its body.
    Batch(Placed, &'a [u8]),
}

impl<D: Disk> Log<D> {
    /// Opens the log on `disk`, calling `replay` with every whole batch in
    /// order (where it is, and its body), drops a torn tail, and refuses
    /// damage.
    pub fn open(
        disk: D,
        segment_bytes: u64,
        mut replay: impl FnMut(Placed, &[u8]),
    ) -> Result<Self, LogError> {
        Self::open_replayed(disk, segment_bytes, |event| {
            if let Replayed::Batch(placed, body) = event {
                replay(placed, body)
            }
        })
    }

    /// [`Log::open`], telling `replay` also where each segment starts.
    pub fn open_replayed(
        mut disk: D,
        segment_bytes: u64,
        mut replay: impl FnMut(Replayed<'_, D>),
    ) -> Result<Self, LogError> {
        let mut segments = disk
            .segments()
            .map_err(|source| LogError::Io { segment: 0, source })?;
        segments.sort_unstable();
        if segments.is_empty() {
            disk.create(1, segment_bytes)
                .map_err(|source| LogError::Io { segment: 1, source })?;
            segments.push(1);
        }
        let mut next_no = 1;
        let mut end = 0;
        let mut bytes = Vec::new();
        for (i, &segment) in segments.iter().enumerate() {
            let io = |source| LogError::Io { segment, source };
            if i > 0 && segment != segments[i - 1] + 1 {
                return Err(LogError::Damaged {
                    segment: segments[i - 1] + 1,
                    offset: 0,
                    why: "segment missing".into(),
                });
            }
            let len = disk.read_written(segment, &mut bytes).map_err(io)?;
            if len != segment_bytes {
                return Err(LogError::Damaged {
                    segment,
                    offset: len,
                    why: format!("segment is {len} bytes, not {segment_bytes}: truncated"),
                });
            }
            let last = i + 1 == segments.len();
            replay(Replayed::Segment {
                segment,
                last,
                disk: &disk,
            });
            let scanned = batch::scan(&bytes, len as usize, next_no, last);
            for (header, body) in &scanned.batches {
                let placed = Placed {
                    batch_no: header.batch_no,
                    segment,
                    body_at: body.start as u64,
                };
                replay(Replayed::Batch(placed, &bytes[body.clone()]));
            }
            next_no += scanned.batches.len() as u64;
            end = scanned.end as u64;
            match scanned.ending {
                Ending::Clean => {}
                Ending::TornTail => {
                    // Never acknowledged: zero it so the next batch is
                    // written over nothing.
                    let dirty_end = bytes
                        .iter()
                        .rposition(|b| *b != 0)
                        .map_or(scanned.end, |p| p + 1);
                    let zeros = vec![0; dirty_end.saturating_sub(scanned.end)];
                    disk.write_at(segment, end, &zeros).map_err(io)?;
                    disk.sync(segment).map_err(io)?;
                }
                Ending::Damage(why) => {
                    return Err(LogError::Damaged {
                        segment,
                        offset: end,
                        why: why.into(),
                    })
                }
            }
        }
        let acked = acked_end(
            &disk
                .read_end()
                .map_err(|source| LogError::Io { segment: 0, source })?,
        );
        if next_no - 1 < acked {
            return Err(LogError::Cut {
                ends_at: next_no - 1,
                acked,
            });
        }
        Ok(Log {
            disk,
            segment_bytes,
            segment: segments.last().copied().unwrap_or(1),
            end,
            next_no,
            stopped: false,
            buffer: Vec::new(),
            end_slot: 0,
            sync: true,
            durable_no: next_no - 1,
            unsynced: false,
            zeroed: end,
        })
    }

    /// Appends one batch of `records` records whose bytes are `body`, and
    /// returns once it is durable.
    pub fn append(&mut self, records: u32, body: &[u8]) -> Result<Placed, LogError> {
        self.append_with(records, body, true)
    }

    /// [`Log::append`]; without `durable` the batch is written but not
    /// fsynced: it becomes durable with the next batch that is (one
    /// fdatasync covers every earlier write to the segment), and a crash
    /// before that may drop it as a torn tail. For what may be lost.
    pub fn append_with(
        &mut self,
        records: u32,
        body: &[u8],
        durable: bool,
    ) -> Result<Placed, LogError> {
        if self.stopped {
            return Err(LogError::Stopped);
        }
        let room =
            |end: u64| batch::header_offset(end as usize) as u64 + (HEADER + body.len()) as u64;
        if room(0) > self.segment_bytes {
            return Err(LogError::TooLarge(body.len()));
        }
        if room(self.end) > self.segment_bytes {
            self.roll()?;
        }
        self.buffer.clear();
        let batch_no = self.next_no;
        let end = batch::encode(self.end as usize, batch_no, records, body, &mut self.buffer);
        let segment = self.segment;
        let sync = durable && self.sync;
        let written = self
            .disk
            .write_at(segment, self.end, &self.buffer)
            .and_then(|()| self.zero_ahead(end as u64))
            .and_then(|()| match sync {
                true => self.disk.sync(segment),
                false => Ok(()),
            });
        if let Err(source) = written {
            self.stopped = true;
            return Err(LogError::Io { segment, source });
        }
        let placed = Placed {
            batch_no,
            segment,
            body_at: (end - body.len()) as u64,
        };
        self.end = end as u64;
        self.next_no += 1;
        match sync {
            true => {
                self.durable_no = batch_no;
                self.unsynced = false;
            }
            false => self.unsynced = true,
        }
        Ok(placed)
    }

    /// Writes zeros past `end` (the batch just written) when fewer than
    /// half a step of them are left, up to a step past it: they become
    /// durable with the batch.
    fn zero_ahead(&mut self, end: u64) -> std::io::Result<()> {
        let from = self.zeroed.max(end);
        if from >= self.segment_bytes || from - end >= ZERO_AHEAD / 2 {
            return Ok(());
        }
        let to = (end + ZERO_AHEAD).min(self.segment_bytes);
        self.disk
            .write_at(self.segment, from, &ZEROS[..(to - from) as usize])?;
        self.zeroed = to;
        Ok(())
    }

    /// Makes every batch written so far durable.
    pub fn flush(&mut self) -> Result<(), LogError> {
        if self.stopped {
            return Err(LogError::Stopped);
        }
        if self.unsynced {
            let segment = self.segment;
            if let Err(source) = self.disk.sync(segment) {
                self.stopped = true;
                return Err(LogError::Io { segment, source });
            }
            self.unsynced = false;
        }
        self.durable_no = self.next_no - 1;
        Ok(())
    }

    /// The high-water marks file (`None`: never written).
    pub fn read_marks(&mut self) -> Result<Option<Vec<u8>>, LogError> {
        self.disk
            .read_marks()
            .map_err(|source| LogError::Io { segment: 0, source })
    }

    /// Replaces the high-water marks file, durably.
    pub fn write_marks(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        self.disk
            .write_marks(bytes)
            .map_err(|source| LogError::Io { segment: 0, source })
    }

    /// Replaces the high-water marks file with bytes `marks` makes, off
    /// this thread, after the replacements asked for before.
    pub fn write_marks_later(&mut self, marks: super::disk::SummaryJob) {
        self.disk.write_marks_later(marks);
    }

    /// Reads `len` bytes of a body at `at` in `segment`.
    pub fn read(&self, segment: u64, at: u64, out: &mut [u8]) -> Result<(), LogError> {
        self.disk
            .read_at(segment, at, out)
            .map_err(|source| LogError::Io { segment, source })
    }

    /// Records, durably and apart from the segments, that every batch so
    /// far is acknowledged: a restart that finds fewer refuses to start
    /// (zeros where acknowledged batches were look like a clean end).
    pub fn note_end(&mut self) -> Result<(), LogError> {
        if self.stopped {
            return Err(LogError::Stopped);
        }
        let no = self.durable_no.to_le_bytes();
        let mut slot = [0u8; 12];
        slot[..8].copy_from_slice(&no);
        slot[8..].copy_from_slice(&crc32fast::hash(&no).to_le_bytes());
        self.disk
            .write_end(self.end_slot * END_SLOT, &slot)
            .map_err(|source| LogError::Io { segment: 0, source })?;
        self.end_slot ^= 1;
        Ok(())
    }

    /// Whether each batch is fsynced before `append` returns.
    pub fn sync_each_batch(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// The disk, for reads.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// The disk back, the log closed (to open it again).
    pub fn into_disk(self) -> D {
        self.disk
    }

    /// The next segment, created full of zeros and durable before use.
    fn roll(&mut self) -> Result<(), LogError> {
        // A segment is left only once durable: a later segment's data must
        // never stand after a hole.
        self.flush()?;
        let next = self.segment + 1;
        if let Err(source) = self.disk.create(next, self.segment_bytes) {
            self.stopped = true;
            return Err(LogError::Io {
                segment: next,
                source,
            });
        }
        self.segment = next;
        self.end = 0;
        self.zeroed = 0;
        Ok(())
    }
}
