//! What a token login and a send's recipient check need from the account
//! tables, kept in memory so that neither waits on a reader thread: every
//! account id (accounts are never deleted), and the token epoch of every
//! device whose tokens were ever revoked. A device missing from that map
//! has epoch 0, the epoch every device starts at, so the map grows with
//! sign-outs and password changes, not with devices. Loaded when the store
//! opens; the writer reads the changes of each batch inside its SQLite
//! transaction and applies them once it commits, before any of the batch's
//! callers hears back, so a revocation is seen here before it is
//! acknowledged.

use std::collections::{HashMap, HashSet};
use std::sync::{PoisonError, RwLock};

use rusqlite::{params, Connection};

use crate::{StoreError, WriteOp, WriteOutcome};

#[derive(Default)]
struct Known {
    users: HashSet<i64>,
    /// user → (device, token epoch) for devices with an epoch above 0.
    revoked: HashMap<i64, Vec<(String, i64)>>,
}

/// The accounts and revoked devices the store holds.
#[derive(Default)]
pub(crate) struct Accounts {
    known: RwLock<Known>,
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
        let users = conn
            .prepare("SELECT user_id FROM users")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<HashSet<i64>, _>>()?;
        let mut revoked: HashMap<i64, Vec<(String, i64)>> = HashMap::new();
        let mut statement = conn
            .prepare("SELECT user_id, device_id, token_epoch FROM devices WHERE token_epoch > 0")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        for row in rows {
            let (user_id, device_id, epoch): (i64, String, i64) = row?;
            revoked.entry(user_id).or_default().push((device_id, epoch));
        }
        Ok(Accounts {
            known: RwLock::new(Known { users, revoked }),
        })
    }

    /// True when the account exists; false when it is not known here (it
    /// may still exist: ask the store).
    pub(crate) fn knows(&self, user_id: i64) -> bool {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        known.users.contains(&user_id)
    }

    /// The current token epoch of `user_id`'s device, if the account is
    /// known here.
    pub(crate) fn token_epoch(&self, user_id: i64, device_id: &str) -> Option<i64> {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
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

    /// Takes in a committed batch's changes.
    pub(crate) fn apply(&self, changes: AccountChanges) {
        if changes.created.is_empty() && changes.revoked.is_empty() {
            return;
        }
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        known.users.extend(changes.created);
        for (user_id, devices) in changes.revoked {
            known.revoked.insert(user_id, devices);
        }
    }
}
