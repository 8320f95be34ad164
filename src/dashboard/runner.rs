//! The builds the dashboard starts ("Run Agent Once", the schedule, and the watcher's
//! cycles), each an ordinary `Engine::build` on a thread of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::App;
use crate::agent::{AgentEvent, AgentOptions, Schedule, run_agent};
use crate::cancel::CancelToken;
use crate::engine::{BuildOptions, Engine};
use crate::event::Event;
use crate::state::State;

/// How long a request waits for its build to be recorded (its run id) before answering
/// without one: the build may be queued behind another's lock.
const START_WAIT: Duration = Duration::from_secs(5);

/// The builds this process runs: the dashboard's own, if it started one, the schedule's,
/// and the watcher's cycles.
pub struct OwnBuilds {
    cancel: CancelToken,
    active: Mutex<Option<Active>>,
    next_due: Mutex<Option<SystemTime>>,
    watch: Mutex<WatchState>,
    /// The watcher's thread, which ends when the dashboard stops.
    watcher: Mutex<Option<JoinHandle<()>>>,
}

/// What the watcher is doing, as the Agent page shows it.
#[derive(Debug, Default, Clone)]
pub struct WatchState {
    /// Its cycle running now.
    cycle: Option<OwnRun>,
    /// Why the latest cycle watched only some inputs (the system's inotify limit, say).
    pub partial: Option<String>,
    /// Why it stopped before the dashboard did.
    pub stopped: Option<String>,
}

struct Active {
    run_id: Option<i64>,
    trigger: &'static str,
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

/// The build this process runs now: its run id (`None` until recorded) and trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnRun {
    pub run_id: Option<i64>,
    pub trigger: &'static str,
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

impl OwnBuilds {
    pub fn new(cancel: CancelToken) -> OwnBuilds {
        OwnBuilds {
            cancel,
            active: Mutex::new(None),
            next_due: Mutex::new(None),
            watch: Mutex::new(WatchState::default()),
            watcher: Mutex::new(None),
        }
    }

    /// Starts a build with `trigger`, unless one is running.
    pub(crate) fn start(&self, app: &App, trigger: &'static str) -> Started {
        let mut active = self.active.lock().expect("run state poisoned");
        if let Some(running) = active.as_ref().filter(|a| !a.done.load(Ordering::SeqCst)) {
            return Started::Busy(running.run_id);
        }
        if let Some(cycle) = self.lock_watch().cycle {
            return Started::Busy(cycle.run_id);
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
        if let Some(previous) = active.replace(Active { run_id, trigger, done, thread }) {
            let _ = previous.thread.join(); // finished: checked above
        }
        outcome
    }

    /// The build this process runs now, if any: the dashboard's own, or the watcher's cycle.
    pub fn running(&self) -> Option<OwnRun> {
        let active = self.active.lock().expect("run state poisoned");
        if let Some(own) = active.as_ref().filter(|a| !a.done.load(Ordering::SeqCst)) {
            return Some(OwnRun { run_id: own.run_id, trigger: own.trigger });
        }
        self.lock_watch().cycle
    }

    /// When the schedule runs its next cycle, if there is a schedule.
    pub fn next_due(&self) -> Option<SystemTime> {
        *self.next_due.lock().expect("schedule poisoned")
    }

    /// Waits for the dashboard's build, if any, and the watcher, once asked to stop, to end.
    pub fn wait(&self) {
        let active = self.active.lock().expect("run state poisoned").take();
        if let Some(active) = active {
            let _ = active.thread.join();
        }
        let watcher = self.watcher.lock().expect("watch state poisoned").take();
        if let Some(watcher) = watcher {
            let _ = watcher.join();
        }
    }

    /// What the watcher is doing.
    pub fn watch_state(&self) -> WatchState {
        self.lock_watch().clone()
    }

    /// The watcher's state, even after a panic while it was held (every change to it is one
    /// assignment, so it is never half made): the page and Run Agent Once keep working.
    fn lock_watch(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Clears the watcher's cycle however its thread ends; a panic is why it stopped.
struct WatcherEnd<'a>(&'a OwnBuilds);

impl Drop for WatcherEnd<'_> {
    fn drop(&mut self) {
        let mut watch = self.0.lock_watch();
        watch.cycle = None;
        if std::thread::panicking() {
            watch
                .stopped
                .get_or_insert_with(|| "the watcher stopped on an internal error; restart the dashboard".into());
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
        let builds = &app.builds;
        loop {
            let due = SystemTime::now() + interval;
            *builds.next_due.lock().expect("schedule poisoned") = Some(due);
            let _ = builds.start(&app, "agent-scheduled");
            while SystemTime::now() < due {
                if builds.cancel.is_stopping() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
}

/// Runs the agent's watch loop beside the server, as `dagrun agent --watch` does: a cycle
/// now and whenever a source input or the pipeline file changes, planning only what changed.
/// Its cycles show as this process's build, so Run Agent Once answers busy while one runs;
/// a cycle that starts while the dashboard's own build runs waits for that build's lock.
pub(crate) fn watch(app: Arc<App>, settle: Duration) {
    let opts = AgentOptions {
        file: app.file.clone(),
        schedule: Schedule::Watch { settle },
        jobs: None,
        cancel: app.builds.cancel.clone(),
    };
    let registry = app.registry.clone();
    let trigger = opts.schedule.trigger();
    let watched = app.clone();
    let thread = std::thread::spawn(move || {
        let builds = &watched.builds;
        let _end = WatcherEnd(builds);
        let state = || builds.lock_watch();
        // A failure to watch some inputs is reported (before the cycle starts) each time the
        // pipeline is watched afresh, which every cycle does until all are watched.
        let mut unwatched: Option<String> = None;
        // Cycles record their failures as any build does; the loop itself fails only when
        // nothing can be watched.
        let ran = run_agent(&opts, &registry, &mut |event| match event {
            AgentEvent::WatchFailed { error } => unwatched = Some(error.to_string()),
            AgentEvent::CycleStarted { .. } => {
                let mut state = state();
                state.cycle = Some(OwnRun { run_id: None, trigger });
                state.partial = unwatched.take();
            }
            AgentEvent::Build(Event::BuildStarted { run, .. }) => {
                state().cycle = Some(OwnRun { run_id: Some(run.0), trigger });
            }
            AgentEvent::CycleFinished { .. } | AgentEvent::CycleFailed { .. } => state().cycle = None,
            _ => {}
        });
        if let Err(error) = ran {
            state().stopped = Some(error.to_string());
        }
    });
    *app.builds.watcher.lock().expect("watch state poisoned") = Some(thread);
}

/// Another process's build running now, if any: a `runs` row still `running` whose process
/// is a live dagrun (a killed build leaves its row `running` until the next build sweeps
/// it, and its pid may since belong to anything, this dashboard included). The dashboard's
/// own builds are known from `OwnBuilds`, not from here.
pub(crate) fn live_run(engine: &Engine) -> Option<LiveRun> {
    let build = engine.live_builds().ok()?.into_iter().next()?;
    Some(LiveRun { run_id: Some(build.run_id), trigger: build.trigger, started_at: build.started_at, pid: build.pid })
}

/// The build this process runs, if any, as `running` shows it.
pub(crate) fn own_run(app: &App, engine: &Engine) -> Option<LiveRun> {
    let OwnRun { run_id, trigger } = app.builds.running()?;
    let recorded = run_id.and_then(|id| {
        let state = State::open_reader(&engine.spec().state_path).ok()??;
        state.runs_in_progress().ok()?.into_iter().find(|run| run.0 == id)
    });
    let (trigger, started_at) = match recorded {
        Some((_, _, trigger, started_at)) => (trigger, started_at),
        None => (trigger.to_string(), "waiting for the build lock".to_string()),
    };
    Some(LiveRun { run_id, trigger, started_at, pid: std::process::id() })
}
