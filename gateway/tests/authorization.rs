//! The authorization matrix: every client operation against a fresh
//! fixture, once per identity, with the expected outcome written out.
//!
//! The fixture (new for every cell, so one cell's success cannot change
//! another's answer): group G of owner O with members M and T; a 1:1
//! conversation O↔M holding one message from O. Identities:
//! - `owner` O and `member` M: inside G and O↔M;
//! - `non-member` N: a logged-in user in neither;
//! - `other` X: a logged-in user who puts O's id where an id names the
//!   actor (sender_id, owner_id) or acts on O's things (O's message, O's
//!   device);
//! - `no token`, `expired`, `revoked`, `forged`: a connection whose token
//!   login fails (or that never logs in); every operation is refused.
//!   The same four are also run against gRPC, where every call carries
//!   its token.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ourchat_client::{Client, ClientError};
use ourchat_gateway::auth::Claims;
use ourchat_protocol::pb::{self, ErrorCode};
use ourchat_protocol::{Body, ConversationId};
use ourchat_testkit::{start_node, user_on, ServerProcess, TEST_PASSWORD};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actor {
    Owner,
    Member,
    NonMember,
    Other,
}

const ACTORS: [Actor; 4] = [Actor::Owner, Actor::Member, Actor::NonMember, Actor::Other];

/// What a cell must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Refused(ErrorCode),
}
use Outcome::{Ok as Allowed, Refused};
const FORBIDDEN: Outcome = Refused(ErrorCode::Forbidden);
const NOT_FOUND: Outcome = Refused(ErrorCode::NotFound);

/// One cell's world.
struct Fixture {
    owner: i64,
    member: i64,
    third: i64,
    outsider: i64,
    other: i64,
    group: i64,
    group_conv: String,
    direct_conv: String,
    direct_seq: i64,
}

/// Who acts: the user the request is about, and the id an honest actor
/// would put in identity fields.
impl Fixture {
    fn me(&self, actor: Actor) -> i64 {
        match actor {
            Actor::Owner => self.owner,
            Actor::Member => self.member,
            Actor::NonMember => self.outsider,
            Actor::Other => self.other,
        }
    }

    /// The id the actor claims to be: X claims to be O.
    fn claimed(&self, actor: Actor) -> i64 {
        match actor {
            Actor::Other => self.owner,
            _ => self.me(actor),
        }
    }

    /// Someone to talk to 1:1.
    fn peer(&self, actor: Actor) -> i64 {
        match actor {
            Actor::Owner => self.member,
            _ => self.owner,
        }
    }
}

type Build = fn(&Fixture, Actor) -> Body;

struct Row {
    op: &'static str,
    build: Build,
    /// Outcomes for owner, member, non-member, other.
    expect: [Outcome; 4],
}

fn send(f: &Fixture, a: Actor, group: i64) -> Body {
    Body::Send(pb::SendMessageRequest {
        sender_id: f.claimed(a),
        receiver_id: if group == 0 { f.peer(a) } else { 0 },
        group_id: group,
        content: "hello".into(),
        client_message_id: ourchat_client::new_client_message_id(),
        ..Default::default()
    })
}

fn rows() -> Vec<Row> {
    const ALL_OK: [Outcome; 4] = [Allowed; 4];
    const OWNER_ONLY: [Outcome; 4] = [Allowed, FORBIDDEN, FORBIDDEN, FORBIDDEN];
    const MEMBERS: [Outcome; 4] = [Allowed, Allowed, FORBIDDEN, FORBIDDEN];
    vec![
        Row {
            op: "send 1:1",
            build: |f, a| send(f, a, 0),
            expect: [Allowed, Allowed, Allowed, FORBIDDEN],
        },
        Row {
            op: "send to group",
            build: |f, a| send(f, a, f.group),
            expect: MEMBERS,
        },
        Row {
            op: "history of O↔M",
            build: |f, _| {
                Body::History(pb::HistoryRequest {
                    conversation_id: f.direct_conv.clone(),
                    ..Default::default()
                })
            },
            expect: MEMBERS,
        },
        Row {
            op: "history of G",
            build: |f, _| {
                Body::History(pb::HistoryRequest {
                    conversation_id: f.group_conv.clone(),
                    ..Default::default()
                })
            },
            expect: MEMBERS,
        },
        Row {
            op: "mark O↔M read",
            build: |f, _| {
                Body::MarkRead(pb::MarkReadRequest {
                    conversation_id: f.direct_conv.clone(),
                    seq: f.direct_seq,
                })
            },
            expect: MEMBERS,
        },
        Row {
            op: "recall O's message",
            build: |f, _| {
                Body::Recall(pb::RecallRequest {
                    conversation_id: f.direct_conv.clone(),
                    seq: f.direct_seq,
                })
            },
            expect: OWNER_ONLY,
        },
        Row {
            op: "sync",
            build: |f, _| {
                Body::Sync(pb::SyncRequest {
                    since: vec![pb::ConversationCursor {
                        conversation_id: f.direct_conv.clone(),
                        seq: 0,
                    }],
                    limit: 10,
                })
            },
            expect: MEMBERS,
        },
        Row {
            op: "conversations",
            build: |_, _| Body::Conversations(pb::ConversationsRequest::default()),
            expect: ALL_OK,
        },
        Row {
            op: "get group",
            build: |f, _| Body::GetGroup(pb::GetGroupRequest { group_id: f.group }),
            expect: MEMBERS,
        },
        Row {
            op: "group members",
            build: |f, _| {
                Body::GroupMembers(pb::GroupMembersRequest {
                    group_id: f.group,
                    ..Default::default()
                })
            },
            expect: MEMBERS,
        },
        Row {
            op: "update group",
            build: |f, _| {
                Body::UpdateGroup(pb::UpdateGroupRequest {
                    group_id: f.group,
                    name: Some("renamed".into()),
                    ..Default::default()
                })
            },
            expect: OWNER_ONLY,
        },
        Row {
            op: "add members",
            build: |f, a| {
                Body::AddMembers(pb::AddMembersRequest {
                    group_id: f.group,
                    user_ids: vec![if a == Actor::NonMember {
                        f.other
                    } else {
                        f.outsider
                    }],
                })
            },
            expect: OWNER_ONLY,
        },
        Row {
            op: "remove a member",
            build: |f, _| {
                Body::RemoveMembers(pb::RemoveMembersRequest {
                    group_id: f.group,
                    user_ids: vec![f.third],
                })
            },
            expect: OWNER_ONLY,
        },
        Row {
            op: "leave group",
            build: |f, _| Body::LeaveGroup(pb::LeaveGroupRequest { group_id: f.group }),
            // The owner must hand the group over first.
            expect: [FORBIDDEN, Allowed, FORBIDDEN, FORBIDDEN],
        },
        Row {
            op: "transfer ownership to M",
            build: |f, _| {
                Body::TransferOwner(pb::TransferOwnerRequest {
                    group_id: f.group,
                    new_owner_id: f.member,
                })
            },
            expect: OWNER_ONLY,
        },
        Row {
            op: "make T admin",
            build: |f, _| {
                Body::SetAdmin(pb::SetAdminRequest {
                    group_id: f.group,
                    user_id: f.third,
                    admin: true,
                })
            },
            expect: OWNER_ONLY,
        },
        Row {
            op: "dissolve group",
            build: |f, _| Body::DissolveGroup(pb::DissolveGroupRequest { group_id: f.group }),
            expect: OWNER_ONLY,
        },
        Row {
            op: "create group (owner_id = me)",
            build: |f, a| {
                Body::CreateGroup(pb::CreateGroupRequest {
                    owner_id: f.claimed(a),
                    group_name: "new".into(),
                    ..Default::default()
                })
            },
            expect: [Allowed, Allowed, Allowed, FORBIDDEN],
        },
        Row {
            op: "my groups",
            build: |_, _| Body::MyGroups(pb::MyGroupsRequest::default()),
            expect: ALL_OK,
        },
        Row {
            op: "typing to a peer",
            build: |f, a| {
                Body::Typing(pb::Typing {
                    peer_id: f.peer(a),
                    typing: true,
                    ..Default::default()
                })
            },
            expect: ALL_OK,
        },
        Row {
            op: "get O's profile",
            build: |f, _| {
                Body::GetUser(pb::GetUserRequest {
                    user_id: f.owner,
                    ..Default::default()
                })
            },
            expect: ALL_OK,
        },
        Row {
            op: "update my profile",
            build: |_, _| {
                Body::UpdateProfile(pb::UpdateProfileRequest {
                    signature: Some("hi".into()),
                    ..Default::default()
                })
            },
            expect: ALL_OK,
        },
        Row {
            op: "kick O's spare device",
            build: |_, _| {
                Body::KickDevice(pb::KickDeviceRequest {
                    device_id: "owner-spare".into(),
                })
            },
            expect: [Allowed, NOT_FOUND, NOT_FOUND, NOT_FOUND],
        },
        Row {
            op: "list my devices",
            build: |_, _| Body::ListDevices(Default::default()),
            expect: ALL_OK,
        },
        Row {
            op: "refresh token",
            build: |_, _| Body::RefreshToken(Default::default()),
            expect: ALL_OK,
        },
        Row {
            op: "friend request to a peer",
            build: |f, a| {
                Body::FriendRequest(pb::FriendRequestRequest {
                    user_id: f.peer(a),
                    note: String::new(),
                })
            },
            expect: ALL_OK,
        },
        Row {
            op: "friends",
            build: |_, _| Body::Friends(Default::default()),
            expect: ALL_OK,
        },
        Row {
            op: "search users",
            build: |_, _| {
                Body::SearchUsers(pb::SearchUsersRequest {
                    query: "owner".into(),
                    ..Default::default()
                })
            },
            expect: ALL_OK,
        },
        Row {
            op: "presence of O",
            build: |f, _| {
                Body::PresenceQuery(pb::PresenceQuery {
                    user_ids: vec![f.owner],
                })
            },
            expect: ALL_OK,
        },
        Row {
            op: "set presence",
            build: |_, _| {
                Body::SetPresence(pb::SetPresenceRequest {
                    state: pb::PresenceState::Away as i32,
                })
            },
            expect: ALL_OK,
        },
    ]
}

/// The outcome a reply means: an Error reply, or a response whose
/// `success` is false, is a refusal with its code.
fn outcome(result: Result<Body, ClientError>) -> Outcome {
    let refused = |error: Option<pb::Error>| {
        Refused(
            error
                .and_then(|e| ErrorCode::try_from(e.code).ok())
                .unwrap_or(ErrorCode::Unspecified),
        )
    };
    match result {
        Ok(Body::SendResp(r)) if !r.success => refused(r.error),
        Ok(Body::CreateGroupResp(r)) if !r.success => refused(r.error),
        Ok(_) => Allowed,
        Err(e) => Refused(e.code().unwrap_or(ErrorCode::Unspecified)),
    }
}

/// Runs one request. Typing is a notification with no reply: it passes if
/// the connection is still served after it.
async fn run(client: &Client, body: Body) -> Outcome {
    if matches!(body, Body::Typing(_)) {
        if let Err(e) = client.notify(body).await {
            return outcome(Err(e));
        }
        return outcome(client.request(Body::Heartbeat(Default::default())).await);
    }
    outcome(client.request(body).await)
}

struct Users {
    owner: Client,
    member: Client,
    outsider: Client,
    other: Client,
    ids: [i64; 5],
}

impl Users {
    fn client(&self, actor: Actor) -> &Client {
        match actor {
            Actor::Owner => &self.owner,
            Actor::Member => &self.member,
            Actor::NonMember => &self.outsider,
            Actor::Other => &self.other,
        }
    }
}

async fn fixture(server: &ServerProcess, users: &Users) -> Fixture {
    let [owner, member, third, outsider, other] = users.ids;
    // A spare device of O's, for the kick row.
    let spare = Client::connect(server.addr).await.unwrap();
    spare
        .login("owner", TEST_PASSWORD, "owner-spare")
        .await
        .unwrap();
    drop(spare);
    let group = users
        .owner
        .create_group("matrix", &[member, third], "")
        .await
        .expect("create fixture group");
    let ack = users.owner.send_text(member, "fixture").await.unwrap();
    Fixture {
        owner,
        member,
        third,
        outsider,
        other,
        group,
        group_conv: ConversationId::Group(group).to_string(),
        direct_conv: ack.conversation_id,
        direct_seq: ack.seq,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_for_every_identity() {
    let server = start_node!(2,
        "storage.durability" => "normal",
        "limits.frames_per_sec" => 100000,
        "limits.frame_burst" => 100000,
        "limits.user_sends_per_sec" => 100000,
        "limits.user_send_burst" => 100000,
    );
    let mut ids = [0; 5];
    let mut clients = Vec::new();
    for (slot, name) in ["owner", "member", "third", "outsider", "other"]
        .iter()
        .enumerate()
    {
        let (client, session) = user_on(server.addr, name, &format!("{name}-phone")).await;
        ids[slot] = session.user_id;
        clients.push(client);
    }
    let mut clients = clients.into_iter();
    let mut next = || clients.next().expect("five clients");
    let owner = next();
    let member = next();
    let _third = next();
    let users = Users {
        owner,
        member,
        outsider: next(),
        other: next(),
        ids,
    };

    let mut mismatches = Vec::new();
    let mut table = String::new();
    for row in rows() {
        let mut line = format!("{:<30}", row.op);
        for (actor, expected) in ACTORS.iter().zip(row.expect) {
            let fixture = fixture(&server, &users).await;
            let body = (row.build)(&fixture, *actor);
            let got = run(users.client(*actor), body).await;
            line.push_str(&format!(" {:<24}", format!("{got:?}")));
            if got != expected {
                mismatches.push(format!(
                    "{} as {actor:?}: got {got:?}, expected {expected:?}",
                    row.op
                ));
            }
        }
        table.push_str(&line);
        table.push('\n');
    }
    println!(
        "{:<30} {:<24} {:<24} {:<24} {:<24}\n{table}",
        "operation", "owner", "member", "non-member", "other"
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    bad_tokens(&server, &users).await;
}

/// The tokens no operation may pass with.
async fn bad_credentials(server: &ServerProcess) -> Vec<(&'static str, Option<String>, ErrorCode)> {
    let secret = std::fs::read_to_string(server.data_dir.join("jwt.secret")).unwrap();
    let now = ourchat_protocol::ids::now_ms() / 1000;
    let owner_id = {
        let probe = Client::connect(server.addr).await.unwrap();
        probe
            .login("owner", TEST_PASSWORD, "probe")
            .await
            .unwrap()
            .user_id
    };
    let sign = |claims: &Claims, key: &[u8]| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    let claims = |exp: u64| Claims {
        sub: owner_id.to_string(),
        dev: "owner-phone".into(),
        exp,
        iat: now - 7200,
        nbf: now - 7200,
        ep: 0,
    };
    let expired = sign(&claims(now - 3600), secret.trim().as_bytes());
    let forged = sign(&claims(now + 3600), b"not-the-server-secret-at-all");
    // A device that logged in, then out: its token is revoked.
    let leaving = Client::connect(server.addr).await.unwrap();
    let revoked = leaving
        .login("owner", TEST_PASSWORD, "owner-leaving")
        .await
        .unwrap()
        .token;
    leaving.logout().await.unwrap();
    vec![
        ("no token", None, ErrorCode::Unauthenticated),
        ("expired", Some(expired), ErrorCode::TokenExpired),
        ("revoked", Some(revoked), ErrorCode::Unauthenticated),
        ("forged", Some(forged), ErrorCode::Unauthenticated),
    ]
}

async fn bad_tokens(server: &ServerProcess, users: &Users) {
    let fixture = fixture(server, users).await;
    let credentials = bad_credentials(server).await;
    let mut ops: Vec<(&str, Body)> = rows()
        .into_iter()
        .map(|row| (row.op, (row.build)(&fixture, Actor::Owner)))
        .collect();
    ops.push((
        "change password",
        Body::ChangePassword(pb::ChangePasswordRequest {
            old_password: TEST_PASSWORD.into(),
            new_password: "new-password-1".into(),
        }),
    ));
    ops.push(("logout", Body::Logout(Default::default())));
    ops.push(("heartbeat", Body::Heartbeat(Default::default())));

    // Over TCP: the token login fails with the token's own reason, and
    // the operation after it is refused (and the connection closed).
    for (name, token, login_code) in &credentials {
        for (op, body) in &ops {
            let client = Client::connect(server.addr).await.unwrap();
            if let Some(token) = token {
                let refused = client.login_token(token).await.unwrap_err();
                assert_eq!(refused.code(), Some(*login_code), "{name}: login");
            }
            let got = outcome(client.request(body.clone()).await);
            let got = match (got, body) {
                // No reply to a notification: the connection was closed.
                (Refused(ErrorCode::Unspecified), Body::Typing(_)) => {
                    Refused(ErrorCode::Unauthenticated)
                }
                (got, _) => got,
            };
            assert_eq!(
                got,
                Refused(ErrorCode::Unauthenticated),
                "{op} with {name} token over TCP"
            );
        }
    }
    // Nothing the refused calls asked for happened.
    let group = users
        .owner
        .group(fixture.group)
        .await
        .expect("group intact");
    assert_eq!(group.name, "matrix");

    // Over gRPC: every call carries the token.
    grpc_bad_tokens(server, &fixture, &credentials).await;
}

fn authed<T>(message: T, token: &Option<String>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        if let Ok(value) = format!("Bearer {token}").parse() {
            request.metadata_mut().insert("authorization", value);
        }
    }
    request
}

async fn grpc_bad_tokens(
    server: &ServerProcess,
    fixture: &Fixture,
    credentials: &[(&'static str, Option<String>, ErrorCode)],
) {
    use pb::*;
    use tonic::Code;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    for (name, token, _) in credentials {
        let mut messages = message_service_client::MessageServiceClient::new(channel.clone());
        let mut groups = group_service_client::GroupServiceClient::new(channel.clone());
        let mut sessions = session_service_client::SessionServiceClient::new(channel.clone());
        let mut presence = presence_service_client::PresenceServiceClient::new(channel.clone());
        let mut auth = auth_service_client::AuthServiceClient::new(channel.clone());
        let codes = [
            (
                "send",
                messages
                    .send_message(authed(
                        SendMessageRequest {
                            receiver_id: fixture.member,
                            content: "x".into(),
                            client_message_id: 1,
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "history",
                messages
                    .history(authed(
                        HistoryRequest {
                            conversation_id: fixture.direct_conv.clone(),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "recall",
                messages
                    .recall(authed(
                        RecallRequest {
                            conversation_id: fixture.direct_conv.clone(),
                            seq: fixture.direct_seq,
                        },
                        token,
                    ))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "get group",
                groups
                    .get_group(authed(
                        GetGroupRequest {
                            group_id: fixture.group,
                        },
                        token,
                    ))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "add members",
                groups
                    .add_members(authed(
                        AddMembersRequest {
                            group_id: fixture.group,
                            user_ids: vec![fixture.outsider],
                        },
                        token,
                    ))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "dissolve",
                groups
                    .dissolve_group(authed(
                        DissolveGroupRequest {
                            group_id: fixture.group,
                        },
                        token,
                    ))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "get user",
                sessions
                    .get_user(authed(
                        GetUserRequest {
                            user_id: fixture.owner,
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "update profile",
                sessions
                    .update_profile(authed(
                        UpdateProfileRequest {
                            signature: Some("x".into()),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "presence",
                presence
                    .batch_get(authed(
                        PresenceQuery {
                            user_ids: vec![fixture.owner],
                        },
                        token,
                    ))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "refresh",
                auth.refresh(authed(RefreshTokenRequest::default(), token))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
        ];
        for (op, code) in codes {
            assert_eq!(
                code,
                Some(Code::Unauthenticated),
                "{op} with {name} token over gRPC"
            );
        }
    }
}
