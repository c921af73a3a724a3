//! What a token login and a send's recipient check need from the account
//! tables, kept in memory so that neither waits on a reader thread: every
//! account id (accounts are never deleted), and the token epoch of every
//! device whose tokens were ever revoked. A device missing from that map
//! has epoch 0, the epoch every device starts at, so the map grows with
//! sign-outs and password changes, not with devices. Loaded when the store
//! opens; the writer reads the changes of each batch inside its SQLite
//! transaction and applies them once it commits, before any of the batch's
//! callers hears back, so a revocation is seen here before it is
//! acknowledged. Kept in shards by user, a lock each: taking in a batch
//! locks only the shards it touches, and a shard's table grows by a 64th
//! of the set at a time. Under one lock, the set's doublings held every
//! core's sends for 43 / 86 / 168 ms at 1.8 / 3.7 / 7.3 million accounts
//! (BENCHMARKS.md, "The accounts set in shards").

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rusqlite::{params, Connection};

use crate::sharded::{Map, Set, ShardPicker, SHARDS};
use crate::{StoreError, WriteOp, WriteOutcome};

/// One shard's accounts.
#[derive(Default)]
struct Known {
    users: Set<i64>,
    /// user → (device, token epoch) for devices with an epoch above 0.
    revoked: Map<i64, Vec<(String, i64)>>,
}

/// The accounts and revoked devices the store holds.
pub(crate) struct Accounts {
    picker: ShardPicker,
    shards: Box<[RwLock<Known>]>,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            picker: ShardPicker::default(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

/// One batch's changes, read inside its transaction.
#[derive(Default)]
pub(crate) struct AccountChanges {
    created: Vec<i64>,
    /// A user's revoked devices after the batch, replacing the old list.
    revoked: Vec<(i64, Vec<(String, i64)>)>,
}

fn revoked_devices(conn: &Connection, user_id: i64) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT device_id, token_epoch FROM devices WHERE user_id = ?1 AND token_epoch > 0",
        )?
        .query_map(params![user_id], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

impl Accounts {
    pub(crate) fn load(conn: &Connection) -> Result<Accounts, StoreError> {
        let picker = ShardPicker::default();
        // Nobody else holds the set yet: the shards are filled unlocked.
        let mut shards: Vec<Known> = (0..SHARDS).map(|_| Known::default()).collect();
        let mut statement = conn.prepare("SELECT user_id FROM users")?;
        for user_id in statement.query_map([], |row| row.get::<_, i64>(0))? {
            let user_id = user_id?;
            shards[picker.shard_of(&user_id)].users.insert(user_id);
        }
        let mut statement = conn
            .prepare("SELECT user_id, device_id, token_epoch FROM devices WHERE token_epoch > 0")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        for row in rows {
            let (user_id, device_id, epoch): (i64, String, i64) = row?;
            shards[picker.shard_of(&user_id)]
                .revoked
                .entry(user_id)
                .or_default()
                .push((device_id, epoch));
        }
        Ok(Accounts {
            picker,
            shards: shards.into_iter().map(RwLock::new).collect(),
        })
    }

    /// The shard holding `user_id`, to read.
    fn read(&self, user_id: i64) -> RwLockReadGuard<'_, Known> {
        self.shards[self.picker.shard_of(&user_id)]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// True when the account exists; false when it is not known here (it
    /// may still exist: ask the store).
    pub(crate) fn knows(&self, user_id: i64) -> bool {
        self.read(user_id).users.contains(&user_id)
    }

    /// The current token epoch of `user_id`'s device, if the account is
    /// known here.
    pub(crate) fn token_epoch(&self, user_id: i64, device_id: &str) -> Option<i64> {
        let known = self.read(user_id);
        if !known.users.contains(&user_id) {
            return None;
        }
        let epoch = known
            .revoked
            .get(&user_id)
            .and_then(|devices| devices.iter().find(|(device, _)| device == device_id))
            .map_or(0, |(_, epoch)| *epoch);
        Some(epoch)
    }

    /// Reads, inside the batch's transaction `tx`, what its committed ops
    /// changed.
    pub(crate) fn changes(
        tx: &Connection,
        ops: &[WriteOp],
        outcomes: &[WriteOutcome],
    ) -> Result<AccountChanges, StoreError> {
        let mut changes = AccountChanges::default();
        for (op, outcome) in ops.iter().zip(outcomes) {
            if *outcome != WriteOutcome::Done {
                continue;
            }
            match op {
                WriteOp::CreateAccount(account) => changes.created.push(account.user_id),
                WriteOp::SetPassword { user_id, .. } | WriteOp::RevokeDevice { user_id, .. } => {
                    changes
                        .revoked
                        .push((*user_id, revoked_devices(tx, *user_id)?));
                }
                _ => {}
            }
        }
        Ok(changes)
    }

    /// Takes in a committed batch's changes, each under its shard's lock.
    pub(crate) fn apply(&self, changes: AccountChanges) {
        for user_id in changes.created {
            self.write(user_id).users.insert(user_id);
        }
        for (user_id, devices) in changes.revoked {
            self.write(user_id).revoked.insert(user_id, devices);
        }
    }

    /// The shard holding `user_id`, to change.
    fn write(&self, user_id: i64) -> RwLockWriteGuard<'_, Known> {
        self.shards[self.picker.shard_of(&user_id)]
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn created(users: std::ops::Range<i64>) -> AccountChanges {
        AccountChanges {
            created: users.collect(),
            revoked: Vec::new(),
        }
    }

    #[test]
    fn knows_the_accounts_and_epochs_it_took_in_across_shards() {
        let accounts = Accounts::default();
        accounts.apply(created(1..5_000));
        accounts.apply(AccountChanges {
            created: vec![9_000],
            revoked: vec![(7, vec![("phone".into(), 3)]), (9_000, vec![])],
        });
        assert!((1..5_000).all(|user| accounts.knows(user)));
        assert!(accounts.knows(9_000) && !accounts.knows(5_000) && !accounts.knows(0));
        assert_eq!(accounts.token_epoch(7, "phone"), Some(3));
        assert_eq!(accounts.token_epoch(7, "laptop"), Some(0));
        assert_eq!(accounts.token_epoch(9_000, "phone"), Some(0));
        assert_eq!(accounts.token_epoch(5_000, "phone"), None, "not known here");
        // A later batch's list replaces the user's.
        accounts.apply(AccountChanges {
            created: vec![],
            revoked: vec![(7, vec![("laptop".into(), 1)])],
        });
        assert_eq!(accounts.token_epoch(7, "phone"), Some(0));
        assert_eq!(accounts.token_epoch(7, "laptop"), Some(1));
        let used = accounts
            .shards
            .iter()
            .filter(|shard| !shard.read().unwrap().users.is_empty())
            .count();
        assert_eq!(used, SHARDS, "5,000 accounts reach every shard");
    }

    /// The longest a reader waits on the set while it takes in accounts
    /// batch by batch: every core's sends ask it. A reader thread asks
    /// for random accounts all along; prints its slowest answers and the
    /// slowest batches; checks only that every account is known.
    /// `cargo test --release -p ourchat-storage --lib accounts_growth -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement: prints timings"]
    fn accounts_growth_pauses() {
        let accounts = Accounts::default();
        let (total, batch) = (8_000_000i64, 1_000i64);
        let done = std::sync::atomic::AtomicBool::new(false);
        let mut slowest: Vec<(Duration, i64)> = Vec::new();
        let started = Instant::now();
        let mut waits = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut waits: Vec<Duration> = Vec::new();
                let mut user = 0i64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    user = user.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let asking = Instant::now();
                    std::hint::black_box(accounts.knows(user.rem_euclid(total)));
                    waits.push(asking.elapsed());
                }
                waits
            });
            for first in (0..total).step_by(batch as usize) {
                let applying = Instant::now();
                accounts.apply(created(first..first + batch));
                slowest.push((applying.elapsed(), first + batch));
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            reader.join().unwrap_or_default()
        });
        let took = started.elapsed();
        waits.sort_unstable_by(|a, b| b.cmp(a));
        slowest.sort_unstable_by(|a, b| b.cmp(a));
        println!(
            "{total} accounts in {took:?}; a reader's slowest answers of {}:",
            waits.len()
        );
        println!("  {:?}", &waits[..waits.len().min(5)]);
        println!("slowest batches (took, accounts after):");
        for (took, after) in slowest.iter().take(5) {
            println!("  {took:?} at {after}");
        }
        assert!((0..total).step_by(99_991).all(|user| accounts.knows(user)));
        assert!(!accounts.knows(total));
    }
}
