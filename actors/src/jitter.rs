//! [`JitterBuffer`]: puts a caller's RTP audio packets back in sequence order and decides,
//! within a bounded delay, which ones are lost.
//!
//! It owns the packets between their arrival and their release; it does no I/O and reads no
//! clock (the driver passes `now`). Packets come out in sequence-number order, each exactly
//! once, as [`Released::Packet`]; a missing packet comes out as [`Released::Lost`], with the
//! packet after it when that one is here (so an Opus decoder can rebuild the lost one from
//! its in-band FEC) — the session core then hands the provider a 20 ms frame for it all the
//! same, so the provider's stream has no gap.
//!
//! # The rule
//!
//! After every [`push`](JitterBuffer::push), call [`pop`](JitterBuffer::pop) until it returns
//! `None`; then call it again no later than [`deadline`](JitterBuffer::deadline), which is
//! when a missing packet stops being waited for.
//!
//! # What the caller must keep
//!
//! - A missing packet is declared lost only once a later packet has arrived and has waited
//!   `max_delay`: a sender that pauses (muted, DTX) leaves no holes to fill.
//! - The delay this adds is zero for packets in order and at most `max_delay` for the ones
//!   behind a hole; the capacity bounds how far ahead of a hole packets are held. A packet
//!   further ahead than that means the stream jumped (a long outage, a new sequence): the
//!   buffer releases what it holds, in order, and starts again from the new packet.
//! - Once warm, nothing allocates: the slots are a fixed ring made at construction.

use std::time::{Duration, Instant};

/// How long a missing packet is waited for, by default: three 20 ms packets.
pub const JITTER_DELAY_DEFAULT: Duration = Duration::from_millis(60);

/// How many packets the buffer holds ahead of a hole, by default (320 ms of 20 ms packets).
pub const JITTER_CAPACITY_DEFAULT: u16 = 16;

/// What [`JitterBuffer::pop`] releases.
#[derive(Debug, PartialEq, Eq)]
pub enum Released<'a, T> {
    /// The next packet in sequence.
    Packet(T),
    /// The next packet is lost; `next` is the one after it, if it has arrived (it stays in
    /// the buffer and is released next).
    Lost {
        /// The packet after the lost one.
        next: Option<&'a T>,
    },
}

/// Counters of what the buffer has seen, for metrics and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets released in order.
    pub released: u64,
    /// Packets declared lost.
    pub lost: u64,
    /// Packets that came after their turn had passed (dropped).
    pub late: u64,
    /// Packets that came twice (the second dropped).
    pub duplicates: u64,
    /// Times the stream jumped further ahead than the capacity and the buffer restarted.
    pub resyncs: u64,
}

struct Slot<T> {
    seq: u16,
    arrived_at: Instant,
    packet: T,
}

/// Reorders RTP packets by sequence number with a bounded delay: see the module docs.
pub struct JitterBuffer<T> {
    slots: Box<[Option<Slot<T>>]>,
    max_delay: Duration,
    /// The next sequence number to release; `None` until the first packet.
    expected: Option<u16>,
    /// Packets held.
    held: usize,
    stats: JitterStats,
}

impl<T> std::fmt::Debug for JitterBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitterBuffer")
            .field("expected", &self.expected)
            .field("held", &self.held)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T> JitterBuffer<T> {
    /// A buffer holding up to `capacity` packets (at least 2) that waits `max_delay` for a
    /// missing one.
    pub fn new(capacity: u16, max_delay: Duration) -> Self {
        let capacity = usize::from(capacity.max(2));
        JitterBuffer {
            slots: (0..capacity).map(|_| None).collect(),
            max_delay,
            expected: None,
            held: 0,
            stats: JitterStats::default(),
        }
    }

    /// What the buffer has seen so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// How many packets are held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether no packet is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    fn index(&self, seq: u16) -> usize {
        usize::from(seq) % self.slots.len()
    }

    /// Takes in a packet that arrived at `now` with RTP sequence number `seq`. Late and
    /// duplicate packets are dropped (and counted).
    pub fn push(&mut self, now: Instant, seq: u16, packet: T) {
        let expected = *self.expected.get_or_insert(seq);
        // Sequence numbers wrap: the signed distance says ahead or behind.
        let ahead = seq.wrapping_sub(expected) as i16;
        if ahead < 0 {
            self.stats.late += 1;
            return;
        }
        if ahead as usize >= self.slots.len() {
            // Too far ahead to hold behind the hole: restart from this packet. What is held
            // is older than it; it is dropped with the hole (counted as a resync).
            self.stats.resyncs += 1;
            self.clear();
            self.expected = Some(seq);
        }
        let index = self.index(seq);
        if self.slots[index].is_some() {
            self.stats.duplicates += 1;
            return;
        }
        self.slots[index] = Some(Slot {
            seq,
            arrived_at: now,
            packet,
        });
        self.held += 1;
    }

    /// The next release that is due at `now`, if any: see the module docs.
    pub fn pop(&mut self, now: Instant) -> Option<Released<'_, T>> {
        let expected = self.expected?;
        let index = self.index(expected);
        if let Some(slot) = self.slots[index].take_if(|slot| slot.seq == expected) {
            self.held -= 1;
            self.expected = Some(expected.wrapping_add(1));
            self.stats.released += 1;
            return Some(Released::Packet(slot.packet));
        }
        let waited_from = self.earliest_arrival()?;
        if now < waited_from + self.max_delay {
            return None;
        }
        self.stats.lost += 1;
        let next_seq = expected.wrapping_add(1);
        self.expected = Some(next_seq);
        let next = self.slots[self.index(next_seq)]
            .as_ref()
            .filter(|slot| slot.seq == next_seq)
            .map(|slot| &slot.packet);
        Some(Released::Lost { next })
    }

    /// When the packet waited for stops being waited for, if one is (a later one is held).
    pub fn deadline(&self) -> Option<Instant> {
        let expected = self.expected?;
        let index = self.index(expected);
        if self.slots[index]
            .as_ref()
            .is_some_and(|s| s.seq == expected)
        {
            // Due now: `pop` has not been called since it came.
            return self.slots[index].as_ref().map(|s| s.arrived_at);
        }
        self.earliest_arrival().map(|at| at + self.max_delay)
    }

    /// The arrival of the earliest-arrived packet held (they all wait behind the hole).
    fn earliest_arrival(&self) -> Option<Instant> {
        if self.held == 0 {
            return None;
        }
        self.slots
            .iter()
            .flatten()
            .map(|slot| slot.arrived_at)
            .min()
    }

    /// Drops every packet held (the session ends, or the stream restarts).
    pub fn clear(&mut self) {
        for slot in self.slots.iter_mut() {
            *slot = None;
        }
        self.held = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(buffer: &mut JitterBuffer<u16>, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(released) = buffer.pop(now) {
            out.push(match released {
                Released::Packet(p) => format!("{p}"),
                Released::Lost { next } => format!("lost(next={next:?})"),
            });
        }
        out
    }

    #[test]
    fn in_order_packets_come_out_at_once() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(16, JITTER_DELAY_DEFAULT);
        for seq in 100..105u16 {
            buffer.push(t0, seq, seq);
            assert_eq!(drain(&mut buffer, t0), vec![format!("{seq}")]);
        }
        assert_eq!(buffer.deadline(), None);
        assert_eq!(buffer.stats().released, 5);
    }

    #[test]
    fn reordered_packets_are_put_back_in_order() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(16, JITTER_DELAY_DEFAULT);
        buffer.push(t0, 1, 1);
        assert_eq!(drain(&mut buffer, t0), vec!["1"]);
        buffer.push(t0, 3, 3);
        assert!(drain(&mut buffer, t0).is_empty(), "3 waits for 2");
        assert_eq!(buffer.deadline(), Some(t0 + JITTER_DELAY_DEFAULT));
        buffer.push(t0 + Duration::from_millis(10), 2, 2);
        assert_eq!(drain(&mut buffer, t0), vec!["2", "3"]);
        assert_eq!(buffer.stats().lost, 0);
    }

    #[test]
    fn a_hole_is_declared_lost_after_the_delay_with_the_next_packet_for_fec() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(16, JITTER_DELAY_DEFAULT);
        buffer.push(t0, 10, 10);
        buffer.push(t0, 12, 12);
        buffer.push(t0, 13, 13);
        assert_eq!(drain(&mut buffer, t0), vec!["10"]);
        assert!(drain(&mut buffer, t0 + Duration::from_millis(59)).is_empty());
        let later = t0 + JITTER_DELAY_DEFAULT;
        assert_eq!(
            drain(&mut buffer, later),
            vec!["lost(next=Some(12))", "12", "13"]
        );
        // The lost packet arriving now is late.
        buffer.push(later, 11, 11);
        assert!(drain(&mut buffer, later).is_empty());
        let stats = buffer.stats();
        assert_eq!((stats.lost, stats.late, stats.released), (1, 1, 3));
    }

    #[test]
    fn two_holes_in_a_row_conceal_the_first_without_fec() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(16, JITTER_DELAY_DEFAULT);
        buffer.push(t0, 1, 1);
        buffer.push(t0, 4, 4);
        let later = t0 + JITTER_DELAY_DEFAULT;
        assert_eq!(
            drain(&mut buffer, later),
            vec!["1", "lost(next=None)", "lost(next=Some(4))", "4"]
        );
    }

    #[test]
    fn a_pause_is_not_a_loss() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(16, JITTER_DELAY_DEFAULT);
        buffer.push(t0, 7, 7);
        drain(&mut buffer, t0);
        assert!(drain(&mut buffer, t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(buffer.deadline(), None);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(16, JITTER_DELAY_DEFAULT);
        buffer.push(t0, 65_535, 1);
        buffer.push(t0, 1, 3);
        buffer.push(t0, 0, 2);
        assert_eq!(drain(&mut buffer, t0), vec!["1", "2", "3"]);
    }

    #[test]
    fn duplicates_are_dropped_and_a_far_jump_restarts() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(16, JITTER_DELAY_DEFAULT);
        buffer.push(t0, 5, 5);
        buffer.push(t0, 7, 7);
        buffer.push(t0, 7, 70);
        assert_eq!(drain(&mut buffer, t0), vec!["5"]);
        buffer.push(t0, 1_000, 1_000);
        assert_eq!(drain(&mut buffer, t0), vec!["1000"]);
        let stats = buffer.stats();
        assert_eq!((stats.duplicates, stats.resyncs), (1, 1));
        assert!(buffer.is_empty());
    }
}
