//! The six gRPC services against a real node, beside TCP clients: a
//! message sent over gRPC is pushed to a TCP client and both see one
//! conversation; every call but Register/Login needs a valid, unrevoked
//! bearer token; ids in requests must be the token's user; GatewayService
//! takes only the admin token; refusals and logins over gRPC are counted
//! in /metrics as a connection's are. Health and reflection answer as
//! grpcurl and load balancers expect.

use std::time::Duration;

use ourchat_client::Push;
use ourchat_protocol::pb::{self, *};
use ourchat_protocol::Body;
use ourchat_testkit::{start_node, user_on, TEST_PASSWORD};
use tonic::transport::Channel;
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(10);

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

async fn channel(server: &ourchat_testkit::ServerProcess) -> Channel {
    Channel::from_shared(format!("http://{}", server.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect gRPC")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_tcp_share_one_conversation() {
    let server = start_node!(2);
    let channel = channel(&server).await;
    let mut auth = auth_service_client::AuthServiceClient::new(channel.clone());
    let mut messages = message_service_client::MessageServiceClient::new(channel.clone());
    let mut groups = group_service_client::GroupServiceClient::new(channel.clone());
    let mut session = session_service_client::SessionServiceClient::new(channel.clone());

    // Register and log in over gRPC; bob is a TCP client.
    let registered = auth
        .register(RegisterRequest {
            username: "alice".into(),
            password: TEST_PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(registered.success);
    let duplicate = auth
        .register(RegisterRequest {
            username: "alice".into(),
            password: TEST_PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    // A clean message; the protocol's code and retryability for programs.
    assert!(
        !duplicate.message().starts_with("CONFLICT"),
        "{duplicate:?}"
    );
    assert_eq!(duplicate.message(), "username is taken");
    let trailer = |key: &str| {
        duplicate
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(trailer("ourchat-error-code").as_deref(), Some("CONFLICT"));
    assert_eq!(trailer("ourchat-retryable").as_deref(), Some("false"));
    let detail = <pb::Error as prost::Message>::decode(duplicate.details()).unwrap();
    assert_eq!(detail.code, ErrorCode::Conflict as i32);
    let wrong = auth
        .login(LoginRequest {
            username: "alice".into(),
            password: "not-the-password".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let login = auth
        .login(LoginRequest {
            username: "alice".into(),
            password: TEST_PASSWORD.into(),
            device_id: "grpc".into(),
            device_type: "server".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let alice = registered.user_id;
    let token = login.token.clone();
    let (bob, sb) = user_on(server.addr, "bob", "d").await;

    // A message sent over gRPC is pushed to bob like any other.
    let sent = messages
        .send_message(authed(
            SendMessageRequest {
                sender_id: alice,
                receiver_id: sb.user_id,
                content: "hi bob, from gRPC".into(),
                client_message_id: 1,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(sent.success);
    let pushed = bob.next_message(WAIT).await.expect("pushed to bob");
    assert_eq!(
        (pushed.seq, pushed.sender_id, pushed.content.as_str()),
        (sent.seq, alice, "hi bob, from gRPC")
    );
    let answer = bob.send_text(alice, "hi alice, from TCP").await.unwrap();
    assert_eq!(answer.conversation_id, sent.conversation_id);
    let history = messages
        .history(authed(
            HistoryRequest {
                peer_id: sb.user_id,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let contents: Vec<&str> = history
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(contents, vec!["hi alice, from TCP", "hi bob, from gRPC"]);

    // Ids must be the token's user; tokens must be there and valid.
    let forged = messages
        .send_message(authed(
            SendMessageRequest {
                sender_id: sb.user_id,
                receiver_id: alice,
                content: "forged".into(),
                client_message_id: 2,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::PermissionDenied);
    let forged_owner = groups
        .create_group(authed(
            CreateGroupRequest {
                owner_id: sb.user_id,
                group_name: "not mine".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(forged_owner.code(), Code::PermissionDenied);
    let anonymous = messages
        .history(Request::new(HistoryRequest {
            peer_id: sb.user_id,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let garbage = messages
        .history(authed(HistoryRequest::default(), "not.a.token"))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::Unauthenticated);
    let stranger = messages
        .history(authed(
            HistoryRequest {
                conversation_id: "si_1_2".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), Code::PermissionDenied);

    // Groups over gRPC; bob sees the group over TCP.
    let group = groups
        .create_group(authed(
            CreateGroupRequest {
                group_name: "mixed".into(),
                member_ids: vec![sb.user_id],
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let event = bob.next_message(WAIT).await.expect("created event");
    assert_eq!(event.conversation_id, group.conversation_id);
    messages
        .send_message(authed(
            SendMessageRequest {
                group_id: group.group_id,
                content: "to the group".into(),
                client_message_id: 3,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    let in_group = bob.next_message(WAIT).await.expect("group message");
    assert_eq!(in_group.content, "to the group");
    let members = groups
        .members(authed(
            GroupMembersRequest {
                group_id: group.group_id,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.members.len(), 2);
    let profile = session
        .get_user(authed(
            GetUserRequest {
                user_id: sb.user_id,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(profile.username, "bob");

    // Logout revokes the token: it no longer works anywhere.
    auth.logout(authed(LogoutRequest {}, &token)).await.unwrap();
    let revoked = session
        .get_user(authed(
            GetUserRequest {
                user_id: sb.user_id,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated);

    // gRPC refusals and logins are counted as a connection's are.
    let (_, metrics) = server.admin_get("/metrics").expect("metrics");
    let total = |series: &str| -> u64 {
        metrics
            .lines()
            .filter(|line| {
                line.strip_prefix(series)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(total("ourchat_logins_failed_total") >= 1, "{metrics}");
    assert!(total("ourchat_logins_total") >= 2, "{metrics}");
    assert!(total("ourchat_errors_total{code=\"CONFLICT\"}") >= 1);
    assert!(total("ourchat_errors_total{code=\"UNAUTHENTICATED\"}") >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_service_is_for_operators() {
    let server = start_node!(2);
    let channel = channel(&server).await;
    let mut gateway = gateway_service_client::GatewayServiceClient::new(channel.clone());
    let mut presence = presence_service_client::PresenceServiceClient::new(channel);
    let (bob, sb) = user_on(server.addr, "bob", "phone").await;
    let (carol, sc) = user_on(server.addr, "carol", "d").await;
    let admin = std::fs::read_to_string(server.data_dir.join("admin.token"))
        .expect("admin token")
        .trim()
        .to_string();

    // A user's token is not the admin token.
    let denied = gateway
        .connection_counts(authed(ConnectionCountsRequest {}, &sb.token))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let counts = gateway
        .connection_counts(authed(ConnectionCountsRequest {}, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts.per_core.len(), 2);
    assert_eq!(counts.total, 2);

    let notice = gateway
        .send_notice(authed(
            SendNoticeRequest {
                user_id: 0,
                text: "maintenance at noon".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(notice.connections, 2);
    for client in [&bob, &carol] {
        match client.next_push(WAIT).await {
            Some(Push::Notice(n)) => assert_eq!(n.text, "maintenance at noon"),
            other => panic!("expected the notice, got {other:?}"),
        }
    }

    // Presence: friends and oneself only.
    let me = presence
        .get(authed(
            GetPresenceRequest {
                user_id: sb.user_id,
            },
            &sb.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.state, pb::PresenceState::Online as i32);
    let stranger = presence
        .get(authed(
            GetPresenceRequest {
                user_id: sc.user_id,
            },
            &sb.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), Code::PermissionDenied);

    let kicked = gateway
        .kick_user(authed(
            KickUserRequest {
                user_id: sb.user_id,
                reason: "operator says bye".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kicked.devices_kicked, 1);
    loop {
        match bob.next_push(WAIT).await {
            Some(Push::Kicked(reason)) => {
                assert_eq!(reason, "operator says bye");
                break;
            }
            Some(Push::Closed) | None => panic!("bob was not told why"),
            Some(_) => continue,
        }
    }
}

/// What a load balancer and grpcurl need without our `.proto` files: the
/// standard health service says SERVING for the server and each of our
/// services (and NOT_FOUND for others), and server reflection (v1 and
/// v1alpha) lists the services and serves their descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_without_the_protos() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = start_node!(1);
    let channel = channel(&server).await;
    let mut health = HealthClient::new(channel.clone());
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    // The first report follows the first store probe.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = health.check(check("")).await.map(|r| r.into_inner().status);
        if status.as_ref().ok() == Some(&(ServingStatus::Serving as i32)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never SERVING: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let message = health.check(check("ourchat.MessageService")).await.unwrap();
    assert_eq!(message.into_inner().status, ServingStatus::Serving as i32);
    let unknown = health.check(check("nope.Service")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = tokio_stream_of(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "ourchat.MessageService".into(),
        )),
    ]);
    let mut answers = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let listed = answers.message().await.unwrap().unwrap().message_response;
    let Some(MessageResponse::ListServicesResponse(list)) = listed else {
        panic!("{listed:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "ourchat.AuthService",
        "ourchat.MessageService",
        "ourchat.PresenceService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    let file = answers.message().await.unwrap().unwrap().message_response;
    let Some(MessageResponse::FileDescriptorResponse(files)) = file else {
        panic!("{file:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// The next server frame of a `Subscribe` stream.
async fn next_frame(replies: &mut tonic::Streaming<Envelope>) -> Envelope {
    tokio::time::timeout(WAIT, replies.message())
        .await
        .expect("a frame in time")
        .expect("stream healthy")
        .expect("stream open")
}

/// A request stream of `items` for a client-streaming call.
fn tokio_stream_of<T: Send + 'static>(items: Vec<T>) -> impl futures::Stream<Item = T> {
    futures::stream::iter(items)
}

/// A client with nothing but gRPC: `GatewayService/Subscribe` carries the
/// client protocol over one stream. It logs in (here with a password: a
/// token belongs to the device it was issued to), counts as an
/// online device while open (beside the same user's TCP device), gets
/// every message once and in order like the TCP device, answers
/// heartbeats, takes acks and presence changes, and goes offline when the
/// stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_is_a_device_like_a_tcp_connection() {
    let server = start_node!(2);
    let (alice_tcp, alice) = user_on(server.addr, "alice", "phone").await;
    let (bob, _) = user_on(server.addr, "bob", "laptop").await;
    // Presence is for friends.
    bob.request_friend(alice.user_id, "hi").await.unwrap();
    alice_tcp.answer_friend(bob.user_id(), true).await.unwrap();
    let mut gateway = gateway_service_client::GatewayServiceClient::new(channel(&server).await);
    let (frames, requests) = futures::channel::mpsc::unbounded::<Envelope>();
    let send = |req_id: u32, body: Body| {
        frames
            .unbounded_send(Envelope::new(req_id, body))
            .expect("stream open")
    };
    send(
        1,
        Body::Login(LoginRequest {
            username: "alice".into(),
            password: TEST_PASSWORD.into(),
            device_id: "grpc".into(),
            ..Default::default()
        }),
    );
    let mut replies = gateway.subscribe(requests).await.unwrap().into_inner();
    let login = next_frame(&mut replies).await;
    assert!(
        matches!(&login.body, Some(Body::LoginResp(r)) if r.success),
        "{login:?}"
    );

    let online = |devices: u32| {
        let bob = &bob;
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let seen = bob.presence(&[alice.user_id]).await.unwrap()[0].devices_online;
                if seen == devices {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{seen} devices, not {devices}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    online(2).await;

    for i in 0..5 {
        bob.send_text(alice.user_id, &format!("m{i}"))
            .await
            .unwrap();
    }
    let mut over_grpc = Vec::new();
    while over_grpc.len() < 5 {
        if let Some(Body::PushMessage(m)) = next_frame(&mut replies).await.body {
            send(
                0,
                Body::DeliveryAck(DeliveryAck {
                    conversation_id: m.conversation_id.clone(),
                    seq: m.seq,
                }),
            );
            over_grpc.push((m.seq, m.content));
        }
    }
    let mut over_tcp = Vec::new();
    while over_tcp.len() < 5 {
        let m = alice_tcp.next_message(WAIT).await.expect("a push over TCP");
        over_tcp.push((m.seq, m.content));
    }
    let expected: Vec<(i64, String)> = (0..5).map(|i| (i + 1, format!("m{i}"))).collect();
    assert_eq!(over_grpc, expected);
    assert_eq!(over_tcp, expected);

    send(7, Body::Heartbeat(Heartbeat {}));
    loop {
        let frame = next_frame(&mut replies).await;
        if let Some(Body::HeartbeatAck(_)) = frame.body {
            assert_eq!(frame.req_id, 7);
            break;
        }
    }
    // Presence set over the stream counts like a TCP device's: with both
    // devices away, alice shows AWAY.
    send(
        8,
        Body::SetPresence(SetPresenceRequest {
            state: PresenceState::Away as i32,
        }),
    );
    loop {
        let frame = next_frame(&mut replies).await;
        if frame.req_id == 8 {
            assert!(matches!(frame.body, Some(Body::Done(_))), "{frame:?}");
            break;
        }
    }
    alice_tcp.set_presence(PresenceState::Away).await.unwrap();
    let state = bob.presence(&[alice.user_id]).await.unwrap()[0].state;
    assert_eq!(state, PresenceState::Away as i32);

    // The stream ends: the device goes offline, the TCP one stays.
    drop(frames);
    online(1).await;
}
