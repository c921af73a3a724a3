//! The seed's six gRPC services (tonic) on one port, on a small tokio
//! runtime of its own thread. Nothing is implemented twice: each call is
//! carried over a [`Bridge`] to a reactor core, which runs it through the
//! same handler as a client frame (`handlers::call`: the handler's result
//! comes back as it is, never framed and decoded), so validation, authorization and
//! delivery are the client protocol's own, and a message sent here is
//! pushed to connected clients like any other. The bearer token is checked
//! there too, revocation included. GatewayService is for operators: it
//! takes the admin token kept in `<data_dir>/admin.token`. Beside them:
//! the standard health service, kept in step with `/readyz`, and server
//! reflection of every `.proto`. `bridge` carries a call to a core and
//! runs it there.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ourchat_protocol::pb::{self, *};
use ourchat_protocol::{Body, Envelope, ErrorCode};
use tonic::{Request, Response, Status};

use crate::core::{encode_frame, Shared};

mod bridge;
pub use bridge::{serve_bridge, Answer, Bridge, BridgeCall, BridgeReply, BridgeRequest};

/// The refusal as a gRPC status: the code mapped (README's table), the
/// message as the handler wrote it, and for programs the protocol's
/// `ErrorCode` name and whether a retry may work in the trailers
/// `ourchat-error-code` and `ourchat-retryable`, and the whole `Error`
/// message (protobuf) in the status details.
pub fn status_of(error: &pb::Error) -> Status {
    let code = ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Internal);
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        "ourchat-error-code",
        tonic::metadata::MetadataValue::from_static(code.as_str_name()),
    );
    metadata.insert(
        "ourchat-retryable",
        tonic::metadata::MetadataValue::from_static(match error.retryable {
            true => "true",
            false => "false",
        }),
    );
    Status::with_details_and_metadata(
        grpc_code(code),
        error.message.clone(),
        prost::Message::encode_to_vec(error).into(),
        metadata,
    )
}

/// A refusal made here (not by a handler), in the same form.
fn refusal(code: ErrorCode, message: impl Into<String>) -> Status {
    status_of(&pb::Error::new(code, message))
}

/// The gRPC status code of a protocol error code.
pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    match code {
        ErrorCode::BadRequest | ErrorCode::FrameTooLarge | ErrorCode::Protocol => {
            tonic::Code::InvalidArgument
        }
        ErrorCode::Unauthenticated | ErrorCode::TokenExpired => tonic::Code::Unauthenticated,
        ErrorCode::Forbidden => tonic::Code::PermissionDenied,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::Conflict => tonic::Code::AlreadyExists,
        ErrorCode::RateLimited => tonic::Code::ResourceExhausted,
        ErrorCode::Busy | ErrorCode::StoreUnavailable => tonic::Code::Unavailable,
        ErrorCode::LoginTimeout => tonic::Code::DeadlineExceeded,
        ErrorCode::Unspecified | ErrorCode::Internal => tonic::Code::Internal,
    }
}

/// The caller's address (plain or TLS connection).
fn peer_of<T>(request: &Request<T>) -> Option<IpAddr> {
    request.remote_addr().map(|addr| addr.ip())
}

/// The token in `authorization: Bearer <token>`.
fn bearer<T>(request: &Request<T>) -> Result<String, Status> {
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| refusal(ErrorCode::Unauthenticated, "a bearer token is required"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| refusal(ErrorCode::Unauthenticated, "malformed authorization"))
}

/// Compares secrets in time independent of where they differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Every service: the bridge to the cores, and what the admin calls need.
#[derive(Clone)]
pub struct Api {
    bridge: Bridge,
    shared: Arc<Shared>,
    admin_token: Arc<str>,
}

impl Api {
    /// Runs a client request on a core. `peer` (the caller's address)
    /// matters to Register and Login, throttled per address.
    async fn client(
        &self,
        token: Option<String>,
        peer: Option<IpAddr>,
        body: Body,
    ) -> Result<Body, Status> {
        let body = Box::new(body);
        match self
            .bridge
            .call(BridgeRequest::Client { token, peer, body })
            .await?
        {
            Answer::Reply(body) => Ok(*body),
            Answer::Count(_) => Err(unexpected()),
        }
    }

    fn check_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if same_secret(bearer(request)?.as_bytes(), self.admin_token.as_bytes()) {
            Ok(())
        } else {
            Err(refusal(
                ErrorCode::Forbidden,
                "GatewayService needs the admin token",
            ))
        }
    }

    async fn count(&self, request: BridgeRequest) -> Result<usize, Status> {
        match self.bridge.call(request).await? {
            Answer::Count(count) => Ok(count),
            Answer::Reply(_) => Err(unexpected()),
        }
    }
}

fn unexpected() -> Status {
    refusal(ErrorCode::Internal, "unexpected reply")
}

/// Implements a service whose every method takes a bearer token and maps
/// to one client request and its reply.
macro_rules! relay_service {
    ($service:path { $($method:ident($request:ty) -> $response:ty = $ask:ident => $answer:ident;)* }) => {
        #[tonic::async_trait]
        impl $service for Api {
            $(
                async fn $method(
                    &self,
                    request: Request<$request>,
                ) -> Result<Response<$response>, Status> {
                    let token = bearer(&request)?;
                    match self.client(Some(token), None, Body::$ask(request.into_inner())).await? {
                        Body::$answer(reply) => Ok(Response::new(reply)),
                        _ => Err(unexpected()),
                    }
                }
            )*
        }
    };
}

relay_service!(session_service_server::SessionService {
    get_user(GetUserRequest) -> UserProfile = GetUser => UserProfile;
    update_profile(UpdateProfileRequest) -> UserProfile = UpdateProfile => UserProfile;
    change_password(ChangePasswordRequest) -> ChangePasswordResponse
        = ChangePassword => ChangePasswordResp;
    list_devices(ListDevicesRequest) -> ListDevicesResponse = ListDevices => ListDevicesResp;
    kick_device(KickDeviceRequest) -> KickDeviceResponse = KickDevice => KickDeviceResp;
    request_friend(FriendRequestRequest) -> Done = FriendRequest => Done;
    respond_friend(RespondFriendRequest) -> Done = RespondFriend => Done;
    delete_friend(DeleteFriendRequest) -> Done = DeleteFriend => Done;
    block(BlockRequest) -> Done = Block => Done;
    friends(FriendsRequest) -> FriendsResponse = Friends => FriendsResp;
    search_users(SearchUsersRequest) -> SearchUsersResponse = SearchUsers => SearchUsersResp;
});

relay_service!(message_service_server::MessageService {
    send_message(SendMessageRequest) -> SendMessageResponse = Send => SendResp;
    history(HistoryRequest) -> HistoryResponse = History => HistoryResp;
    sync(SyncRequest) -> SyncResponse = Sync => SyncResp;
    mark_read(MarkReadRequest) -> MarkReadResponse = MarkRead => MarkReadResp;
    conversations(ConversationsRequest) -> ConversationsResponse
        = Conversations => ConversationsResp;
    recall(RecallRequest) -> MessageRecalled = Recall => RecallResp;
});

relay_service!(group_service_server::GroupService {
    create_group(CreateGroupRequest) -> CreateGroupResponse = CreateGroup => CreateGroupResp;
    get_group(GetGroupRequest) -> GroupInfo = GetGroup => GroupInfo;
    dissolve_group(DissolveGroupRequest) -> GroupChangeResponse = DissolveGroup => GroupChangeResp;
    update_group(UpdateGroupRequest) -> GroupChangeResponse = UpdateGroup => GroupChangeResp;
    add_members(AddMembersRequest) -> GroupChangeResponse = AddMembers => GroupChangeResp;
    remove_members(RemoveMembersRequest) -> GroupChangeResponse = RemoveMembers => GroupChangeResp;
    leave_group(LeaveGroupRequest) -> GroupChangeResponse = LeaveGroup => GroupChangeResp;
    transfer_owner(TransferOwnerRequest) -> GroupChangeResponse = TransferOwner => GroupChangeResp;
    set_admin(SetAdminRequest) -> GroupChangeResponse = SetAdmin => GroupChangeResp;
    members(GroupMembersRequest) -> GroupMembersResponse = GroupMembers => GroupMembersResp;
    my_groups(MyGroupsRequest) -> MyGroupsResponse = MyGroups => MyGroupsResp;
});

#[tonic::async_trait]
impl auth_service_server::AuthService for Api {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        match self
            .client(
                None,
                peer_of(&request),
                Body::Register(request.into_inner()),
            )
            .await?
        {
            Body::RegisterResp(reply) => Ok(Response::new(reply)),
            _ => Err(unexpected()),
        }
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let peer = peer_of(&request);
        match self
            .client(None, peer, Body::Login(request.into_inner()))
            .await?
        {
            Body::LoginResp(reply) => Ok(Response::new(reply)),
            _ => Err(unexpected()),
        }
    }

    async fn refresh(
        &self,
        request: Request<RefreshTokenRequest>,
    ) -> Result<Response<RefreshTokenResponse>, Status> {
        let token = bearer(&request)?;
        match self
            .client(Some(token), None, Body::RefreshToken(request.into_inner()))
            .await?
        {
            Body::RefreshTokenResp(reply) => Ok(Response::new(reply)),
            _ => Err(unexpected()),
        }
    }

    async fn logout(&self, request: Request<LogoutRequest>) -> Result<Response<Done>, Status> {
        let token = bearer(&request)?;
        match self
            .client(Some(token), None, Body::Logout(request.into_inner()))
            .await?
        {
            Body::Done(reply) => Ok(Response::new(reply)),
            _ => Err(unexpected()),
        }
    }
}

#[tonic::async_trait]
impl presence_service_server::PresenceService for Api {
    async fn get(
        &self,
        request: Request<GetPresenceRequest>,
    ) -> Result<Response<PresenceInfo>, Status> {
        let token = bearer(&request)?;
        let query = PresenceQuery {
            user_ids: vec![request.into_inner().user_id],
        };
        match self
            .client(Some(token), None, Body::PresenceQuery(query))
            .await?
        {
            Body::PresenceList(list) => list
                .users
                .into_iter()
                .next()
                .map(Response::new)
                .ok_or_else(|| refusal(ErrorCode::Forbidden, "not a friend")),
            _ => Err(unexpected()),
        }
    }

    async fn batch_get(
        &self,
        request: Request<PresenceQuery>,
    ) -> Result<Response<PresenceList>, Status> {
        let token = bearer(&request)?;
        match self
            .client(Some(token), None, Body::PresenceQuery(request.into_inner()))
            .await?
        {
            Body::PresenceList(list) => Ok(Response::new(list)),
            _ => Err(unexpected()),
        }
    }
}

/// Where core `core` of this process takes gRPC `Subscribe` streams: a
/// Unix socket in a directory of this process's own (mode 0700).
pub fn stream_socket(core: usize) -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("ourchat-{}", std::process::id()))
        .join(format!("core-{core}.sock"))
}

/// Removes the stream-socket directories of processes that no longer run:
/// a node stopped by SIGKILL (or a crash) cannot remove its own, and each
/// would stay in the temporary directory for good.
pub fn remove_dead_stream_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix("ourchat-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            // Another user's directory, or one removed by a racing node,
            // is not ours to report.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Server frames a `Subscribe` stream may carry (pushes can be large).
const STREAM_MAX_FRAME: usize = 16 << 20;

/// The replies of one `Subscribe` stream.
type FrameStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Envelope, Status>> + Send + 'static>>;

impl Api {
    /// Opens a client connection on a core (round robin) and carries the
    /// stream's frames to it and its frames back, until either side ends.
    async fn open_stream(
        &self,
        mut frames: tonic::Streaming<Envelope>,
    ) -> Result<FrameStream, Status> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        static NEXT_CORE: AtomicUsize = AtomicUsize::new(0);
        let core = NEXT_CORE.fetch_add(1, Ordering::Relaxed) % self.shared.cores.max(1);
        let socket = tokio::net::UnixStream::connect(stream_socket(core))
            .await
            .map_err(|e| refusal(ErrorCode::Busy, format!("no core takes streams now: {e}")))?;
        let (read, mut write) = socket.into_split();
        tokio::spawn(async move {
            // Client frames to the core; the stream's end closes the
            // connection as a TCP client's FIN would.
            while let Ok(Some(envelope)) = frames.message().await {
                if write.write_all(&encode_frame(&envelope)).await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        });
        let decoder = ourchat_protocol::FrameDecoder::new(STREAM_MAX_FRAME);
        let replies = futures::stream::unfold(
            Some((read, bytes::BytesMut::new(), decoder)),
            |state| async move {
                let (mut read, mut buf, decoder) = state?;
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(envelope)) => {
                            return Some((Ok(envelope), Some((read, buf, decoder))))
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let broken =
                                refusal(ErrorCode::Internal, format!("bad server frame: {e}"));
                            return Some((Err(broken), None));
                        }
                    }
                    match read.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            },
        );
        Ok(Box::pin(replies))
    }
}

#[tonic::async_trait]
impl gateway_service_server::GatewayService for Api {
    type SubscribeStream = FrameStream;

    async fn subscribe(
        &self,
        request: Request<tonic::Streaming<Envelope>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Ok(Response::new(self.open_stream(request.into_inner()).await?))
    }

    async fn connection_counts(
        &self,
        request: Request<ConnectionCountsRequest>,
    ) -> Result<Response<ConnectionCountsResponse>, Status> {
        self.check_admin(&request)?;
        let per_core: Vec<u64> = (0..self.shared.cores)
            .map(|core| {
                self.shared
                    .metrics
                    .core(core)
                    .connections
                    .load(Ordering::Relaxed)
            })
            .collect();
        let total = per_core.iter().sum();
        Ok(Response::new(ConnectionCountsResponse { per_core, total }))
    }

    async fn kick_user(
        &self,
        request: Request<KickUserRequest>,
    ) -> Result<Response<KickUserResponse>, Status> {
        self.check_admin(&request)?;
        let request = request.into_inner();
        if request.user_id <= 0 {
            return Err(refusal(ErrorCode::BadRequest, "user_id is required"));
        }
        let reason = if request.reason.is_empty() {
            "disconnected by an operator".to_string()
        } else {
            request.reason
        };
        let kicked = self
            .count(BridgeRequest::KickUser {
                user_id: request.user_id,
                reason,
            })
            .await?;
        Ok(Response::new(KickUserResponse {
            devices_kicked: u32::try_from(kicked).unwrap_or(u32::MAX),
        }))
    }

    async fn send_notice(
        &self,
        request: Request<SendNoticeRequest>,
    ) -> Result<Response<SendNoticeResponse>, Status> {
        self.check_admin(&request)?;
        let request = request.into_inner();
        let max = self.shared.config.server.max_content_bytes;
        if request.text.is_empty() || request.text.len() > max {
            return Err(refusal(
                ErrorCode::BadRequest,
                format!("text must be 1-{max} bytes"),
            ));
        }
        let queued = self
            .count(BridgeRequest::Notice {
                user_id: request.user_id,
                text: request.text,
            })
            .await?;
        Ok(Response::new(SendNoticeResponse {
            connections: queued as u64,
        }))
    }
}

/// The running gRPC server; [`GrpcServer::join`] waits for it to stop
/// (it stops once the node's shutdown flag is set).
pub struct GrpcServer {
    /// Where it listens.
    pub addr: SocketAddr,
    thread: std::thread::JoinHandle<()>,
}

impl GrpcServer {
    /// Waits for the server thread to finish.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// The services `grpc.health.v1.Health` reports on: the whole server ("")
/// and each of ours.
const HEALTH_SERVICES: &[&str] = &[
    "",
    "ourchat.AuthService",
    "ourchat.SessionService",
    "ourchat.GatewayService",
    "ourchat.MessageService",
    "ourchat.GroupService",
    "ourchat.PresenceService",
];

/// How often the gRPC health status is brought up to `/readyz`'s answer.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Keeps `grpc.health.v1.Health` saying what `/readyz` says (every core
/// listens, not shutting down, the store answers its probe): SERVING or
/// NOT_SERVING for the server and each service.
async fn report_health(health: tonic_health::server::HealthReporter, shared: Arc<Shared>) {
    use tonic_health::ServingStatus;
    loop {
        let probe = shared.clone();
        let ready = tokio::task::spawn_blocking(move || crate::admin_http::readiness(&probe))
            .await
            .is_ok_and(|ready| ready.is_ok());
        let status = match ready {
            true => ServingStatus::Serving,
            false => ServingStatus::NotServing,
        };
        for service in HEALTH_SERVICES {
            health.set_service_status(*service, status).await;
        }
        if shared.shutdown.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(HEALTH_EVERY).await;
    }
}

/// Serves the six services on `listener` (bound by the caller, so a taken
/// port fails the start) on a thread with a two-worker tokio runtime until
/// the node's shutdown flag is set. With `tls.grpc` it serves TLS only,
/// with the client listener's certificate. GatewayService takes
/// `admin_token`.
pub fn spawn(
    listener: std::net::TcpListener,
    bridge: Bridge,
    shared: Arc<Shared>,
    admin_token: Arc<str>,
) -> std::io::Result<GrpcServer> {
    let shutdown = shared.shutdown.clone();
    let tls = &shared.config.tls;
    let identity = match tls.grpc {
        true => Some(tonic::transport::Identity::from_pem(
            std::fs::read(&tls.cert_file)?,
            std::fs::read(&tls.key_file)?,
        )),
        false => None,
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(identity) = identity {
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    }
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ourchat-grpc")
        .enable_all()
        .build()?;
    let api = Api {
        bridge,
        shared,
        admin_token,
    };
    let thread = std::thread::Builder::new()
        .name("ourchat-grpc".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(error = %e, "gRPC listener unusable");
                        return;
                    }
                };
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let stop = async move {
                    while !shutdown.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                let (health, health_service) = tonic_health::server::health_reporter();
                tokio::spawn(report_health(health, api.shared.clone()));
                let reflection = || {
                    tonic_reflection::server::Builder::configure()
                        .register_encoded_file_descriptor_set(ourchat_protocol::FILE_DESCRIPTOR_SET)
                        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                };
                let (reflection_v1, reflection_v1alpha) =
                    match (reflection().build_v1(), reflection().build_v1alpha()) {
                        (Ok(v1), Ok(v1alpha)) => (v1, v1alpha),
                        (Err(e), _) | (_, Err(e)) => {
                            tracing::error!(error = %e, "gRPC reflection descriptors unusable");
                            return;
                        }
                    };
                let served = builder
                    .add_service(health_service)
                    .add_service(reflection_v1)
                    .add_service(reflection_v1alpha)
                    .add_service(auth_service_server::AuthServiceServer::new(api.clone()))
                    .add_service(session_service_server::SessionServiceServer::new(
                        api.clone(),
                    ))
                    .add_service(gateway_service_server::GatewayServiceServer::new(
                        api.clone(),
                    ))
                    .add_service(message_service_server::MessageServiceServer::new(
                        api.clone(),
                    ))
                    .add_service(group_service_server::GroupServiceServer::new(api.clone()))
                    .add_service(presence_service_server::PresenceServiceServer::new(api))
                    .serve_with_incoming_shutdown(incoming, stop)
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            });
        })?;
    Ok(GrpcServer {
        addr: local,
        thread,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stream_directories_of_dead_processes_are_removed() {
        // No pid reaches 4,000,000,000 (the kernel's limit is 2^22).
        let dead = std::env::temp_dir().join("ourchat-4000000000");
        // pid 1 always runs: its directory (made here if missing) stays.
        let running = std::env::temp_dir().join("ourchat-1");
        let made_running = !running.exists();
        let own = stream_socket(0).parent().map(Path::to_path_buf);
        let own = own.expect("a socket directory");
        for dir in [&dead, &own, &running] {
            std::fs::create_dir_all(dir).expect("create a stream directory");
            std::fs::write(dir.join("core-0.sock"), b"").expect("a file in it");
        }

        remove_dead_stream_dirs();

        assert!(!dead.exists(), "a dead process's directory stays");
        assert!(own.join("core-0.sock").exists(), "our own directory went");
        assert!(
            running.join("core-0.sock").exists(),
            "pid 1's directory went"
        );
        let _ = std::fs::remove_dir_all(own);
        if made_running {
            let _ = std::fs::remove_dir_all(running);
        }
    }
}
