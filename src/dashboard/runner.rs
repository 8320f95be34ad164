//! The builds the dashboard starts ("Run Agent Once", and the schedule), one at a time,
//! each an ordinary `Engine::build` on a thread of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::App;
use crate::cancel::CancelToken;
use crate::engine::{BuildOptions, Engine};
use crate::event::Event;
use crate::state::State;

/// How long a request waits for its build to be recorded (its run id) before answering
/// without one: the build may be queued behind another's lock.
const START_WAIT: Duration = Duration::from_secs(5);

/// The dashboard's own build, if it started one, and the schedule.
pub struct RunOnce {
    cancel: CancelToken,
    active: Mutex<Option<Active>>,
    next_due: Mutex<Option<SystemTime>>,
}

struct Active {
    run_id: Option<i64>,
    done: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// What asking for a run did.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    /// The run started (its id, once it was recorded within a few seconds).
    Run(Option<i64>),
    /// A build is already running (the dashboard's, or one from a terminal): its id.
    Busy(Option<i64>),
    /// The build could not start (the state database is unavailable, say).
    Failed(String),
}

/// A build running now: the dashboard's own, a terminal's `dagrun build`, or an agent's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveRun {
    /// `None` while the dashboard's own build waits for another's lock.
    pub run_id: Option<i64>,
    pub trigger: String,
    pub started_at: String,
    pub pid: u32,
}

impl RunOnce {
    pub fn new(cancel: CancelToken) -> RunOnce {
        RunOnce { cancel, active: Mutex::new(None), next_due: Mutex::new(None) }
    }

    /// Starts a build with `trigger`, unless one is running.
    pub(crate) fn start(&self, app: &App, trigger: &str) -> Started {
        let mut active = self.active.lock().expect("run state poisoned");
        if let Some(running) = active.as_ref().filter(|a| !a.done.load(Ordering::SeqCst)) {
            return Started::Busy(running.run_id);
        }
        let engine = match app.engine() {
            Ok(engine) => engine,
            Err(error) => return Started::Failed(error),
        };
        if let Some(live) = live_run(&engine) {
            return Started::Busy(live.run_id);
        }
        if self.cancel.is_stopping() {
            return Started::Failed("the dashboard is stopping".into());
        }
        let (tell, told) = mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let opts = BuildOptions { trigger: trigger.into(), cancel: self.cancel.clone(), ..BuildOptions::default() };
        let finished = SetOnDrop(done.clone());
        let thread = std::thread::spawn(move || {
            let _finished = finished; // set however the build ends, a panic included
            let started = tell.clone();
            let built = engine.build(&opts, &mut |event| {
                if let Event::BuildStarted { run, .. } = event {
                    let _ = started.send(Ok(run.0));
                }
            });
            if let Err(error) = built {
                let _ = tell.send(Err(error.at_state(&engine.spec().state_path).to_string()));
            }
        });
        let (run_id, outcome) = match told.recv_timeout(START_WAIT) {
            Ok(Ok(run_id)) => (Some(run_id), Started::Run(Some(run_id))),
            Ok(Err(error)) => (None, Started::Failed(error)),
            Err(_) => (None, Started::Run(None)),
        };
        if let Some(previous) = active.replace(Active { run_id, done, thread }) {
            let _ = previous.thread.join(); // finished: checked above
        }
        outcome
    }

    /// The dashboard's own build, if one is running: its run id (once recorded).
    pub fn running(&self) -> Option<Option<i64>> {
        let active = self.active.lock().expect("run state poisoned");
        active.as_ref().filter(|a| !a.done.load(Ordering::SeqCst)).map(|a| a.run_id)
    }

    /// When the schedule runs its next cycle, if there is a schedule.
    pub fn next_due(&self) -> Option<SystemTime> {
        *self.next_due.lock().expect("schedule poisoned")
    }

    /// Waits for the dashboard's build, if any, to end.
    pub fn wait(&self) {
        let active = self.active.lock().expect("run state poisoned").take();
        if let Some(active) = active {
            let _ = active.thread.join();
        }
    }
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs a cycle now and then every `interval`, as `dagrun agent --mode scheduled` does; a
/// cycle that finds a build running is skipped (cycles never stack up).
pub(crate) fn schedule(app: Arc<App>, interval: Duration) {
    std::thread::spawn(move || {
        let runs = &app.runs;
        loop {
            let due = SystemTime::now() + interval;
            *runs.next_due.lock().expect("schedule poisoned") = Some(due);
            let _ = runs.start(&app, "agent-scheduled");
            while SystemTime::now() < due {
                if runs.cancel.is_stopping() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
}

/// Another process's build running now, if any: a `runs` row still `running` whose process
/// is a live dagrun (a killed build leaves its row `running` until the next build sweeps
/// it, and its pid may since belong to anything, this dashboard included). The dashboard's
/// own builds are known from `RunOnce`, not from here.
pub(crate) fn live_run(engine: &Engine) -> Option<LiveRun> {
    let build = engine.live_builds().ok()?.into_iter().next()?;
    Some(LiveRun { run_id: Some(build.run_id), trigger: build.trigger, started_at: build.started_at, pid: build.pid })
}

/// The dashboard's own build, if one is running, as `running` shows it.
pub(crate) fn own_run(app: &App, engine: &Engine) -> Option<LiveRun> {
    let run_id = app.runs.running()?;
    let recorded = run_id.and_then(|id| {
        let state = State::open_reader(&engine.spec().state_path).ok()??;
        state.runs_in_progress().ok()?.into_iter().find(|run| run.0 == id)
    });
    let (trigger, started_at) = match recorded {
        Some((_, _, trigger, started_at)) => (trigger, started_at),
        None => ("dashboard".to_string(), "waiting for the build lock".to_string()),
    };
    Some(LiveRun { run_id, trigger, started_at, pid: std::process::id() })
}
