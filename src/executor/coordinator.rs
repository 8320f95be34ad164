//! The coordinator: the one owner of the state database during a build. It turns what
//! workers report into events and records (each stage's whole in one transaction, with the
//! others that end within `COMMIT_WINDOW`), and blocks what a failure leaves unable to run;
//! `Schedule` decides what is ready.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::log::log_tail;
use super::runner::AttemptFailure;
use super::schedule::Schedule;
use super::{AttemptStart, ExecOutcome, Message, Success, TaskResult};
use crate::event::{Event, FailedStage};
use crate::fingerprint::{CacheEntry, OutputHash};
use crate::planner::{DirtyReason, EvalContext, explain_reason};
use crate::spec::{ExecutorKind, StageIdx};
use crate::state::{
    AttemptRow, RunId, StageAttempt, StageFailure, StageRunId, StageStatus, StageSuccess, State, StateError,
};

/// How long an attempt that did not wait for its row may run before the row is written,
/// counted from when the coordinator sees it start (see `START_NOTICE`). One that
/// ends sooner (most stages of a large pipeline of small steps) has its row written whole in
/// the transaction that records its end: one statement a stage instead of two. One that
/// runs longer gets its `running` row then, for `status` and the dashboard. Nothing depends
/// on the row to end a killed build's attempt: its processes carry the run's prefix.
pub(super) const START_ROW_DELAY: Duration = Duration::from_millis(100);

/// How long the end of a stage may wait, in memory, to be written and committed with others
/// (see `state/batch.rs`): in a build of many short stages, the ones that end within this
/// window share one transaction, which takes the write lock for as long as writing them takes
/// (a millisecond or two), so that another writer (`dagrun invalidate`, the dashboard) gets in
/// between. What waits is written before a `running` row (itself committed at once, as a
/// cluster job's id is) and when the build ends.
pub(super) const COMMIT_WINDOW: Duration = Duration::from_millis(20);

/// The coordinator's bookkeeping: which stage is where, and the database.
pub(super) struct Coordinator<'a, 'e> {
    pub(super) eval: &'a EvalContext<'a>,
    pub(super) state: &'a mut State,
    pub(super) on_event: &'e mut dyn FnMut(&Event<'_>),
    pub(super) schedule: Schedule,
    /// Output hash of each stage this build finished (recorded or new); an up-to-date
    /// stage's is looked up in the records when needed.
    pub(super) hashes: Vec<Option<OutputHash>>,
    pub(super) outcome: ExecOutcome,
    /// The `stage_runs` row of each stage's running attempt, once written (until then, its
    /// start is in `unrecorded`).
    pub(super) row: Vec<Option<StageRunId>>,
    /// The start of each stage's running attempt while it has no row: not written yet (see
    /// [`START_ROW_DELAY`]), or writing it failed.
    pub(super) unrecorded: Vec<Option<StartRow>>,
    /// The attempts waiting for their row, oldest first: when to write it, the stage, the attempt.
    pub(super) due: VecDeque<(Instant, StageIdx, u32)>,
    pub(super) fail_fast: bool,
    pub(super) first_error: Option<StateError>,
    pub(super) run: RunId,
    /// The latest failed attempt of each stage that may still retry.
    pub(super) last_failure: Vec<Option<(AttemptFailure, Option<String>)>>,
    /// The ends of stages not yet written, oldest first (see [`COMMIT_WINDOW`]), and since when
    /// the oldest waits.
    pub(super) held: Vec<HeldEnd>,
    pub(super) held_since: Option<Instant>,
}

/// Whatever ends a build (a panic too), no transaction is left open: after a panic, the ends
/// held in memory and any transaction being written are dropped (those stages are not
/// recorded, and the next build checks them as any other); a build that ends otherwise has
/// written everything.
impl Drop for Coordinator<'_, '_> {
    fn drop(&mut self) {
        self.state.drop_held();
    }
}

impl Coordinator<'_, '_> {
    fn name(&self, idx: StageIdx) -> &str {
        self.eval.spec.stages[idx].name.as_str()
    }

    pub(super) fn handle(&mut self, message: Message, stop: &AtomicBool) {
        let handled = match message {
            // Once the build stops starting stages (a failure under --fail-fast, a failed
            // write), an attempt that waits to be told it may start is refused.
            Message::Started { recorded: Some(recorded), .. } if stop.load(Ordering::SeqCst) => {
                let _ = recorded.send(Err("the build stopped first".to_string()));
                Ok(())
            }
            Message::Started { start, recorded: Some(recorded) } => {
                let result = self.record_start(*start);
                let _ = recorded.send(result.as_ref().map(|_| ()).map_err(ToString::to_string));
                result
            }
            Message::Started { start, recorded: None } => {
                self.started_unrecorded(*start);
                Ok(())
            }
            Message::Submitted { idx, job_id, recorded } => {
                let result = self.submitted(idx, &job_id);
                let _ = recorded.send(result.as_ref().map(|_| ()).map_err(ToString::to_string));
                result
            }
            Message::Finished { idx, result } => self.finished(idx, result, stop),
        };
        self.stop_on_error(handled, stop);
        self.record_due(stop);
        self.write_due(stop);
    }

    /// Writes the ends held for [`COMMIT_WINDOW`] or longer.
    pub(super) fn write_due(&mut self, stop: &AtomicBool) {
        if self.write_at().is_some_and(|at| at <= Instant::now()) {
            self.write_now(stop);
        }
    }

    /// Writes every end held, now.
    pub(super) fn write_now(&mut self, stop: &AtomicBool) {
        let written = self.write_held();
        self.stop_on_error(written, stop);
    }

    /// When the ends held in memory are due to be written, if any are held.
    pub(super) fn write_at(&self) -> Option<Instant> {
        self.held_since.map(|since| since + COMMIT_WINDOW)
    }

    /// Holds a stage's end, to be written with the others that end within [`COMMIT_WINDOW`].
    fn hold(&mut self, end: HeldEnd) {
        self.held_since.get_or_insert_with(Instant::now);
        self.held.push(end);
    }

    /// Writes the ends held, in one transaction (each stage's in a savepoint of its own), and
    /// commits them. Returns the first error; a failed commit loses them all, and those stages
    /// are then not recorded (the next build checks them as any other).
    pub(super) fn write_held(&mut self) -> Result<(), StateError> {
        self.held_since = None;
        if self.held.is_empty() {
            return Ok(());
        }
        let mut first_error = None;
        self.state.hold_commits();
        for end in std::mem::take(&mut self.held) {
            if let Err(err) = self.write_end(end) {
                first_error.get_or_insert(err);
            }
        }
        let committed = self.state.stop_holding();
        match first_error {
            Some(err) => Err(err),
            None => committed,
        }
    }

    /// Writes one held end. A `stage_runs` row of a stage that was not run (cut off, blocked,
    /// skipped), history that no plan reads, only counts towards the build's error
    /// (`keep_error`) and does not stop it.
    fn write_end(&mut self, end: HeldEnd) -> Result<(), StateError> {
        let run = self.run;
        match end {
            HeldEnd::Success { idx, row, success, status, fresh } => {
                let name = self.eval.spec.stages[idx].name.as_str();
                self.state.record_success(
                    &StageSuccess {
                        row: row.as_row(run, name),
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
                )
            }
            HeldEnd::Failure { idx, row, status, at, duration, error, fresh } => {
                let name = self.eval.spec.stages[idx].name.as_str();
                self.state.record_failure(
                    &StageFailure {
                        row: row.as_row(run, name),
                        component: name,
                        status,
                        finished_at: at,
                        duration,
                        error: &error,
                    },
                    &fresh,
                )
            }
            HeldEnd::NotRun { idx, status, reason, at } => {
                let recorded = self.state.record_not_run(run, self.name(idx), status, &reason, at);
                self.keep_error(recorded);
                Ok(())
            }
        }
    }

    /// A database write failed (e.g. a full disk): start nothing more, let running stages
    /// finish, and report the error.
    fn stop_on_error(&mut self, result: Result<(), StateError>, stop: &AtomicBool) {
        if let Err(err) = result {
            stop.store(true, Ordering::SeqCst);
            self.first_error.get_or_insert(err);
        }
    }

    /// When the oldest attempt still without its row is due to have it written. The entries
    /// of attempts that ended first (their row went with their end) are dropped on the way:
    /// in a pipeline of short steps nearly every attempt ends first, and waiting for its
    /// entry woke this thread, and interrupted a stage's process, once a stage for nothing.
    pub(super) fn next_due(&mut self) -> Option<Instant> {
        while let Some(&(at, idx, attempt)) = self.due.front() {
            if self.unrecorded[idx].as_ref().is_some_and(|start| start.attempt == attempt) {
                return Some(at);
            }
            self.due.pop_front();
        }
        None
    }

    /// Writes the rows of the attempts that have run for [`START_ROW_DELAY`] and still run.
    pub(super) fn record_due(&mut self, stop: &AtomicBool) {
        let now = Instant::now();
        while let Some(&(at, idx, attempt)) = self.due.front() {
            if at > now {
                break;
            }
            self.due.pop_front();
            // Ended already (its row went with its end), or a later attempt's start.
            let Some(start) = self.unrecorded[idx].take_if(|start| start.attempt == attempt) else { continue };
            if let Err(err) = self.write_start_row(idx, &start) {
                self.unrecorded[idx] = Some(start);
                self.stop_on_error(Err(err), stop);
            }
        }
    }

    /// An attempt became cluster job `job_id`: recorded, so that a later build finds it.
    fn submitted(&mut self, idx: StageIdx, job_id: &str) -> Result<(), StateError> {
        if let Some(row) = self.row[idx] {
            self.state.record_job_id(row, job_id)?;
        }
        (self.on_event)(&Event::JobSubmitted { stage: self.eval.spec.stages[idx].name.as_str(), job_id });
        Ok(())
    }

    /// An attempt that started without waiting for its row: announced now, its row written
    /// with its end, or after [`START_ROW_DELAY`] if it still runs then.
    fn started_unrecorded(&mut self, start: AttemptStart) {
        let (idx, attempt) = (start.idx, start.attempt);
        let (row, reason) = self.start_row(start);
        self.unrecorded[idx] = Some(row);
        self.due.push_back((Instant::now() + START_ROW_DELAY, idx, attempt));
        let name = self.eval.spec.stages[idx].name.as_str();
        (self.on_event)(&Event::StageStarted { stage: name, attempt, reason: &reason });
    }

    /// Records the row of an attempt that waits for it before it starts, and announces it.
    /// If the row cannot be written, the attempt does not start.
    fn record_start(&mut self, start: AttemptStart) -> Result<(), StateError> {
        let (idx, attempt) = (start.idx, start.attempt);
        let (row, reason) = self.start_row(start);
        self.write_start_row(idx, &row)?;
        let name = self.eval.spec.stages[idx].name.as_str();
        (self.on_event)(&Event::StageStarted { stage: name, attempt, reason: &reason });
        Ok(())
    }

    /// Writes a running attempt's `running` row, in a transaction of its own, after the ends
    /// held (so that rows keep the order of events).
    fn write_start_row(&mut self, idx: StageIdx, row: &StartRow) -> Result<(), StateError> {
        self.write_held()?;
        let name = self.eval.spec.stages[idx].name.as_str();
        self.row[idx] = Some(self.state.stage_started(&row.attempt(self.run, name))?);
        Ok(())
    }

    /// An attempt's row as it starts, its reason explained against the recorded manifest.
    fn start_row(&self, start: AttemptStart) -> (StartRow, DirtyReason) {
        let AttemptStart { idx, attempt, reason, inputs, log_path, at, token, executor } = start;
        let name = self.eval.spec.stages[idx].name.as_str();
        let reason = explain_reason(self.state, name, reason, &inputs);
        let row = StartRow {
            attempt,
            reason: reason.to_string(),
            at,
            log_path,
            resources: self.eval.spec.stages[idx].resources.as_deref().and_then(resources_json),
            token,
            executor: (executor != ExecutorKind::Local).then_some(executor.as_str()),
        };
        (row, reason)
    }

    fn finished(&mut self, idx: StageIdx, result: TaskResult, stop: &AtomicBool) -> Result<(), StateError> {
        match result {
            TaskResult::Clean => {
                self.hold(HeldEnd::NotRun {
                    idx,
                    status: StageStatus::CutOff,
                    reason: "upstream outputs unchanged".to_string(),
                    at: SystemTime::now(),
                });
                let recorded = self.eval.recorded_output_hash(idx);
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
        let (row, restored_because) = match &success.restored {
            Some((reason, log_path)) => {
                let start = AttemptStart {
                    idx,
                    attempt: 1,
                    reason: reason.clone(),
                    inputs: success.eval.inputs.clone(),
                    log_path: log_path.clone(),
                    at: success.at - success.duration,
                    token: None,
                    executor: ExecutorKind::Local,
                };
                // Its row is written with its success, in the same transaction; announced below.
                let (row, reason) = self.start_row(start);
                (EndingRow::Unrecorded(row), Some(reason))
            }
            None => (self.take_row(idx), None),
        };
        let status = if success.restored.is_some() { StageStatus::Restored } else { StageStatus::Success };
        let fresh = self.eval.cache.take_fresh();
        let previous = self.eval.recorded_output_hash(idx);
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
        self.hold(HeldEnd::Success { idx, row, success: Box::new(success), status, fresh });
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
        // A stage that printed nothing has no log to point to (`log.rs`).
        let log_path = log_path.filter(|p| self.eval.spec.root.join(p).exists());
        let tail = log_path.as_deref().map(|p| log_tail(&self.eval.spec.root.join(p), 20)).unwrap_or_default();
        let error = if tail.is_empty() { failure.message.clone() } else { format!("{}\n{tail}", failure.message) };
        let row = self.take_row(idx);
        let fresh = self.eval.cache.take_fresh();
        self.hold(HeldEnd::Failure { idx, row, status: failure.status, at, duration, error, fresh });
        (self.on_event)(&Event::StageFailed {
            stage: name,
            status: failure.status,
            error: &failure.message,
            log_path: log_path.as_deref(),
            will_retry: !final_attempt,
        });
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
        self.schedule.finish(idx);
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

    /// The `stage_runs` row of the stage's current attempt, recorded or still to be written
    /// with its end (one is made up if the stage could not start at all).
    fn take_row(&mut self, idx: StageIdx) -> EndingRow {
        if let Some(row) = self.row[idx].take() {
            return EndingRow::Recorded(row);
        }
        EndingRow::Unrecorded(self.unrecorded[idx].take().unwrap_or_else(|| StartRow {
            attempt: 1,
            reason: "could not start".to_string(),
            at: SystemTime::now(),
            log_path: String::new(),
            resources: None,
            token: None,
            executor: None,
        }))
    }

    pub(super) fn not_started(&mut self, idx: StageIdx) {
        self.schedule.finish(idx);
        self.outcome.counts.blocked += 1;
        let at = SystemTime::now();
        self.hold(HeldEnd::NotRun { idx, status: StageStatus::Skipped, reason: "the build stopped first".into(), at });
        (self.on_event)(&Event::StageBlocked { stage: self.eval.spec.stages[idx].name.as_str(), upstream: None });
        self.block_downstream(idx, None);
    }

    /// Marks every stage waiting (directly or not) on `idx` as blocked.
    fn block_downstream(&mut self, idx: StageIdx, failed: Option<StageIdx>) {
        let eval = self.eval;
        let upstream = failed.map(|f| eval.spec.stages[f].name.as_str());
        for down in self.schedule.block_downstream(eval.dag, idx) {
            self.outcome.counts.blocked += 1;
            let (status, reason) = match upstream {
                Some(up) => (StageStatus::Blocked, format!("upstream `{up}` failed")),
                None => (StageStatus::Skipped, "the build stopped first".to_string()),
            };
            self.hold(HeldEnd::NotRun { idx: down, status, reason, at: SystemTime::now() });
            let stage = eval.spec.stages[down].name.as_str();
            (self.on_event)(&Event::StageBlocked { stage, upstream });
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
        self.schedule.release(self.eval.dag, idx);
    }
}

/// A stage's end as it waits to be written (see [`COMMIT_WINDOW`]).
pub(super) enum HeldEnd {
    Success {
        idx: StageIdx,
        row: EndingRow,
        success: Box<Success>,
        status: StageStatus,
        fresh: Vec<(String, CacheEntry)>,
    },
    Failure {
        idx: StageIdx,
        row: EndingRow,
        status: StageStatus,
        at: SystemTime,
        duration: Duration,
        error: String,
        fresh: Vec<(String, CacheEntry)>,
    },
    /// Cut off, blocked or skipped: a finished `stage_runs` row only.
    NotRun { idx: StageIdx, status: StageStatus, reason: String, at: SystemTime },
}

/// An attempt's `stage_runs` row as its end is recorded.
pub(super) enum EndingRow {
    Recorded(StageRunId),
    /// Written in the transaction that records the end.
    Unrecorded(StartRow),
}

impl EndingRow {
    fn as_row<'a>(&'a self, run: RunId, component: &'a str) -> AttemptRow<'a> {
        match self {
            EndingRow::Recorded(id) => AttemptRow::Recorded(*id),
            EndingRow::Unrecorded(start) => AttemptRow::Unrecorded(start.attempt(run, component)),
        }
    }
}

/// An attempt's `stage_runs` row as it starts.
pub(super) struct StartRow {
    attempt: u32,
    reason: String,
    at: SystemTime,
    log_path: String,
    resources: Option<String>,
    token: Option<String>,
    executor: Option<&'static str>,
}

impl StartRow {
    fn attempt<'a>(&'a self, run: RunId, component: &'a str) -> StageAttempt<'a> {
        StageAttempt {
            run,
            component,
            attempt: self.attempt,
            reason: &self.reason,
            started_at: self.at,
            log_path: &self.log_path,
            resources: self.resources.as_deref(),
            token: self.token.as_deref(),
            executor: self.executor,
        }
    }
}

/// A stage's `resources` as `stage_runs` keeps them: JSON of what it declared, `None` for
/// nothing. (The spec's type keeps every field for its binary cache; the JSON only the set ones.)
fn resources_json(resources: &crate::spec::Resources) -> Option<String> {
    let serde_json::Value::Object(mut fields) = serde_json::to_value(resources).expect("resources serialise") else {
        return None;
    };
    fields.retain(|_, value| !value.is_null());
    (!fields.is_empty()).then(|| serde_json::Value::Object(fields).to_string())
}
