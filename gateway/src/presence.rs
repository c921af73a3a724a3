//! Presence requests: a device sets itself away or back online, and a user
//! asks for the presence of their friends (or themselves). Presence lives
//! on each user's owner core, aggregated over their connected devices;
//! changes are pushed to friends from there (`Core::announce_presence`).

use ourchat_protocol::pb;
use ourchat_protocol::Body;

use crate::core::CoreMsg;
use crate::handlers::{bad, Caller, Session};

/// Most users one presence query may name.
const MAX_PRESENCE_QUERY: usize = 200;

impl Caller {
    pub(crate) async fn set_presence(
        &self,
        session: &Session,
        request: pb::SetPresenceRequest,
    ) -> Result<Body, pb::Error> {
        let away = match pb::PresenceState::try_from(request.state) {
            Ok(pb::PresenceState::Online) => false,
            Ok(pb::PresenceState::Away) => true,
            _ => {
                return Err(bad(
                    "state must be ONLINE or AWAY (disconnect to go offline)",
                ))
            }
        };
        let owner = self.core.owner_of_user(session.user_id);
        let (done, applied) = futures::channel::oneshot::channel();
        let set = CoreMsg::SetAway {
            user_id: session.user_id,
            conn_id: self.conn_id,
            away,
            done,
        };
        self.core.route(owner, set).await;
        let _ = applied.await;
        Ok(Body::Done(pb::Done {}))
    }

    pub(crate) async fn presence_query(
        &self,
        session: &Session,
        request: pb::PresenceQuery,
    ) -> Result<Body, pb::Error> {
        if request.user_ids.len() > MAX_PRESENCE_QUERY {
            return Err(bad("at most 200 user_ids per query"));
        }
        let me = session.user_id;
        let friends = match self.core.read(move |store| store.friends(me)).await {
            Ok(friends) => friends,
            Err(error) => return Err(error),
        };
        // Presence is for friends (and yourself); others are left out.
        let mut users = Vec::new();
        for user_id in request.user_ids {
            if user_id == me || friends.iter().any(|(f, _)| *f == user_id) {
                users.push(self.core.presence(user_id).await);
            }
        }
        Ok(Body::PresenceList(pb::PresenceList { users }))
    }
}
