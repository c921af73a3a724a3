//! The bridge from the gRPC runtime's threads to the reactor cores: each
//! call is queued to a core (round robin) and run there as a task of its
//! own, through the same handler a client frame goes through, or as one
//! of the admin requests (kick a user, push a notice).

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use ourchat_protocol::ids::now_ms;
use ourchat_protocol::pb;
use ourchat_protocol::{Body, Envelope, ErrorCode};
use tonic::Status;

use super::{refusal, status_of};
use crate::core::{encode_frame, Core, CoreMsg};

/// Calls waiting for one core before callers wait for room.
const BRIDGE_QUEUE: usize = 1024;

/// What a gRPC call asks of a core.
pub enum BridgeRequest {
    /// A client request, with its bearer token (`None`: Register/Login).
    Client {
        /// Bearer token.
        token: Option<String>,
        /// The caller's address.
        peer: Option<IpAddr>,
        /// The request, as a client frame would carry it (boxed: the
        /// bridge queue holds many calls).
        body: Box<Body>,
    },
    /// Close every connection of a user.
    KickUser {
        /// Whose.
        user_id: i64,
        /// Shown to the client.
        reason: String,
    },
    /// Push a notice to one user's devices, or to everyone (0).
    Notice {
        /// Whom; 0 = every logged-in connection.
        user_id: i64,
        /// Text.
        text: String,
    },
}

/// A core's answer: a client reply, or for admin requests a count.
pub enum Answer {
    /// The reply a client frame would have got.
    Reply(Box<Body>),
    /// Devices kicked, or connections a notice was queued to.
    Count(usize),
}

/// A core's answer, or the refusal.
pub type BridgeReply = Result<Answer, pb::Error>;

/// One call on its way to a core.
pub struct BridgeCall {
    request: BridgeRequest,
    reply: oneshot::Sender<BridgeReply>,
}

/// The gRPC side's handle on the cores: thread-safe, cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    cores: Arc<Vec<mpsc::Sender<BridgeCall>>>,
    next: Arc<AtomicUsize>,
}

impl Bridge {
    /// A bridge to `cores` cores and the receiver each core must serve
    /// (see [`serve_bridge`]).
    pub fn new(cores: usize) -> (Bridge, Vec<mpsc::Receiver<BridgeCall>>) {
        let (senders, receivers) = (0..cores).map(|_| mpsc::channel(BRIDGE_QUEUE)).unzip();
        let bridge = Bridge {
            cores: Arc::new(senders),
            next: Arc::new(AtomicUsize::new(0)),
        };
        (bridge, receivers)
    }

    /// Runs `request` on a core (round robin: any core can serve any user).
    pub async fn call(&self, request: BridgeRequest) -> Result<Answer, Status> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.cores.len().max(1);
        let mut sender = self
            .cores
            .get(index)
            .cloned()
            .ok_or_else(|| refusal(ErrorCode::Busy, "no cores"))?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(BridgeCall { request, reply })
            .await
            .map_err(|_| refusal(ErrorCode::Busy, "server shutting down"))?;
        match answer.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(status_of(&error)),
            Err(_) => Err(refusal(ErrorCode::Busy, "server shutting down")),
        }
    }
}

/// Serves gRPC calls on this core until the bridge closes; each call is a
/// task of its own, so a slow one holds up no other.
pub async fn serve_bridge(core: Rc<Core>, mut calls: mpsc::Receiver<BridgeCall>) {
    while let Some(call) = calls.next().await {
        let core = core.clone();
        glommio::spawn_local(async move {
            let answer = run(core, call.request).await;
            let _ = call.reply.send(answer);
        })
        .detach();
    }
}

async fn run(core: Rc<Core>, request: BridgeRequest) -> BridgeReply {
    match request {
        BridgeRequest::Client { token, peer, body } => {
            crate::handlers::call(core, token, peer, *body)
                .await
                .map(|reply| Answer::Reply(Box::new(reply)))
        }
        BridgeRequest::KickUser { user_id, reason } => {
            let mut kicked = 0;
            for device in core.online_devices(user_id).await {
                if core.kick_device(user_id, device, &reason).await {
                    kicked += 1;
                }
            }
            Ok(Answer::Count(kicked))
        }
        BridgeRequest::Notice { user_id, text } => {
            let notice = pb::SystemNotice {
                text,
                sent_at_ms: now_ms() as i64,
            };
            let frame = encode_frame(&Envelope::new(0, Body::SystemNotice(notice)));
            if user_id != 0 {
                let devices = core.online_devices(user_id).await.len();
                core.push_to_user(user_id, frame, 0).await;
                return Ok(Answer::Count(devices));
            }
            let mut answers = Vec::with_capacity(core.shared.cores);
            for target in 0..core.shared.cores {
                let (reply, answer) = oneshot::channel();
                let broadcast = CoreMsg::Broadcast {
                    frame: frame.clone(),
                    reply,
                };
                core.route(target, broadcast).await;
                answers.push(answer);
            }
            let mut queued = 0;
            for answer in answers {
                queued += answer.await.unwrap_or(0);
            }
            Ok(Answer::Count(queued))
        }
    }
}
