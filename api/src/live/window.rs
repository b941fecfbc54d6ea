//! A broadcast whose channel pins no large value.
//!
//! A `tokio` broadcast channel holds every value until each receiver has taken it, so one
//! receiver that stops reading — a read-model follower replaying a large organization, a
//! resumption sending pages from the database — pins the channel's newest values, as
//! many as its capacity, whatever their size: 4,096 events of a large plan each are
//! gigabytes. Here the channel carries a small value itself (freed once every receiver
//! took it, as before; a stopped receiver pins at most `capacity` of them, each at most
//! [`INLINE_WEIGHT`]) and a large one by weak reference, which the [`Window`] holds alive
//! within `byte_capacity` bytes (always the newest, however large, so that a receiver
//! keeping up gets every value). A large value the window let go of is freed: a receiver
//! that had not taken it by then has fallen behind, and gets `Lagged` — as from a full
//! channel — and reads what it missed elsewhere.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use tokio::sync::broadcast::{self, error::RecvError};

/// The heaviest value the channel carries itself; heavier ones are lent (weak).
pub const INLINE_WEIGHT: usize = 4 << 10;

/// A value as the channel carries it.
enum Sent<T> {
    Own(Arc<T>),
    Lent(Weak<T>),
}

// Not derived: that would ask `T: Clone`.
impl<T> Clone for Sent<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Own(value) => Self::Own(value.clone()),
            Self::Lent(value) => Self::Lent(value.clone()),
        }
    }
}

/// Sends values to every receiver, holding the newest large ones alive until each has
/// taken them or the window's bytes let them go.
pub struct Window<T> {
    sender: broadcast::Sender<Sent<T>>,
    /// Values sent so far: the number of the next one.
    sent: u64,
    /// The large values lent that some receiver may still take, oldest first, with their
    /// numbers and weights.
    held: VecDeque<(u64, Arc<T>, usize)>,
    capacity: usize,
    byte_capacity: usize,
    bytes: usize,
}

impl<T> Window<T> {
    /// A window of at most `capacity` values (at least one; rounded up to a power of two,
    /// as the channel's is), its large ones within `byte_capacity` bytes.
    pub fn new(capacity: usize, byte_capacity: usize) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        Self {
            sender: broadcast::channel(capacity).0,
            sent: 0,
            held: VecDeque::new(),
            capacity,
            byte_capacity,
            bytes: 0,
        }
    }

    /// A receiver of every value sent from now on.
    pub fn subscribe(&self) -> Receiver<T> {
        Receiver(self.sender.subscribe())
    }

    pub fn receiver_count(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Sends `value`, which weighs `weight` bytes, to every receiver (none is not an
    /// error); a large one is held. Let go of: the held values every receiver has taken
    /// (the channel queues only the newest values some receiver has not seen), then the
    /// oldest past the window's bytes.
    pub fn send(&mut self, value: Arc<T>, weight: usize) {
        let number = self.sent;
        self.sent += 1;
        if weight <= INLINE_WEIGHT {
            let _ = self.sender.send(Sent::Own(value));
        } else {
            let _ = self.sender.send(Sent::Lent(Arc::downgrade(&value)));
            self.held.push_back((number, value, weight));
            self.bytes += weight;
        }
        if self.held.is_empty() {
            return;
        }
        // `len` looks at a dozen slots: only worth it with large values held.
        let first_queued = self.sent - self.sender.len() as u64;
        while let Some(&(oldest, _, weight)) = self.held.front() {
            let over = self.held.len() > self.capacity
                || (self.bytes > self.byte_capacity && self.held.len() > 1);
            if oldest >= first_queued && !over {
                break;
            }
            self.held.pop_front();
            self.bytes -= weight;
        }
    }
}

/// What a [`Window`] sends, taken in order.
pub struct Receiver<T>(broadcast::Receiver<Sent<T>>);

impl<T> Receiver<T> {
    /// The next value; `Lagged` when the receiver fell behind the window (by its count,
    /// or by its bytes: a large value was let go of before this receiver took it),
    /// `Closed` once the window is gone and every value taken.
    pub async fn recv(&mut self) -> Result<Arc<T>, RecvError> {
        match self.0.recv().await? {
            Sent::Own(value) => Ok(value),
            Sent::Lent(value) => value.upgrade().ok_or(RecvError::Lagged(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heavier than the channel carries itself.
    const LARGE: usize = INLINE_WEIGHT + 1;

    /// A receiver keeping up takes every value, one heavier than the bytes allowed
    /// included; one that did not read is told it fell behind once the window let go of
    /// a large value it had not taken — which is freed, not pinned by the channel.
    #[tokio::test]
    async fn a_large_value_let_go_of_is_freed_and_its_laggard_told_so() {
        let mut window = Window::new(8, 2 * LARGE - 1);
        let mut reading = window.subscribe();
        let mut stopped = window.subscribe();
        let mut sent = Vec::new();
        for n in 0..4 {
            let value = Arc::new(n);
            sent.push(Arc::downgrade(&value));
            // Two do not fit in the bytes: only the newest is held.
            window.send(value, LARGE);
            assert_eq!(*reading.recv().await.expect("the value"), n);
        }
        assert!(
            sent[..3].iter().all(|w| w.upgrade().is_none()),
            "the older values are freed"
        );
        assert_eq!(sent[3].upgrade().as_deref(), Some(&3), "the newest is held");
        // The stopped receiver: the first three are gone, the newest is still there.
        for _ in 0..3 {
            assert!(matches!(stopped.recv().await, Err(RecvError::Lagged(_))));
        }
        assert_eq!(*stopped.recv().await.expect("the newest"), 3);
        // A value heavier than the whole budget still reaches a receiver keeping up.
        window.send(Arc::new(4), 100 * LARGE);
        assert_eq!(*reading.recv().await.expect("the heavy value"), 4);
    }

    /// A large value every receiver has taken is let go of at the next send: the window
    /// holds only what some receiver may still take (a plain broadcast frees a value once
    /// every receiver took it).
    #[tokio::test]
    async fn a_large_value_every_receiver_took_is_let_go_of() {
        let mut window = Window::new(8, 100 * LARGE);
        let mut receiver = window.subscribe();
        let first = Arc::new(1);
        let taken = Arc::downgrade(&first);
        window.send(first, LARGE);
        assert_eq!(*receiver.recv().await.expect("taken"), 1);
        window.send(Arc::new(2), LARGE);
        assert!(taken.upgrade().is_none(), "freed once taken");
        assert_eq!(window.held.len(), 1, "the one not taken yet");
        // No receiver at all: nothing is held.
        drop(receiver);
        window.send(Arc::new(3), LARGE);
        assert!(window.held.is_empty());
    }

    /// A small value travels in the channel itself: the window holds none, it is freed
    /// once every receiver took it, and a stopped receiver still gets it (as from a plain
    /// broadcast) whatever the window's bytes.
    #[tokio::test]
    async fn a_small_value_is_carried_whole_and_freed_once_taken() {
        let mut window = Window::new(8, 0);
        let mut first = window.subscribe();
        let mut second = window.subscribe();
        let value = Arc::new(7);
        let weak = Arc::downgrade(&value);
        window.send(value, INLINE_WEIGHT);
        assert!(window.held.is_empty());
        assert_eq!(*first.recv().await.expect("carried"), 7);
        assert!(weak.upgrade().is_some(), "the second has not taken it");
        assert_eq!(*second.recv().await.expect("carried"), 7);
        assert!(
            weak.upgrade().is_none(),
            "freed once every receiver took it"
        );
    }

    /// Within its bounds the window holds every value until taken; past its count a
    /// receiver lags as from a full channel; once the window is gone, the large values it
    /// held are freed and the channel closes.
    #[tokio::test]
    async fn within_its_bounds_every_value_waits_for_its_receiver() {
        let mut window = Window::new(4, 100 * LARGE);
        let mut receiver = window.subscribe();
        for n in 0..4 {
            window.send(Arc::new(n), LARGE);
        }
        for n in 0..4 {
            assert_eq!(*receiver.recv().await.expect("held"), n);
        }
        for n in 4..10 {
            window.send(Arc::new(n), LARGE);
        }
        assert!(matches!(receiver.recv().await, Err(RecvError::Lagged(_))));
        assert_eq!(*receiver.recv().await.expect("the oldest held"), 6);
        // The window gone, what it held is freed, then the channel is closed.
        drop(window);
        for _ in 7..10 {
            assert!(matches!(receiver.recv().await, Err(RecvError::Lagged(_))));
        }
        assert!(matches!(receiver.recv().await, Err(RecvError::Closed)));
    }
}
