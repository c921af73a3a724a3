//! A client's account calls: register, log in (password or token), look
//! users up, the profile, the password, tokens and the devices signed in.

use ourchat_protocol::pb;
use ourchat_protocol::Body;

use std::sync::atomic::Ordering;

use crate::{refused, unexpected, Client, ClientError, Session};

impl Client {
    /// Creates an account; returns its user id.
    pub async fn register(&self, username: &str, password: &str) -> Result<i64, ClientError> {
        let request = pb::RegisterRequest {
            username: username.into(),
            password: password.into(),
            ..Default::default()
        };
        match self.request(Body::Register(request)).await? {
            Body::RegisterResp(r) if r.success => Ok(r.user_id),
            Body::RegisterResp(r) => Err(refused(r.error)),
            other => Err(unexpected(other)),
        }
    }

    /// Logs in with a password on `device_id` (empty: the server picks one).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_id: &str,
    ) -> Result<Session, ClientError> {
        self.login_with(pb::LoginRequest {
            username: username.into(),
            password: password.into(),
            device_id: device_id.into(),
            device_type: "sdk".into(),
            token: String::new(),
        })
        .await
    }

    /// Logs in with a token from an earlier login.
    pub async fn login_token(&self, token: &str) -> Result<Session, ClientError> {
        self.login_with(pb::LoginRequest {
            token: token.into(),
            device_type: "sdk".into(),
            ..Default::default()
        })
        .await
    }

    /// Logs in with a full request.
    pub async fn login_with(&self, request: pb::LoginRequest) -> Result<Session, ClientError> {
        match self.request(Body::Login(request)).await? {
            Body::LoginResp(r) if r.success => {
                self.user_id.store(r.user_id, Ordering::Relaxed);
                Ok(Session {
                    user_id: r.user_id,
                    token: r.token,
                    expire_at: r.expire_at,
                    device_id: r.device_id,
                })
            }
            Body::LoginResp(r) => Err(refused(r.error)),
            other => Err(unexpected(other)),
        }
    }

    /// Looks a user up by username.
    pub async fn find_user(&self, username: &str) -> Result<pb::UserProfile, ClientError> {
        let request = pb::GetUserRequest {
            username: username.into(),
            user_id: 0,
        };
        match self.request(Body::GetUser(request)).await? {
            Body::UserProfile(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Looks a user up by id.
    pub async fn user(&self, user_id: i64) -> Result<pb::UserProfile, ClientError> {
        let request = pb::GetUserRequest {
            username: String::new(),
            user_id,
        };
        match self.request(Body::GetUser(request)).await? {
            Body::UserProfile(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Changes the profile fields that are `Some`; returns the new profile.
    pub async fn update_profile(
        &self,
        update: pb::UpdateProfileRequest,
    ) -> Result<pb::UserProfile, ClientError> {
        match self.request(Body::UpdateProfile(update)).await? {
            Body::UserProfile(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Changes the password; every other device is signed out. Returns how
    /// many were.
    pub async fn change_password(&self, old: &str, new: &str) -> Result<u32, ClientError> {
        let request = pb::ChangePasswordRequest {
            old_password: old.into(),
            new_password: new.into(),
        };
        match self.request(Body::ChangePassword(request)).await? {
            Body::ChangePasswordResp(r) => Ok(r.devices_signed_out),
            other => Err(unexpected(other)),
        }
    }

    /// A fresh token for this device.
    pub async fn refresh_token(&self) -> Result<pb::RefreshTokenResponse, ClientError> {
        match self
            .request(Body::RefreshToken(pb::RefreshTokenRequest {}))
            .await?
        {
            Body::RefreshTokenResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// My devices, most recently seen first, with whether each is online.
    pub async fn devices(&self) -> Result<Vec<pb::DeviceInfo>, ClientError> {
        match self
            .request(Body::ListDevices(pb::ListDevicesRequest {}))
            .await?
        {
            Body::ListDevicesResp(r) => Ok(r.devices),
            other => Err(unexpected(other)),
        }
    }

    /// Signs one of my other devices out; returns whether it was online.
    pub async fn kick_device(&self, device_id: &str) -> Result<bool, ClientError> {
        let request = pb::KickDeviceRequest {
            device_id: device_id.into(),
        };
        match self.request(Body::KickDevice(request)).await? {
            Body::KickDeviceResp(r) => Ok(r.was_online),
            other => Err(unexpected(other)),
        }
    }
}
