//! Seeded crash tests of the log on a disk that keeps what is durable
//! apart from what is only written: crashes tear the unsynced writes at
//! sector granularity (any subset of their sectors reaches the disk),
//! fsyncs fail, the disk fills up. After every crash the log must open,
//! hold every batch whose append returned, each once and in order, hold
//! nothing that was never written, and go on numbering after what it
//! holds. A flipped bit or a cut in acknowledged data must be refused,
//! never read as a torn tail. A failing seed replays exactly.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::log::{Log, LogError};
use super::testing::MemDisk;

const SEGMENT: u64 = 16 << 10;

/// Batch bodies by batch number.
type Batches = BTreeMap<u64, Vec<u8>>;

/// Opens the log, returning what it replayed.
fn open(disk: &MemDisk) -> Result<(Log<MemDisk>, Batches), LogError> {
    let mut replayed = BTreeMap::new();
    let log = Log::open(disk.clone(), SEGMENT, |placed, body| {
        assert!(
            replayed.insert(placed.batch_no, body.to_vec()).is_none(),
            "a batch twice"
        );
    })?;
    Ok((log, replayed))
}

fn body(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.gen_range(0..10) {
        0 => rng.gen_range(1..3_000),
        _ => rng.gen_range(1..300),
    };
    (0..len).map(|_| rng.gen_range(1..=255u8)).collect()
}

#[test]
fn crashes_anywhere_lose_no_acked_batch_and_reuse_no_number() {
    for seed in 0..1_500 {
        let mut rng = StdRng::seed_from_u64(seed);
        let disk = MemDisk::default();
        // Every batch a recovered log holds, by number.
        let mut held = Batches::new();
        for round in 0..rng.gen_range(1..5) {
            let (mut log, replayed) =
                open(&disk).unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
            // Every acked batch is back, unchanged.
            for (no, body) in &held {
                assert_eq!(
                    replayed.get(no),
                    Some(body),
                    "seed {seed} round {round}: batch {no} lost"
                );
            }
            // Anything more is the one batch in flight at the crash.
            assert!(
                replayed.len() <= held.len() + 1,
                "seed {seed}: batches from nowhere"
            );
            held = replayed;
            for _ in 0..rng.gen_range(0..60) {
                match rng.gen_range(0..40) {
                    0 => disk.0.borrow_mut().fail_next_sync = true,
                    1 => disk.0.borrow_mut().fail_next_write = true,
                    _ => {}
                }
                let body = body(&mut rng);
                match log.append(1, &body) {
                    Ok(placed) => {
                        let mut read = vec![0; body.len()];
                        log.read(placed.segment, placed.body_at, &mut read).unwrap();
                        assert_eq!(read, body);
                        assert!(
                            held.insert(placed.batch_no, body).is_none(),
                            "seed {seed}: number reused"
                        );
                    }
                    // Not acked: it may or may not be found after the
                    // crash, and if it is, whole.
                    Err(_) => {
                        assert!(matches!(log.append(1, b"x"), Err(LogError::Stopped)));
                        break;
                    }
                }
            }
            drop(log);
            disk.crash(&mut rng);
            if rng.gen_bool(0.3) {
                // A crash in the middle of the last append: its write only
                // partly reaches the disk.
                let (mut log, replayed) =
                    open(&disk).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                held = replayed;
                let body = body(&mut rng);
                disk.0.borrow_mut().fail_next_sync = true;
                assert!(log.append(1, &body).is_err());
                drop(log);
                disk.crash(&mut rng);
            }
        }
    }
}

#[test]
fn damage_to_acked_data_is_refused_never_dropped() {
    for seed in 0..1_000 {
        let mut rng = StdRng::seed_from_u64(seed);
        let disk = MemDisk::default();
        let (mut log, _) = open(&disk).unwrap();
        let mut extents = Vec::new();
        for _ in 0..rng.gen_range(1..40) {
            let body = body(&mut rng);
            let placed = log.append(1, &body).unwrap();
            extents.push((
                placed.segment,
                placed.body_at - 32,
                placed.body_at + body.len() as u64,
            ));
        }
        drop(log);
        let clean = disk.image();
        // One flipped bit in an acked batch, header or body.
        let (segment, from, to) = extents[rng.gen_range(0..extents.len())];
        let at = rng.gen_range(from..to) as usize;
        let mut image = clean.clone();
        if let Some(data) = image.get_mut(&segment) {
            data[at] ^= 1 << rng.gen_range(0..8);
        }
        disk.set_image(image);
        match open(&disk) {
            Err(LogError::Damaged { .. }) => {}
            Err(other) => panic!("seed {seed}: {other}"),
            Ok(_) => panic!("seed {seed}: a flipped bit at {segment}:{at} went unnoticed"),
        }
        // A segment cut short.
        let mut image = clean.clone();
        if let Some(data) = image.get_mut(&segment) {
            data.truncate(rng.gen_range(0..data.len()));
        }
        disk.set_image(image);
        assert!(
            matches!(open(&disk), Err(LogError::Damaged { .. })),
            "seed {seed}: a truncated segment went unnoticed"
        );
        // A whole segment lost from the middle.
        let segments: Vec<u64> = clean.keys().copied().collect();
        if segments.len() > 2 {
            let mut image = clean.clone();
            image.remove(&segments[1]);
            disk.set_image(image);
            assert!(
                matches!(open(&disk), Err(LogError::Damaged { .. })),
                "seed {seed}"
            );
        }
        disk.set_image(clean);
        assert!(open(&disk).is_ok(), "seed {seed}: the clean image opens");
    }
}
