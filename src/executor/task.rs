//! The worker's side of one stage: evaluate it again with its upstream's new hashes, then
//! restore it or run it (with retries), one attempt at a time, and report each back.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use super::attempt::{Attempt, Control, Work};
use super::cached::{restore_from_cache, store_in_cache};
use super::outputs::{collect_outputs, read_declared_metrics};
use super::runner::{self, AttemptFailure, expand_command};
use super::{AttemptStart, Message, Producer, Shared, Success, Task, TaskResult, group};
use crate::fingerprint::output_hash;
use crate::planner::{DirtyReason, Evaluation, Verdict, evaluate_stage};
use crate::spec::{Action, ExecutorKind, StageIdx};
use crate::state::StageStatus;

/// Worker side: evaluate the stage again with its upstream's hashes, then run it
/// (with retries) if it is still dirty. Returns how the stage ended, for the caller to report;
/// each attempt's start, and each failed attempt that a retry follows, is reported here.
pub(super) fn run_task(shared: &Shared<'_>, task: Task, to_coordinator: &Producer<'_, Message>) -> TaskResult {
    let idx = task.idx;
    if shared.stopped() {
        return TaskResult::NotStarted;
    }
    let upstream_hash = |up: StageIdx| task.upstream.iter().find(|(i, _)| *i == up).map(|&(_, h)| h);
    let eval = evaluate_stage(&shared.eval, idx, &upstream_hash);
    let reason = match &eval.verdict {
        Verdict::UpToDate => return TaskResult::Clean,
        Verdict::Dirty(reason @ DirtyReason::InputUnavailable { .. }) => {
            return TaskResult::CannotRun { reason: reason.clone() };
        }
        Verdict::Dirty(reason) => reason.clone(),
    };
    // Evaluating can take a while (hashing large inputs): look again before starting.
    if shared.stopped() {
        return TaskResult::NotStarted;
    }
    let stage = &shared.eval.spec.stages[idx];
    if let Some(success) = restore_from_cache(shared, idx, &eval, &reason) {
        return TaskResult::Succeeded(Box::new(success));
    }
    let attempts = stage.retries.saturating_add(1);
    for attempt in 1..=attempts {
        let log_path = shared.log_path(idx, attempt);
        let at = SystemTime::now();
        let executor = shared.executor_kind(idx);
        let token = match (&stage.action, executor) {
            (_, ExecutorKind::Slurm) => Some(group::attempt_token(stage.name.as_str())),
            (Action::Shell { .. }, ExecutorKind::Local) => Some(shared.tokens.next()),
            (Action::Builtin { .. }, ExecutorKind::Local) => None,
        };
        let start = AttemptStart {
            idx,
            attempt,
            reason: reason.clone(),
            inputs: eval.inputs.clone(),
            log_path: log_path.clone(),
            at,
            token: token.clone(),
            executor,
        };
        // Nothing runs that a later build could not find. A local attempt's processes carry
        // its run's prefix, recorded when the run began, so it starts at once; a cluster job
        // waits for its row, which names it. Under --fail-fast every attempt waits, so that
        // none starts once a failure is recorded.
        if shared.fail_fast || executor == ExecutorKind::Slurm {
            let (answer, recorded) = mpsc::channel();
            to_coordinator.push(Message::Started { start: Box::new(start), recorded: Some(answer) });
            if !matches!(recorded.recv(), Ok(Ok(()))) {
                // A retry refused still ends as the failure its last attempt was.
                return if attempt == 1 { TaskResult::NotStarted } else { TaskResult::RetryAbandoned };
            }
        } else {
            // Without waking the coordinator (see `START_NOTICE`).
            to_coordinator.push_quietly(Message::Started { start: Box::new(start), recorded: None });
        }
        let started = Instant::now();
        let result = run_attempt(shared, idx, &eval, &log_path, token.as_deref().unwrap_or_default(), to_coordinator)
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
                return TaskResult::Succeeded(Box::new(Success {
                    restored: None,
                    eval,
                    metrics,
                    outputs,
                    output_hash,
                    duration,
                    at: SystemTime::now(),
                    moved,
                }));
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
                let result =
                    TaskResult::AttemptFailed { failure, duration, at: SystemTime::now(), log_path, final_attempt };
                if final_attempt {
                    return result;
                }
                to_coordinator.push(Message::Finished { idx, result });
                retry_backoff(shared, attempt);
                if shared.stopped() {
                    return TaskResult::RetryAbandoned;
                }
            }
        }
    }
    unreachable!("the last attempt returns, whatever its outcome")
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

/// One attempt: clear the old outputs, then run the command or built-in with its log, on
/// the stage's executor. Returns the metrics the stage reported (built-ins only).
fn run_attempt(
    shared: &Shared<'_>,
    idx: StageIdx,
    eval: &Evaluation,
    log_path: &str,
    token: &str,
    to_coordinator: &Producer<'_, Message>,
) -> Result<BTreeMap<String, f64>, AttemptFailure> {
    let spec = shared.eval.spec;
    let stage = &spec.stages[idx];
    remove_outputs(shared, idx)?;
    for dir in &stage.output_dirs {
        ensure_dir(&dir.to_path(&spec.root))
            .map_err(|e| AttemptFailure::failed(format!("cannot create output directory `{dir}/`: {e}")))?;
    }
    for output in &stage.outputs {
        let path = output.to_path(&spec.root);
        if let Some(parent) = path.parent() {
            ensure_dir(parent)
                .map_err(|e| AttemptFailure::failed(format!("cannot create directory for `{output}`: {e}")))?;
        }
    }
    let outputs: Vec<String> = stage.outputs.iter().map(|o| o.to_string()).collect();
    let work = match &stage.action {
        Action::Shell { cmd } => {
            let values = runner::CommandValues {
                params: &stage.params,
                inputs: &eval.input_paths,
                outputs: &outputs,
                named_inputs: stage.named_inputs(),
                named_outputs: stage.named_outputs(),
            };
            Work::Shell(expand_command(cmd, &values))
        }
        Action::Builtin { name } => Work::Builtin {
            name,
            builtin: shared
                .eval
                .registry
                .get(name)
                .ok_or_else(|| AttemptFailure::failed(format!("unknown built-in `{name}`")))?,
            inputs: eval.input_paths.iter().flatten().cloned().collect(),
            outputs,
        },
    };
    let log = spec.root.join(log_path);
    let attempt = Attempt { stage, root: &spec.root, work, log: &log, token, run: shared.run.0 };
    let stop_starting = || shared.stopped();
    let submitted = |job_id: &str| {
        let (answer, recorded) = mpsc::channel();
        to_coordinator.push(Message::Submitted { idx, job_id: job_id.to_string(), recorded: answer });
        matches!(recorded.recv(), Ok(Ok(())))
    };
    let running = || to_coordinator.wake();
    let control =
        Control { watchdog: &shared.watchdog, stop_starting: &stop_starting, submitted: &submitted, running: &running };
    shared.executor(idx)?.run(&attempt, &control)
}

/// Makes `dir` and its parents unless it is there already: one `stat` for the directory
/// most stages find made, where `create_dir_all` tries a `mkdir` and then a `stat`.
fn ensure_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.is_dir() { Ok(()) } else { std::fs::create_dir_all(dir) }
}

/// Whether the filesystem holding `dir` has no space left for ordinary users. A stage that
/// failed for lack of space could not even log why; this is checked before its partial
/// outputs are removed, while the disk is still full.
fn disk_is_full(dir: &std::path::Path) -> bool {
    rustix::fs::statvfs(dir).is_ok_and(|fs| fs.f_bavail == 0)
}

/// Deletes a stage's declared outputs: before it runs, so that a stale file cannot pass for
/// a new one, and after it has failed for good, so that a partial one cannot either.
pub(super) fn remove_outputs(shared: &Shared<'_>, idx: StageIdx) -> Result<(), AttemptFailure> {
    let spec = shared.eval.spec;
    // Every output is checked before any is deleted.
    for output in &spec.stages[idx].outputs {
        refuse_deleting_outside(spec, &shared.root, output)?;
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
fn refuse_deleting_outside(
    spec: &crate::spec::Spec,
    root: &crate::spec::ResolvedRoot,
    output: &crate::spec::RelPath,
) -> Result<(), AttemptFailure> {
    if output.is_outside() {
        return Ok(());
    }
    match root.deletes_outside(&output.to_path(&spec.root)) {
        Some(target) => Err(AttemptFailure::failed(format!(
            "refusing to delete output `{output}`: it resolves to {}, outside the pipeline directory, through a symbolic link; replace the link with a directory",
            target.display()
        ))),
        None => Ok(()),
    }
}

/// Adds a line of dagrun's own to a stage's log, best effort.
pub(super) fn append_log(path: &std::path::Path, text: &str) {
    use std::io::Write;
    if let Ok(mut log) = super::log::open_log(path) {
        let _ = writeln!(log, "{text}");
    }
}
