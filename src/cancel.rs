//! Stopping a build from outside: the first request stops it cleanly (running stages get
//! SIGTERM, then SIGKILL after a grace period); a second kills running stages at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<Flags>);

#[derive(Debug, Default)]
struct Flags {
    requested: AtomicBool,
    urgent: AtomicBool,
}

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Stop starting stages; terminate running ones with a grace period.
    pub fn cancel(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
    }

    /// Stop now: running stages' process groups are killed without a grace period.
    pub fn cancel_now(&self) {
        self.0.urgent.store(true, Ordering::SeqCst);
        self.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    pub fn is_urgent(&self) -> bool {
        self.0.urgent.load(Ordering::SeqCst)
    }

    /// The flag built-in stages poll.
    pub fn flag(&self) -> &AtomicBool {
        &self.0.requested
    }
}
