//! Stopping a build from outside, in three degrees: drain (start nothing new, let running
//! stages finish), cancel (running stages get SIGTERM, then SIGKILL after a grace period),
//! and cancel now (SIGKILL at once).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<Flags>);

#[derive(Debug, Default)]
struct Flags {
    draining: AtomicBool,
    requested: AtomicBool,
    urgent: AtomicBool,
}

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Start no new stage; let running ones finish.
    pub fn drain(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the build should start nothing new (drained or cancelled).
    pub fn is_stopping(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst) || self.is_cancelled()
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
