//! Profiles, logout, token refresh, password change and devices against a
//! real node: revocation really stops old tokens, other devices are signed
//! out, private fields stay private, and nobody acts for someone else.

use std::time::Duration;

use ourchat_client::{Client, ErrorCode, Push};
use ourchat_protocol::pb;
use ourchat_testkit::{start_node, user_on, TEST_PASSWORD};

const WAIT: Duration = Duration::from_secs(10);

async fn token_login(
    addr: std::net::SocketAddr,
    token: &str,
) -> Result<Client, ourchat_client::ClientError> {
    let client = Client::connect(addr).await?;
    client.login_token(token).await?;
    Ok(client)
}

async fn expect_kicked(client: &Client, why: &str) {
    loop {
        match client.next_push(WAIT).await {
            Some(Push::Kicked(reason)) => {
                assert!(
                    reason.contains(why),
                    "kicked for {reason:?}, expected {why:?}"
                );
                return;
            }
            Some(Push::Closed) | None => panic!("closed without a reason"),
            Some(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_updated_validated_and_private_fields_stay_private() {
    let server = start_node!(2);
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (bob, _) = user_on(server.addr, "bob", "d").await;
    let updated = alice
        .update_profile(pb::UpdateProfileRequest {
            nickname: Some("Alice A.".into()),
            avatar_url: Some("https://cdn/alice.png".into()),
            signature: Some("hello".into()),
            phone: Some("+86 138".into()),
            email: Some("alice@example.com".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        (updated.nickname.as_str(), updated.email.as_str()),
        ("Alice A.", "alice@example.com")
    );
    // Unset fields are left alone.
    let again = alice
        .update_profile(pb::UpdateProfileRequest {
            signature: Some("busy".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (again.nickname.as_str(), again.signature.as_str()),
        ("Alice A.", "busy")
    );
    let seen_by_bob = bob.find_user("alice").await.unwrap();
    assert_eq!(seen_by_bob.avatar_url, "https://cdn/alice.png");
    assert!(
        seen_by_bob.phone.is_empty() && seen_by_bob.email.is_empty(),
        "contact is private"
    );
    assert_eq!(alice.user(alice.user_id()).await.unwrap().phone, "+86 138");

    for bad in [
        pb::UpdateProfileRequest {
            email: Some("nope".into()),
            ..Default::default()
        },
        pb::UpdateProfileRequest {
            avatar_url: Some("ftp://x".into()),
            ..Default::default()
        },
        pb::UpdateProfileRequest {
            nickname: Some("  ".into()),
            ..Default::default()
        },
        pb::UpdateProfileRequest {
            signature: Some("a\u{7}b".into()),
            ..Default::default()
        },
        pb::UpdateProfileRequest {
            nickname: Some("x".repeat(65)),
            ..Default::default()
        },
    ] {
        let err = alice.update_profile(bad).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_and_refresh_issues_a_working_token() {
    let server = start_node!(2);
    // A refreshed token logs in.
    let (bob, bob_session) = user_on(server.addr, "bob", "phone").await;
    let refreshed = bob.refresh_token().await.unwrap();
    assert!(refreshed.expire_at >= bob_session.expire_at);
    drop(bob);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(token_login(server.addr, &refreshed.token).await.is_ok());

    // Logging out revokes every token of the device, refreshed or not.
    let (alice, session) = user_on(server.addr, "alice", "phone").await;
    let fresh = alice.refresh_token().await.unwrap();
    alice.logout().await.unwrap();
    expect_kicked(&alice, "logged out").await;
    assert!(matches!(alice.next_push(WAIT).await, Some(Push::Closed)));
    for token in [&session.token, &fresh.token] {
        let err = token_login(server.addr, token)
            .await
            .err()
            .expect("revoked");
        assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
        assert!(err.to_string().contains("revoked"), "{err}");
    }
    // A password login on that device works again and gets a valid token.
    let again = Client::connect(server.addr).await.unwrap();
    let new_session = again.login("alice", TEST_PASSWORD, "phone").await.unwrap();
    assert!(token_login(server.addr, &new_session.token).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_signs_every_other_device_out() {
    let server = start_node!(2);
    let (phone, _) = user_on(server.addr, "alice", "phone").await;
    let laptop = Client::connect(server.addr).await.unwrap();
    let laptop_session = laptop
        .login("alice", TEST_PASSWORD, "laptop")
        .await
        .unwrap();

    let err = phone
        .change_password("wrong-old-pass", "new-password-1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
    let err = phone
        .change_password(TEST_PASSWORD, "short")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));

    assert_eq!(
        phone
            .change_password(TEST_PASSWORD, "new-password-1")
            .await
            .unwrap(),
        1
    );
    expect_kicked(&laptop, "password changed").await;
    let err = token_login(server.addr, &laptop_session.token)
        .await
        .err()
        .expect("revoked");
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
    assert!(
        phone.heartbeat().await.is_ok(),
        "the device that changed it stays"
    );
    let old = Client::connect(server.addr).await.unwrap();
    assert!(old.login("alice", TEST_PASSWORD, "x").await.is_err());
    assert!(old.login("alice", "new-password-1", "x").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_listed_kicked_and_capped() {
    let server = start_node!(2, "auth.max_devices_per_user" => "3");
    let (phone, _) = user_on(server.addr, "alice", "phone").await;
    let laptop = Client::connect(server.addr).await.unwrap();
    let laptop_session = laptop
        .login("alice", TEST_PASSWORD, "laptop")
        .await
        .unwrap();
    let tablet = Client::connect(server.addr).await.unwrap();
    let tablet_session = tablet
        .login("alice", TEST_PASSWORD, "tablet")
        .await
        .unwrap();
    drop(tablet);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let devices = phone.devices().await.unwrap();
    let online: Vec<(&str, bool)> = devices
        .iter()
        .map(|d| (d.device_id.as_str(), d.online))
        .collect();
    assert_eq!(devices.len(), 3, "{online:?}");
    assert!(online.contains(&("phone", true)) && online.contains(&("laptop", true)));
    assert!(online.contains(&("tablet", false)));

    assert!(phone.kick_device("laptop").await.unwrap());
    expect_kicked(&laptop, "signed out").await;
    assert!(token_login(server.addr, &laptop_session.token)
        .await
        .is_err());
    let listed: Vec<String> = phone
        .devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(
        listed.len(),
        2,
        "a signed-out device is no longer listed: {listed:?}"
    );
    // Signed in again, the laptop counts again: phone, laptop, tablet.
    let laptop = Client::connect(server.addr).await.unwrap();
    laptop
        .login("alice", TEST_PASSWORD, "laptop")
        .await
        .unwrap();
    assert_eq!(
        phone.kick_device("phone").await.unwrap_err().code(),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(
        phone.kick_device("toaster").await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );

    // Nobody kicks someone else's device: bob's "phone" is his own.
    let (bob, _) = user_on(server.addr, "bob", "d").await;
    assert_eq!(
        bob.kick_device("phone").await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    assert!(phone.heartbeat().await.is_ok());

    // Cap of 3 (phone, laptop, tablet): a 4th device signs out an offline
    // one, the stalest, never the phone that is online and in use.
    let watch = Client::connect(server.addr).await.unwrap();
    watch.login("alice", TEST_PASSWORD, "watch").await.unwrap();
    assert!(
        token_login(server.addr, &tablet_session.token)
            .await
            .is_err(),
        "tablet signed out"
    );
    assert!(phone.heartbeat().await.is_ok(), "the online phone stays");
    assert!(watch.heartbeat().await.is_ok());
    let _ = bob;
}
