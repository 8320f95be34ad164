//! Kills stage process groups on timeout or interruption.
//!
//! Shell stages run in their own process group, so a terminal's Ctrl-C reaches only
//! dagrun; the watchdog passes it on (SIGTERM, then SIGKILL after a grace period) to the
//! whole group, grandchildren included, and remembers why each group was killed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};

use crate::cancel::CancelToken;

/// How long a stage gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(20);

/// Why the watchdog killed a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillCause {
    TimedOut,
    Interrupted,
}

#[derive(Debug)]
struct Watched {
    deadline: Option<Instant>,
    cause: Option<KillCause>,
    term_sent: Option<Instant>,
}

/// Process groups of running stages, by leader pid.
#[derive(Debug)]
pub struct Watchdog {
    running: Mutex<HashMap<u32, Watched>>,
    cancel: CancelToken,
    done: AtomicBool,
}

impl Watchdog {
    pub fn new(cancel: CancelToken) -> Watchdog {
        Watchdog { running: Mutex::new(HashMap::new()), cancel, done: AtomicBool::new(false) }
    }

    /// The flag that interrupts the build; built-ins poll it.
    pub fn cancel_flag(&self) -> &AtomicBool {
        self.cancel.flag()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Drained or cancelled: start nothing new.
    pub fn is_stopping(&self) -> bool {
        self.cancel.is_stopping()
    }

    pub fn watch(&self, pid: u32, timeout: Option<Duration>) {
        let watched =
            Watched { deadline: timeout.and_then(|t| Instant::now().checked_add(t)), cause: None, term_sent: None };
        self.running.lock().expect("watchdog poisoned").insert(pid, watched);
    }

    /// Stops watching a group whose leader has exited; returns why it was killed, if it was.
    /// A killed group's other members (children that ignored SIGTERM) are killed now: none
    /// may outlive the stage and write its outputs behind a retry's back.
    pub fn unwatch(&self, pid: u32) -> Option<KillCause> {
        let cause = self.running.lock().expect("watchdog poisoned").remove(&pid).and_then(|w| w.cause);
        if cause.is_some() {
            signal_group(pid, Signal::KILL);
        }
        cause
    }

    /// Tells [`run`](Self::run) to return.
    pub fn stop(&self) {
        self.done.store(true, Ordering::SeqCst);
    }

    /// The watchdog loop; returns after [`stop`](Self::stop).
    pub fn run(&self) {
        while !self.done.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            let now = Instant::now();
            let cancelled = self.is_cancelled();
            let urgent = self.cancel.is_urgent();
            let mut running = self.running.lock().expect("watchdog poisoned");
            for (&pid, watched) in running.iter_mut() {
                if watched.cause.is_none() {
                    if cancelled {
                        watched.cause = Some(KillCause::Interrupted);
                    } else if watched.deadline.is_some_and(|d| now >= d) {
                        watched.cause = Some(KillCause::TimedOut);
                    }
                }
                if watched.cause.is_none() {
                    continue;
                }
                match watched.term_sent {
                    _ if urgent => signal_group(pid, Signal::KILL),
                    None => {
                        signal_group(pid, Signal::TERM);
                        watched.term_sent = Some(now);
                    }
                    Some(sent) if now.duration_since(sent) >= KILL_GRACE => signal_group(pid, Signal::KILL),
                    Some(_) => {}
                }
            }
        }
    }
}

fn signal_group(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        // The group may already be gone; nothing to do then.
        let _ = kill_process_group(pid, signal);
    }
}
