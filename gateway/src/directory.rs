//! The directory of a user-owner core, without I/O: which devices of its
//! users are online on which connection (and when each registered, and
//! whether it said it is away), their presence (online if any device is,
//! away if every connected device is, else offline with a last-seen
//! time), and the decisions that follow from a change — which older
//! connection of the same device to kick, whether a device is gone,
//! whether a user's presence changed and must be announced, which
//! connections a push goes to. `core` carries the effects out (kicks over
//! the mesh, the cluster's Redis directory, presence to friends).
//!
//! Rules: a device has at most one connection here (a new login replaces
//! and kicks the old one); only the connection that registered a device
//! may unregister it (a kicked connection's late goodbye must not remove
//! the device's new connection); a presence change is reported exactly
//! when the aggregated state changes.

use foldhash::HashMap;

use smallvec::SmallVec;

use ourchat_protocol::pb;

/// Last-seen times kept for offline users before the map starts over.
const LAST_SEEN_CAP: usize = 1_000_000;

/// One online device.
#[derive(Debug)]
struct Device {
    device_id: Box<str>,
    conn_id: u64,
    /// When this connection registered (ms since the epoch): a sign-out
    /// from another node spares a connection newer than itself.
    registered_ms: i64,
    /// The device said it is away (still connected).
    away: bool,
}

/// A user's presence changed: what to tell their friends.
pub(crate) type Announce = Option<pb::PresenceInfo>;

/// What a login did.
#[derive(Debug, PartialEq)]
pub(crate) struct LoggedIn {
    /// The device's previous connection here, to kick.
    pub(crate) replaced: Option<u64>,
    pub(crate) announce: Announce,
}

/// What a goodbye did.
#[derive(Debug, PartialEq)]
pub(crate) struct LoggedOut {
    /// No connection of that device is left here.
    pub(crate) device_gone: bool,
    pub(crate) announce: Announce,
}

/// A user's devices online here. Most users have one, held in the map's
/// own entry: a push's lookup then reads the entry and not a list
/// elsewhere on the heap (a cache miss per delivery), and a user online
/// takes one allocation fewer.
type Devices = SmallVec<[Device; 1]>;

/// Devices online by user, for the users one core owns.
#[derive(Default)]
pub(crate) struct Directory {
    users: HashMap<i64, Devices>,
    /// When each user who went offline here was last seen.
    last_seen: HashMap<i64, i64>,
}

impl Directory {
    /// `conn_id` logged in as `device_id` of `user_id` at `now_ms`.
    pub(crate) fn online(
        &mut self,
        user_id: i64,
        device_id: &str,
        conn_id: u64,
        now_ms: i64,
    ) -> LoggedIn {
        let before = self.state(user_id);
        let devices = self.users.entry(user_id).or_default();
        let replaced = match devices.iter_mut().find(|d| *d.device_id == *device_id) {
            Some(existing) => {
                existing.registered_ms = now_ms;
                // A new connection starts present, whatever the old one said.
                existing.away = false;
                Some(std::mem::replace(&mut existing.conn_id, conn_id))
            }
            None => {
                devices.push(Device {
                    device_id: device_id.into(),
                    conn_id,
                    registered_ms: now_ms,
                    away: false,
                });
                None
            }
        };
        LoggedIn {
            replaced: replaced.filter(|old| *old != conn_id),
            announce: self.changed(user_id, before, now_ms),
        }
    }

    /// `conn_id`, registered as `device_id` of `user_id`, closed.
    pub(crate) fn offline(
        &mut self,
        user_id: i64,
        device_id: &str,
        conn_id: u64,
        now_ms: i64,
    ) -> LoggedOut {
        let before = self.state(user_id);
        if let Some(devices) = self.users.get_mut(&user_id) {
            devices.retain(|d| !(*d.device_id == *device_id && d.conn_id == conn_id));
            if devices.is_empty() {
                self.users.remove(&user_id);
            }
        }
        let device_gone = !self
            .users
            .get(&user_id)
            .is_some_and(|devices| devices.iter().any(|d| *d.device_id == *device_id));
        LoggedOut {
            device_gone,
            announce: self.changed(user_id, before, now_ms),
        }
    }

    /// The device on `conn_id` says it is (or no longer is) away; its id,
    /// if it is here.
    pub(crate) fn set_away(
        &mut self,
        user_id: i64,
        conn_id: u64,
        away: bool,
        now_ms: i64,
    ) -> (Option<String>, Announce) {
        let before = self.state(user_id);
        let device = self
            .users
            .get_mut(&user_id)
            .and_then(|devices| devices.iter_mut().find(|d| d.conn_id == conn_id))
            .map(|device| {
                device.away = away;
                device.device_id.to_string()
            });
        (device, self.changed(user_id, before, now_ms))
    }

    /// A user's presence as this core sees it.
    pub(crate) fn presence(&self, user_id: i64, now_ms: i64) -> pb::PresenceInfo {
        let (state, devices_online) = self.state(user_id);
        let last_seen_ms = match state {
            pb::PresenceState::Offline => self.last_seen.get(&user_id).copied().unwrap_or(0),
            _ => now_ms,
        };
        pb::PresenceInfo {
            user_id,
            state: state as i32,
            last_seen_ms,
            devices_online,
        }
    }

    /// The ids of a user's devices online here.
    pub(crate) fn online_devices(&self, user_id: i64) -> Vec<String> {
        self.users
            .get(&user_id)
            .map(|devices| devices.iter().map(|d| d.device_id.to_string()).collect())
            .unwrap_or_default()
    }

    /// The connection of a user's device, if it registered before
    /// `registered_before_ms` (0: whenever).
    pub(crate) fn connection_of(
        &self,
        user_id: i64,
        device_id: &str,
        registered_before_ms: i64,
    ) -> Option<u64> {
        self.users
            .get(&user_id)?
            .iter()
            .find(|d| *d.device_id == *device_id)
            .filter(|d| registered_before_ms == 0 || d.registered_ms < registered_before_ms)
            .map(|d| d.conn_id)
    }

    /// Every connection of these users except `skip_conn`.
    pub(crate) fn connections<'a>(
        &'a self,
        user_ids: &'a [i64],
        skip_conn: u64,
    ) -> impl Iterator<Item = u64> + 'a {
        user_ids
            .iter()
            .filter_map(|user_id| self.users.get(user_id))
            .flatten()
            .map(|device| device.conn_id)
            .filter(move |conn_id| *conn_id != skip_conn)
    }

    /// Aggregated state and devices online.
    fn state(&self, user_id: i64) -> (pb::PresenceState, u32) {
        match self.users.get(&user_id) {
            Some(devices) if !devices.is_empty() => {
                let state = if devices.iter().all(|d| d.away) {
                    pb::PresenceState::Away
                } else {
                    pb::PresenceState::Online
                };
                (state, devices.len() as u32)
            }
            _ => (pb::PresenceState::Offline, 0),
        }
    }

    /// The presence to announce if the aggregated state moved from
    /// `before`; a user going offline is remembered as last seen now.
    fn changed(&mut self, user_id: i64, before: (pb::PresenceState, u32), now_ms: i64) -> Announce {
        let after = self.state(user_id);
        if after.0 == before.0 {
            return None;
        }
        if after.0 == pb::PresenceState::Offline {
            if self.last_seen.len() >= LAST_SEEN_CAP {
                self.last_seen.clear();
            }
            self.last_seen.insert(user_id, now_ms);
        }
        let mut info = self.presence(user_id, now_ms);
        // Stamped with the change, so clients keep the newest if two pushes cross.
        info.last_seen_ms = now_ms;
        Some(info)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn state_of(info: &pb::PresenceInfo) -> pb::PresenceState {
        pb::PresenceState::try_from(info.state).unwrap_or(pb::PresenceState::Offline)
    }

    #[test]
    fn a_second_login_of_a_device_replaces_and_kicks_the_first() {
        let mut directory = Directory::default();
        let first = directory.online(1, "phone", 10, 1_000);
        assert_eq!(first.replaced, None);
        assert_eq!(
            first.announce.as_ref().map(state_of),
            Some(pb::PresenceState::Online)
        );
        directory.set_away(1, 10, true, 1_500);
        let second = directory.online(1, "phone", 11, 2_000);
        assert_eq!(second.replaced, Some(10));
        // The new connection is not away because the old one was.
        assert_eq!(
            second.announce.as_ref().map(state_of),
            Some(pb::PresenceState::Online)
        );
        // The kicked connection's late goodbye leaves the new one alone.
        let late = directory.offline(1, "phone", 10, 3_000);
        assert_eq!((late.device_gone, late.announce), (false, None));
        assert_eq!(directory.connection_of(1, "phone", 0), Some(11));
        let gone = directory.offline(1, "phone", 11, 4_000);
        assert!(gone.device_gone);
        let offline = gone.announce.expect("went offline");
        assert_eq!(
            (state_of(&offline), offline.last_seen_ms),
            (pb::PresenceState::Offline, 4_000)
        );
        assert_eq!(directory.presence(1, 9_000).last_seen_ms, 4_000);
    }

    #[test]
    fn away_only_when_every_device_is_away() {
        let mut directory = Directory::default();
        directory.online(1, "phone", 10, 0);
        directory.online(1, "laptop", 11, 0);
        let (device, announce) = directory.set_away(1, 10, true, 5);
        assert_eq!((device.as_deref(), announce), (Some("phone"), None));
        let (_, announce) = directory.set_away(1, 11, true, 6);
        assert_eq!(
            announce.as_ref().map(state_of),
            Some(pb::PresenceState::Away)
        );
        assert_eq!(directory.set_away(1, 99, true, 7), (None, None));
        let mut pushed: Vec<u64> = directory.connections(&[1, 2], 11).collect();
        pushed.sort_unstable();
        assert_eq!(pushed, [10]);
    }

    /// Random logins, goodbyes (late ones included), away flags: the
    /// directory agrees with a plain model of who is connected, and
    /// announces exactly the changes of aggregated state.
    #[test]
    fn seeded_interleavings_agree_with_a_model() {
        for seed in 0..2_000 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut directory = Directory::default();
            // (user, device) -> (conn, away)
            let mut model: BTreeMap<(i64, &str), (u64, bool)> = BTreeMap::new();
            let mut closed: Vec<(i64, &str, u64)> = Vec::new();
            let mut next_conn = 1;
            for step in 0..200i64 {
                let user = rng.gen_range(1..4);
                let device = ["phone", "laptop", "web"][rng.gen_range(0..3)];
                let aggregate = |model: &BTreeMap<(i64, &str), (u64, bool)>| {
                    let mine: Vec<_> = model.iter().filter(|((u, _), _)| *u == user).collect();
                    match mine.is_empty() {
                        true => pb::PresenceState::Offline,
                        false if mine.iter().all(|(_, (_, away))| *away) => pb::PresenceState::Away,
                        false => pb::PresenceState::Online,
                    }
                };
                let before = aggregate(&model);
                let announce = match rng.gen_range(0..4) {
                    0 => {
                        next_conn += 1;
                        let logged_in = directory.online(user, device, next_conn, step);
                        let old = model.insert((user, device), (next_conn, false));
                        assert_eq!(logged_in.replaced, old.map(|(c, _)| c), "seed {seed}");
                        if let Some((old, _)) = old {
                            closed.push((user, device, old));
                        }
                        logged_in.announce
                    }
                    1 => match model.get(&(user, device)).copied() {
                        Some((conn, _)) => {
                            model.remove(&(user, device));
                            let out = directory.offline(user, device, conn, step);
                            assert!(out.device_gone, "seed {seed}");
                            out.announce
                        }
                        None => None,
                    },
                    // A kicked connection says goodbye late.
                    2 if !closed.is_empty() => {
                        let (u, d, conn) = closed.swap_remove(rng.gen_range(0..closed.len()));
                        let out = directory.offline(u, d, conn, step);
                        assert_eq!(out.device_gone, !model.contains_key(&(u, d)), "seed {seed}");
                        assert_eq!(out.announce, None, "seed {seed}: a late goodbye");
                        None
                    }
                    _ => match model.get_mut(&(user, device)) {
                        Some((conn, away)) => {
                            *away = rng.gen_bool(0.5);
                            let (found, announce) = directory.set_away(user, *conn, *away, step);
                            assert_eq!(found.as_deref(), Some(device), "seed {seed}");
                            announce
                        }
                        None => None,
                    },
                };
                let after = aggregate(&model);
                let info = directory.presence(user, step);
                assert_eq!(state_of(&info), after, "seed {seed} step {step}");
                match announce {
                    Some(info) => {
                        assert_ne!(before, after, "seed {seed}: announced no change");
                        assert_eq!(state_of(&info), after, "seed {seed}");
                    }
                    None => assert_eq!(before, after, "seed {seed}: a change not announced"),
                }
                for ((u, d), (conn, _)) in &model {
                    assert_eq!(
                        directory.connection_of(*u, d, 0),
                        Some(*conn),
                        "seed {seed}"
                    );
                }
            }
        }
    }
}
