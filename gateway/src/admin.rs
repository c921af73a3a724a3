//! Operator tools that work directly on the store, without a running
//! node: bulk provisioning of users with ready-made tokens, so a load test
//! of a million users costs one argon2 hash instead of a million.

use std::io::Write;

use ourchat_protocol::ids::{now_ms, IdGenerator, MAX_CORES};
use ourchat_storage::{NewAccount, WriteOp, WriteOutcome};
use ourchat_workers::password;

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::server::ServeError;

/// Accounts per transaction: big enough to amortise the fsync, small
/// enough to keep the transaction's memory modest.
const PROVISION_BATCH: usize = 5_000;

/// Id generator slot reserved for admin tools (reactors use 0..63), so
/// provisioning beside a running node never mints one of its ids.
pub const ADMIN_GENERATOR: u16 = MAX_CORES - 1;

/// What a provisioning run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvisionReport {
    /// Accounts created now.
    pub created: usize,
    /// Accounts that existed already (their tokens are written too).
    pub existing: usize,
}

/// Creates users `<prefix>0 .. <prefix><count-1>` (all with `password`)
/// and writes one `user_id token` line per user to `out`; each token is
/// for device `<prefix>-dev<i>`. Existing users are kept and get tokens.
pub fn provision(
    config: &Config,
    prefix: &str,
    count: usize,
    password_text: &str,
    out: &mut dyn Write,
) -> Result<ProvisionReport, ServeError> {
    let storage = &config.storage;
    let backend = crate::server::open_account_store(storage)?;
    let mut writer = backend.writer()?;
    let mut reader = backend.reader()?;
    let tokens = TokenKeys::load(
        &config.auth.jwt_secret,
        &config.auth.jwt_retired_secrets,
        &storage.data_dir,
        config.auth.token_ttl_secs,
    )?;
    let hash =
        password::hash_password(password_text).map_err(|e| ServeError::Core(e.to_string()))?;
    let mut ids = IdGenerator::new(config.server.node_id, ADMIN_GENERATOR);
    let mut report = ProvisionReport {
        created: 0,
        existing: 0,
    };
    let mut start = 0;
    while start < count {
        let end = (start + PROVISION_BATCH).min(count);
        let ops: Vec<WriteOp> = (start..end)
            .map(|i| {
                WriteOp::CreateAccount(NewAccount {
                    user_id: ids.next_id(),
                    username: format!("{prefix}{i}"),
                    password_hash: hash.clone(),
                    phone: String::new(),
                    email: String::new(),
                    nickname: format!("{prefix}{i}"),
                    created_at_ms: now_ms() as i64,
                })
            })
            .collect();
        let outcomes = writer.apply_batch(&ops)?;
        let mut devices = Vec::with_capacity(ops.len());
        for (index, (op, outcome)) in ops.iter().zip(outcomes).enumerate() {
            let WriteOp::CreateAccount(account) = op else {
                continue;
            };
            let user_id = match outcome {
                WriteOutcome::Done => {
                    report.created += 1;
                    account.user_id
                }
                _ => {
                    report.existing += 1;
                    match reader.account_by_username(&account.username)? {
                        Some(existing) => existing.user_id,
                        None => continue,
                    }
                }
            };
            let device = format!("{prefix}-dev{}", start + index);
            devices.push(WriteOp::TouchDevice {
                user_id,
                device_id: device.clone(),
                device_type: "provisioned".into(),
                seen_at_ms: now_ms() as i64,
            });
            let (token, _) = tokens
                .issue(user_id, &device, 0)
                .map_err(|e| ServeError::Core(e.to_string()))?;
            writeln!(out, "{user_id} {token}")?;
        }
        writer.apply_batch(&devices)?;
        start = end;
    }
    out.flush()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisions_users_with_working_tokens_and_is_rerunnable() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.data_dir = dir.path().to_path_buf();
        config.auth.jwt_secret = "provision-test-secret".into();
        let mut out = Vec::new();
        let report = provision(&config, "lg", 12_000, "loadgen-pass", &mut out).unwrap();
        assert_eq!(
            report,
            ProvisionReport {
                created: 12_000,
                existing: 0
            }
        );
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 12_000);
        let keys = TokenKeys::new(b"provision-test-secret", 60);
        let (id, token) = lines[11_999].split_once(' ').unwrap();
        let verified = keys.verify(token).unwrap();
        assert_eq!(
            (
                verified.user_id.to_string().as_str(),
                verified.device_id.as_str()
            ),
            (id, "lg-dev11999")
        );

        let mut again = Vec::new();
        let report = provision(&config, "lg", 10, "loadgen-pass", &mut again).unwrap();
        assert_eq!(
            report,
            ProvisionReport {
                created: 0,
                existing: 10
            }
        );
        let first_again = String::from_utf8(again).unwrap();
        assert_eq!(
            first_again.lines().next().unwrap().split(' ').next(),
            Some(id_of(lines[0]))
        );
    }

    fn id_of(line: &str) -> &str {
        line.split(' ').next().unwrap()
    }
}
