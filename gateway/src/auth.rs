//! Session tokens: HS256 JWTs carrying user, device and expiry. The
//! algorithm is pinned server-side (a token naming `none` or any other
//! algorithm is refused), and expiry and not-before are checked with no
//! leeway beyond a small clock skew.
//!
//! Keys rotate: every token names its key in the header (`kid`, derived
//! from the key), new tokens are signed with the current key, and retired
//! keys still verify the tokens they signed until those expire. A token
//! naming a key this node does not hold is refused.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const CLOCK_SKEW_SECS: u64 = 5;

/// Claims of an OurChat token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// User id, as text (JWT convention).
    pub sub: String,
    /// Device the token was issued to.
    pub dev: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Not before, unix seconds.
    pub nbf: u64,
    /// The device's token epoch when issued: revoking the device bumps the
    /// stored epoch, which invalidates every token of an older epoch.
    #[serde(default)]
    pub ep: i64,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// User.
    pub user_id: i64,
    /// Device.
    pub device_id: String,
    /// Epoch the token was issued in.
    pub epoch: i64,
    /// Expiry, unix seconds.
    pub expire_at: u64,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Bad signature, algorithm, shape or claims.
    #[error("invalid token")]
    Invalid,
}

/// Signs tokens with the current key; checks them with it or a retired one.
pub struct TokenKeys {
    kid: String,
    encoding: EncodingKey,
    /// Current key first, then the retired ones.
    decoding: Vec<(String, DecodingKey)>,
    validation: Validation,
    ttl_secs: u64,
}

/// The id of a key: the first 8 bytes of its SHA-256, in hex. It names the
/// key without revealing it.
pub fn key_id(secret: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret);
    digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TokenKeys {
    /// Keys from one secret.
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        Self::with_retired(secret, &[], ttl_secs)
    }

    /// Signs with `current`; also verifies tokens of the `retired` secrets.
    pub fn with_retired(current: &[u8], retired: &[&[u8]], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = CLOCK_SKEW_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "sub"]);
        let decoding = std::iter::once(current)
            .chain(retired.iter().copied())
            .map(|secret| (key_id(secret), DecodingKey::from_secret(secret)))
            .collect();
        TokenKeys {
            kid: key_id(current),
            encoding: EncodingKey::from_secret(current),
            decoding,
            validation,
            ttl_secs,
        }
    }

    /// The configured secret, or the one kept in `<data_dir>/jwt.secret`
    /// (created with 32 random bytes on first start so restarts keep
    /// tokens valid); plus the retired ones, configured and in
    /// `<data_dir>/jwt.retired` (one per line, written by
    /// `ourchat admin rotate-key`).
    pub fn load(
        configured: &str,
        configured_retired: &[String],
        data_dir: &Path,
        ttl_secs: u64,
    ) -> std::io::Result<Self> {
        let current = match configured {
            "" => load_or_create_secret(&data_dir.join("jwt.secret"))?,
            secret => secret.to_string(),
        };
        let kept = std::fs::read_to_string(data_dir.join("jwt.retired")).unwrap_or_default();
        let retired: Vec<&[u8]> = configured_retired
            .iter()
            .map(String::as_str)
            .chain(kept.lines().map(str::trim))
            .filter(|secret| !secret.is_empty() && *secret != current)
            .map(str::as_bytes)
            .collect();
        Ok(Self::with_retired(current.as_bytes(), &retired, ttl_secs))
    }

    /// The current key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A token for `user_id` on `device_id` in the device's `epoch`, and
    /// its expiry.
    pub fn issue(
        &self,
        user_id: i64,
        device_id: &str,
        epoch: i64,
    ) -> Result<(String, u64), TokenError> {
        let now = ourchat_protocol::ids::now_ms() / 1000;
        let claims = Claims {
            sub: user_id.to_string(),
            dev: device_id.to_string(),
            exp: now + self.ttl_secs,
            iat: now,
            nbf: now,
            ep: epoch,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)?;
        Ok((token, claims.exp))
    }

    /// What a valid token says (its epoch is checked against the store by
    /// the caller).
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        // No kid: a token from before key ids, signed with the current key.
        let key = match header.kid {
            Some(kid) => self.decoding.iter().find(|(id, _)| *id == kid),
            None => self.decoding.first(),
        };
        let Some((_, key)) = key else {
            return Err(TokenError::Invalid);
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid,
                }
            })?;
        let user_id: i64 = data.claims.sub.parse().map_err(|_| TokenError::Invalid)?;
        if user_id <= 0 || data.claims.dev.is_empty() {
            return Err(TokenError::Invalid);
        }
        Ok(Verified {
            user_id,
            device_id: data.claims.dev,
            epoch: data.claims.ep,
            expire_at: data.claims.exp,
        })
    }
}

/// Retires the data directory's current token key: it moves to
/// `jwt.retired` (still verifying the tokens it signed) and a new key is
/// created. Returns the new key's id. Running nodes pick both up on
/// restart; configured keys (`auth.jwt_secret`) rotate by config instead.
pub fn rotate_data_dir_key(data_dir: &Path) -> std::io::Result<String> {
    let current_path = data_dir.join("jwt.secret");
    let current = load_or_create_secret(&current_path)?;
    let retired_path = data_dir.join("jwt.retired");
    let mut retired = std::fs::read_to_string(&retired_path).unwrap_or_default();
    if !retired.is_empty() && !retired.ends_with('\n') {
        retired.push('\n');
    }
    retired.push_str(&current);
    retired.push('\n');
    // The retired list is written (and synced) before the current key is
    // replaced, so a crash in between loses no key.
    write_file(&retired_path, retired.as_bytes(), 0o600)?;
    std::fs::remove_file(&current_path)?;
    let fresh = load_or_create_secret(&current_path)?;
    Ok(key_id(fresh.as_bytes()))
}

/// The secret kept in `path`, created with 32 random bytes (hex) on first
/// use so restarts keep it; readable by the owner only. A file that is
/// there but damaged (empty, short, not hex) is an error naming it: quietly
/// replacing it would invalidate every outstanding token without a word.
pub fn load_or_create_secret(path: &Path) -> std::io::Result<String> {
    match std::fs::read(path) {
        Ok(bytes) => return parse_secret(path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ))
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    if crate::data_dir::is_initialised(dir) {
        tracing::warn!(file = %path.display(),
            "key file missing from an initialised data directory: created a new one; \
             everything signed with the old key is no longer accepted");
    }
    let secret: [u8; 32] = rand::random();
    let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(dir)?;
    write_file(path, text.as_bytes(), 0o600)?;
    Ok(text)
}

/// Shortest secret accepted from a key file (the node writes 64 hex digits).
const MIN_SECRET_HEX: usize = 32;

fn parse_secret(path: &Path, bytes: &[u8]) -> std::io::Result<String> {
    let text = std::str::from_utf8(bytes).map(str::trim).unwrap_or("");
    if text.len() >= MIN_SECRET_HEX && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(text.to_string());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "{} is damaged ({} bytes, expected at least {MIN_SECRET_HEX} hex digits): restore \
             it from a backup, or delete it to start with a new key (every token or client \
             holding the old one is then refused)",
            path.display(),
            bytes.len()
        ),
    ))
}

/// Writes `bytes` to `path` with permission `mode` (for a new file) and
/// syncs it: secrets and keys must be whole and private on disk.
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_key_file_is_refused_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt.secret");
        let first = load_or_create_secret(&path).unwrap();
        assert_eq!(
            load_or_create_secret(&path).unwrap(),
            first,
            "kept across starts"
        );
        for damage in [&b""[..], b"short", &[0xff; 64], &[b'z'; 64]] {
            std::fs::write(&path, damage).unwrap();
            let err = load_or_create_secret(&path).unwrap_err().to_string();
            assert!(err.contains("jwt.secret is damaged"), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), damage, "left as found");
        }
    }

    #[test]
    fn issued_tokens_verify() {
        let keys = TokenKeys::new(b"0123456789abcdef0123", 60);
        let (token, exp) = keys.issue(42, "phone", 3).unwrap();
        let verified = keys.verify(&token).unwrap();
        assert_eq!(
            verified,
            Verified {
                user_id: 42,
                device_id: "phone".into(),
                epoch: 3,
                expire_at: exp
            }
        );
    }

    #[test]
    fn forged_expired_and_none_tokens_are_refused() {
        let keys = TokenKeys::new(b"0123456789abcdef0123", 60);
        let other = TokenKeys::new(b"another-secret-key-000", 60);
        let (forged, _) = other.issue(42, "phone", 0).unwrap();
        assert_eq!(keys.verify(&forged), Err(TokenError::Invalid));

        let now = ourchat_protocol::ids::now_ms() / 1000;
        let old = Claims {
            sub: "42".into(),
            dev: "phone".into(),
            exp: now - 3600,
            iat: now - 7200,
            nbf: now - 7200,
            ep: 0,
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &old,
            &EncodingKey::from_secret(b"0123456789abcdef0123"),
        )
        .unwrap();
        assert_eq!(keys.verify(&expired), Err(TokenError::Expired));

        // alg "none": header {"alg":"none","typ":"JWT"}, unsigned.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI0MiIsImRldiI6InAiLCJleHAiOjk5OTk5OTk5OTksImlhdCI6MCwibmJmIjowfQ.";
        assert_eq!(keys.verify(none), Err(TokenError::Invalid));
        assert_eq!(keys.verify("garbage"), Err(TokenError::Invalid));
    }

    #[test]
    fn secret_is_kept_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let first = TokenKeys::load("", &[], dir.path(), 60).unwrap();
        let (token, _) = first.issue(7, "d", 0).unwrap();
        let second = TokenKeys::load("", &[], dir.path(), 60).unwrap();
        assert!(second.verify(&token).is_ok());
    }

    #[test]
    fn rotated_keys_keep_old_tokens_valid_and_sign_new_ones_with_the_new_kid() {
        let dir = tempfile::tempdir().unwrap();
        let before = TokenKeys::load("", &[], dir.path(), 60).unwrap();
        let (old_token, _) = before.issue(7, "d", 0).unwrap();
        let new_kid = rotate_data_dir_key(dir.path()).unwrap();
        assert_ne!(new_kid, before.kid());

        let after = TokenKeys::load("", &[], dir.path(), 60).unwrap();
        assert_eq!(after.kid(), new_kid);
        assert_eq!(after.verify(&old_token).unwrap().user_id, 7);
        let (new_token, _) = after.issue(8, "d", 0).unwrap();
        let header = jsonwebtoken::decode_header(&new_token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
        // A node that never held the new key refuses its tokens.
        assert_eq!(before.verify(&new_token), Err(TokenError::Invalid));

        // Once the retired key is dropped, its tokens are refused.
        std::fs::remove_file(dir.path().join("jwt.retired")).unwrap();
        let pruned = TokenKeys::load("", &[], dir.path(), 60).unwrap();
        assert_eq!(pruned.verify(&old_token), Err(TokenError::Invalid));

        // Configured keys rotate by config the same way.
        let configured = TokenKeys::load(
            "second-secret-0123456789",
            &["first-secret-0123456789".into()],
            dir.path(),
            60,
        )
        .unwrap();
        let first = TokenKeys::new(b"first-secret-0123456789", 60);
        let (token, _) = first.issue(9, "d", 0).unwrap();
        assert!(configured.verify(&token).is_ok());
    }

    #[test]
    fn a_kid_naming_no_held_key_is_refused_even_if_the_signature_matches() {
        let keys = TokenKeys::new(b"0123456789abcdef0123", 60);
        let now = ourchat_protocol::ids::now_ms() / 1000;
        let claims = Claims {
            sub: "42".into(),
            dev: "phone".into(),
            exp: now + 60,
            iat: now,
            nbf: now,
            ep: 0,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("unknown".into());
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef0123"),
        )
        .unwrap();
        assert_eq!(keys.verify(&token), Err(TokenError::Invalid));
        // HS384 with the right key is still the wrong algorithm.
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef0123"),
        )
        .unwrap();
        assert_eq!(keys.verify(&hs384), Err(TokenError::Invalid));
    }
}
