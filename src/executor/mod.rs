//! Runs the stages a plan marks dirty, each as soon as its upstream is done, on `-j N`
//! worker threads, and records every finished stage in one transaction.
//!
//! The coordinator (the calling thread) owns the state database and the bookkeeping;
//! workers evaluate and run stages and report back over a channel. A stage left dirty
//! only because its upstream was dirty is evaluated again once that upstream is done,
//! with the upstream's new output hash: if nothing it reads changed, it is cut off.
//!
//! Workers are plain threads rather than rayon tasks: rayon would let a worker waiting in
//! a parallel hash steal a whole other stage and run it inline, delaying the first.
//! Rayon still does the data-parallel hashing inside each stage.

mod group;
mod runner;
mod watchdog;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant, SystemTime};

pub use group::{ProcessesSurvive, end_attempt};
pub use runner::{ShellCommand, expand_command, log_tail};
pub use watchdog::KILL_GRACE;

use crate::builtin::BuiltinContext;
use crate::cancel::CancelToken;
use crate::event::{Event, FailedStage};
use crate::fingerprint::{FileHash, FingerprintInputs, OutputHash, output_hash};
use crate::planner::{DirtyReason, EvalContext, Evaluation, Plan, Verdict, evaluate_stage, explain_reason};
use crate::spec::{Action, StageIdx};
use crate::state::{
    RunCounts, RunId, StageAttempt, StageFailure, StageRunId, StageStatus, StageSuccess, State, StateError,
};
use runner::{AttemptFailure, ShellJob};
use watchdog::Watchdog;

/// How to execute.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub jobs: usize,
    pub fail_fast: bool,
    /// Set from outside (e.g. on Ctrl-C): running stages are killed, nothing new starts.
    pub cancel: CancelToken,
    /// Where successes are stored and dirty stages restored from; `None`: no run-cache.
    pub run_cache: Option<std::sync::Arc<dyn crate::runcache::Store>>,
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
    /// An attempt is about to start; it does only once the coordinator has recorded it
    /// (with the token its processes will carry) and answered.
    Started {
        start: Box<AttemptStart>,
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
    /// For a shell attempt: the token its processes will carry.
    token: Option<String>,
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
}

impl Shared<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.watchdog.is_stopping()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Unselected,
    Waiting(usize),
    Queued,
    Done,
}

/// Executes the dirty part of `plan`.
pub fn execute(
    eval: &EvalContext<'_>,
    plan: &Plan,
    state: &mut State,
    run: RunId,
    opts: &ExecOptions,
    on_event: &mut dyn FnMut(&Event<'_>),
) -> Result<ExecOutcome, StateError> {
    let spec = eval.spec;
    let n = spec.stages.len();
    let mut coordinator = Coordinator {
        eval,
        state,
        on_event,
        slots: vec![Slot::Unselected; n],
        hashes: vec![None; n],
        outcome: ExecOutcome::default(),
        row: vec![None; n],
        fail_fast: opts.fail_fast,
        first_error: None,
        ready: std::collections::VecDeque::new(),
        run,
        last_failure: vec![None; n],
    };
    let mut candidates = 0;
    for idx in 0..n {
        match plan.verdict(idx) {
            None => {}
            Some(Verdict::UpToDate) => {
                coordinator.slots[idx] = Slot::Done;
                coordinator.hashes[idx] = eval.records.get(spec.stages[idx].name.as_str()).and_then(|r| r.output_hash);
                coordinator.outcome.counts.up_to_date += 1;
            }
            Some(Verdict::Dirty(_)) => {
                coordinator.slots[idx] = Slot::Waiting(0);
                candidates += 1;
            }
        }
    }
    for idx in 0..n {
        if coordinator.slots[idx] == Slot::Waiting(0) {
            let pending =
                eval.dag.upstream(idx).filter(|&up| matches!(coordinator.slots[up], Slot::Waiting(_))).count();
            coordinator.slots[idx] = Slot::Waiting(pending);
            if pending == 0 {
                coordinator.ready.push_back(idx);
            }
        }
    }
    if candidates == 0 {
        return Ok(coordinator.outcome);
    }

    // Orphans of a stage (children that outlive its shell) come to dagrun to be reaped.
    group::become_subreaper();
    let shared = Shared {
        eval: *eval,
        watchdog: Watchdog::new(opts.cancel.clone()),
        stop: AtomicBool::new(false),
        run,
        run_cache: opts.run_cache.as_deref(),
    };
    let workers = opts.jobs.clamp(1, candidates);
    let (task_tx, task_rx) = mpsc::channel::<Task>();
    let (msg_tx, msg_rx) = mpsc::channel::<Message>();
    let task_rx = Mutex::new(task_rx);
    std::thread::scope(|scope| {
        // Owned here so that even a panic below drops it (ending the workers) and stops the
        // watchdog: the scope then joins every thread instead of waiting forever.
        let task_tx = task_tx;
        // Likewise: a worker waiting for the coordinator's answer to `Started` gets an
        // error, not a hang, if the coordinator unwinds.
        let msg_rx = msg_rx;
        let _watchdog_guard = StopOnDrop(&shared.watchdog);
        let (task_rx, shared_ref) = (&task_rx, &shared);
        for _ in 0..workers {
            let msg_tx = msg_tx.clone();
            scope.spawn(move || {
                loop {
                    let task = task_rx.lock().expect("task queue poisoned").recv();
                    let Ok(task) = task else { break };
                    let idx = task.idx;
                    let ran =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_task(shared_ref, task, &msg_tx)));
                    if let Err(panic) = ran {
                        let message = panic_message(panic.as_ref());
                        let _ = msg_tx.send(Message::Finished { idx, result: TaskResult::Crashed { message } });
                    }
                }
            });
        }
        scope.spawn(|| shared.watchdog.run());
        drop(msg_tx);

        // At most `workers` stages are handed out at once, so that what starts next is
        // decided here, with every earlier result (a failure under --fail-fast) known.
        let mut outstanding = 0usize;
        loop {
            while outstanding < workers && !coordinator.ready.is_empty() {
                let Some(idx) = coordinator.ready.pop_front() else { break };
                if shared.stopped() {
                    coordinator.not_started(idx);
                    continue;
                }
                coordinator.slots[idx] = Slot::Queued;
                let upstream =
                    eval.dag.upstream(idx).filter_map(|up| coordinator.hashes[up].map(|h| (up, h))).collect();
                task_tx.send(Task { idx, upstream }).expect("workers outlive the coordinator loop");
                outstanding += 1;
            }
            if outstanding == 0 {
                break; // nothing running and, by the loop above, nothing ready
            }
            let message = msg_rx.recv().expect("a worker holds a sender while tasks are outstanding");
            if let Message::Finished { result, .. } = &message
                && !matches!(result, TaskResult::AttemptFailed { final_attempt: false, .. })
            {
                outstanding -= 1;
            }
            coordinator.handle(message, &shared.stop);
        }
        drop(task_tx);
    });
    coordinator.outcome.interrupted = opts.cancel.is_stopping();
    match coordinator.first_error {
        Some(err) => Err(err),
        None => Ok(coordinator.outcome),
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

/// The coordinator's bookkeeping: which stage is where, and the database.
struct Coordinator<'a, 'e> {
    eval: &'a EvalContext<'a>,
    state: &'a mut State,
    on_event: &'e mut dyn FnMut(&Event<'_>),
    slots: Vec<Slot>,
    /// Output hash of each finished stage (recorded or new).
    hashes: Vec<Option<OutputHash>>,
    outcome: ExecOutcome,
    /// The `stage_runs` row of each stage's running attempt.
    row: Vec<Option<StageRunId>>,
    fail_fast: bool,
    first_error: Option<StateError>,
    ready: std::collections::VecDeque<StageIdx>,
    run: RunId,
    /// The latest failed attempt of each stage that may still retry.
    last_failure: Vec<Option<(AttemptFailure, Option<String>)>>,
}

impl Coordinator<'_, '_> {
    fn name(&self, idx: StageIdx) -> &str {
        self.eval.spec.stages[idx].name.as_str()
    }

    fn handle(&mut self, message: Message, stop: &AtomicBool) {
        let recorded = match message {
            Message::Started { start, recorded } => {
                let result = self.started(*start);
                let _ = recorded.send(result.as_ref().map(|_| ()).map_err(ToString::to_string));
                result
            }
            Message::Finished { idx, result } => self.finished(idx, result, stop),
        };
        if let Err(err) = recorded {
            // The database refused a write (e.g. a full disk): start nothing more, let
            // running stages finish, and report the error.
            stop.store(true, Ordering::SeqCst);
            self.first_error.get_or_insert(err);
        }
    }

    fn started(&mut self, start: AttemptStart) -> Result<(), StateError> {
        self.record_start(start, true).map(drop)
    }

    /// Records an attempt's row (its reason explained against the recorded manifest), and
    /// announces it unless it is a restore, which is announced once it is done.
    fn record_start(&mut self, start: AttemptStart, announce: bool) -> Result<DirtyReason, StateError> {
        let AttemptStart { idx, attempt, reason, inputs, log_path, at, token } = start;
        let name = self.eval.spec.stages[idx].name.as_str();
        let reason = explain_reason(self.state, name, reason, &inputs);
        let reason_text = reason.to_string();
        let resources = &self.eval.spec.stages[idx].resources;
        let resources =
            (*resources != Default::default()).then(|| serde_json::to_string(resources).expect("resources serialise"));
        let row = self.state.stage_started(&StageAttempt {
            run: self.run_id(),
            component: name,
            attempt,
            reason: &reason_text,
            started_at: at,
            log_path: &log_path,
            resources: resources.as_deref(),
            token: token.as_deref(),
        })?;
        self.row[idx] = Some(row);
        if announce {
            (self.on_event)(&Event::StageStarted { stage: name, attempt, reason: &reason });
        }
        Ok(reason)
    }

    fn run_id(&self) -> RunId {
        self.run
    }

    fn finished(&mut self, idx: StageIdx, result: TaskResult, stop: &AtomicBool) -> Result<(), StateError> {
        match result {
            TaskResult::Clean => {
                let name = self.eval.spec.stages[idx].name.as_str();
                self.state.record_not_run(self.run, name, StageStatus::CutOff, "upstream outputs unchanged")?;
                let recorded = self.eval.records.get(self.name(idx)).and_then(|r| r.output_hash);
                self.hashes[idx] = recorded;
                self.outcome.counts.cut_off += 1;
                (self.on_event)(&Event::StageCutOff { stage: self.eval.spec.stages[idx].name.as_str() });
                self.release(idx);
            }
            TaskResult::NotStarted => self.not_started(idx),
            TaskResult::CannotRun { reason } => {
                let failure = AttemptFailure::failed(format!("cannot run: {reason}"));
                self.attempt_failed(idx, failure, Duration::ZERO, SystemTime::now(), None, true, stop)?;
            }
            TaskResult::Crashed { message } => {
                self.attempt_failed(
                    idx,
                    AttemptFailure::failed(message),
                    Duration::ZERO,
                    SystemTime::now(),
                    None,
                    true,
                    stop,
                )?;
            }
            TaskResult::RetryAbandoned => {
                let (failure, log_path) =
                    self.last_failure[idx].take().unwrap_or_else(|| (AttemptFailure::failed("retry abandoned"), None));
                (self.on_event)(&Event::StageFailed {
                    stage: self.eval.spec.stages[idx].name.as_str(),
                    status: failure.status,
                    error: "the build stopped before the next attempt",
                    log_path: log_path.as_deref(),
                    will_retry: false,
                });
                self.final_failure(idx, failure, log_path, String::new(), stop);
            }
            TaskResult::Succeeded(success) => self.succeeded(idx, *success)?,
            TaskResult::AttemptFailed { failure, duration, at, log_path, final_attempt } => {
                self.attempt_failed(idx, failure, duration, at, Some(log_path), final_attempt, stop)?
            }
        }
        Ok(())
    }

    fn succeeded(&mut self, idx: StageIdx, success: Success) -> Result<(), StateError> {
        let name = self.eval.spec.stages[idx].name.as_str();
        let mut restored_because = None;
        if let Some((reason, log_path)) = &success.restored {
            let start = AttemptStart {
                idx,
                attempt: 1,
                reason: reason.clone(),
                inputs: success.eval.inputs.clone(),
                log_path: log_path.clone(),
                at: success.at - success.duration,
                token: None,
            };
            restored_because = Some(self.record_start(start, false)?);
        }
        let status = if success.restored.is_some() { StageStatus::Restored } else { StageStatus::Success };
        let row = self.take_row(idx)?;
        let fresh = self.eval.cache.take_fresh();
        self.state.record_success(
            &StageSuccess {
                row,
                component: name,
                finished_at: success.at,
                duration: success.duration,
                fingerprint: success.eval.fingerprint,
                fingerprint_inputs: &success.eval.inputs,
                output_hash: success.output_hash,
                outputs: &success.outputs,
                still_dirty: !success.moved.is_empty(),
                metrics: &success.metrics,
                status,
                invalidations_seen: self.eval.records.get(name).map_or(0, |r| r.invalidations),
            },
            &fresh,
        )?;
        let previous = self.eval.records.get(name).and_then(|r| r.output_hash);
        self.hashes[idx] = Some(success.output_hash);
        for path in &success.moved {
            (self.on_event)(&Event::InputMoved { stage: name, path });
        }
        let output_changed = previous != Some(success.output_hash);
        if let Some(reason) = &restored_because {
            self.outcome.counts.restored += 1;
            (self.on_event)(&Event::StageRestored { stage: name, reason, duration: success.duration, output_changed });
        } else {
            self.outcome.counts.ran += 1;
            (self.on_event)(&Event::StageSucceeded {
                stage: name,
                duration: success.duration,
                output_changed,
                metrics: &success.metrics,
            });
        }
        self.release(idx);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn attempt_failed(
        &mut self,
        idx: StageIdx,
        failure: AttemptFailure,
        duration: Duration,
        at: SystemTime,
        log_path: Option<String>,
        final_attempt: bool,
        stop: &AtomicBool,
    ) -> Result<(), StateError> {
        let name = self.eval.spec.stages[idx].name.as_str();
        let tail = log_path.as_deref().map(|p| log_tail(&self.eval.spec.root.join(p), 20)).unwrap_or_default();
        let error = if tail.is_empty() { failure.message.clone() } else { format!("{}\n{tail}", failure.message) };
        let row = self.take_row(idx)?;
        let fresh = self.eval.cache.take_fresh();
        self.state.record_failure(
            &StageFailure { row, component: name, status: failure.status, finished_at: at, duration, error: &error },
            &fresh,
        )?;
        (self.on_event)(&Event::StageFailed {
            stage: name,
            status: failure.status,
            error: &failure.message,
            log_path: log_path.as_deref(),
            will_retry: !final_attempt,
        });
        let _ = name;
        if final_attempt {
            self.final_failure(idx, failure, log_path, tail, stop);
        } else {
            self.last_failure[idx] = Some((failure, log_path));
        }
        Ok(())
    }

    /// The stage has failed for good: count it and block everything after it.
    fn final_failure(
        &mut self,
        idx: StageIdx,
        failure: AttemptFailure,
        log_path: Option<String>,
        log_tail: String,
        stop: &AtomicBool,
    ) {
        let name = self.eval.spec.stages[idx].name.to_string();
        self.slots[idx] = Slot::Done;
        self.outcome.counts.failed += 1;
        self.outcome.failures.push(FailedStage {
            stage: name,
            status: failure.status,
            error: failure.message,
            log_path,
            log_tail,
        });
        if self.fail_fast {
            stop.store(true, Ordering::SeqCst);
        }
        self.block_downstream(idx, Some(idx));
    }

    /// The `stage_runs` row of the stage's current attempt; one is made if its start was
    /// never recorded (it could not run at all, or recording the start failed).
    fn take_row(&mut self, idx: StageIdx) -> Result<StageRunId, StateError> {
        if let Some(row) = self.row[idx].take() {
            return Ok(row);
        }
        let component = self.eval.spec.stages[idx].name.as_str();
        self.state.stage_started(&StageAttempt {
            run: self.run,
            component,
            attempt: 1,
            reason: "could not start",
            started_at: SystemTime::now(),
            log_path: "",
            resources: None,
            token: None,
        })
    }

    fn not_started(&mut self, idx: StageIdx) {
        self.slots[idx] = Slot::Done;
        self.outcome.counts.blocked += 1;
        let recorded =
            self.state.record_not_run(self.run, self.name(idx), StageStatus::Skipped, "the build stopped first");
        self.keep_error(recorded);
        (self.on_event)(&Event::StageBlocked { stage: self.eval.spec.stages[idx].name.as_str(), upstream: None });
        self.block_downstream(idx, None);
    }

    /// Marks every stage waiting (directly or not) on `idx` as blocked.
    fn block_downstream(&mut self, idx: StageIdx, failed: Option<StageIdx>) {
        let mut stack: Vec<StageIdx> = self.eval.dag.downstream(idx).collect();
        while let Some(down) = stack.pop() {
            if !matches!(self.slots[down], Slot::Waiting(_)) {
                continue;
            }
            self.slots[down] = Slot::Done;
            self.outcome.counts.blocked += 1;
            let upstream = failed.map(|f| self.eval.spec.stages[f].name.as_str());
            let (status, reason) = match upstream {
                Some(up) => (StageStatus::Blocked, format!("upstream `{up}` failed")),
                None => (StageStatus::Skipped, "the build stopped first".to_string()),
            };
            let recorded =
                self.state.record_not_run(self.run, self.eval.spec.stages[down].name.as_str(), status, &reason);
            if let Err(err) = recorded {
                self.first_error.get_or_insert(err);
            }
            (self.on_event)(&Event::StageBlocked { stage: self.eval.spec.stages[down].name.as_str(), upstream });
            stack.extend(self.eval.dag.downstream(down));
        }
    }

    /// Keeps the first database error; the build reports it at the end.
    fn keep_error(&mut self, result: Result<(), StateError>) {
        if let Err(err) = result {
            self.first_error.get_or_insert(err);
        }
    }

    /// A stage finished well: downstream stages with nothing else to wait for are ready.
    fn release(&mut self, idx: StageIdx) {
        self.slots[idx] = Slot::Done;
        for down in self.eval.dag.downstream(idx) {
            if let Slot::Waiting(pending) = self.slots[down] {
                self.slots[down] = Slot::Waiting(pending - 1);
                if pending == 1 {
                    self.ready.push_back(down);
                }
            }
        }
    }
}

/// Worker side: evaluate the stage again with its upstream's hashes, then run it
/// (with retries) if it is still dirty.
fn run_task(shared: &Shared<'_>, task: Task, tx: &Sender<Message>) {
    let idx = task.idx;
    let finish = |result| {
        let _ = tx.send(Message::Finished { idx, result });
    };
    if shared.stopped() {
        return finish(TaskResult::NotStarted);
    }
    let upstream_hash = |up: StageIdx| task.upstream.iter().find(|(i, _)| *i == up).map(|&(_, h)| h);
    let eval = evaluate_stage(&shared.eval, idx, &upstream_hash);
    let reason = match &eval.verdict {
        Verdict::UpToDate => return finish(TaskResult::Clean),
        Verdict::Dirty(reason @ DirtyReason::InputUnavailable { .. }) => {
            return finish(TaskResult::CannotRun { reason: reason.clone() });
        }
        Verdict::Dirty(reason) => reason.clone(),
    };
    // Evaluating can take a while (hashing large inputs): look again before starting.
    if shared.stopped() {
        return finish(TaskResult::NotStarted);
    }
    let stage = &shared.eval.spec.stages[idx];
    if let Some(success) = restore_from_cache(shared, idx, &eval, &reason) {
        return finish(TaskResult::Succeeded(Box::new(success)));
    }
    let attempts = stage.retries.saturating_add(1);
    for attempt in 1..=attempts {
        let log_path = match attempt {
            1 => format!("{}/logs/{}/{}.log", shared.eval.spec.own_dir, shared.run.0, stage.name),
            n => format!("{}/logs/{}/{}.attempt{n}.log", shared.eval.spec.own_dir, shared.run.0, stage.name),
        };
        let at = SystemTime::now();
        let token = matches!(stage.action, Action::Shell { .. }).then(|| group::attempt_token(stage.name.as_str()));
        let (answer, recorded) = mpsc::channel();
        let start = AttemptStart {
            idx,
            attempt,
            reason: reason.clone(),
            inputs: eval.inputs.clone(),
            log_path: log_path.clone(),
            at,
            token: token.clone(),
        };
        let _ = tx.send(Message::Started { start: Box::new(start), recorded: answer });
        // Nothing runs that the state does not name: a later build must be able to find it.
        if !matches!(recorded.recv(), Ok(Ok(()))) {
            return finish(TaskResult::NotStarted);
        }
        let started = Instant::now();
        let result = run_attempt(shared, idx, &eval, &log_path, token.as_deref().unwrap_or_default())
            .and_then(|metrics| collect_outputs(shared, idx, &eval).map(|(outputs, moved)| (outputs, moved, metrics)))
            .and_then(|(outputs, moved, mut metrics)| {
                read_declared_metrics(shared, idx, &mut metrics)?;
                Ok((outputs, moved, metrics))
            });
        let duration = started.elapsed();
        match result {
            Ok((outputs, moved, metrics)) => {
                let output_hash = output_hash(&outputs);
                // What ran while an input moved matches no fingerprint: it is not stored.
                if moved.is_empty() {
                    store_in_cache(shared, idx, &eval, &output_hash, &metrics, &log_path);
                }
                return finish(TaskResult::Succeeded(Box::new(Success {
                    restored: None,
                    eval,
                    metrics,
                    outputs,
                    output_hash,
                    duration,
                    at: SystemTime::now(),
                    moved,
                })));
            }
            Err(mut failure) => {
                if disk_is_full(&shared.eval.spec.root) {
                    failure.message.push_str(
                        "; the disk holding the pipeline directory is full (No space left on device): free some space and build again",
                    );
                }
                let final_attempt =
                    attempt == attempts || failure.status == StageStatus::Interrupted || shared.stopped();
                if final_attempt {
                    // Before reporting: on a full disk, recording the failure needs the space
                    // a partial output took. Best effort: the failure is what gets reported.
                    let _ = remove_outputs(shared, idx);
                }
                let _ = tx.send(Message::Finished {
                    idx,
                    result: TaskResult::AttemptFailed {
                        failure,
                        duration,
                        at: SystemTime::now(),
                        log_path,
                        final_attempt,
                    },
                });
                if final_attempt {
                    return;
                }
                retry_backoff(shared, attempt);
                if shared.stopped() {
                    return finish(TaskResult::RetryAbandoned);
                }
            }
        }
    }
}

/// Whether the run-cache serves this stage: on for the build, and the stage has outputs,
/// is not `cache = false` and does not run every time (a stage with no outputs, or one that
/// always runs, is there for its side effects).
fn cache_for<'a>(shared: &Shared<'a>, idx: StageIdx) -> Option<&'a dyn crate::runcache::Store> {
    let stage = &shared.eval.spec.stages[idx];
    let serves = stage.cache && !stage.always_run && !stage.outputs.is_empty() && !shared.eval.force;
    shared.run_cache.filter(|_| serves)
}

/// Restores a dirty stage's outputs from the run-cache when its fingerprint was stored,
/// checked file by file and then as a whole against the recorded output hash. Anything
/// short of that leaves no outputs behind and returns `None`: the stage runs.
fn restore_from_cache(shared: &Shared<'_>, idx: StageIdx, eval: &Evaluation, reason: &DirtyReason) -> Option<Success> {
    use crate::runcache::{forget, lookup, restore};
    // `invalidate` asks for a run: the recorded result is not to be trusted, nor a stored one.
    if matches!(reason, DirtyReason::Invalidated) {
        return None;
    }
    let store = cache_for(shared, idx)?;
    let spec = shared.eval.spec;
    let stage = &spec.stages[idx];
    // The common miss, found before anything is touched.
    let manifest = lookup(store, &eval.fingerprint, &stage.outputs)?;
    let key = crate::runcache::key(&eval.fingerprint);
    let started = Instant::now();
    remove_outputs(shared, idx).ok()?;
    let log_path = format!("{}/logs/{}/{}.log", spec.own_dir, shared.run.0, stage.name);
    let note = |text: &str| {
        append_log(&spec.root.join(&log_path), text);
    };
    if let Err(problem) = restore(store, &spec.root, &eval.fingerprint, &manifest) {
        note(&format!("run-cache entry {key} not restored ({problem}); running the stage"));
        let _ = remove_outputs(shared, idx);
        return None;
    }
    let checked = collect_outputs(shared, idx, eval)
        .ok()
        .map(|(outputs, moved)| (output_hash(&outputs), outputs, moved))
        .filter(|(hash, _, _)| hash.to_hex() == manifest.output_hash);
    let Some((hash, outputs, moved)) = checked else {
        note(&format!(
            "run-cache entry {key} restored outputs that differ from those recorded; entry removed, running the stage"
        ));
        forget(store, &eval.fingerprint);
        let _ = remove_outputs(shared, idx);
        return None;
    };
    note(&format!("restored from the run-cache ({}, entry {key}) instead of running", store.describe()));
    let duration = started.elapsed();
    Some(Success {
        restored: Some((reason.clone(), log_path)),
        eval: eval.clone(),
        metrics: manifest.metrics,
        output_hash: hash,
        outputs,
        duration,
        at: SystemTime::now(),
        moved,
    })
}

/// Stores a success's outputs in the run-cache. A failure to store fails nothing: it is
/// noted in the stage's log, and the next switch back runs the stage.
fn store_in_cache(
    shared: &Shared<'_>,
    idx: StageIdx,
    eval: &Evaluation,
    output_hash: &OutputHash,
    metrics: &BTreeMap<String, f64>,
    log_path: &str,
) {
    let Some(store) = cache_for(shared, idx) else { return };
    let spec = shared.eval.spec;
    let stage = &spec.stages[idx];
    let saved = crate::runcache::save(
        store,
        &spec.root,
        stage.name.as_str(),
        &eval.fingerprint,
        &stage.outputs,
        output_hash,
        metrics,
    );
    if let Err(err) = saved {
        let text = format!("dagrun: outputs not stored in the run-cache ({}): {err}", store.describe());
        append_log(&spec.root.join(log_path), &text);
    }
}

/// Waits before a retry: 0.5 s, 1 s, 2 s ... up to 30 s, cut short by cancellation.
fn retry_backoff(shared: &Shared<'_>, attempt: u32) {
    let wait = Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6).saturating_sub(1)))
        .min(Duration::from_secs(30));
    let until = Instant::now() + wait;
    while Instant::now() < until && !shared.stopped() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One attempt: clear the old outputs, then run the command or built-in with its log.
/// Returns the metrics the stage reported (built-ins only).
fn run_attempt(
    shared: &Shared<'_>,
    idx: StageIdx,
    eval: &Evaluation,
    log_path: &str,
    token: &str,
) -> Result<BTreeMap<String, f64>, AttemptFailure> {
    let spec = shared.eval.spec;
    let stage = &spec.stages[idx];
    remove_outputs(shared, idx)?;
    for dir in &stage.output_dirs {
        std::fs::create_dir_all(dir.to_path(&spec.root))
            .map_err(|e| AttemptFailure::failed(format!("cannot create output directory `{dir}/`: {e}")))?;
    }
    for output in &stage.outputs {
        let path = output.to_path(&spec.root);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| AttemptFailure::failed(format!("cannot create directory for `{output}`: {e}")))?;
        }
    }
    let log_full = spec.root.join(log_path);
    let log = open_log(&log_full).map_err(|e| AttemptFailure::failed(format!("cannot create log {log_path}: {e}")))?;
    let outputs: Vec<String> = stage.outputs.iter().map(|o| o.to_string()).collect();
    match &stage.action {
        Action::Shell { cmd } => {
            let values = runner::CommandValues {
                params: &stage.params,
                inputs: &eval.input_paths,
                outputs: &outputs,
                named_inputs: &stage.named_inputs,
                named_outputs: &stage.named_outputs,
            };
            let command = expand_command(cmd, &values);
            let job = ShellJob {
                stage: stage.name.as_str(),
                command: &command.script,
                env: &command.env,
                root: &spec.root,
                log,
                timeout: stage.timeout,
                token,
            };
            runner::run_shell(job, &shared.watchdog).map(|()| BTreeMap::new())
        }
        Action::Builtin { name } => {
            let builtin = shared
                .eval
                .registry
                .get(name)
                .ok_or_else(|| AttemptFailure::failed(format!("unknown built-in `{name}`")))?;
            let mut log = log;
            let mut metrics = BTreeMap::new();
            let watch = shared.watchdog.watch_builtin(stage.timeout);
            let ctx = BuiltinContext {
                stage: stage.name.as_str(),
                root: &spec.root,
                params: &stage.params,
                inputs: eval.input_paths.iter().flatten().map(|p| spec.root.join(p)).collect(),
                outputs: outputs.iter().map(|p| spec.root.join(p)).collect::<Vec<PathBuf>>(),
                log: &mut log,
                cancel: &watch.flag,
                metrics: &mut metrics,
            };
            let result = runner::run_builtin(builtin, ctx);
            match shared.watchdog.unwatch_builtin(&watch) {
                Some(cause) => Err(AttemptFailure::stopped(cause, stage.timeout, "the built-in was told to stop")),
                None => result.map(|()| metrics),
            }
        }
    }
}

/// Adds the numbers of the stage's declared metrics files to `metrics`. A file the stage
/// declared but wrote unreadably fails the attempt: the declaration is a promise.
fn read_declared_metrics(
    shared: &Shared<'_>,
    idx: StageIdx,
    metrics: &mut BTreeMap<String, f64>,
) -> Result<(), AttemptFailure> {
    let spec = shared.eval.spec;
    for file in &spec.stages[idx].metrics {
        let read = crate::metrics::read_metrics_file(&file.to_path(&spec.root))
            .map_err(|e| AttemptFailure::failed(format!("metrics file `{file}`: {e}")))?;
        metrics.extend(read);
    }
    Ok(())
}

/// Whether the filesystem holding `dir` has no space left for ordinary users. A stage that
/// failed for lack of space could not even log why; this is checked before its partial
/// outputs are removed, while the disk is still full.
fn disk_is_full(dir: &std::path::Path) -> bool {
    rustix::fs::statvfs(dir).is_ok_and(|fs| fs.f_bavail == 0)
}

/// Deletes a stage's declared outputs: before it runs, so that a stale file cannot pass for
/// a new one, and after it has failed for good, so that a partial one cannot either.
fn remove_outputs(shared: &Shared<'_>, idx: StageIdx) -> Result<(), AttemptFailure> {
    let spec = shared.eval.spec;
    // Every output is checked before any is deleted.
    for output in &spec.stages[idx].outputs {
        refuse_deleting_outside(spec, output)?;
    }
    for output in &spec.stages[idx].outputs {
        let path = output.to_path(&spec.root);
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(_) => Ok(()),
        };
        removed.map_err(|e| AttemptFailure::failed(format!("cannot remove output `{output}`: {e}")))?;
    }
    Ok(())
}

/// The spec refused outputs that resolve outside the pipeline directory when it was loaded,
/// but an earlier stage may have made a directory on an output's path a symbolic link since:
/// deleting through it would delete a file that is not the stage's. An output written outside
/// (`allow_outside_paths`) is where the pipeline says it is.
fn refuse_deleting_outside(spec: &crate::spec::Spec, output: &crate::spec::RelPath) -> Result<(), AttemptFailure> {
    if output.is_outside() {
        return Ok(());
    }
    match crate::spec::deletes_outside(&spec.root, &output.to_path(&spec.root)) {
        Some(target) => Err(AttemptFailure::failed(format!(
            "refusing to delete output `{output}`: it resolves to {}, outside the pipeline directory, through a symbolic link; replace the link with a directory",
            target.display()
        ))),
        None => Ok(()),
    }
}

/// Opens an attempt's log. Appends: each attempt has a log of its own, which may already
/// hold dagrun's note that a run-cache entry could not be restored.
fn open_log(path: &std::path::Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    File::options().create(true).append(true).open(path)
}

/// Adds a line of dagrun's own to a stage's log, best effort.
fn append_log(path: &std::path::Path, text: &str) {
    use std::io::Write;
    if let Ok(mut log) = open_log(path) {
        let _ = writeln!(log, "{text}");
    }
}

type CollectedOutputs = (BTreeMap<String, FileHash>, Vec<String>);

/// After a clean exit: every declared output must exist; hash them, and find inputs that
/// changed while the stage ran.
fn collect_outputs(shared: &Shared<'_>, idx: StageIdx, eval: &Evaluation) -> Result<CollectedOutputs, AttemptFailure> {
    let stage = &shared.eval.spec.stages[idx];
    let paths: Vec<&str> = stage.outputs.iter().map(|o| o.as_str()).collect();
    let mut outputs = BTreeMap::new();
    for (path, hashed) in shared.eval.cache.hash_paths(&paths) {
        match hashed {
            Ok(hash) => {
                outputs.insert(path.to_string(), hash);
            }
            Err(crate::fingerprint::HashError::Missing { .. }) => {
                return Err(AttemptFailure::failed(format!(
                    "the stage exited 0 but did not write its output `{path}`"
                )));
            }
            Err(err) => return Err(AttemptFailure::failed(format!("cannot hash output: {err}"))),
        }
    }
    let before: Vec<&str> = eval.inputs.inputs.keys().map(String::as_str).collect();
    let moved = shared
        .eval
        .cache
        .hash_paths(&before)
        .into_iter()
        .filter(|(path, now)| now.as_ref().ok() != eval.inputs.inputs.get(*path))
        .map(|(path, _)| path.to_string())
        .collect();
    Ok((outputs, moved))
}
