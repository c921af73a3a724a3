//! Fan-out decided without I/O: which cores a committed frame travels to.
//! A delivery goes first to the cores that own its users (one mesh
//! message per owner core, however many of its users), then from each
//! owner to the cores holding those users' connections (one per core:
//! `Push` for a single connection, `PushMany` for more). The core only
//! sends what these plans say (`Core::finish_commit`,
//! `Core::deliver_to_users`, `Core::deliver_local`); `crate::simulation`
//! runs them with the sequencer and the directory over simulated cores.

use smallvec::SmallVec;

use crate::sequencer::Recipients;

/// One leg of a committed message's delivery: users one core owns, and
/// the connection (the sender's) they are not pushed on.
#[derive(Debug, PartialEq, Eq)]
pub enum Deliver {
    /// A side of a 1:1 conversation.
    One {
        core: usize,
        user_id: i64,
        skip_conn: u64,
    },
    /// The members of a group that core owns.
    Many {
        core: usize,
        user_ids: Vec<i64>,
        skip_conn: u64,
    },
}

/// Where a message committed from `origin_conn` goes first: in a 1:1, to
/// the receiver's owner (every device) and the sender's (their other
/// devices), without allocating; in a group, to each core owning members,
/// once.
pub fn deliveries(
    recipients: &Recipients,
    origin_conn: u64,
    cores: usize,
    owner_of: impl Fn(i64) -> usize,
) -> impl Iterator<Item = Deliver> {
    let (direct, group) = match recipients {
        Recipients::Direct { receiver, sender } => {
            let legs = [
                Deliver::One {
                    core: owner_of(*receiver),
                    user_id: *receiver,
                    skip_conn: 0,
                },
                Deliver::One {
                    core: owner_of(*sender),
                    user_id: *sender,
                    skip_conn: origin_conn,
                },
            ];
            (Some(legs), None)
        }
        Recipients::Group(members) => (None, Some(users_by_owner(members, cores, owner_of))),
    };
    let group_legs = group
        .into_iter()
        .flatten()
        .map(move |(core, user_ids)| Deliver::Many {
            core,
            user_ids,
            skip_conn: origin_conn,
        });
    direct.into_iter().flatten().chain(group_legs)
}

/// The users of a delivery, grouped by the core that owns each; cores
/// owning none are left out, and each user appears once per time listed.
pub fn users_by_owner(
    user_ids: &[i64],
    cores: usize,
    owner_of: impl Fn(i64) -> usize,
) -> Vec<(usize, Vec<i64>)> {
    let mut by_owner: Vec<Vec<i64>> = vec![Vec::new(); cores];
    for &user_id in user_ids {
        if let Some(users) = by_owner.get_mut(owner_of(user_id)) {
            users.push(user_id);
        }
    }
    non_empty(by_owner)
}

/// One push message to a core.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// A single connection there.
    One { core: usize, conn_id: u64 },
    /// Several connections there, one message for all.
    Many { core: usize, conn_ids: Vec<u64> },
}

/// The push messages for `conn_ids`, one per core holding any of them.
/// (One push is held inline: no allocation for the usual one device.)
pub fn pushes_by_core(
    conn_ids: impl IntoIterator<Item = u64>,
    cores: usize,
    core_of: impl Fn(u64) -> usize,
) -> SmallVec<[Push; 1]> {
    // Every 1:1 message comes here twice, mostly for one connection or
    // none: those need no per-core lists.
    let mut conn_ids = conn_ids.into_iter();
    let Some(first) = conn_ids.next() else {
        return SmallVec::new();
    };
    let Some(second) = conn_ids.next() else {
        let core = core_of(first);
        if core >= cores {
            return SmallVec::new();
        }
        return smallvec::smallvec![Push::One {
            core,
            conn_id: first,
        }];
    };
    let mut by_core: Vec<Vec<u64>> = vec![Vec::new(); cores];
    for conn_id in [first, second].into_iter().chain(conn_ids) {
        if let Some(conns) = by_core.get_mut(core_of(conn_id)) {
            conns.push(conn_id);
        }
    }
    non_empty(by_core)
        .into_iter()
        .map(|(core, conn_ids)| match conn_ids[..] {
            [conn_id] => Push::One { core, conn_id },
            _ => Push::Many { core, conn_ids },
        })
        .collect()
}

fn non_empty<T>(by_core: Vec<Vec<T>>) -> Vec<(usize, Vec<T>)> {
    by_core
        .into_iter()
        .enumerate()
        .filter(|(_, items)| !items.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn one_message_per_core_that_has_anything() {
        let owner = |user: i64| (user % 3) as usize;
        assert_eq!(
            users_by_owner(&[1, 4, 2, 7], 3, owner),
            vec![(1, vec![1, 4, 7]), (2, vec![2])]
        );
        assert!(users_by_owner(&[], 3, owner).is_empty());
        let core_of = |conn: u64| (conn >> 8) as usize;
        assert_eq!(
            pushes_by_core([0x101, 0x005, 0x102], 2, core_of).into_vec(),
            vec![
                Push::One {
                    core: 0,
                    conn_id: 0x005
                },
                Push::Many {
                    core: 1,
                    conn_ids: vec![0x101, 0x102]
                },
            ]
        );
        assert_eq!(
            pushes_by_core([0x102], 2, core_of).into_vec(),
            vec![Push::One {
                core: 1,
                conn_id: 0x102
            }]
        );
        assert!(pushes_by_core([], 2, core_of).is_empty());
        // A core number out of range (a stale id) goes nowhere.
        assert!(pushes_by_core([0x301], 2, core_of).is_empty());
    }

    #[test]
    fn a_committed_message_goes_to_both_sides_or_to_each_members_owner() {
        let owner = |user: i64| (user % 2) as usize;
        let direct = Recipients::Direct {
            receiver: 3,
            sender: 4,
        };
        assert_eq!(
            deliveries(&direct, 77, 2, owner).collect::<Vec<_>>(),
            vec![
                Deliver::One {
                    core: 1,
                    user_id: 3,
                    skip_conn: 0,
                },
                Deliver::One {
                    core: 0,
                    user_id: 4,
                    skip_conn: 77,
                },
            ]
        );
        let group = Recipients::Group(vec![1, 2, 3, 4].into());
        assert_eq!(
            deliveries(&group, 77, 2, owner).collect::<Vec<_>>(),
            vec![
                Deliver::Many {
                    core: 0,
                    user_ids: vec![2, 4],
                    skip_conn: 77,
                },
                Deliver::Many {
                    core: 1,
                    user_ids: vec![1, 3],
                    skip_conn: 77,
                },
            ]
        );
    }

    /// Random deliveries, many seeds: every user reaches its owner and
    /// every connection its core exactly once, in the order given, and no
    /// core gets two messages for one delivery.
    #[test]
    fn every_recipient_exactly_once_on_its_own_core() {
        for seed in 0..2_000 {
            let mut rng = StdRng::seed_from_u64(seed);
            let cores = rng.gen_range(1..=8);
            let users: Vec<i64> = (0..rng.gen_range(0..50))
                .map(|_| rng.gen_range(1..10_000))
                .collect();
            let owner = |user: i64| crate::core::user_owner(user, cores);
            let plan = users_by_owner(&users, cores, owner);
            let mut seen: Vec<i64> = Vec::new();
            let mut last_core = None;
            for (core, group) in &plan {
                assert!(last_core < Some(*core), "seed {seed}: one message per core");
                last_core = Some(*core);
                assert!(group.iter().all(|u| owner(*u) == *core), "seed {seed}");
                seen.extend(group);
            }
            let mut expected = users.clone();
            expected.sort_by_key(|u| owner(*u));
            assert_eq!(seen, expected, "seed {seed}");

            let conns: Vec<u64> = (0..rng.gen_range(0..50))
                .map(|_| (rng.gen_range(0..cores as u64) << 40) | rng.gen_range(0..1_000))
                .collect();
            let core_of = |conn: u64| (conn >> 40) as usize;
            let mut delivered: Vec<u64> = Vec::new();
            let mut last_core = None;
            for push in pushes_by_core(conns.iter().copied(), cores, core_of) {
                let (core, ids) = match push {
                    Push::One { core, conn_id } => (core, vec![conn_id]),
                    Push::Many { core, conn_ids } => {
                        assert!(conn_ids.len() > 1, "seed {seed}");
                        (core, conn_ids)
                    }
                };
                assert!(last_core < Some(core), "seed {seed}: one message per core");
                last_core = Some(core);
                assert!(ids.iter().all(|c| core_of(*c) == core), "seed {seed}");
                delivered.extend(ids);
            }
            let mut expected = conns.clone();
            expected.sort_by_key(|c| core_of(*c));
            assert_eq!(delivered, expected, "seed {seed}");
        }
    }
}
