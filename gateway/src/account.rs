//! Accounts and devices: registration, authentication (token or
//! password), profile updates and lookups, password change (which signs
//! every other device out), token refresh, and the device list with kick.
//! Revoking a device bumps its token epoch in the store, so its tokens stop
//! working everywhere, and closes its connection if online.

use ourchat_protocol::ids::now_ms;
use ourchat_protocol::pb;
use ourchat_protocol::{Body, ErrorCode};
use ourchat_storage::{NewAccount, ProfileUpdate, WriteOp, WriteOutcome};
use ourchat_workers::password;

use crate::auth::TokenError;
use crate::core::Core;
use crate::handlers::{bad, profile_of, Caller, Session};
use crate::limits::Limit;
use crate::metrics::CoreMetrics;

/// Longest nickname.
const MAX_NICKNAME_CHARS: usize = 64;
/// Longest status line.
const MAX_SIGNATURE_CHARS: usize = 256;
/// Longest avatar URL.
const MAX_URL_CHARS: usize = 2048;

impl Caller {
    pub(crate) async fn update_profile(
        &self,
        session: &Session,
        request: pb::UpdateProfileRequest,
    ) -> Result<Body, pb::Error> {
        let result = async {
            let update = validate_profile(request)?;
            let me = session.user_id;
            let outcome = self
                .core
                .commit(WriteOp::UpdateProfile {
                    user_id: me,
                    update,
                })
                .await?;
            if outcome != WriteOutcome::Done {
                return Err(pb::Error::new(ErrorCode::NotFound, "no such user"));
            }
            let account = self.core.read(move |store| store.account_by_id(me)).await?;
            account
                .map(|a| profile_of(a, me))
                .ok_or_else(|| pb::Error::new(ErrorCode::NotFound, "no such user"))
        }
        .await;
        result.map(Body::UserProfile)
    }

    pub(crate) async fn change_password(
        &self,
        session: &Session,
        request: pb::ChangePasswordRequest,
    ) -> Result<Body, pb::Error> {
        let signed_out = self.change_password_inner(session, request).await?;
        Ok(Body::ChangePasswordResp(pb::ChangePasswordResponse {
            devices_signed_out: signed_out,
        }))
    }

    async fn change_password_inner(
        &self,
        session: &Session,
        request: pb::ChangePasswordRequest,
    ) -> Result<u32, pb::Error> {
        if !(MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&request.new_password.len()) {
            return Err(bad("new_password must be 8-1024 bytes"));
        }
        let me = session.user_id;
        let (account, devices) = self
            .core
            .read(move |store| Ok((store.account_by_id(me)?, store.devices(me)?)))
            .await?;
        let account = account.ok_or_else(|| pb::Error::new(ErrorCode::NotFound, "no such user"))?;
        let old = request.old_password;
        let stored = account.password_hash;
        if !self
            .core
            .hash(move || password::verify_password(&old, &stored))
            .await?
        {
            return Err(pb::Error::new(
                ErrorCode::Unauthenticated,
                "old_password is wrong",
            ));
        }
        let new = request.new_password;
        let hash = self
            .core
            .hash(move || password::hash_password(&new))
            .await?
            .map_err(|_| pb::Error::new(ErrorCode::Internal, "could not hash password"))?;
        self.core
            .commit(WriteOp::SetPassword {
                user_id: me,
                password_hash: hash,
                keep_device: session.device_id.to_string(),
            })
            .await?;
        let mut signed_out = 0;
        for device in devices
            .into_iter()
            .filter(|d| *d.device_id != *session.device_id && !d.signed_out)
        {
            signed_out += 1;
            self.core
                .kick_device(me, device.device_id, "signed out: password changed")
                .await;
        }
        Ok(signed_out)
    }

    pub(crate) async fn refresh_token(&self, session: &Session) -> Result<Body, pb::Error> {
        let (me, device_id) = (session.user_id, session.device_id.to_string());
        let result = async {
            let device = self
                .core
                .read(move |store| store.device(me, &device_id))
                .await?
                .ok_or_else(|| pb::Error::new(ErrorCode::Unauthenticated, "device signed out"))?;
            self.core
                .shared
                .tokens
                .issue(me, &session.device_id, device.token_epoch)
                .map_err(|_| pb::Error::new(ErrorCode::Internal, "could not issue token"))
        }
        .await;
        let (token, expire_at) = result?;
        Ok(Body::RefreshTokenResp(pb::RefreshTokenResponse {
            token,
            expire_at: expire_at as i64,
        }))
    }

    pub(crate) async fn list_devices(&self, session: &Session) -> Result<Body, pb::Error> {
        let me = session.user_id;
        let stored = self.core.read(move |store| store.devices(me)).await;
        let online = self.core.online_devices(me).await;
        let devices = stored?;
        let devices = devices
            .into_iter()
            .filter(|d| !d.signed_out)
            .map(|d| pb::DeviceInfo {
                online: online.contains(&d.device_id),
                device_id: d.device_id,
                device_type: d.device_type,
                last_seen_ms: d.last_seen_ms,
            })
            .collect();
        Ok(Body::ListDevicesResp(pb::ListDevicesResponse { devices }))
    }

    pub(crate) async fn kick_device(
        &self,
        session: &Session,
        request: pb::KickDeviceRequest,
    ) -> Result<Body, pb::Error> {
        if *request.device_id == *session.device_id {
            return Err(bad("to sign this device out, use Logout"));
        }
        let was_online = self
            .sign_out_device(
                session.user_id,
                &request.device_id,
                "signed out from another device",
            )
            .await?;
        Ok(Body::KickDeviceResp(pb::KickDeviceResponse { was_online }))
    }
}

/// Checks every field that is set; the error names the field.
fn validate_profile(request: pb::UpdateProfileRequest) -> Result<ProfileUpdate, pb::Error> {
    let plain = |value: &Option<String>, field: &str, max: usize| match value {
        Some(v) if v.chars().count() > max || v.chars().any(char::is_control) => Err(bad(
            &format!("{field} must be at most {max} characters, no control characters"),
        )),
        _ => Ok(()),
    };
    plain(&request.nickname, "nickname", MAX_NICKNAME_CHARS)?;
    if request
        .nickname
        .as_deref()
        .is_some_and(|n| n.trim().is_empty())
    {
        return Err(bad("nickname must not be blank"));
    }
    plain(&request.signature, "signature", MAX_SIGNATURE_CHARS)?;
    plain(&request.phone, "phone", 32)?;
    plain(&request.email, "email", 128)?;
    if request
        .email
        .as_deref()
        .is_some_and(|e| !e.is_empty() && !e.contains('@'))
    {
        return Err(bad("email must contain '@'"));
    }
    plain(&request.avatar_url, "avatar_url", MAX_URL_CHARS)?;
    if request
        .avatar_url
        .as_deref()
        .is_some_and(|u| !(u.is_empty() || u.starts_with("https://") || u.starts_with("http://")))
    {
        return Err(bad("avatar_url must be an http(s) URL"));
    }
    Ok(ProfileUpdate {
        nickname: request.nickname,
        avatar_url: request.avatar_url,
        signature: request.signature,
        phone: request.phone,
        email: request.email,
    })
}

impl Caller {
    /// Creates an account; the password is hashed on a hashing thread.
    pub(crate) async fn register(&self, request: pb::RegisterRequest) -> Result<Body, pb::Error> {
        validate_registration(&request)?;
        let now = std::time::Instant::now();
        if let Err(wait) = self.core.shared.limits.registration_allowed(self.peer, now) {
            self.core.metrics().limited(Limit::Registration);
            return Err(retry_later(
                "too many registrations from your address",
                wait,
            ));
        }
        let pb::RegisterRequest {
            username,
            password,
            phone,
            email,
            nickname,
        } = request;
        let hash = self
            .core
            .hash(move || password::hash_password(&password))
            .await?
            .map_err(|e| {
                tracing::error!(error = %e, "password hashing failed");
                pb::Error::new(ErrorCode::Internal, "could not hash password")
            })?;
        let user_id = self.core.next_id();
        let nickname = if nickname.is_empty() {
            username.clone()
        } else {
            nickname
        };
        let op = WriteOp::CreateAccount(NewAccount {
            user_id,
            username,
            password_hash: hash,
            phone,
            email,
            nickname,
            created_at_ms: now_ms() as i64,
        });
        if self.core.commit(op).await? != WriteOutcome::Done {
            return Err(pb::Error::new(ErrorCode::Conflict, "username is taken"));
        }
        CoreMetrics::inc(&self.core.metrics().registrations);
        Ok(Body::RegisterResp(pb::RegisterResponse {
            success: true,
            error: None,
            user_id,
        }))
    }

    /// A login that opens no session (a gRPC call): the token and the
    /// device's row, and no online device.
    pub(crate) async fn login_without_connection(
        &self,
        request: pb::LoginRequest,
    ) -> Result<Body, pb::Error> {
        let metrics = self.core.metrics();
        let grant = match self.authenticate(&request).await {
            Ok(grant) => grant,
            Err(error) => {
                CoreMetrics::inc(&metrics.logins_failed);
                return Err(error);
            }
        };
        CoreMetrics::inc(&metrics.logins_ok);
        self.touch_device(&grant, &request.device_type).await;
        Ok(grant.response(&self.core))
    }

    /// Records the device's last sighting. A new device's row must exist
    /// before its first token is handed out (the token is only valid with
    /// it); for a known one it is best effort: a full queue must not fail a
    /// login.
    pub(crate) async fn touch_device(&self, grant: &LoginGrant, device_type: &str) {
        let device_type = if device_type.is_empty() {
            "unknown".to_string()
        } else {
            device_type.to_string()
        };
        let touch = WriteOp::TouchDevice {
            user_id: grant.user_id,
            device_id: grant.device_id.clone(),
            device_type,
            seen_at_ms: now_ms() as i64,
        };
        if grant.new_device {
            if let Ok(done) = self.core.write(touch).await {
                let _ = done.await;
            }
        } else {
            let _ = self.core.shared.writer.try_submit(touch);
        }
    }

    /// Checks credentials and, for a password login, issues a token.
    pub(crate) async fn authenticate(
        &self,
        request: &pb::LoginRequest,
    ) -> Result<LoginGrant, pb::Error> {
        let tokens = &self.core.shared.tokens;
        if !request.token.is_empty() {
            let verified = tokens.verify(&request.token).map_err(|e| match e {
                TokenError::Expired => {
                    pb::Error::new(ErrorCode::TokenExpired, "token expired: log in again")
                }
                TokenError::Invalid => pb::Error::new(ErrorCode::Unauthenticated, "invalid token"),
            })?;
            if !request.device_id.is_empty() && request.device_id != verified.device_id {
                return Err(pb::Error::new(
                    ErrorCode::Unauthenticated,
                    "token was issued to another device",
                ));
            }
            let (user_id, device) = (verified.user_id, verified.device_id.clone());
            let in_memory = self.core.shared.memory.as_ref();
            let epoch = match in_memory.and_then(|m| m.token_epoch(user_id, &device)) {
                Some(epoch) => Some(epoch),
                None => {
                    self.core
                        .read(move |store| {
                            if store.account_by_id(user_id)?.is_none() {
                                return Ok(None);
                            }
                            Ok(store.device(user_id, &device)?.map(|d| d.token_epoch))
                        })
                        .await?
                }
            };
            // A revoked device (logout, kick, password change) has a newer epoch.
            if epoch != Some(verified.epoch) {
                return Err(pb::Error::new(
                    ErrorCode::Unauthenticated,
                    "token revoked: log in with your password",
                ));
            }
            return Ok(LoginGrant {
                user_id,
                device_id: verified.device_id,
                token: request.token.clone(),
                expire_at: verified.expire_at,
                new_device: false,
            });
        }
        let wrong = || pb::Error::new(ErrorCode::Unauthenticated, "wrong username or password");
        if request.username.is_empty() || request.password.len() > MAX_PASSWORD_BYTES {
            return Err(wrong());
        }
        validate_device(&request.device_id, &request.device_type)?;
        let limits = &self.core.shared.limits;
        if let Err(wait) =
            limits.login_allowed(&request.username, self.peer, std::time::Instant::now())
        {
            self.core.metrics().limited(Limit::LoginBackoff);
            let why = "too many failed logins for this account or address";
            return Err(retry_later(why, wait));
        }
        let username = request.username.clone();
        let account = self
            .core
            .read(move |store| store.account_by_username(&username))
            .await?;
        let password = request.password.clone();
        let (user_id, ok) = match account {
            Some(account) => {
                let hash = account.password_hash;
                let ok = self
                    .core
                    .hash(move || password::verify_password(&password, &hash))
                    .await?;
                (account.user_id, ok)
            }
            None => {
                self.core
                    .hash(move || password::verify_against_dummy(&password))
                    .await?;
                (0, false)
            }
        };
        if !ok {
            limits.login_failed(&request.username, self.peer, std::time::Instant::now());
            return Err(wrong());
        }
        limits.login_succeeded(&request.username);
        let device_id = if request.device_id.is_empty() {
            format!("dev-{}", self.core.next_id())
        } else {
            request.device_id.clone()
        };
        let devices = self.core.read(move |store| store.devices(user_id)).await?;
        let known = devices.iter().find(|d| d.device_id == device_id);
        let epoch = known.map_or(0, |d| d.token_epoch);
        // A signed-out device logging in again is new to the cap.
        let new_device = known.is_none_or(|d| d.signed_out);
        let devices: Vec<_> = devices.into_iter().filter(|d| !d.signed_out).collect();
        let cap = self.core.shared.config.auth.max_devices_per_user;
        if new_device && devices.len() >= cap {
            // Sign out an offline device if there is one, the stalest first
            // (devices are listed most recently seen first); only when all
            // are online does the stalest online one go.
            let online = self.core.online_devices(user_id).await;
            let victim = devices
                .iter()
                .rev()
                .find(|d| !online.contains(&d.device_id))
                .or(devices.last());
            if let Some(victim) = victim {
                self.sign_out_device(user_id, &victim.device_id, "signed out: too many devices")
                    .await?;
            }
        }
        let (token, expire_at) = tokens
            .issue(user_id, &device_id, epoch)
            .map_err(|_| pb::Error::new(ErrorCode::Internal, "could not issue token"))?;
        Ok(LoginGrant {
            user_id,
            device_id,
            token,
            expire_at,
            new_device,
        })
    }

    /// Revokes a device's tokens (durably) and closes it if online.
    pub(crate) async fn sign_out_device(
        &self,
        user_id: i64,
        device_id: &str,
        reason: &str,
    ) -> Result<bool, pb::Error> {
        let op = WriteOp::RevokeDevice {
            user_id,
            device_id: device_id.to_string(),
        };
        if self.core.commit(op).await? != WriteOutcome::Done {
            return Err(pb::Error::new(ErrorCode::NotFound, "no such device"));
        }
        Ok(self
            .core
            .kick_device(user_id, device_id.to_string(), reason)
            .await)
    }

    pub(crate) async fn get_user(
        &self,
        session: &Session,
        request: pb::GetUserRequest,
    ) -> Result<Body, pb::Error> {
        let username = request.username;
        let user_id = request.user_id;
        if username.is_empty() == (user_id == 0) {
            return Err(pb::Error::new(
                ErrorCode::BadRequest,
                "give exactly one of user_id or username",
            ));
        }
        let result = self
            .core
            .read(move |store| {
                if username.is_empty() {
                    store.account_by_id(user_id)
                } else {
                    store.account_by_username(&username)
                }
            })
            .await;
        match result? {
            Some(account) => Ok(Body::UserProfile(profile_of(account, session.user_id))),
            None => Err(pb::Error::new(ErrorCode::NotFound, "no such user")),
        }
    }
}

/// A refusal by an abuse limit, saying when to try again.
fn retry_later(why: &str, wait: std::time::Duration) -> pb::Error {
    let message = format!("{why}: retry in {} s", wait.as_secs().max(1));
    pb::Error::new(ErrorCode::RateLimited, message)
}

/// A successful authentication.
pub(crate) struct LoginGrant {
    user_id: i64,
    device_id: String,
    token: String,
    expire_at: u64,
    /// First login on this device: its row must exist before the reply.
    new_device: bool,
}

impl LoginGrant {
    /// Whose login it is.
    pub(crate) fn user_id(&self) -> i64 {
        self.user_id
    }

    pub(crate) fn session(&self) -> Session {
        Session {
            user_id: self.user_id,
            device_id: self.device_id.as_str().into(),
        }
    }

    /// The successful login's reply.
    pub(crate) fn response(self, core: &Core) -> Body {
        Body::LoginResp(pb::LoginResponse {
            success: true,
            user_id: self.user_id,
            token: self.token,
            expire_at: self.expire_at as i64,
            error: None,
            device_id: self.device_id,
            heartbeat_secs: core.shared.config.server.heartbeat_secs,
        })
    }
}

const MAX_USERNAME_CHARS: usize = 32;
pub(crate) const MIN_PASSWORD_BYTES: usize = 8;
/// Argon2 accepts long inputs, but nobody types 1 KiB passwords.
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;
const MAX_PROFILE_FIELD_CHARS: usize = 64;
const MAX_DEVICE_FIELD_CHARS: usize = 64;

pub(crate) fn validate_registration(request: &pb::RegisterRequest) -> Result<(), pb::Error> {
    let name = &request.username;
    let name_ok = (3..=MAX_USERNAME_CHARS).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !name_ok {
        return Err(bad(
            "username must be 3-32 characters of letters, digits, '_', '.', '-'",
        ));
    }
    if !(MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&request.password.len()) {
        return Err(bad("password must be 8-1024 bytes"));
    }
    for (field, value) in [
        ("phone", &request.phone),
        ("email", &request.email),
        ("nickname", &request.nickname),
    ] {
        if value.chars().count() > MAX_PROFILE_FIELD_CHARS || value.chars().any(char::is_control) {
            return Err(bad(&format!(
                "{field} must be at most 64 characters, no control characters"
            )));
        }
    }
    Ok(())
}

fn validate_device(device_id: &str, device_type: &str) -> Result<(), pb::Error> {
    for value in [device_id, device_type] {
        if value.chars().count() > MAX_DEVICE_FIELD_CHARS || value.chars().any(char::is_control) {
            return Err(bad(
                "device_id and device_type must be at most 64 characters, no control characters",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_validated() {
        let ok = pb::RegisterRequest {
            username: "alice_1".into(),
            password: "password1".into(),
            ..Default::default()
        };
        assert!(validate_registration(&ok).is_ok());
        for (name, pass) in [
            ("al", "password1"),
            ("bad name", "password1"),
            ("alice", "short"),
        ] {
            let request = pb::RegisterRequest {
                username: name.into(),
                password: pass.into(),
                ..Default::default()
            };
            assert!(validate_registration(&request).is_err(), "{name}");
        }
    }
}
