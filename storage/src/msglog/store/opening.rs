//! Opening the store: one pass over the log that rebuilds the index, from
//! each sealed segment's summary where one is usable and matches the
//! batches it covers, else record by record (writing the summaries that
//! were missing), and collects the group events for the caller.

use crate::ChatMessage;

use super::write_summary;
use crate::msglog::disk::Disk;
use crate::msglog::index::Index;
use crate::msglog::log::{Log, LogError, Replayed};
use crate::msglog::records::{self, Record};
use crate::msglog::summary::Covers;

/// A group event met while opening: the event, its change, its batch.
pub(super) type GroupEvent = (ChatMessage, Vec<u8>, u64);

/// What one pass over the log at open gives.
pub(super) enum Opened<D: Disk> {
    /// The log and the index it holds.
    Whole(Log<D>, Box<Index>, Vec<GroupEvent>),
    /// A summary did not match its segment: the index is wrong, open again
    /// without summaries.
    SummariesWrong(D),
}

/// A summarized segment being scanned: its batches must be the ones the
/// summary covers.
struct Covered {
    segment: u64,
    covers: Covers,
    next_no: u64,
}

impl Covered {
    fn matched(&self) -> bool {
        self.next_no == self.covers.last_no + 1
    }
}

/// Scans the log and rebuilds the index: from the summary of each sealed
/// segment that has a usable one (`use_summaries`), else from its records,
/// writing the summaries that were missing.
pub(super) fn open_index<D: Disk>(
    disk: D,
    segment_bytes: u64,
    use_summaries: bool,
) -> Result<Opened<D>, LogError> {
    let mut index = Index::default();
    let mut groups: Vec<GroupEvent> = Vec::new();
    let mut broken = None;
    let mut wrong = false;
    let mut covered: Option<Covered> = None;
    let log = Log::open_replayed(disk, segment_bytes, |event| match event {
        Replayed::Segment {
            segment,
            last,
            disk,
        } => {
            // A new segment: the one before (if read record by record) is
            // noted whole.
            if let Some(notes) = index.seal() {
                write_summary(disk, notes);
            }
            wrong |= covered.take().is_some_and(|c| !c.matched());
            if !use_summaries || last || wrong || broken.is_some() {
                return;
            }
            let bytes = match disk.read_summary(segment) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(segment, error = %err, "a segment summary does not read");
                    return;
                }
            };
            match index.load_summary(segment, &bytes) {
                Ok(Some(covers)) => {
                    covered = Some(Covered {
                        segment,
                        next_no: covers.first_no,
                        covers,
                    })
                }
                Ok(None) => {}
                Err(_) => wrong = true,
            }
        }
        Replayed::Batch(placed, body) => {
            if broken.is_some() || wrong {
                return;
            }
            if let Some(covered) = covered.as_mut().filter(|c| c.segment == placed.segment) {
                if placed.batch_no != covered.next_no || placed.batch_no > covered.covers.last_no {
                    wrong = true;
                    return;
                }
                covered.next_no += 1;
                for at in covered
                    .covers
                    .groups
                    .iter()
                    .filter(|g| g.batch_no == placed.batch_no)
                {
                    let record = body
                        .get(at.start as usize..at.end as usize)
                        .and_then(|bytes| match records::records(bytes).next() {
                            Some(Ok((_, Record::Group { event, change, .. }))) => {
                                Some((event, change.to_vec()))
                            }
                            _ => None,
                        });
                    match record {
                        Some((event, change)) => groups.push((event, change, placed.batch_no)),
                        None => wrong = true,
                    }
                }
                return;
            }
            // Nothing to seal: that was done as the segment began.
            let _ = index.begin_batch(placed);
            let replayed = index.replay(placed, body, |event, change| {
                groups.push((event.clone(), change.to_vec(), placed.batch_no))
            });
            if let Err(why) = replayed {
                broken = Some((placed, why));
            }
        }
    })?;
    if let Some((placed, why)) = broken {
        return Err(LogError::Damaged {
            segment: placed.segment,
            offset: placed.body_at,
            why: why.into(),
        });
    }
    if wrong || covered.is_some_and(|c| !c.matched()) {
        return Ok(Opened::SummariesWrong(log.into_disk()));
    }
    Ok(Opened::Whole(log, Box::new(index), groups))
}
