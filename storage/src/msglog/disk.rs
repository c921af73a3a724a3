//! The few file operations the log needs, behind a trait so the crash
//! tests can run the log on a disk that tears writes, fails fsyncs and
//! fills up: `FileDisk` is a directory of segment files, `MemDisk` (tests)
//! keeps what is durable apart from what is only written.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Segments numbered from 1, each a fixed-size file.
pub trait Disk {
    /// Numbers of the segments that exist.
    fn segments(&mut self) -> io::Result<Vec<u64>>;
    /// Creates a segment of `size` zero bytes, durable (its directory
    /// entry included) when this returns.
    fn create(&mut self, segment: u64, size: u64) -> io::Result<()>;
    /// The high-water marks file's bytes (`None`: never written).
    fn read_marks(&mut self) -> io::Result<Option<Vec<u8>>>;
    /// Replaces the high-water marks file, durably and whole (a crash
    /// leaves the old one or the new one), after any replacement handed
    /// to [`Disk::write_marks_later`] before.
    fn write_marks(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Replaces the marks file as [`Disk::write_marks`] does, with bytes
    /// made by `marks`, perhaps later: the writer must not wait for it (a
    /// million conversations make tens of megabytes and a third of a
    /// second). Replacements land in the order they are asked for. One
    /// that fails is logged: the old marks only check less of the log.
    fn write_marks_later(&mut self, marks: SummaryJob) {
        if let Err(error) = self.write_marks(&marks()) {
            tracing::warn!(%error, "the high-water marks were not written");
        }
    }
    /// The log-end file's bytes (empty: never written).
    fn read_end(&mut self) -> io::Result<Vec<u8>>;
    /// Writes `bytes` at `at` in the log-end file, durably.
    fn write_end(&mut self, at: u64, bytes: &[u8]) -> io::Result<()>;
    /// Writes `bytes` at `at` (not yet durable).
    fn write_at(&mut self, segment: u64, at: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes every write to the segment durable.
    fn sync(&mut self, segment: u64) -> io::Result<()>;
    /// A segment's length; its bytes from the start to the end of the
    /// last part ever written (the rest are zeros, not read) replace
    /// `into`'s (one buffer for every segment of a start: no fresh pages
    /// to fault in per segment).
    fn read_written(&mut self, segment: u64, into: &mut Vec<u8>) -> io::Result<u64>;
    /// `out.len()` bytes at `at`.
    fn read_at(&self, segment: u64, at: u64, out: &mut [u8]) -> io::Result<()>;
    /// A segment's summary (`None`: none written).
    fn read_summary(&self, segment: u64) -> io::Result<Option<Vec<u8>>>;
    /// Writes a segment's summary, made by `summary`, not durably and
    /// perhaps later (on a thread of its own: it is tens of megabytes, and
    /// the writer must not wait for it). It is a checksummed cache: a lost
    /// or torn one only makes the next start read the segment.
    fn write_summary(&self, segment: u64, summary: SummaryJob);
}

/// Makes a file's bytes (a segment's summary, the marks) off the writer.
pub type SummaryJob = Box<dyn FnOnce() -> Vec<u8> + Send>;

/// The high-water marks file's name, next to the segments.
const MARKS: &str = "marks";
/// The log-end file's name.
const END: &str = "end";

/// Segment files `NNNNNNNNNNNN.seg` in one directory, and the marks.
pub struct FileDisk {
    dir: PathBuf,
    /// Handles of the segments used last, newest at the end: reads of a
    /// history page hit the same few files and must not open them per read.
    open: RefCell<Vec<(u64, File)>>,
    /// The log-end file, once written.
    end: Option<File>,
    /// The thread writing the marks, once a write is handed to it.
    marks: Option<MarksWriter>,
}

/// A marks file to write, and where to say how it went (`None`: nobody
/// waits; a failure is logged).
struct MarksWrite {
    bytes: SummaryJob,
    done: Option<mpsc::Sender<io::Result<()>>>,
}

/// The thread that replaces the marks file, one write after another.
/// Dropping it waits for the writes handed to it.
struct MarksWriter {
    writes: Option<mpsc::Sender<MarksWrite>>,
    thread: Option<JoinHandle<()>>,
}

impl MarksWriter {
    fn start(dir: PathBuf) -> io::Result<Self> {
        let (writes, queued) = mpsc::channel::<MarksWrite>();
        let thread = std::thread::Builder::new()
            .name("log-marks".into())
            .spawn(move || {
                crate::upkeep::yield_to_requests();
                for MarksWrite { bytes, done } in queued {
                    let written = replace_marks(&dir, &bytes());
                    match (done, written) {
                        (Some(done), written) => {
                            let _ = done.send(written);
                        }
                        (None, Err(error)) => {
                            tracing::warn!(%error, "the high-water marks were not written");
                        }
                        (None, Ok(())) => {}
                    }
                }
            })?;
        Ok(MarksWriter {
            writes: Some(writes),
            thread: Some(thread),
        })
    }

    /// Queues `write`; gives it back if the thread is gone.
    fn queue(&self, write: MarksWrite) -> Result<(), MarksWrite> {
        match &self.writes {
            Some(writes) => writes.send(write).map_err(|refused| refused.0),
            None => Err(write),
        }
    }
}

impl Drop for MarksWriter {
    fn drop(&mut self) {
        self.writes.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Replaces `dir`'s marks file durably and whole: a crash leaves the old
/// one or the new one.
fn replace_marks(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let making = dir.join(format!("{MARKS}.making"));
    let mut file = File::create(&making)?;
    io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    std::fs::rename(&making, dir.join(MARKS))?;
    File::open(dir)?.sync_all()
}

/// Segment handles kept open (the fds are shared with client sockets).
const OPEN_SEGMENTS: usize = 16;

impl FileDisk {
    /// The segments in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(FileDisk {
            dir,
            open: RefCell::new(Vec::new()),
            end: None,
            marks: None,
        })
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment:012}.seg"))
    }

    fn summary_path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment:012}.sum"))
    }

    /// Runs `work` on the segment's handle, opening (and keeping) it first
    /// if it is not among the recently used.
    fn with_file<T>(
        &self,
        segment: u64,
        work: impl FnOnce(&File) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut open = self.open.borrow_mut();
        let index = match open.iter().position(|(n, _)| *n == segment) {
            Some(index) => index,
            None => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(self.path(segment))?;
                if open.len() >= OPEN_SEGMENTS {
                    open.remove(0);
                }
                open.push((segment, file));
                open.len() - 1
            }
        };
        work(&open[index].1)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl Disk for FileDisk {
    fn segments(&mut self) -> io::Result<Vec<u64>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(number) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                found.push(number);
            } else if name.ends_with(".making") {
                // A creation a crash cut short: never used.
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(found)
    }

    fn create(&mut self, segment: u64, size: u64) -> io::Result<()> {
        // Made whole under another name, then renamed: a segment file is
        // always full length, so a short one is damage, never a creation
        // cut short.
        let making = self.dir.join(format!("{segment:012}.making"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&making)?;
        file.set_len(size)?;
        file.sync_all()?;
        std::fs::rename(&making, self.path(segment))?;
        self.sync_dir()?;
        let open = self.open.get_mut();
        if open.len() >= OPEN_SEGMENTS {
            open.remove(0);
        }
        open.push((segment, file));
        Ok(())
    }

    fn read_marks(&mut self) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.dir.join(MARKS)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_marks(&mut self, bytes: &[u8]) -> io::Result<()> {
        // Behind the writes queued before it, if any were.
        if let Some(writer) = &self.marks {
            let (done, outcome) = mpsc::channel();
            let owned = bytes.to_vec();
            let write = MarksWrite {
                bytes: Box::new(move || owned),
                done: Some(done),
            };
            if writer.queue(write).is_ok() {
                if let Ok(written) = outcome.recv() {
                    return written;
                }
            }
        }
        replace_marks(&self.dir, bytes)
    }

    fn write_marks_later(&mut self, marks: SummaryJob) {
        if self.marks.is_none() {
            match MarksWriter::start(self.dir.clone()) {
                Ok(writer) => self.marks = Some(writer),
                Err(error) => tracing::warn!(%error, "no marks thread: writing them now"),
            }
        }
        let write = MarksWrite {
            bytes: marks,
            done: None,
        };
        let unqueued = match &self.marks {
            Some(writer) => writer.queue(write).err(),
            None => Some(write),
        };
        if let Some(MarksWrite { bytes, .. }) = unqueued {
            if let Err(error) = replace_marks(&self.dir, &bytes()) {
                tracing::warn!(%error, "the high-water marks were not written");
            }
        }
    }

    fn read_end(&mut self) -> io::Result<Vec<u8>> {
        match std::fs::read(self.dir.join(END)) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn write_end(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        if self.end.is_none() {
            let path = self.dir.join(END);
            let created = !path.exists();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            if created {
                file.sync_all()?;
                self.sync_dir()?;
            }
            self.end = Some(file);
        }
        match &self.end {
            Some(file) => {
                file.write_all_at(bytes, at)?;
                file.sync_data()
            }
            None => Ok(()),
        }
    }

    fn write_at(&mut self, segment: u64, at: u64, bytes: &[u8]) -> io::Result<()> {
        self.with_file(segment, |file| file.write_all_at(bytes, at))
    }

    fn sync(&mut self, segment: u64) -> io::Result<()> {
        self.with_file(segment, File::sync_data)
    }

    fn read_written(&mut self, segment: u64, into: &mut Vec<u8>) -> io::Result<u64> {
        let file = File::open(self.path(segment))?;
        let len = file.metadata()?.len();
        into.clear();
        into.resize(written_end(&file, len)? as usize, 0);
        file.read_exact_at(into, 0)?;
        Ok(len)
    }

    fn read_at(&self, segment: u64, at: u64, out: &mut [u8]) -> io::Result<()> {
        self.with_file(segment, |file| file.read_exact_at(out, at))
    }

    fn read_summary(&self, segment: u64) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.summary_path(segment)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_summary(&self, segment: u64, summary: SummaryJob) {
        // `.making` until whole: a crash leaves a file `segments` removes.
        let making = self.dir.join(format!("{segment:012}.sum.making"));
        let path = self.summary_path(segment);
        let write = move || {
            crate::upkeep::yield_to_requests();
            let written =
                std::fs::write(&making, summary()).and_then(|()| std::fs::rename(&making, path));
            if let Err(err) = written {
                tracing::warn!(segment, error = %err, "a segment summary was not written");
            }
        };
        if let Err(err) = std::thread::Builder::new()
            .name("log-summary".into())
            .spawn(write)
        {
            tracing::warn!(segment, error = %err, "a segment summary was not written");
        }
    }
}

/// Where the last data of `file` ends (rounded up to the file system's
/// block): past it the file is one hole, which reads as zeros. Where the
/// file system cannot say, the whole length.
fn written_end(file: &File, len: u64) -> io::Result<u64> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut end = 0;
    loop {
        let data = match lseek(fd, end as i64, Whence::SeekData) {
            Ok(at) => at as u64,
            // No data at or after `end`.
            Err(nix::errno::Errno::ENXIO) => return Ok(end),
            Err(nix::errno::Errno::EINVAL) => return Ok(len),
            Err(errno) => return Err(errno.into()),
        };
        end = match lseek(fd, data as i64, Whence::SeekHole) {
            Ok(at) => (at as u64).min(len),
            Err(errno) => return Err(errno.into()),
        };
        if end >= len {
            return Ok(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msglog::log::{Log, LogError};

    const SEGMENT: u64 = 8 << 10;

    fn replayed(dir: &std::path::Path) -> Result<Vec<Vec<u8>>, LogError> {
        let mut bodies = Vec::new();
        Log::open(FileDisk::new(dir).unwrap(), SEGMENT, |_, body| {
            bodies.push(body.to_vec())
        })?;
        Ok(bodies)
    }

    #[test]
    fn marks_written_later_land_in_order_and_before_a_direct_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = FileDisk::new(dir.path()).unwrap();
        let slow = |bytes: &'static [u8]| -> SummaryJob {
            Box::new(move || {
                std::thread::sleep(std::time::Duration::from_millis(30));
                bytes.to_vec()
            })
        };
        disk.write_marks_later(slow(b"first"));
        disk.write_marks_later(slow(b"second"));
        // Waits for both queued before it, so it is the one kept.
        disk.write_marks(b"direct").unwrap();
        assert_eq!(disk.read_marks().unwrap().as_deref(), Some(&b"direct"[..]));

        // One still queued when the disk is dropped is written first.
        disk.write_marks_later(slow(b"last"));
        drop(disk);
        let mut reopened = FileDisk::new(dir.path()).unwrap();
        assert_eq!(
            reopened.read_marks().unwrap().as_deref(),
            Some(&b"last"[..])
        );
        assert!(!dir.path().join("marks.making").exists());
    }

    #[test]
    fn only_the_written_part_of_a_segment_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = 4 << 20;
        let mut log = Log::open(FileDisk::new(dir.path()).unwrap(), big, |_, _| {}).unwrap();
        for i in 0..10u8 {
            log.append(1, &[i + 1; 1_000]).unwrap();
        }
        drop(log);
        let mut written = Vec::new();
        let len = FileDisk::new(dir.path())
            .unwrap()
            .read_written(1, &mut written)
            .unwrap();
        assert_eq!(len, big);
        assert!(written.len() >= 10_000, "{}", written.len());
        assert!(
            written.len() < 1 << 20,
            "read {} of a 4 MiB segment",
            written.len()
        );
        let mut bodies = 0;
        Log::open(FileDisk::new(dir.path()).unwrap(), big, |_, _| bodies += 1).unwrap();
        assert_eq!(bodies, 10);
    }

    /// A batch must not land in a hole of the sparse segment (its fsync
    /// would write the file's block map too): zeros go a step ahead of
    /// the end, so every batch below lands on blocks already written.
    #[test]
    fn blocks_ahead_of_the_end_are_written_before_batches_reach_them() {
        use crate::msglog::log::ZERO_AHEAD;
        let dir = tempfile::tempdir().unwrap();
        let big = 4 << 20;
        let written_end_now = || {
            let file = File::open(dir.path().join("000000000001.seg")).unwrap();
            written_end(&file, big).unwrap()
        };
        let mut log = Log::open(FileDisk::new(dir.path()).unwrap(), big, |_, _| {}).unwrap();
        let first = log.append(1, &[1; 1_000]).unwrap();
        let ahead = written_end_now();
        assert!(ahead >= first.body_at + ZERO_AHEAD, "written to {ahead}");
        let mut end = 0;
        for i in 0..300u32 {
            let placed = log.append(1, &[i as u8 | 1; 1_000]).unwrap();
            end = placed.body_at + 1_000;
            assert!(
                written_end_now() >= end + ZERO_AHEAD / 2,
                "batch {i} at {end}"
            );
        }
        assert!(end > 2 * ZERO_AHEAD, "the batches went past several steps");
        assert!(written_end_now() <= end + ZERO_AHEAD + 4096);
        drop(log);
        let mut bodies = 0;
        Log::open(FileDisk::new(dir.path()).unwrap(), big, |_, _| bodies += 1).unwrap();
        assert_eq!(bodies, 301);
    }

    #[test]
    fn batches_survive_reopening_across_segment_files() {
        let dir = tempfile::tempdir().unwrap();
        let bodies: Vec<Vec<u8>> = (1..60u8)
            .map(|i| vec![i; 100 + usize::from(i) * 7])
            .collect();
        {
            let mut log =
                Log::open(FileDisk::new(dir.path()).unwrap(), SEGMENT, |_, _| {}).unwrap();
            for body in &bodies {
                let placed = log.append(1, body).unwrap();
                let mut read = vec![0; body.len()];
                log.read(placed.segment, placed.body_at, &mut read).unwrap();
                assert_eq!(&read, body);
            }
        }
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(segments > 2, "rolled over several segments: {segments}");
        std::fs::write(dir.path().join("000000000099.making"), b"cut short").unwrap();
        assert_eq!(replayed(dir.path()).unwrap(), bodies);
        assert!(
            !dir.path().join("000000000099.making").exists(),
            "a half-made segment is removed"
        );

        // A segment file cut short is refused, naming it.
        let first = dir.path().join("000000000001.seg");
        let file = OpenOptions::new().write(true).open(&first).unwrap();
        file.set_len(SEGMENT / 2).unwrap();
        let refused = replayed(dir.path()).unwrap_err().to_string();
        assert!(refused.contains("segment 1 is damaged"), "{refused}");
        assert!(refused.contains("truncated"), "{refused}");
    }

    /// Summaries are written beside the segments by a thread of their own,
    /// and the next start rebuilds the same index from them; a summary a
    /// crash cut short (`.sum.making`) is removed.
    #[test]
    fn summaries_on_files_rebuild_the_same_index() {
        use crate::msglog::store::{Append, MessageStore};
        use crate::ChatMessage;
        let dir = tempfile::tempdir().unwrap();
        let mut store = MessageStore::open(FileDisk::new(dir.path()).unwrap(), SEGMENT).unwrap();
        for i in 0..300i64 {
            let message = ChatMessage {
                conversation_id: ["si_1_2", "sg_7"][i as usize % 2].into(),
                sender_id: 1,
                client_message_id: i,
                content: "z".repeat(50),
                ..ChatMessage::default()
            };
            store.append(&[Append::Message(&message)]).unwrap();
        }
        let expected = store.with(|index, _| index.canonical());
        drop(store);
        let count = |kind: &str| {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == kind)
                })
                .count()
        };
        let sealed = count("seg") - 1;
        let waited = std::time::Instant::now();
        while count("sum") < sealed && waited.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            sealed >= 3 && count("sum") == sealed,
            "{} of {sealed}",
            count("sum")
        );
        std::fs::write(dir.path().join("000000000001.sum.making"), b"cut").unwrap();
        let store = MessageStore::open(FileDisk::new(dir.path()).unwrap(), SEGMENT).unwrap();
        assert_eq!(store.with(|index, _| index.canonical()), expected);
        assert!(!dir.path().join("000000000001.sum.making").exists());
    }
}
