//! A disk for tests that keeps what is durable apart from what is only
//! written: `crash` cuts the power, and each sector written since its
//! segment's last sync reaches the disk or not, at random; fsyncs and writes
//! can be made to fail once.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use rand::rngs::StdRng;
use rand::Rng;

use super::batch::SECTOR;
use super::disk::{Disk, SummaryJob};

#[derive(Default)]
pub(crate) struct State {
    /// What a crash keeps.
    pub(crate) durable: BTreeMap<u64, Vec<u8>>,
    /// What reads see (the page cache).
    pub(crate) visible: BTreeMap<u64, Vec<u8>>,
    pub(crate) fail_next_sync: bool,
    pub(crate) fail_next_write: bool,
    /// The marks file (written durably and whole).
    pub(crate) marks: Option<Vec<u8>>,
    /// The log-end file (each write durable at once).
    pub(crate) end: Vec<u8>,
    /// Segment summaries (a crash keeps them: they are checked at use).
    pub(crate) summaries: BTreeMap<u64, Vec<u8>>,
}

/// A disk shared with the test, which crashes it under the log.
#[derive(Clone, Default)]
pub(crate) struct MemDisk(pub(crate) Rc<RefCell<State>>);

impl MemDisk {
    /// Power cut: each sector written since its segment's last sync
    /// reaches the disk or not, at random.
    pub(crate) fn crash(&self, rng: &mut StdRng) {
        let mut state = self.0.borrow_mut();
        let state = &mut *state;
        for (segment, visible) in &state.visible {
            let durable = state.durable.entry(*segment).or_default();
            for start in (0..visible.len()).step_by(SECTOR) {
                let end = (start + SECTOR).min(visible.len());
                if durable[start..end] != visible[start..end] && rng.gen_bool(0.5) {
                    durable[start..end].copy_from_slice(&visible[start..end]);
                }
            }
        }
        state.visible = state.durable.clone();
        state.fail_next_sync = false;
        state.fail_next_write = false;
    }

    pub(crate) fn image(&self) -> BTreeMap<u64, Vec<u8>> {
        self.0.borrow().durable.clone()
    }

    pub(crate) fn set_image(&self, image: BTreeMap<u64, Vec<u8>>) {
        let mut state = self.0.borrow_mut();
        state.durable = image.clone();
        state.visible = image;
    }
}

fn missing() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such segment")
}

impl Disk for MemDisk {
    fn segments(&mut self) -> io::Result<Vec<u64>> {
        Ok(self.0.borrow().visible.keys().copied().collect())
    }

    fn create(&mut self, segment: u64, size: u64) -> io::Result<()> {
        let mut state = self.0.borrow_mut();
        state.durable.insert(segment, vec![0; size as usize]);
        state.visible.insert(segment, vec![0; size as usize]);
        Ok(())
    }

    fn read_marks(&mut self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.0.borrow().marks.clone())
    }

    fn write_marks(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.borrow_mut().marks = Some(bytes.to_vec());
        Ok(())
    }

    fn read_end(&mut self) -> io::Result<Vec<u8>> {
        Ok(self.0.borrow().end.clone())
    }

    fn write_end(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        let end = &mut self.0.borrow_mut().end;
        let stop = at as usize + bytes.len();
        if end.len() < stop {
            end.resize(stop, 0);
        }
        end[at as usize..stop].copy_from_slice(bytes);
        Ok(())
    }

    fn write_at(&mut self, segment: u64, at: u64, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.0.borrow_mut();
        if std::mem::take(&mut state.fail_next_write) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        let data = state.visible.get_mut(&segment).ok_or_else(missing)?;
        data[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self, segment: u64) -> io::Result<()> {
        let mut state = self.0.borrow_mut();
        if std::mem::take(&mut state.fail_next_sync) {
            return Err(io::Error::other("fsync failed"));
        }
        let visible = state.visible.get(&segment).cloned().ok_or_else(missing)?;
        state.durable.insert(segment, visible);
        Ok(())
    }

    fn read_written(&mut self, segment: u64, into: &mut Vec<u8>) -> io::Result<u64> {
        let state = self.0.borrow();
        let bytes = state.visible.get(&segment).ok_or_else(missing)?;
        into.clear();
        into.extend_from_slice(bytes);
        Ok(bytes.len() as u64)
    }

    fn read_at(&self, segment: u64, at: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.0.borrow();
        let data = state.visible.get(&segment).ok_or_else(missing)?;
        out.copy_from_slice(&data[at as usize..at as usize + out.len()]);
        Ok(())
    }

    fn read_summary(&self, segment: u64) -> io::Result<Option<Vec<u8>>> {
        Ok(self.0.borrow().summaries.get(&segment).cloned())
    }

    fn write_summary(&self, segment: u64, summary: SummaryJob) {
        self.0.borrow_mut().summaries.insert(segment, summary());
    }
}
