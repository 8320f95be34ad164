//! The two queues between the coordinator and the workers: a mutex-guarded deque and a
//! condition variable, signalled only when someone waits.
//!
//! Not `std::sync::mpsc`: its channel wakes a parked receiver while holding the lock of its
//! list of waiters; the receiver, woken on the other core, blocks on that lock to leave the
//! list, and the sender is switched out while it wakes it. In a full build of 1,000 trivial
//! stages on 2 cores, `perf` counted about 1,200 context switches at those two places. Here a
//! push holds the lock only to append, and signals after letting go of it.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// A FIFO queue for many producers and consumers. Once closed it holds nothing: what it held
/// is dropped, and so is anything pushed later (a worker waiting for an answer carried by a
/// dropped message then gets an error rather than waiting forever).
pub(super) struct Queue<T> {
    inner: Mutex<Inner<T>>,
    ready: Condvar,
}

struct Inner<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Live [`Producer`]s: with none left and nothing queued, a pop returns `Gone`.
    producers: usize,
    /// Threads waiting in a pop: a push wakes one only if there is one.
    waiting: usize,
}

/// Why a pop returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Empty {
    /// The deadline passed.
    TimedOut,
    /// The queue was closed, or every producer has gone with nothing left queued.
    Gone,
}

impl<T> Queue<T> {
    pub(super) fn new() -> Queue<T> {
        let inner = Inner { items: VecDeque::new(), closed: false, producers: 0, waiting: 0 };
        Queue { inner: Mutex::new(inner), ready: Condvar::new() }
    }

    /// The lock, whatever a thread that panicked holding it left: every change under it is
    /// one push, pop or count, complete or not made.
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `item` (or drops it, on a closed queue); whether a thread waits for one.
    fn append(&self, item: T) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            drop(inner);
            drop(item); // outside the lock, as in `close`
            return false;
        }
        inner.items.push_back(item);
        inner.waiting > 0
    }

    /// The oldest item, waiting for one until `deadline` (forever with `None`).
    pub(super) fn pop(&self, deadline: Option<Instant>) -> Result<T, Empty> {
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return Err(Empty::Gone);
            }
            if let Some(item) = inner.items.pop_front() {
                return Ok(item);
            }
            if inner.producers == 0 {
                return Err(Empty::Gone);
            }
            let left = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(Empty::TimedOut),
                },
            };
            inner.waiting += 1;
            inner = match left {
                None => self.ready.wait(inner).unwrap_or_else(PoisonError::into_inner),
                Some(left) => self.ready.wait_timeout(inner, left).unwrap_or_else(PoisonError::into_inner).0,
            };
            inner.waiting -= 1;
        }
    }

    /// The oldest item, if one is queued now.
    pub(super) fn try_pop(&self) -> Option<T> {
        let mut inner = self.lock();
        if inner.closed { None } else { inner.items.pop_front() }
    }

    /// Closes the queue: what it holds is dropped, pops return `Gone`, pushes drop their item.
    pub(super) fn close(&self) {
        let items = {
            let mut inner = self.lock();
            inner.closed = true;
            std::mem::take(&mut inner.items)
        };
        self.ready.notify_all();
        drop(items); // outside the lock: dropping a message may answer a worker
    }

    /// A handle that counts as a producer while it lives.
    pub(super) fn producer(&self) -> Producer<'_, T> {
        self.lock().producers += 1;
        Producer(self)
    }
}

/// One producer of a [`Queue`]; when the last one is dropped, a consumer waiting on an empty
/// queue is told it will get nothing more.
pub(super) struct Producer<'q, T>(&'q Queue<T>);

impl<T> Producer<'_, T> {
    /// Appends `item` and wakes one waiting thread; on a closed queue, drops it.
    pub(super) fn push(&self, item: T) {
        if self.0.append(item) {
            self.0.ready.notify_one();
        }
    }

    /// Appends `item` without waking anyone: a consumer finds it at its next pop, which the
    /// caller knows comes soon enough (a pop with a deadline, or a later `wake`).
    pub(super) fn push_quietly(&self, item: T) {
        self.0.append(item);
    }

    /// Wakes one waiting thread, if one waits and there is something for it.
    pub(super) fn wake(&self) {
        let wanted = {
            let inner = self.0.lock();
            inner.waiting > 0 && !inner.items.is_empty()
        };
        if wanted {
            self.0.ready.notify_one();
        }
    }
}

impl<T> Drop for Producer<'_, T> {
    fn drop(&mut self) {
        let last = {
            let mut inner = self.0.lock();
            inner.producers -= 1;
            inner.producers == 0
        };
        if last {
            self.0.ready.notify_all();
        }
    }
}

/// Closes a queue when dropped, however the scope that owns it ends.
pub(super) struct CloseOnDrop<'q, T>(pub(super) &'q Queue<T>);

impl<T> Drop for CloseOnDrop<'_, T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn items_come_out_in_order_and_a_closed_queue_drops_what_it_held_and_is_given() {
        let queue = Queue::new();
        let producer = queue.producer();
        let (held, held_answer) = std::sync::mpsc::channel::<()>();
        let (given, given_answer) = std::sync::mpsc::channel::<()>();
        producer.push(None);
        producer.push(Some(held));
        assert!(matches!(queue.pop(None), Ok(None)));
        queue.close();
        assert!(held_answer.recv().is_err(), "what the queue held is dropped");
        assert!(matches!(queue.pop(None), Err(Empty::Gone)));
        producer.push(Some(given));
        assert!(given_answer.recv().is_err(), "what a closed queue is given is dropped");
        assert!(matches!(queue.pop(None), Err(Empty::Gone)));
    }

    #[test]
    fn an_item_pushed_quietly_reaches_a_waiting_pop_by_its_deadline() {
        let queue = Queue::new();
        let producer = queue.producer();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| queue.pop(Some(Instant::now() + Duration::from_secs(1))));
            while queue.lock().waiting == 0 {
                std::thread::yield_now();
            }
            // Nobody is woken: the waiter finds the item when its deadline passes, and gets
            // it rather than a time-out.
            producer.push_quietly(5);
            assert_eq!(waiter.join().unwrap(), Ok(5));
        });
    }

    #[test]
    fn a_wake_hands_an_item_pushed_quietly_to_a_pop_waiting_with_no_deadline() {
        // 'static, so that a pop that is never woken leaves its thread behind instead of
        // holding up the test forever.
        let queue: &'static Queue<u32> = Box::leak(Box::new(Queue::new()));
        let producer = queue.producer();
        let (popped, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || popped.send(queue.pop(None)));
        while queue.lock().waiting == 0 {
            std::thread::yield_now();
        }
        producer.push_quietly(5);
        producer.wake();
        assert_eq!(got.recv_timeout(Duration::from_secs(60)), Ok(Ok(5)), "the waiting pop was woken");
    }

    #[test]
    fn try_pop_takes_what_is_queued_now_and_nothing_from_a_closed_queue() {
        let queue = Queue::new();
        let producer = queue.producer();
        assert_eq!(queue.try_pop(), None);
        producer.push_quietly(1);
        producer.push(2);
        assert_eq!(queue.try_pop(), Some(1));
        queue.close();
        assert_eq!(queue.try_pop(), None);
    }

    #[test]
    fn a_pop_times_out_or_learns_that_every_producer_has_gone() {
        let queue: Queue<u32> = Queue::new();
        let producer = queue.producer();
        assert_eq!(queue.pop(Some(Instant::now() + Duration::from_millis(1))), Err(Empty::TimedOut));
        std::thread::scope(|scope| {
            scope.spawn(move || {
                producer.push(7);
                drop(producer);
            });
            assert_eq!(queue.pop(None), Ok(7));
            assert_eq!(queue.pop(None), Err(Empty::Gone));
        });
    }

    #[test]
    fn a_waiting_consumer_is_woken_by_a_push_from_another_thread() {
        let queue = Queue::new();
        let producer = queue.producer();
        std::thread::scope(|scope| {
            let consumer = scope.spawn(|| (0..100).map(|_| queue.pop(None).unwrap()).collect::<Vec<u32>>());
            for i in 0..100 {
                producer.push(i);
            }
            assert_eq!(consumer.join().unwrap(), (0..100).collect::<Vec<u32>>());
        });
    }
}
