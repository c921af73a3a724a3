//! Requests about the logged-in user: profile updates, password change
//! (which signs every other device out), token refresh, and the device list
//! with kick. Revoking a device bumps its token epoch in the store, so its
//! tokens stop working everywhere, and closes its connection if online.

use ourchat_protocol::pb;
use ourchat_protocol::{Body, ErrorCode};
use ourchat_storage::{ProfileUpdate, WriteOp, WriteOutcome};
use ourchat_workers::password;

use crate::connection::{
    bad, profile_of, Connection, Session, MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES,
};

/// Longest nickname.
const MAX_NICKNAME_CHARS: usize = 64;
/// Longest status line.
const MAX_SIGNATURE_CHARS: usize = 256;
/// Longest avatar URL.
const MAX_URL_CHARS: usize = 2048;

impl Connection {
    pub(crate) async fn update_profile(
        &self,
        req_id: u32,
        session: &Session,
        request: pb::UpdateProfileRequest,
    ) {
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
        match result {
            Ok(profile) => self.reply(req_id, Body::UserProfile(profile)),
            Err(error) => self.reply_error(req_id, error),
        }
    }

    pub(crate) async fn change_password(
        &self,
        req_id: u32,
        session: &Session,
        request: pb::ChangePasswordRequest,
    ) {
        match self.change_password_inner(session, request).await {
            Ok(signed_out) => self.reply(
                req_id,
                Body::ChangePasswordResp(pb::ChangePasswordResponse {
                    devices_signed_out: signed_out,
                }),
            ),
            Err(error) => self.reply_error(req_id, error),
        }
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
                keep_device: session.device_id.clone(),
            })
            .await?;
        let mut signed_out = 0;
        for device in devices
            .into_iter()
            .filter(|d| d.device_id != session.device_id && !d.signed_out)
        {
            signed_out += 1;
            self.core
                .kick_device(me, device.device_id, "signed out: password changed")
                .await;
        }
        Ok(signed_out)
    }

    pub(crate) async fn refresh_token(&self, req_id: u32, session: &Session) {
        let (me, device_id) = (session.user_id, session.device_id.clone());
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
        match result {
            Ok((token, expire_at)) => self.reply(
                req_id,
                Body::RefreshTokenResp(pb::RefreshTokenResponse {
                    token,
                    expire_at: expire_at as i64,
                }),
            ),
            Err(error) => self.reply_error(req_id, error),
        }
    }

    pub(crate) async fn list_devices(&self, req_id: u32, session: &Session) {
        let me = session.user_id;
        let stored = self.core.read(move |store| store.devices(me)).await;
        let online = self.core.online_devices(me).await;
        match stored {
            Ok(devices) => {
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
                self.reply(
                    req_id,
                    Body::ListDevicesResp(pb::ListDevicesResponse { devices }),
                );
            }
            Err(error) => self.reply_error(req_id, error),
        }
    }

    pub(crate) async fn kick_device(
        &self,
        req_id: u32,
        session: &Session,
        request: pb::KickDeviceRequest,
    ) {
        if request.device_id == session.device_id {
            return self.reply_error(req_id, bad("to sign this device out, use Logout"));
        }
        match self
            .sign_out_device(
                session.user_id,
                &request.device_id,
                "signed out from another device",
            )
            .await
        {
            Ok(was_online) => self.reply(
                req_id,
                Body::KickDeviceResp(pb::KickDeviceResponse { was_online }),
            ),
            Err(error) => self.reply_error(req_id, error),
        }
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
