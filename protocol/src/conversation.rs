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

/// Room for the longest id: "si_", two 20-character i64s and a "_".
const MAX_ID_LEN: usize = 44;

/// `value`'s decimal digits (and sign) appended at `buf[len..]`; the new
/// length. itoa writes two digits per division: this runs for two ids in
/// every send and its answer (a digit at a time it was 2% of a reactor's
/// user time at 10,000 messages a second).
fn put_i64(buf: &mut [u8; MAX_ID_LEN], len: usize, value: i64) -> usize {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(value).as_bytes();
    let end = len + digits.len();
    buf[len..end].copy_from_slice(digits);
    end
}

/// An id's text on the stack ([`ConversationId::text`]).
pub struct IdText {
    buf: [u8; MAX_ID_LEN],
    len: usize,
}

impl std::ops::Deref for IdText {
    type Target = str;

    fn deref(&self) -> &str {
        // Only ASCII digits, signs, letters and underscores are written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl ConversationId {
    /// The id's text without allocating: the log's writer encodes one for
    /// every cursor it moves.
    pub fn text(&self) -> IdText {
        let mut buf = [0u8; MAX_ID_LEN];
        let len = match *self {
            ConversationId::Direct { low, high } => {
                buf[..3].copy_from_slice(b"si_");
                let len = put_i64(&mut buf, 3, low);
                buf[len] = b'_';
                put_i64(&mut buf, len + 1, high)
            }
            ConversationId::Group(group) => {
                buf[..3].copy_from_slice(b"sg_");
                put_i64(&mut buf, 3, group)
            }
        };
        IdText { buf, len }
    }
}

impl fmt::Display for ConversationId {
    /// Written in one piece: `to_string()` runs for every message sent and
    /// acked, and piecewise writes made it grow its buffer three times.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.text())
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
    fn ids_are_written_in_one_piece_and_read_back() {
        let cases = [
            (ConversationId::Direct { low: 1, high: 2 }, "si_1_2"),
            (
                ConversationId::Direct {
                    low: i64::MAX - 1,
                    high: i64::MAX,
                },
                "si_9223372036854775806_9223372036854775807",
            ),
            (ConversationId::Group(7), "sg_7"),
            (ConversationId::Group(i64::MIN), "sg_-9223372036854775808"),
        ];
        for (id, text) in cases {
            let written = id.to_string();
            assert_eq!(written, text);
            // One allocation, of the id's length (a String holds 8 at least).
            assert_eq!(written.capacity(), text.len().max(8));
            assert_eq!(format!("{id:>8}").trim_start(), text);
            assert_eq!(&*id.text(), text, "the text on the stack");
        }
        assert_eq!(
            "si_1_2".parse(),
            Ok(ConversationId::Direct { low: 1, high: 2 })
        );
    }

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
