//! The window of append messages in flight to one follower (flow control for pipelining).

use std::collections::VecDeque;

/// Appends sent to a follower and not yet acknowledged, bounded in count and bytes.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// (last index of the append, its entry bytes), oldest first.
    sent: VecDeque<(u64, u64)>,
    bytes: u64,
    /// The most messages in flight.
    pub msgs_max: usize,
    /// The most entry bytes in flight.
    pub bytes_max: u64,
}

impl Inflights {
    /// An empty window with the given bounds.
    pub fn new(msgs_max: usize, bytes_max: u64) -> Inflights {
        Inflights { sent: VecDeque::new(), bytes: 0, msgs_max, bytes_max }
    }

    /// Whether no more appends may be sent.
    pub fn is_full(&self) -> bool {
        self.sent.len() >= self.msgs_max || self.bytes >= self.bytes_max
    }

    /// How many appends are in flight.
    pub fn count(&self) -> usize {
        self.sent.len()
    }

    /// Records an append ending at `last_index` that carries `bytes`.
    pub fn add(&mut self, last_index: u64, bytes: u64) {
        self.sent.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Forgets every append ending at or below `index` (the follower acknowledged it).
    pub fn free_to(&mut self, index: u64) {
        while let Some(&(last, bytes)) = self.sent.front() {
            if last > index {
                break;
            }
            self.sent.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Forgets the oldest append (a heartbeat answered, so the follower is alive and the
    /// append or its answer was likely lost).
    pub fn free_first(&mut self) {
        if let Some((_, bytes)) = self.sent.pop_front() {
            self.bytes -= bytes;
        }
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.sent.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_fills_by_count_and_by_bytes_and_frees_in_order() {
        let mut window = Inflights::new(3, 100);
        window.add(1, 10);
        window.add(2, 10);
        assert!(!window.is_full());
        window.add(3, 10);
        assert!(window.is_full(), "three messages reach msgs_max");
        window.free_to(2);
        assert_eq!(window.count(), 1);
        window.add(4, 95);
        assert!(window.is_full(), "105 bytes reach bytes_max");
        window.free_first();
        assert!(!window.is_full());
        window.reset();
        assert_eq!(window.count(), 0);
    }
}
