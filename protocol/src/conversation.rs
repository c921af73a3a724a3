//! Conversation ids. A 1:1 conversation is named by its two users, smaller
//! id first, so both sides and every node derive the same id without a
//! lookup (OpenIM's `si_` scheme); a group conversation by its group id.

use std::fmt;
use std::str::FromStr;

/// Which conversation a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConversationId {
    /// Between two users; `low < high` always.
    Direct {
        /// The smaller user id.
        low: i64,
        /// The larger user id.
        high: i64,
    },
    /// A group's single shared conversation.
    Group(i64),
}

/// The text is not a conversation id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid conversation id {0:?}")]
pub struct InvalidConversationId(pub String);

impl ConversationId {
    /// The 1:1 conversation of `a` and `b`, or `None` when they are the same user.
    pub fn direct(a: i64, b: i64) -> Option<Self> {
        match a.cmp(&b) {
            std::cmp::Ordering::Less => Some(ConversationId::Direct { low: a, high: b }),
            std::cmp::Ordering::Greater => Some(ConversationId::Direct { low: b, high: a }),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// Whether `user` takes part in this 1:1 conversation (groups need a
    /// membership lookup, so they answer `false` here).
    pub fn is_direct_member(&self, user: i64) -> bool {
        matches!(self, ConversationId::Direct { low, high } if *low == user || *high == user)
    }

    /// The other side of a 1:1 conversation, seen from `user`.
    pub fn peer_of(&self, user: i64) -> Option<i64> {
        match *self {
            ConversationId::Direct { low, high } if low == user => Some(high),
            ConversationId::Direct { low, high } if high == user => Some(low),
            _ => None,
        }
    }

    /// A stable 64-bit hash, used to pick the core or shard that owns it.
    pub fn shard_hash(&self) -> u64 {
        // FNV-1a over the fields: stable across builds and processes, which
        // std's randomly seeded hasher is not.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |v: i64| {
            for byte in v.to_le_bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        match *self {
            ConversationId::Direct { low, high } => {
                mix(low);
                mix(high);
            }
            ConversationId::Group(group) => {
                mix(-1);
                mix(group);
            }
        }
        hash
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConversationId::Direct { low, high } => write!(f, "si_{low}_{high}"),
            ConversationId::Group(group) => write!(f, "sg_{group}"),
        }
    }
}

impl FromStr for ConversationId {
    type Err = InvalidConversationId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidConversationId(s.chars().take(64).collect());
        if let Some(rest) = s.strip_prefix("si_") {
            let (a, b) = rest.split_once('_').ok_or_else(invalid)?;
            let low: i64 = a.parse().map_err(|_| invalid())?;
            let high: i64 = b.parse().map_err(|_| invalid())?;
            if low <= 0 || low >= high {
                return Err(invalid());
            }
            Ok(ConversationId::Direct { low, high })
        } else if let Some(rest) = s.strip_prefix("sg_") {
            let group: i64 = rest.parse().map_err(|_| invalid())?;
            if group <= 0 {
                return Err(invalid());
            }
            Ok(ConversationId::Group(group))
        } else {
            Err(invalid())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_is_symmetric_and_round_trips() {
        let a = ConversationId::direct(5, 3).unwrap();
        assert_eq!(a, ConversationId::direct(3, 5).unwrap());
        assert_eq!(a.to_string(), "si_3_5");
        assert_eq!("si_3_5".parse::<ConversationId>().unwrap(), a);
        assert_eq!(a.peer_of(3), Some(5));
        assert!(ConversationId::direct(4, 4).is_none());
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "", "si_", "si_5_3", "si_3_3", "si_a_b", "sg_-1", "xx_1", "si_1_2_3",
        ] {
            assert!(bad.parse::<ConversationId>().is_err(), "{bad}");
        }
    }
}
