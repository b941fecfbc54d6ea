//! How fast one connection's messages are handled: a token bucket the reader waits on.
//!
//! Each message a client sends may cost the server a database read (a subscription's
//! checks and snapshot, a resumption's replay, a re-authentication), and a socket's reader
//! otherwise handles them as fast as they arrive. Past its burst, a connection's next
//! message waits for its turn instead of being refused: the reader stops reading, TCP
//! pushes back on the client, and nothing is sent for it (an error per message would be
//! one more message for a flooding client to cause). A dashboard's bursts (a page's few
//! subscriptions, a reconnection's) stay well within the burst.

use std::time::{Duration, Instant};

/// A connection's message rate: `burst` messages at once, then `per_second`.
#[derive(Debug, Clone)]
pub struct MessageRate {
    per_second: f64,
    burst: f64,
    /// Messages it may take now; below zero, the turns already promised.
    tokens: f64,
    last: Instant,
}

impl MessageRate {
    /// A full bucket at `now`. A rate or burst of zero counts as one.
    pub fn new(per_second: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: f64::from(per_second.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes the turn of a message that arrived at `now`: how long it must wait for it
    /// (zero within the burst).
    pub fn turn(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst) - 1.0;
        match self.tokens >= 0.0 {
            true => Duration::ZERO,
            false => Duration::from_secs_f64(-self.tokens / self.per_second),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_burst_passes_at_once_and_then_each_message_waits_its_turn() {
        let start = Instant::now();
        let mut rate = MessageRate::new(10, 3, start);
        for _ in 0..3 {
            assert_eq!(rate.turn(start), Duration::ZERO);
        }
        let waits: Vec<u128> = (0..3).map(|_| rate.turn(start).as_millis()).collect();
        assert_eq!(waits, [100, 200, 300]);
        // A second later the promised turns are paid and seven tokens came back.
        let later = start + Duration::from_secs(1);
        for _ in 0..3 {
            assert_eq!(rate.turn(later), Duration::ZERO);
        }
    }

    proptest! {
        /// Messages all sent at once are held back no more than the limit asks: the i-th
        /// (from 0) is handled `max(0, i + 1 - burst) / rate` after the first.
        #[test]
        fn a_flood_waits_exactly_its_turns(
            per_second in 1u32..200,
            burst in 1u32..50,
            count in 1usize..300,
        ) {
            let start = Instant::now();
            let mut rate = MessageRate::new(per_second, burst, start);
            let mut at = start;
            for i in 0..count {
                at += rate.turn(at);
                let turns = (i as f64 + 1.0 - f64::from(burst)).max(0.0);
                let due = turns / f64::from(per_second);
                let waited = at.duration_since(start).as_secs_f64();
                prop_assert!((waited - due).abs() < 1e-6, "message {i}: {waited} s, due {due} s");
            }
        }

        /// However messages arrive, and each handled when its wait ends, no window of
        /// time handles more than the burst plus what the rate refills in it.
        #[test]
        fn no_window_handles_more_than_the_burst_and_the_rate(
            per_second in 1u32..200,
            burst in 1u32..50,
            gaps in proptest::collection::vec(0u64..50, 1..300),
        ) {
            let start = Instant::now();
            let mut rate = MessageRate::new(per_second, burst, start);
            let mut arrival = start;
            let mut handled = Vec::new();
            for gap in gaps {
                // The reader reads the next message only once the last one was handled.
                arrival = (arrival + Duration::from_millis(gap)).max(*handled.last().unwrap_or(&start));
                handled.push(arrival + rate.turn(arrival));
            }
            for (i, from) in handled.iter().enumerate() {
                for (j, to) in handled.iter().enumerate().skip(i) {
                    let window = to.saturating_duration_since(*from).as_secs_f64();
                    let allowed = f64::from(burst) + window * f64::from(per_second);
                    // j - i + 1 messages handled within the window, rounding aside.
                    prop_assert!(
                        ((j - i + 1) as f64) <= allowed + 1e-6,
                        "{} messages in {window} s",
                        j - i + 1
                    );
                }
            }
        }
    }
}
