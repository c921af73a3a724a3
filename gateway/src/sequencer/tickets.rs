//! Writes in flight, by ticket. Tickets are handed out one after another
//! and mostly come back in that order (the writer answers a core's writes
//! in submission order), so a ring starting at the oldest unanswered
//! ticket holds them: a push and a take at its ends, where a hash map
//! hashed, probed and touched a table slot for each (2.0% of the reactor's
//! user time at 10,000 msg/s). A ticket answered out of order leaves an
//! empty slot until the older ones are answered too.

use std::collections::VecDeque;

use super::Ticket;

pub(crate) struct Tickets<T> {
    /// The ticket of `slots[0]`.
    first: Ticket,
    slots: VecDeque<Option<T>>,
}

impl<T> Tickets<T> {
    /// None in flight; the first ticket handed out is `first`.
    pub(crate) fn starting_at(first: Ticket) -> Self {
        Tickets {
            first,
            slots: VecDeque::new(),
        }
    }

    /// The ticket [`Tickets::push`] will hold its value under.
    pub(crate) fn next(&self) -> Ticket {
        self.first + self.slots.len() as Ticket
    }

    /// Holds `value` under [`Tickets::next`]'s ticket, and moves past it.
    pub(crate) fn push(&mut self, value: T) {
        self.slots.push_back(Some(value));
    }

    fn index(&self, ticket: Ticket) -> Option<usize> {
        usize::try_from(ticket.checked_sub(self.first)?).ok()
    }

    /// The value under `ticket`, if it is still in flight.
    pub(crate) fn get_mut(&mut self, ticket: Ticket) -> Option<&mut T> {
        let index = self.index(ticket)?;
        self.slots.get_mut(index)?.as_mut()
    }

    /// Whether `ticket` is still in flight.
    pub(crate) fn contains(&self, ticket: Ticket) -> bool {
        self.index(ticket)
            .and_then(|index| self.slots.get(index))
            .is_some_and(Option::is_some)
    }

    /// Takes `ticket`'s value out (once: a second take finds nothing).
    pub(crate) fn take(&mut self, ticket: Ticket) -> Option<T> {
        let index = self.index(ticket)?;
        let value = self.slots.get_mut(index)?.take()?;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.first += 1;
        }
        Some(value)
    }

    /// Values held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_taken_in_any_order_free_the_ring_from_the_oldest() {
        let mut tickets = Tickets::starting_at(1);
        for value in ["a", "b", "c"] {
            let ticket = tickets.next();
            tickets.push(value);
            assert!(tickets.contains(ticket));
        }
        assert_eq!(tickets.next(), 4);
        assert_eq!(tickets.take(2), Some("b"));
        assert_eq!(tickets.take(2), None, "taken once");
        assert!(!tickets.contains(2));
        assert_eq!(tickets.slots.len(), 3, "ticket 1 still holds the front");
        assert_eq!(tickets.get_mut(3), Some(&mut "c"));
        assert_eq!(tickets.take(1), Some("a"));
        assert_eq!(tickets.slots.len(), 1, "1 and 2 gone from the front");
        assert_eq!(tickets.len(), 1);
        assert_eq!(tickets.take(0), None, "older than any in flight");
        assert_eq!(tickets.take(9), None, "not handed out yet");
        assert_eq!(tickets.take(3), Some("c"));
        assert_eq!(
            (tickets.len(), tickets.slots.len(), tickets.next()),
            (0, 0, 4)
        );
    }
}
