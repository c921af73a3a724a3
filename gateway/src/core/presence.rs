//! Presence on a core: a user's changes told to their friends (this
//! node's through the presence queue, other nodes' through the log),
//! presence and device reads for users this core owns, and device
//! kicks and sign-outs routed to the core that owns the user.

use std::rc::Rc;

use futures::channel::oneshot;
use ourchat_protocol::pb;
use ourchat_protocol::{Body, Envelope};

use super::{encode_frame, Core, CoreMsg};
use crate::directory::Announce;

impl Core {
    /// Tells a user's friends of their new presence (`None`: it did not
    /// change): other nodes through the log, this node's through the
    /// presence queue.
    pub(super) fn announce_presence(self: &Rc<Self>, announce: Announce) {
        let Some(info) = announce else {
            return;
        };
        let user_id = info.user_id;
        if let Some(cluster) = &self.shared.cluster {
            // Friends on other nodes hear of it through the log.
            let (log, payload) = (cluster.log.clone(), prost::Message::encode_to_vec(&info));
            let published = cluster.redis.try_run(move |_| {
                if let Err(error) = log.publish_presence(user_id, &payload) {
                    tracing::warn!(%error, user_id, "presence not published");
                }
            });
            if published.is_err() {
                tracing::warn!(user_id, "presence not published: cluster threads busy");
            }
        }
        self.tell_friends(info);
    }

    /// Queues a presence change for the user's friends' devices on this
    /// node; they hear changes in the order they were queued.
    pub(crate) fn tell_friends(self: &Rc<Self>, info: pb::PresenceInfo) {
        if self.presence_out.add(info) {
            glommio::spawn_local(self.clone().push_presence_changes()).detach();
        }
    }

    /// Drains the presence queue: one store read for the friends of every
    /// change waiting, then the pushes in order, until nothing waits.
    async fn push_presence_changes(self: Rc<Self>) {
        loop {
            let changes = self.presence_out.take();
            if changes.is_empty() {
                return;
            }
            let user_ids: Vec<i64> = changes.iter().map(|info| info.user_id).collect();
            let read = self.read(move |store| store.friends_of_each(&user_ids));
            let Ok(friend_lists) = read.await else {
                tracing::warn!(
                    changes = changes.len(),
                    "presence not pushed: friends unread"
                );
                continue;
            };
            for (info, friends) in changes.into_iter().zip(friend_lists) {
                if friends.is_empty() {
                    continue;
                }
                let frame = encode_frame(&Envelope::new(0, Body::Presence(info)));
                for (friend, _) in friends {
                    self.push_to_user(friend, frame.clone(), 0).await;
                }
            }
        }
    }

    /// A user's aggregated presence, from their owner core.
    pub async fn presence(self: &Rc<Self>, user_id: i64) -> pb::PresenceInfo {
        let (reply, answer) = oneshot::channel();
        self.route(
            self.owner_of_user(user_id),
            CoreMsg::Presence { user_id, reply },
        )
        .await;
        let here = answer.await.unwrap_or(pb::PresenceInfo {
            user_id,
            ..Default::default()
        });
        self.presence_elsewhere(here).await
    }

    /// The user's online device ids.
    pub async fn online_devices(self: &Rc<Self>, user_id: i64) -> Vec<String> {
        let (reply, answer) = oneshot::channel();
        let ask = CoreMsg::OnlineDevices { user_id, reply };
        self.route(self.owner_of_user(user_id), ask).await;
        answer.await.unwrap_or_default()
    }

    /// Closes a device's connection (if online) with `reason`; whether it was.
    pub async fn kick_device(
        self: &Rc<Self>,
        user_id: i64,
        device_id: String,
        reason: &str,
    ) -> bool {
        let (reply, answer) = oneshot::channel();
        let elsewhere = self.sign_out_elsewhere(user_id, &device_id, reason).await;
        let kick = CoreMsg::KickDevice {
            user_id,
            device_id,
            reason: reason.to_string(),
            registered_before_ms: 0,
            reply: Some(reply),
        };
        self.route(self.owner_of_user(user_id), kick).await;
        answer.await.unwrap_or(false) || elsewhere
    }

    /// Closes this node's connection of a device another node signed out.
    pub(crate) async fn sign_out_here(self: &Rc<Self>, sign_out: pb::DeviceSignOut) {
        let kick = CoreMsg::KickDevice {
            user_id: sign_out.user_id,
            device_id: sign_out.device_id,
            reason: sign_out.reason,
            registered_before_ms: sign_out.registered_before_ms,
            reply: None,
        };
        self.route(self.owner_of_user(sign_out.user_id), kick).await;
    }
}
