//! A conversation's window of recent sends, which tells a resend (same
//! sender, same client id) from a new message and holds the sends whose
//! writes are in flight, so their resends wait for the same answer. One
//! ring, oldest first. A 32-bit tag per entry in a ring of its own, so a
//! lookup would read the tags rather than the entries, was tried: its
//! ring's allocations cost as much as it saved (BENCHMARKS.md, "The resend
//! window looked up by tag, tried and not kept").

use std::collections::VecDeque;

use super::{Accepted, Ticket};

/// One send in the window.
pub(super) struct RecentSend {
    pub(super) sender_id: i64,
    pub(super) client_message_id: i64,
    /// Of the message's payload, to tell a resend from a reused id.
    pub(super) fingerprint: u64,
    pub(super) accepted: Accepted,
    /// `Some` while its write is in flight: resends wait for its answer.
    pub(super) ticket: Option<Ticket>,
}

/// Oldest first.
#[derive(Default)]
pub(super) struct RecentWindow {
    sends: VecDeque<RecentSend>,
}

impl RecentWindow {
    /// Adds the newest send.
    pub(super) fn push(&mut self, send: RecentSend) {
        self.sends.push_back(send);
    }

    /// The newest send with this sender and client id.
    pub(super) fn find(&self, sender_id: i64, client_message_id: i64) -> Option<&RecentSend> {
        self.sends
            .iter()
            .rev()
            .find(|send| send.sender_id == sender_id && send.client_message_id == client_message_id)
    }

    /// The send whose write is in flight under `ticket` (among the
    /// newest, so looked for from the end).
    pub(super) fn in_flight_mut(&mut self, ticket: Ticket) -> Option<&mut RecentSend> {
        self.sends
            .iter_mut()
            .rev()
            .find(|send| send.ticket == Some(ticket))
    }

    /// Whether any send's write is in flight by `still_waiting`.
    pub(super) fn any_in_flight(&self, still_waiting: impl Fn(Ticket) -> bool) -> bool {
        self.sends
            .iter()
            .any(|send| send.ticket.is_some_and(&still_waiting))
    }

    /// Drops the oldest committed sends beyond `window`; in-flight ones
    /// stay so their resends still find them.
    pub(super) fn trim(&mut self, window: usize) {
        while self.sends.len() > window && self.sends.front().is_some_and(|s| s.ticket.is_none()) {
            self.sends.pop_front();
        }
    }

    /// Sends held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.sends.len()
    }
}

impl FromIterator<RecentSend> for RecentWindow {
    fn from_iter<I: IntoIterator<Item = RecentSend>>(sends: I) -> Self {
        RecentWindow {
            sends: sends.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(sender_id: i64, client_message_id: i64, seq: i64) -> RecentSend {
        RecentSend {
            sender_id,
            client_message_id,
            fingerprint: 0,
            accepted: Accepted {
                seq,
                server_msg_id: seq,
                sent_at_ms: 0,
            },
            ticket: None,
        }
    }

    #[test]
    fn a_send_is_found_by_its_sender_and_client_id_and_nothing_else() {
        let window: RecentWindow = (1..=200).map(|i| send(i % 7, i, i)).collect();
        assert_eq!(window.find(5, 5).map(|s| s.accepted.seq), Some(5));
        assert!(window.find(6, 5).is_none(), "another sender's id");
        assert!(window.find(5, 201).is_none(), "never sent");
        // Every key of the window finds its own send.
        for i in 1..=200 {
            assert_eq!(window.find(i % 7, i).map(|s| s.accepted.seq), Some(i));
        }
    }

    #[test]
    fn the_newest_of_a_repeated_key_is_found() {
        let mut window = RecentWindow::default();
        window.push(send(1, 9, 1));
        window.push(send(1, 9, 2));
        assert_eq!(window.find(1, 9).map(|s| s.accepted.seq), Some(2));
    }

    #[test]
    fn trimming_drops_the_oldest_committed_and_keeps_those_in_flight() {
        let mut window = RecentWindow::default();
        let mut in_flight = send(1, 1, 1);
        in_flight.ticket = Some(7);
        window.push(in_flight);
        for i in 2..=5 {
            window.push(send(1, i, i));
        }
        window.trim(2);
        assert_eq!(window.len(), 5, "an in-flight send at the front holds it");
        assert!(window.any_in_flight(|ticket| ticket == 7));
        if let Some(send) = window.in_flight_mut(7) {
            send.ticket = None;
        }
        assert!(!window.any_in_flight(|_| true));
        window.trim(2);
        assert_eq!(window.len(), 2);
        assert!(window.find(1, 3).is_none(), "trimmed");
        assert_eq!(window.find(1, 4).map(|s| s.accepted.seq), Some(4));
        assert_eq!(window.find(1, 5).map(|s| s.accepted.seq), Some(5));
    }
}
