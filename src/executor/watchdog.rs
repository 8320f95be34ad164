//! Stops running stages on timeout or interruption.
//!
//! Shell stages run in their own process group, so a terminal's Ctrl-C reaches only
//! dagrun; the watchdog passes it on (SIGTERM, then SIGKILL after a grace period) to the
//! whole group, grandchildren included, and remembers why each group was killed. A
//! built-in stage runs in dagrun's own process: it gets a cancel flag of its own, which the
//! watchdog raises on its timeout or on Ctrl-C, and which the built-in polls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::group::signal_group;

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
    /// A built-in's cancel flag; `None` for a process group.
    flag: Option<Arc<AtomicBool>>,
}

/// Keys of watched built-ins start above every pid, so one map holds both.
const FIRST_BUILTIN_KEY: u64 = 1 << 32;

/// Running stages: process groups by leader pid, built-ins by a key of their own.
#[derive(Debug)]
pub struct Watchdog {
    running: Mutex<HashMap<u64, Watched>>,
    cancel: CancelToken,
    done: AtomicBool,
    next_builtin: AtomicU64,
}

/// A running built-in's cancel flag, raised on timeout or interruption.
#[derive(Debug)]
pub struct BuiltinWatch {
    key: u64,
    pub flag: Arc<AtomicBool>,
}

impl Watchdog {
    pub fn new(cancel: CancelToken) -> Watchdog {
        Watchdog {
            running: Mutex::new(HashMap::new()),
            cancel,
            done: AtomicBool::new(false),
            next_builtin: AtomicU64::new(FIRST_BUILTIN_KEY),
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Drained or cancelled: start nothing new.
    pub fn is_stopping(&self) -> bool {
        self.cancel.is_stopping()
    }

    pub fn watch(&self, pid: u32, timeout: Option<Duration>) {
        self.insert(u64::from(pid), timeout, None);
    }

    /// Whether `pid` leads the group of an attempt being watched: a process of that attempt,
    /// alive or an unreaped zombie (a leader is unwatched before it is reaped), so its pid is
    /// no other process's.
    pub fn watches(&self, pid: i32) -> bool {
        u64::try_from(pid).is_ok_and(|key| self.running.lock().expect("watchdog poisoned").contains_key(&key))
    }

    /// Stops watching a group whose leader has exited (unreaped); returns why it was
    /// killed, if it was. The caller then ends the rest of the group, whatever the cause.
    pub fn unwatch(&self, pid: u32) -> Option<KillCause> {
        self.remove(u64::from(pid))
    }

    /// Watches a built-in about to run: its flag is raised at `timeout` or on interruption.
    pub fn watch_builtin(&self, timeout: Option<Duration>) -> BuiltinWatch {
        let key = self.next_builtin.fetch_add(1, Ordering::SeqCst);
        let flag = Arc::new(AtomicBool::new(self.is_cancelled()));
        self.insert(key, timeout, Some(flag.clone()));
        BuiltinWatch { key, flag }
    }

    /// Stops watching a built-in that returned; returns why its flag was raised, if it was.
    pub fn unwatch_builtin(&self, watch: &BuiltinWatch) -> Option<KillCause> {
        self.remove(watch.key)
    }

    fn insert(&self, key: u64, timeout: Option<Duration>, flag: Option<Arc<AtomicBool>>) {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let watched = Watched { deadline, cause: None, term_sent: None, flag };
        self.running.lock().expect("watchdog poisoned").insert(key, watched);
    }

    fn remove(&self, key: u64) -> Option<KillCause> {
        self.running.lock().expect("watchdog poisoned").remove(&key).and_then(|w| w.cause)
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
            for (&key, watched) in running.iter_mut() {
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
                if let Some(flag) = &watched.flag {
                    // A built-in cannot be killed; it stops at its next poll of the flag.
                    flag.store(true, Ordering::SeqCst);
                    continue;
                }
                let pid = key as u32;
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
