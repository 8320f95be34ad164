//! SIGINT, SIGTERM and SIGHUP, mapped onto a build's [`CancelToken`].
//!
//! SIGHUP is what a closed terminal or a dropped ssh session sends: it stops a build the
//! same way as SIGTERM, so that the build records what happened instead of dying with its
//! stages running. Under `nohup` (SIGHUP ignored) it stays ignored.

use dagrun::CancelToken;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Calls `first` on the first stop signal, `cancel_now` on the second, and `last_resort`
/// on the third, from a thread of its own: for a built-in stage that ignores being told to
/// stop, the third signal ends the process (`last_resort` records and exits).
pub fn on_stop_signals(
    cancel: &CancelToken,
    first: impl Fn(&CancelToken) + Send + 'static,
    last_resort: impl Fn() + Send + 'static,
) {
    let mut wanted = vec![SIGINT, SIGTERM];
    if !sighup_ignored() {
        wanted.push(SIGHUP);
    }
    let Ok(mut signals) = signal_hook::iterator::Signals::new(wanted) else {
        return;
    };
    let cancel = cancel.clone();
    std::thread::spawn(move || {
        for (count, _) in signals.forever().enumerate() {
            match count {
                0 => first(&cancel),
                1 => cancel.cancel_now(),
                _ => last_resort(),
            }
        }
    });
}

/// Whether this process started with SIGHUP ignored (as `nohup` starts it). Read from
/// /proc, which needs no unsafe `sigaction` call.
fn sighup_ignored() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (SIGHUP - 1)) != 0)
}

/// The third stop signal: a built-in stage ignored two requests to stop. Records the
/// running built-ins as interrupted and ends the process (exit 1). Shell stages the first
/// two signals have not ended yet, and the run, stay recorded `running`: the next build ends
/// every process carrying the run's attempt prefix before it sweeps them.
pub fn exit_now(state_path: std::path::PathBuf) -> impl Fn() + Send + 'static {
    move || {
        note("stopping now: a stage ignored two requests to stop; it is recorded as interrupted");
        // Unmigrated: a build of this process is running, so the schema is current; and
        // only this process's running builds are touched.
        if let Ok(mut state) = dagrun::state::State::open_unmigrated(&state_path) {
            let _ = state.sweep_in_process(std::process::id());
        }
        std::process::exit(i32::from(super::EXIT_FAILED));
    }
}

/// Writes a line to stderr, ignoring failure: after a hang-up the terminal is gone, and a
/// failed write must not stop dagrun from recording what happened.
pub fn note(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}
