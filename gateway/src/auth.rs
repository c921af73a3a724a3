//! Session tokens: HS256 JWTs carrying user, device and expiry. The
//! algorithm is pinned server-side (a token naming `none` or any other
//! algorithm is refused), and expiry and not-before are checked with no
//! leeway beyond a small clock skew.

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

/// Signs and checks tokens with one key.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl TokenKeys {
    /// Keys from a secret.
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = CLOCK_SKEW_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "sub"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    /// The configured secret, or the one kept in `data_dir` (created with
    /// 32 random bytes on first start so restarts keep tokens valid).
    pub fn load(configured: &str, data_dir: &Path, ttl_secs: u64) -> std::io::Result<Self> {
        if !configured.is_empty() {
            return Ok(Self::new(configured.as_bytes(), ttl_secs));
        }
        let secret = load_or_create_secret(&data_dir.join("jwt.secret"))?;
        Ok(Self::new(secret.as_bytes(), ttl_secs))
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
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)?;
        Ok((token, claims.exp))
    }

    /// What a valid token says (its epoch is checked against the store by
    /// the caller).
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
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

/// The secret kept in `path`, created with 32 random bytes (hex) on first
/// use so restarts keep it; readable by the owner only.
pub fn load_or_create_secret(path: &Path) -> std::io::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let text = text.trim();
        if text.len() >= 32 {
            return Ok(text.to_string());
        }
    }
    let secret: [u8; 32] = rand::random();
    let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_file(path, text.as_bytes(), 0o600)?;
    Ok(text)
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
        let first = TokenKeys::load("", dir.path(), 60).unwrap();
        let (token, _) = first.issue(7, "d", 0).unwrap();
        let second = TokenKeys::load("", dir.path(), 60).unwrap();
        assert!(second.verify(&token).is_ok());
    }
}
