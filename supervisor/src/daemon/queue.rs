//! At most `max_jobs` running jobs; behind them a bounded FIFO queue whose waiters always
//! know their position. A slot is handed straight from a finishing job to the head of the
//! queue, so a newcomer can never overtake a waiter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// Where a waiter stands: `Waiting(n)` (1 = next), or `Running` once it holds a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Waiting(usize),
    Running,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the queue is full ({queued} jobs waiting, {running} running)")]
pub struct QueueFull {
    pub running: usize,
    pub queued: usize,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    place: watch::Sender<Place>,
}

#[derive(Debug)]
struct State {
    running: usize,
    queue: VecDeque<Waiter>,
    next_ticket: u64,
}

/// The job slots. Cheap to clone; all clones share the same slots.
#[derive(Debug, Clone)]
pub struct Slots {
    max_jobs: usize,
    max_queue: usize,
    state: Arc<Mutex<State>>,
}

impl Slots {
    pub fn new(max_jobs: usize, max_queue: usize) -> Slots {
        Slots {
            max_jobs: max_jobs.max(1),
            max_queue,
            state: Arc::new(Mutex::new(State {
                running: 0,
                queue: VecDeque::new(),
                next_ticket: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock; if one ever did, the counts are
        // still whole numbers, so carry on with them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a slot now if one is free and nobody waits, else join the queue; refuse at once
    /// when the queue is full.
    pub fn enter(&self) -> Result<Ticket, QueueFull> {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        if state.running < self.max_jobs && state.queue.is_empty() {
            state.running += 1;
            let (_, place) = watch::channel(Place::Running);
            return Ok(Ticket {
                slots: self.clone(),
                ticket,
                place,
            });
        }
        if state.queue.len() >= self.max_queue {
            return Err(QueueFull {
                running: state.running,
                queued: state.queue.len(),
            });
        }
        let (sender, place) = watch::channel(Place::Waiting(state.queue.len() + 1));
        state.queue.push_back(Waiter {
            ticket,
            place: sender,
        });
        Ok(Ticket {
            slots: self.clone(),
            ticket,
            place,
        })
    }

    /// (running, queued) now.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.running, state.queue.len())
    }

    pub fn max_jobs(&self) -> usize {
        self.max_jobs
    }

    /// A slot came free: hand it to the head of the queue, and tell everyone behind their
    /// new place.
    fn release(&self, state: &mut State) {
        state.running -= 1;
        if let Some(next) = state.queue.pop_front() {
            state.running += 1;
            let _ = next.place.send(Place::Running);
        }
        Self::renumber(state);
    }

    fn renumber(state: &State) {
        for (i, waiter) in state.queue.iter().enumerate() {
            waiter.place.send_if_modified(|place| {
                let new = Place::Waiting(i + 1);
                let changed = *place != new;
                *place = new;
                changed
            });
        }
    }
}

/// A place in line, then a slot. Dropping it leaves the queue or frees the slot, whichever
/// it holds — also when the slot was granted but never looked at.
#[derive(Debug)]
pub struct Ticket {
    slots: Slots,
    ticket: u64,
    place: watch::Receiver<Place>,
}

impl Ticket {
    pub fn place(&self) -> Place {
        *self.place.borrow()
    }

    /// The next change of place; `Running` is final.
    pub async fn changed(&mut self) -> Place {
        if self.place() == Place::Running {
            return Place::Running;
        }
        // The sender lives in the queue until it grants the slot, and its last message is
        // `Running`; a closed channel therefore means the slot is ours.
        if self.place.changed().await.is_err() {
            return Place::Running;
        }
        *self.place.borrow_and_update()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        if let Some(i) = state.queue.iter().position(|w| w.ticket == self.ticket) {
            state.queue.remove(i);
            Slots::renumber(&state);
        } else {
            // Not queued: it holds a slot (granted at once or handed over later).
            self.slots.release(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_up_to_max_then_queues_then_refuses() {
        let slots = Slots::new(2, 2);
        let a = slots.enter().expect("a");
        let b = slots.enter().expect("b");
        assert_eq!((a.place(), b.place()), (Place::Running, Place::Running));
        let c = slots.enter().expect("c");
        let d = slots.enter().expect("d");
        assert_eq!(
            (c.place(), d.place()),
            (Place::Waiting(1), Place::Waiting(2))
        );
        assert_eq!(
            slots.enter().map(|_| ()),
            Err(QueueFull {
                running: 2,
                queued: 2
            })
        );
        assert_eq!(slots.counts(), (2, 2));
        drop(a);
        assert_eq!((c.place(), d.place()), (Place::Running, Place::Waiting(1)));
        assert_eq!(slots.counts(), (2, 1));
        drop((b, c, d));
        assert_eq!(slots.counts(), (0, 0));
    }

    #[test]
    fn a_waiter_that_leaves_moves_the_others_up() {
        let slots = Slots::new(1, 8);
        let _running = slots.enter().expect("running");
        let first = slots.enter().expect("first");
        let second = slots.enter().expect("second");
        let third = slots.enter().expect("third");
        drop(first);
        assert_eq!(second.place(), Place::Waiting(1));
        assert_eq!(third.place(), Place::Waiting(2));
        assert_eq!(slots.counts(), (1, 2));
    }

    #[test]
    fn a_granted_but_unclaimed_slot_is_passed_on() {
        let slots = Slots::new(1, 8);
        let running = slots.enter().expect("running");
        let granted = slots.enter().expect("granted");
        let next = slots.enter().expect("next");
        drop(running);
        assert_eq!(granted.place(), Place::Running);
        // Its client left before it started.
        drop(granted);
        assert_eq!(next.place(), Place::Running);
        assert_eq!(slots.counts(), (1, 0));
    }

    #[test]
    fn newcomers_never_overtake_the_queue() {
        let slots = Slots::new(1, 8);
        let running = slots.enter().expect("running");
        let waiting = slots.enter().expect("waiting");
        drop(running);
        // The freed slot went to the waiter, not to whoever asks next.
        let late = slots.enter().expect("late");
        assert_eq!(waiting.place(), Place::Running);
        assert_eq!(late.place(), Place::Waiting(1));
    }

    #[tokio::test]
    async fn waiters_hear_each_move() {
        let slots = Slots::new(1, 8);
        let running = slots.enter().expect("running");
        let _ahead = slots.enter().expect("ahead");
        let mut me = slots.enter().expect("me");
        assert_eq!(me.place(), Place::Waiting(2));
        drop(running);
        assert_eq!(me.changed().await, Place::Waiting(1));
    }
}
