//! The agent: builds the pipeline once, on a schedule, or when inputs change, and keeps
//! going through failed cycles and broken pipeline files. Each cycle is a `runs` row with
//! its trigger (`agent-once`, `agent-scheduled`, `agent-watch`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::builtin::Registry;
use crate::cancel::CancelToken;
use crate::engine::{BuildOptions, Engine};
use crate::error::Error;
use crate::event::{BuildSummary, Event};

/// How long `--watch` waits after a change for more (an editor's save is a few events
/// within a millisecond or two).
pub const WATCH_SETTLE: Duration = Duration::from_millis(10);

/// When the agent runs a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// One cycle, then stop.
    Once,
    /// A cycle every `interval`, measured start to start; a cycle that overruns delays the
    /// next one (cycles never overlap or queue up).
    Every(Duration),
    /// A cycle at start, then one whenever a source input or the pipeline file changes
    /// (changes less than `settle` apart make one cycle, which starts `settle` after the
    /// last of them, or 1 ms after it when they are files written in place and closed, and
    /// at most 300 ms after the first).
    Watch { settle: Duration },
}

impl Schedule {
    /// What its cycles record in `runs.trigger`.
    pub fn trigger(self) -> &'static str {
        match self {
            Schedule::Once => "agent-once",
            Schedule::Every(_) => "agent-scheduled",
            Schedule::Watch { .. } => "agent-watch",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub file: PathBuf,
    pub schedule: Schedule,
    pub jobs: Option<usize>,
    /// Drain it to stop after running stages finish; cancel it to kill them.
    pub cancel: CancelToken,
}

/// What the agent reports.
#[derive(Debug)]
pub enum AgentEvent<'a> {
    CycleStarted {
        cycle: u64,
    },
    /// Progress inside a cycle's build.
    Build(&'a Event<'a>),
    CycleFinished {
        cycle: u64,
        summary: &'a BuildSummary,
    },
    /// The cycle could not build at all (e.g. the state database is unavailable).
    CycleFailed {
        cycle: u64,
        error: &'a Error,
    },
    /// The pipeline file is invalid; the agent keeps using the last good one, if any.
    PipelineInvalid {
        error: &'a Error,
        keeping_last_good: bool,
    },
    /// The pipeline file changed and was loaded.
    PipelineReloaded,
    /// Some inputs could not be watched (e.g. the system's inotify limit); the agent goes
    /// on, watching what it could.
    WatchFailed {
        error: &'a Error,
    },
    /// Nothing to do until this much time has passed (or an input changes).
    Idle {
        next_in: Option<Duration>,
    },
}

/// Runs cycles until the schedule ends or `cancel` stops it; returns how many ran.
pub fn run_agent(
    opts: &AgentOptions,
    registry: &Registry,
    on_event: &mut dyn FnMut(&AgentEvent<'_>),
) -> Result<u64, Error> {
    let mut engine: Option<Engine> = None;
    let mut loaded_text: Option<String> = None;
    let mut watcher = match opts.schedule {
        Schedule::Watch { .. } => Some(crate::watch::InputWatcher::new(&opts.file)?),
        _ => None,
    };
    let mut cycle = 0;
    // What changed before this cycle (watch mode, after the first).
    let mut changes: Option<crate::watch::Changes> = None;
    // The state token the last cycle's build left, if it finished every stage it could.
    let mut last_token: Option<i64> = None;
    // Whether every path the pipeline declares is watched: if not, a change can go unseen,
    // and no cycle may plan only what was seen to change.
    let mut watched_all = false;
    while !opts.cancel.is_stopping() {
        if let (Some(watcher), Some(changes)) = (&mut watcher, &mut changes) {
            watcher.take_pending(changes);
        }
        // The pipeline is loaded again (and watched afresh) unless only inputs and outputs
        // changed and no symbolic link was made (which can move where a declared path
        // resolves): then the stages are what they were, and re-reading and re-watching
        // 100,000 of them would be most of the cycle.
        let keep = match (&watcher, &changes, &engine) {
            (Some(watcher), Some(changes), Some(_)) => {
                watched_all && !watcher.touches_pipeline(changes) && !changes.made_a_link()
            }
            _ => false,
        };
        // With the same stages, and a watcher that saw every change since the last build,
        // the plan looks only at what those changes touch (if the state is as that build left
        // it: the engine checks).
        let since = match (keep, &changes, &engine, last_token) {
            (true, Some(changes), Some(engine), Some(state_token)) => {
                Some(crate::engine::SinceLastBuild { state_token, touched: engine.stages_touched_by(&changes.paths) })
            }
            _ => None,
        };
        if !keep {
            reload(opts, registry, &mut engine, &mut loaded_text, on_event);
            // Watch before building, so that an input edited during the cycle starts another.
            if let (Some(watcher), Some(engine)) = (&mut watcher, &engine) {
                watched_all = match watcher.watch(engine) {
                    Ok(()) => true,
                    Err(error) => {
                        on_event(&AgentEvent::WatchFailed { error: &error });
                        false
                    }
                };
            }
        }
        let started = Instant::now();
        if let Some(engine) = &engine {
            cycle += 1;
            on_event(&AgentEvent::CycleStarted { cycle });
            let build = BuildOptions {
                jobs: opts.jobs,
                trigger: opts.schedule.trigger().into(),
                cancel: opts.cancel.clone(),
                since,
                ..BuildOptions::default()
            };
            let built = engine
                .build(&build, &mut |event| on_event(&AgentEvent::Build(event)))
                .map_err(|error| error.at_state(&engine.spec().state_path));
            last_token = built.as_ref().ok().and_then(|summary| summary.state_token);
            match built {
                Ok(summary) => on_event(&AgentEvent::CycleFinished { cycle, summary: &summary }),
                Err(error) => on_event(&AgentEvent::CycleFailed { cycle, error: &error }),
            }
        }
        match opts.schedule {
            Schedule::Once => break,
            Schedule::Every(interval) => {
                let next = started + interval;
                on_event(&AgentEvent::Idle { next_in: next.checked_duration_since(Instant::now()) });
                sleep_until(next, &opts.cancel);
            }
            Schedule::Watch { settle } => {
                on_event(&AgentEvent::Idle { next_in: None });
                if let (Some(engine), Some(_)) = (&engine, last_token) {
                    engine.prepare_next_build();
                }
                if let Some(watcher) = &mut watcher {
                    changes = Some(watcher.wait_for_change(settle, &opts.cancel));
                }
            }
        }
    }
    Ok(cycle)
}

/// Loads the pipeline before every cycle: the stages depend on more than the pipeline
/// file's text (params and vars files, the files a template lists), and a cycle must never
/// build from stale params. An invalid pipeline keeps the last good one.
fn reload(
    opts: &AgentOptions,
    registry: &Registry,
    engine: &mut Option<Engine>,
    loaded_text: &mut Option<String>,
    on_event: &mut dyn FnMut(&AgentEvent<'_>),
) {
    let text = std::fs::read_to_string(&opts.file).ok();
    match Engine::load(&opts.file, registry.clone()) {
        Ok(new) => {
            if engine.is_some() && text != *loaded_text {
                on_event(&AgentEvent::PipelineReloaded);
            }
            *engine = Some(new);
            *loaded_text = text;
        }
        Err(error) => on_event(&AgentEvent::PipelineInvalid { error: &error, keeping_last_good: engine.is_some() }),
    }
}

/// Sleeps until `deadline`, waking early when the agent is asked to stop.
fn sleep_until(deadline: Instant, cancel: &CancelToken) {
    while !cancel.is_stopping() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { return };
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}
