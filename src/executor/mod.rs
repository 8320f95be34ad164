//! Runs the stages a plan marks dirty, each as soon as its upstream is done, on `-j N`
//! worker threads, and records every finished stage, each whole in one transaction.
//!
//! The coordinator (the calling thread) owns the state database and the bookkeeping;
//! workers evaluate and run stages and report back through a queue (`handoff.rs`). A stage
//! left dirty only because its upstream was dirty is evaluated again once that upstream is
//! done, with the upstream's new output hash: if nothing it reads changed, it is cut off.
//!
//! Workers are plain threads rather than rayon tasks: rayon would let a worker waiting in
//! a parallel hash steal a whole other stage and run it inline, delaying the first.
//! Rayon still does the data-parallel hashing inside each stage.

mod attempt;
mod cached;
mod coordinator;
mod group;
mod handoff;
mod local;
mod log;
mod outputs;
mod runner;
mod schedule;
pub mod slurm;
mod spawn;
mod task;
mod watchdog;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime};

pub use attempt::{Attempt, Control, Executor, Work};
pub use group::{AttemptTokens, ProcessesSurvive, end_attempt, end_run_attempts, end_submitter};
pub use local::Local;
pub use log::log_tail;
pub use runner::{AttemptFailure, ShellCommand, expand_command, run_builtin};
pub use watchdog::KILL_GRACE;

use crate::cancel::CancelToken;
use crate::event::{Event, FailedStage};
use crate::fingerprint::{FileHash, FingerprintInputs, OutputHash};
use crate::planner::{DirtyReason, EvalContext, Evaluation, Plan, Verdict};
use crate::spec::{ExecutorKind, StageIdx};
use crate::state::{Run, RunCounts, RunId, State, StateError};
use coordinator::Coordinator;
use handoff::{CloseOnDrop, Empty, Producer, Queue};
use schedule::Schedule;
use task::run_task;
use watchdog::Watchdog;

/// How long the coordinator waits for a message before it looks again. A worker announces a
/// start that waits for nothing without waking it (that took 3% off a full build of 1,000
/// small stages on 2 cores), and reports a stage it finished without waking it while it has
/// its next one (woken once that one runs, see the worker loop in `execute`; if it never
/// starts a process, at the next wake), so an idle coordinator sees either at most this
/// late; a busy one, once it is done with what it handles.
const START_NOTICE: Duration = Duration::from_millis(20);

/// How to execute.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub jobs: usize,
    pub fail_fast: bool,
    /// Set from outside (e.g. on Ctrl-C): running stages are killed, nothing new starts.
    pub cancel: CancelToken,
    /// Where successes are stored and dirty stages restored from; `None`: no run-cache.
    pub run_cache: Option<std::sync::Arc<dyn crate::runcache::Store>>,
    /// `dagrun build --executor`: where stages run that do not name their own executor.
    pub executor: Option<ExecutorKind>,
    /// The Slurm executor, when any stage runs on Slurm.
    pub slurm: Option<std::sync::Arc<slurm::Slurm>>,
}

/// What execution did.
#[derive(Debug, Default)]
pub struct ExecOutcome {
    pub counts: RunCounts,
    pub failures: Vec<FailedStage>,
    pub interrupted: bool,
}

/// A stage handed to a worker, with the output hash of each of its upstream stages.
struct Task {
    idx: StageIdx,
    upstream: Vec<(StageIdx, OutputHash)>,
}

/// What a worker reports.
enum Message {
    /// An attempt starts. With `recorded` (a cluster job, or any attempt under --fail-fast) it
    /// waits until the coordinator has recorded it and answered; without, it starts at once
    /// (posted just before the spawn, without waking the coordinator: see `START_NOTICE`), its
    /// processes carrying its run's prefix.
    Started {
        start: Box<AttemptStart>,
        /// Where to say once the attempt is recorded, when the worker waits for that before it
        /// starts the attempt; `None`: it has started already.
        recorded: Option<Sender<Result<(), String>>>,
    },
    /// A cluster executor submitted the attempt as job `job_id` (held); the job is released
    /// only once the coordinator has recorded its id and answered.
    Submitted {
        idx: StageIdx,
        job_id: String,
        recorded: Sender<Result<(), String>>,
    },
    Finished {
        idx: StageIdx,
        result: TaskResult,
    },
}

/// An attempt about to start, as the coordinator records it.
struct AttemptStart {
    idx: StageIdx,
    attempt: u32,
    reason: DirtyReason,
    inputs: FingerprintInputs,
    log_path: String,
    at: SystemTime,
    /// For a shell attempt or a cluster job: the token its processes (or job) will carry.
    token: Option<String>,
    executor: ExecutorKind,
}

enum TaskResult {
    /// Evaluated again with its upstream's new outputs: nothing it reads changed.
    Clean,
    /// The build stopped before this stage started.
    NotStarted,
    /// A source input is missing or unreadable.
    CannotRun {
        reason: DirtyReason,
    },
    Succeeded(Box<Success>),
    AttemptFailed {
        failure: AttemptFailure,
        duration: Duration,
        at: SystemTime,
        log_path: String,
        final_attempt: bool,
    },
    /// The last attempt failed and the build stopped during the backoff: no retry.
    RetryAbandoned,
    /// The worker panicked (a bug in dagrun or in a built-in); the stage failed.
    Crashed {
        message: String,
    },
}

struct Success {
    /// Restored from the run-cache (with why it was dirty, and where its log is) instead of run.
    restored: Option<(DirtyReason, String)>,
    eval: Evaluation,
    metrics: BTreeMap<String, f64>,
    outputs: BTreeMap<String, FileHash>,
    output_hash: OutputHash,
    duration: Duration,
    at: SystemTime,
    moved: Vec<String>,
}

/// What workers share.
struct Shared<'a> {
    eval: EvalContext<'a>,
    watchdog: Watchdog,
    /// Stop starting stages (fail-fast, or the coordinator hit an error).
    stop: AtomicBool,
    run: RunId,
    run_cache: Option<&'a dyn crate::runcache::Store>,
    /// The build's choice of executor, for stages that do not name theirs.
    build_executor: Option<ExecutorKind>,
    slurm: Option<&'a slurm::Slurm>,
    /// The pipeline directory, resolved once for the look before outputs are deleted.
    root: crate::spec::ResolvedRoot,
    tokens: AttemptTokens,
    fail_fast: bool,
    local: Local,
}

impl Shared<'_> {
    /// Where stage `idx` runs: its own choice, else the build's, else the pipeline's.
    fn executor_kind(&self, idx: StageIdx) -> ExecutorKind {
        self.eval.spec.executor_of(idx, self.build_executor)
    }

    fn executor(&self, idx: StageIdx) -> Result<&dyn Executor, AttemptFailure> {
        match (self.executor_kind(idx), self.slurm) {
            (ExecutorKind::Slurm, Some(slurm)) => Ok(slurm),
            // The engine makes the Slurm executor whenever a stage may run on it.
            (ExecutorKind::Slurm, None) => {
                Err(AttemptFailure::failed("the slurm executor was not set up for this build"))
            }
            (ExecutorKind::Local, _) => Ok(&self.local),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.watchdog.is_stopping()
    }

    /// Where attempt `attempt` of stage `idx` writes its log, relative to the pipeline
    /// directory (a restore's notes go to the first attempt's).
    fn log_path(&self, idx: StageIdx, attempt: u32) -> String {
        let (spec, name) = (self.eval.spec, &self.eval.spec.stages[idx].name);
        match attempt {
            1 => format!("{}/logs/{}/{name}.log", spec.own_dir, self.run.0),
            n => format!("{}/logs/{}/{name}.attempt{n}.log", spec.own_dir, self.run.0),
        }
    }
}

/// Executes the dirty part of `plan`, as `run` (which `State::begin_run` recorded).
pub fn execute(
    eval: &EvalContext<'_>,
    plan: &Plan,
    state: &mut State,
    run: &Run,
    opts: &ExecOptions,
    on_event: &mut dyn FnMut(&Event<'_>),
) -> Result<ExecOutcome, StateError> {
    let spec = eval.spec;
    let n = spec.stages.len();
    let mut coordinator = Coordinator {
        eval,
        state,
        on_event,
        schedule: Schedule::new(eval.dag, |idx| plan.verdict(idx).map(Verdict::is_dirty)),
        hashes: vec![None; n],
        outcome: ExecOutcome::default(),
        row: vec![None; n],
        unrecorded: std::iter::repeat_with(|| None).take(n).collect(),
        due: Default::default(),
        fail_fast: opts.fail_fast,
        first_error: None,
        run: run.id,
        last_failure: vec![None; n],
        held: Vec::new(),
        held_since: None,
    };
    coordinator.outcome.counts.up_to_date =
        (0..n).filter(|&idx| matches!(plan.verdict(idx), Some(Verdict::UpToDate))).count() as u32;
    // An up-to-date stage's output hash is its recorded one, looked up when a stage that
    // depends on it starts: looking up all 100,000 of a large pipeline's took 40 ms.
    let recorded_if_clean = |up: StageIdx| match plan.verdict(up) {
        Some(Verdict::UpToDate) => eval.recorded_output_hash(up),
        _ => None,
    };
    let candidates = coordinator.schedule.waiting();
    if candidates == 0 {
        return Ok(std::mem::take(&mut coordinator.outcome));
    }

    // Orphans of a stage (children that outlive its shell) come to dagrun to be reaped.
    group::become_subreaper();
    let shared = Shared {
        eval: *eval,
        watchdog: Watchdog::new(opts.cancel.clone()),
        stop: AtomicBool::new(false),
        run: run.id,
        run_cache: opts.run_cache.as_deref(),
        build_executor: opts.executor,
        slurm: opts.slurm.as_deref(),
        root: crate::spec::ResolvedRoot::new(&spec.root),
        tokens: AttemptTokens::new(&run.attempt_prefix),
        fail_fast: opts.fail_fast,
        local: Local::new(),
    };
    let workers = opts.jobs.clamp(1, candidates);
    // The coordinator waits for a message at most this long (under --fail-fast, where every
    // start waits for its row and wakes it, for as long as it takes). A start or a report
    // may be posted without waking it only when it looks again by itself.
    let look_again = (!opts.fail_fast).then_some(START_NOTICE);
    let quiet_reports = look_again.is_some();
    let tasks = Queue::<Task>::new();
    let messages = Queue::<Message>::new();
    std::thread::scope(|scope| {
        // Guards, dropped in the reverse order, however this scope ends: even on a panic below,
        // the tasks queued ahead are dropped first, so that a worker starts nothing more and
        // ends after the stage it runs; then the watchdog stops; then the messages are
        // dropped, so that a worker waiting for the answer to its `Started` gets an error, not
        // a hang. The scope then joins every thread instead of waiting forever.
        let _messages_guard = CloseOnDrop(&messages);
        let _watchdog_guard = StopOnDrop(&shared.watchdog);
        let handing_out = tasks.producer();
        let _tasks_guard = CloseOnDrop(&tasks);
        let (tasks, shared_ref) = (&tasks, &shared);
        for _ in 0..workers {
            let to_coordinator = messages.producer();
            scope.spawn(move || {
                let mut next = tasks.pop(None);
                while let Ok(task) = next {
                    let idx = task.idx;
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_task(shared_ref, task, &to_coordinator)
                    }));
                    let result = ran.unwrap_or_else(|panic| TaskResult::Crashed { message: panic_message(&*panic) });
                    let report = Message::Finished { idx, result };
                    // A worker that has its next stage reports this one without waking the
                    // coordinator; starting the next stage wakes it (`Control::running`).
                    // Woken now, the coordinator would be ready to run on this core while
                    // the next stage's process is started, and Linux then puts that process
                    // on the other core, busy with another stage, and leaves this one idle
                    // for about a millisecond: a third of the idle time of a full build of
                    // 10,000 small stages on 2 cores (`perf` sched_switch events).
                    match if quiet_reports { tasks.try_pop() } else { None } {
                        Some(task) => {
                            to_coordinator.push_quietly(report);
                            next = Ok(task);
                        }
                        None => {
                            to_coordinator.push(report);
                            next = tasks.pop(None);
                        }
                    }
                }
            });
        }
        scope.spawn(|| shared.watchdog.run());

        // What starts next is decided here. A worker that finishes a stage takes the next one
        // queued for it at once, instead of waiting for this thread to record the one it
        // finished and answer (on 2 busy cores, that wait was a tenth of a full build of
        // trivial stages): one stage per worker is handed out ahead. Under --fail-fast none
        // is, so that no stage starts after a failure not yet seen here.
        let depth = if opts.fail_fast { workers } else { workers * 2 };
        let mut outstanding = 0usize;
        loop {
            while outstanding < depth {
                let Some(idx) = coordinator.schedule.next() else { break };
                if shared.stopped() {
                    coordinator.not_started(idx);
                    continue;
                }
                let upstream = eval
                    .dag
                    .upstream(idx)
                    .filter_map(|up| coordinator.hashes[up].or_else(|| recorded_if_clean(up)).map(|h| (up, h)))
                    .collect();
                handing_out.push(Task { idx, upstream });
                outstanding += 1;
            }
            if outstanding == 0 {
                break; // nothing running and, by the loop above, nothing ready
            }
            let message = next_message(&messages, &mut coordinator, &shared.stop, look_again)
                .expect("a worker holds a producer while tasks are outstanding");
            if let Message::Finished { result, .. } = &message
                && !matches!(result, TaskResult::AttemptFailed { final_attempt: false, .. })
            {
                outstanding -= 1;
            }
            coordinator.handle(message, &shared.stop);
        }
    });
    coordinator.write_now(&shared.stop);
    coordinator.outcome.interrupted = opts.cancel.is_stopping();
    match coordinator.first_error.take() {
        Some(err) => Err(err),
        None => Ok(std::mem::take(&mut coordinator.outcome)),
    }
}

/// The next message from the workers, writing the rows of running attempts as they fall due
/// meanwhile; `None` once every worker has gone.
///
/// The wait is never longer than `look_again` ([`START_NOTICE`], unless under --fail-fast),
/// since a start that waits for nothing, and a report a worker sends while it holds its next
/// stage, are posted without waking this thread.
fn next_message(
    messages: &Queue<Message>,
    coordinator: &mut Coordinator<'_, '_>,
    stop: &AtomicBool,
    look_again: Option<Duration>,
) -> Option<Message> {
    loop {
        let again = look_again.map(|wait| Instant::now() + wait);
        match messages.pop([coordinator.next_due(), coordinator.write_at(), again].into_iter().flatten().min()) {
            Ok(message) => return Some(message),
            Err(Empty::TimedOut) => {
                coordinator.record_due(stop);
                coordinator.write_due(stop);
            }
            Err(Empty::Gone) => return None,
        }
    }
}

/// Stops the watchdog when dropped, however the scope ends.
struct StopOnDrop<'a>(&'a Watchdog);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    format!("dagrun's worker panicked: {}", runner::panic_text(panic))
}
