//! The last legs of a message on a core: pushes to the devices of users
//! this core owns (one mesh message per core holding any of their
//! connections), pushes into this core's own connections' outboxes, and
//! answers to a connection's send, over the mesh to its core when it is
//! elsewhere.

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use ourchat_protocol::Body;

use super::{core_of_conn, kicked_frame, ConnReply, Core, CoreMsg, SendResult};
use crate::fanout;
use crate::metrics::CoreMetrics;
use crate::outbox::Pushed;

/// How a push reaches its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pushing {
    /// Written at once if the connection's writer idles
    /// ([`crate::outbox::Outbox::push_now`]): one connection's push.
    Now,
    /// Queued for the connection's task: a fan-out's. When the core falls
    /// behind, each task writes all its connection's queued pushes in one
    /// send; written at once, a 5,000-member group's pushes went out one
    /// send each, and at 200,000 deliveries/s its p99 rose from 0.3-0.4 s
    /// to 0.9-3.2 s (BENCHMARKS.md, "One readiness poll per connection, and
    /// pushes written by the pusher").
    Queued,
}

impl Core {
    /// Pushes `frame` to the online devices of `user_ids` (users this core
    /// owns), one mesh message per core that holds any of their connections.
    pub(super) fn deliver_local(
        self: &Rc<Self>,
        user_ids: &[i64],
        frame: Bytes,
        skip_conn: u64,
        committed_at: Option<Instant>,
    ) {
        let pushes = fanout::pushes_by_core(
            self.directory.borrow().connections(user_ids, skip_conn),
            self.shared.cores,
            core_of_conn,
        );
        for push in pushes {
            let (core, push) = match push {
                fanout::Push::One { core, conn_id } => (
                    core,
                    CoreMsg::Push {
                        conn_id,
                        frame: frame.clone(),
                        committed_at,
                    },
                ),
                fanout::Push::Many { core, conn_ids } => (
                    core,
                    CoreMsg::PushMany {
                        conn_ids,
                        frame: frame.clone(),
                        committed_at,
                    },
                ),
            };
            self.forward(core, push);
        }
    }

    pub(super) fn push_local(
        &self,
        conn_id: u64,
        frame: Bytes,
        committed_at: Option<Instant>,
        pushing: Pushing,
    ) {
        let conns = self.conns.borrow();
        let Some(outbox) = conns.get(conn_id) else {
            return;
        };
        let metrics = self.metrics();
        let pushed = match pushing {
            Pushing::Now => outbox.push_now(frame),
            Pushing::Queued => outbox.push(frame).map(|()| Pushed::Queued),
        };
        if let Ok(pushed) = pushed {
            if pushed == Pushed::Written {
                CoreMetrics::inc(&metrics.frames_out);
            }
            match committed_at {
                Some(at) => {
                    CoreMetrics::inc(&metrics.pushes);
                    metrics.deliver_us.record(at.elapsed().as_micros() as u64);
                }
                None => CoreMetrics::inc(&metrics.events_pushed),
            }
        } else {
            CoreMetrics::inc(&metrics.slow_reader_closes);
            tracing::debug!(conn_id, "slow reader: outbound queue full, closing");
            outbox.close_with(Some(kicked_frame(
                "outbound queue full: reconnect and sync",
            )));
        }
    }

    /// Answers a connection's send, on its core: here, or over the mesh.
    pub(super) fn answer(self: &Rc<Self>, to: ConnReply, result: SendResult) {
        self.forward(core_of_conn(to.conn_id), CoreMsg::Answer { to, result });
    }

    /// Queues a send's answer on its connection, if still open, and counts
    /// the send as answered there.
    pub(super) fn answer_local(&self, to: ConnReply, result: SendResult) {
        let conns = self.conns.borrow();
        let Some(outbox) = conns.get(to.conn_id) else {
            return;
        };
        let metrics = self.metrics();
        match &result {
            Ok(_) => metrics
                .send_ack_us
                .record(to.received_at.elapsed().as_micros() as u64),
            Err(error) => metrics.error(error.code),
        }
        let response = crate::messages::send_response(to.conv, result);
        crate::connection::push_answer(outbox, metrics, to.req_id, Body::SendResp(response));
        outbox.send_answered();
    }

    /// Pushes `frame` to every online device of `user_ids` except the
    /// connection `skip_conn`, with one mesh message per owning core.
    pub async fn deliver_to_users(
        self: &Rc<Self>,
        user_ids: &[i64],
        frame: Bytes,
        skip_conn: u64,
        committed_at: Option<Instant>,
    ) {
        let owners = fanout::users_by_owner(user_ids, self.shared.cores, |user_id| {
            self.owner_of_user(user_id)
        });
        for (core, user_ids) in owners {
            let deliver = CoreMsg::DeliverMany {
                user_ids,
                frame: frame.clone(),
                skip_conn,
                committed_at,
            };
            self.route(core, deliver).await;
        }
    }

    /// Pushes `frame` to every online device of `user_id` except the
    /// connection `skip_conn`: receipts, recalls, typing.
    pub async fn push_to_user(self: &Rc<Self>, user_id: i64, frame: Bytes, skip_conn: u64) {
        let deliver = CoreMsg::Deliver {
            user_id,
            frame,
            skip_conn,
            committed_at: None,
        };
        self.route(self.owner_of_user(user_id), deliver).await;
    }
}
