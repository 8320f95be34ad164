//! The Slurm executor: each attempt is a batch job submitted with `sbatch`, over a shared
//! filesystem, as Snakemake and Nextflow hand work to a cluster. dagrun stays the
//! coordinator: it plans, fingerprints, hashes outputs and records state on its own machine;
//! the cluster only runs commands.
//!
//! - A shell stage's job script is its command, exactly as `sh -c` would run it locally; the
//!   substituted values travel in the job's environment (sbatch passes its own on), never in
//!   the script. A built-in runs as `dagrun run-stage JOB_FILE` on the node (`node.rs`).
//! - Every waiting worker shares one poll: one `squeue` call for all jobs in flight per
//!   interval (0.2 s, backing off to 5 s while nothing changes), whoever's turn it is.
//! - Interruption (Ctrl-C, the agent's shutdown once its grace period is over) and timeouts
//!   `scancel` the job and wait for Slurm to say it ended, so that nothing of it can still
//!   write when the attempt is recorded. When the build only stops starting stages
//!   (`--fail-fast`, the agent draining), a job still queued is withdrawn, since it has not
//!   started; a running one finishes, as a local stage would.
//! - A killed build's jobs are found again by the next build and cancelled (`orphans.rs`).

mod client;
pub mod node;
mod orphans;
pub mod queue;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use orphans::{cancel_orphan_jobs, job_name as slurm_job_name};
pub use queue::JobState;

use super::attempt::{Attempt, Control, Executor, Work};
use super::runner::AttemptFailure;
use super::watchdog::KillCause;
use crate::state::StageStatus;

const FIRST_POLL: Duration = Duration::from_millis(200);
const MAX_POLL: Duration = Duration::from_secs(5);
/// How often a waiting worker looks at the build's stop flags between polls.
const STOP_CHECK_EVERY: Duration = Duration::from_millis(50);
/// Polls in a row that find a job in neither `squeue` nor `sacct` before it is given up.
const LOST_AFTER: u32 = 5;
/// How often scancel is sent again while a cancelled job has not ended, and for how long.
const RESEND_CANCEL: Duration = Duration::from_secs(2);
const CANCEL_LIMIT: Duration = Duration::from_secs(120);

/// Runs attempts as Slurm jobs.
#[derive(Debug)]
pub struct Slurm {
    board: Mutex<Board>,
    changed: Condvar,
    /// How long a job's missing outputs are waited for (`[pipeline] latency_wait_sec`).
    latency_wait: Duration,
    /// This dagrun, for built-ins: the node runs the same binary (shared filesystem).
    exe: PathBuf,
}

/// The jobs in flight and what the last poll said of them.
#[derive(Debug)]
struct Board {
    jobs: HashMap<String, Seen>,
    polling: bool,
    last_poll: Option<Instant>,
    interval: Duration,
}

/// What the polls said of a job in flight.
#[derive(Debug, Default)]
struct Seen {
    /// The latest state found; `None` until a poll finds the job.
    state: Option<JobState>,
    /// Polls in a row that did not find it.
    misses: u32,
}

/// Why dagrun cancelled a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cancelled {
    Killed(KillCause),
    /// Still queued when the build stopped starting stages.
    Withdrawn,
}

/// What `squeue` says of jobs `ids` now, for a reader: nothing for a job it does not list,
/// and nothing at all when it cannot be asked within a few seconds (a reader never fails
/// for Slurm, nor waits long on it).
pub fn current_states_or_none(ids: &[&str]) -> HashMap<String, JobState> {
    client::current_states(ids).unwrap_or_default()
}

impl Slurm {
    /// Checks that Slurm's commands are here, so that a missing install is one clear error
    /// before anything is submitted rather than a failure per stage.
    pub fn new(latency_wait: Duration) -> Result<Slurm, String> {
        let mut version = std::process::Command::new("sbatch");
        version.arg("--version");
        client::call(version)?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find dagrun's own executable: {e}"))?;
        let board = Board { jobs: HashMap::new(), polling: false, last_poll: None, interval: FIRST_POLL };
        Ok(Slurm { board: Mutex::new(board), changed: Condvar::new(), latency_wait, exe })
    }

    fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().expect("slurm board poisoned")
    }

    /// Waits until Slurm reports job `id` ended, cancelling it when the build says so.
    fn wait(
        &self,
        id: &str,
        attempt: &Attempt<'_>,
        control: &Control<'_>,
    ) -> Result<(JobState, Option<Cancelled>), AttemptFailure> {
        let mut board = self.board();
        board.jobs.insert(id.to_string(), Seen::default());
        board.interval = FIRST_POLL;
        // Why it was cancelled, when scancel was first and last sent.
        let mut cancelled: Option<(Cancelled, Instant, Instant)> = None;
        let mut running_since = None;
        loop {
            let known = board.jobs.get(id).and_then(|seen| seen.state.clone());
            if let Some(job) = &known {
                if job.is_final() {
                    board.jobs.remove(id);
                    return Ok((job.clone(), cancelled.map(|(why, ..)| why)));
                }
                if job.is_running() && running_since.is_none() {
                    running_since = Some(Instant::now());
                }
            }
            if board.jobs.get(id).is_some_and(|seen| seen.misses >= LOST_AFTER) {
                board.jobs.remove(id);
                drop(board);
                // Should it still exist somewhere, it must not run beside a retry.
                let _ = client::scancel(&[id]);
                return Err(AttemptFailure::failed(format!(
                    "Slurm no longer knows job {id} (neither squeue nor sacct lists it): its outcome is unknown; it was cancelled in case it still runs"
                )));
            }
            let now = Instant::now();
            let resend = match cancelled {
                None => self.cancel_cause(known.as_ref(), running_since, attempt, control).map(|why| (why, now)),
                // A scancel the controller did not take is sent again, until it gives up.
                Some((why, first, last)) if now.duration_since(last) >= RESEND_CANCEL => {
                    if now.duration_since(first) >= CANCEL_LIMIT {
                        board.jobs.remove(id);
                        return Err(AttemptFailure {
                            status: StageStatus::Interrupted,
                            message: format!(
                                "Slurm job {id} did not end within {}s of scancel; end it with `scancel -f {id}` before building again",
                                CANCEL_LIMIT.as_secs()
                            ),
                        });
                    }
                    Some((why, first))
                }
                Some(_) => None,
            };
            if let Some((why, first)) = resend {
                drop(board);
                // Should scancel fail (the controller away), it is sent again: the attempt
                // ends only when Slurm says the job has.
                let _ = client::scancel(&[id]);
                board = self.board();
                cancelled = Some((why, first, Instant::now()));
                board.interval = FIRST_POLL;
                board.last_poll = None;
                continue;
            }
            let due = board.last_poll.is_none_or(|at| now.duration_since(at) >= board.interval);
            if due && !board.polling {
                board = self.poll(board);
                continue;
            }
            // While another waiter polls, its `notify_all` wakes this one.
            let next = match board.last_poll {
                Some(at) if !board.polling => (at + board.interval).saturating_duration_since(now),
                _ => STOP_CHECK_EVERY,
            };
            board = self
                .changed
                .wait_timeout(board, next.clamp(Duration::from_millis(1), STOP_CHECK_EVERY))
                .expect("slurm board poisoned")
                .0;
        }
    }

    /// Whether the build wants job `job` ended now, and why: interrupted, past the stage's
    /// `timeout_sec` since it started running, or still queued when the build stops starting
    /// stages (a job not yet seen queued may already run: it is left to finish).
    fn cancel_cause(
        &self,
        job: Option<&JobState>,
        running_since: Option<Instant>,
        attempt: &Attempt<'_>,
        control: &Control<'_>,
    ) -> Option<Cancelled> {
        let timed_out = match (attempt.stage.timeout, running_since) {
            (Some(limit), Some(since)) => since.elapsed() >= limit,
            _ => false,
        };
        if control.watchdog.is_cancelled() {
            Some(Cancelled::Killed(KillCause::Interrupted))
        } else if timed_out {
            Some(Cancelled::Killed(KillCause::TimedOut))
        } else if job.is_some_and(JobState::is_pending) && (control.stop_starting)() {
            Some(Cancelled::Withdrawn)
        } else {
            None
        }
    }

    /// One `squeue` (and, for jobs it has forgotten, `sacct`) for every job in flight.
    fn poll<'b>(&'b self, mut board: MutexGuard<'b, Board>) -> MutexGuard<'b, Board> {
        board.polling = true;
        let ids: Vec<String> = board.jobs.keys().cloned().collect();
        drop(board);
        let answer = client::job_states(&ids.iter().map(String::as_str).collect::<Vec<_>>());
        let mut board = self.board();
        board.polling = false;
        board.last_poll = Some(Instant::now());
        let mut changed = false;
        // On an error (the controller busy or away) nothing changes: ask again later, less often.
        if let Ok(mut states) = answer {
            for id in &ids {
                // A job whose waiter has returned meanwhile is not brought back.
                let Some(seen) = board.jobs.get_mut(id) else { continue };
                match states.remove(id) {
                    Some(state) => {
                        seen.misses = 0;
                        changed |= seen.state.as_ref() != Some(&state);
                        seen.state = Some(state);
                    }
                    None => seen.misses += 1,
                }
            }
        }
        // A job submitted while this poll ran is asked about soon, not after the backoff.
        changed |= board.jobs.keys().any(|id| !ids.contains(id));
        board.interval = if changed { FIRST_POLL } else { (board.interval * 3 / 2).min(MAX_POLL) };
        self.changed.notify_all();
        board
    }

    /// The job script and the environment sbatch passes on to the job.
    fn script(&self, attempt: &Attempt<'_>, dir: &Path) -> Result<(String, Vec<(String, String)>), AttemptFailure> {
        let stage = attempt.stage.name.as_str();
        let mut env = vec![(super::group::STAGE_VAR.to_string(), stage.to_string())];
        env.push((super::group::TOKEN_VAR.to_string(), attempt.token.to_string()));
        let header = format!("#!/bin/sh\n# dagrun: stage `{stage}`, submitted by dagrun with sbatch\n");
        match &attempt.work {
            Work::Shell(command) => {
                env.extend(command.env.iter().cloned());
                Ok((format!("{header}{}\n", command.script), env))
            }
            Work::Builtin { name, builtin, inputs, outputs } => {
                let job_file = dir.join(format!("{}.job.json", file_stem(attempt.log)));
                let job = node::NodeJob {
                    stage: stage.to_string(),
                    builtin: name.to_string(),
                    version: builtin.version().to_string(),
                    root: attempt.root.to_path_buf(),
                    params: toml::to_string(&attempt.stage.params)
                        .map_err(|e| AttemptFailure::failed(format!("cannot write the stage's params: {e}")))?,
                    inputs: inputs.clone(),
                    outputs: outputs.clone(),
                    metrics: metrics_file(attempt.log),
                };
                let json = serde_json::to_vec_pretty(&job).expect("a job file serialises");
                std::fs::write(&job_file, json)
                    .map_err(|e| AttemptFailure::failed(format!("cannot write {}: {e}", job_file.display())))?;
                env.push(("DAGRUN_EXE".to_string(), self.exe.to_string_lossy().into_owned()));
                env.push(("DAGRUN_JOB_FILE".to_string(), job_file.to_string_lossy().into_owned()));
                Ok((format!("{header}exec \"$DAGRUN_EXE\" run-stage \"$DAGRUN_JOB_FILE\"\n"), env))
            }
        }
    }

    /// Waits up to the latency wait for files the job wrote (its outputs, a built-in's
    /// metrics) that this machine does not see yet (a shared filesystem's attribute cache).
    /// Files that exist are not waited for.
    fn wait_for_outputs(&self, attempt: &Attempt<'_>) {
        let mut expected: Vec<PathBuf> = attempt.stage.outputs.iter().map(|p| p.to_path(attempt.root)).collect();
        if let Work::Builtin { .. } = attempt.work {
            expected.push(metrics_file(attempt.log));
        }
        let until = Instant::now() + self.latency_wait;
        while expected.iter().any(|p| std::fs::symlink_metadata(p).is_err()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Executor for Slurm {
    fn run(&self, attempt: &Attempt<'_>, control: &Control<'_>) -> Result<BTreeMap<String, f64>, AttemptFailure> {
        let log = attempt.log;
        let dir = log.parent().expect("a log path has a directory");
        std::fs::create_dir_all(dir)
            .map_err(|e| AttemptFailure::failed(format!("cannot create log directory {}: {e}", dir.display())))?;
        if log.to_string_lossy().contains('%') || attempt.root.to_string_lossy().contains('%') {
            return Err(AttemptFailure::failed(
                "the pipeline directory's path holds `%`, which sbatch reads as a pattern in a log path: move the pipeline",
            ));
        }
        let (script, env) = self.script(attempt, dir)?;
        let script_file = dir.join(format!("{}.sbatch", file_stem(log)));
        std::fs::write(&script_file, script)
            .map_err(|e| AttemptFailure::failed(format!("cannot write {}: {e}", script_file.display())))?;
        if (control.stop_starting)() {
            return Err(AttemptFailure {
                status: StageStatus::Interrupted,
                message: "the build stopped first; its job was not submitted".into(),
            });
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let id = submit_held(attempt, &script_file, &env)?;
        // Released only once a later build can find it by its id.
        if !(control.submitted)(&id) {
            let _ = client::scancel(&[id.as_str()]);
            return Err(AttemptFailure::failed(format!("Slurm job {id} was cancelled: its id could not be recorded")));
        }
        if let Err(err) = client::release(&id) {
            let _ = client::scancel(&[id.as_str()]);
            return Err(AttemptFailure::failed(format!("cannot release Slurm job {id}: {err}")));
        }
        (control.running)();
        let (job, cancelled) = self.wait(&id, attempt, control)?;
        if let Some(cancelled) = cancelled {
            return Err(cancelled_failure(&id, cancelled, attempt));
        }
        if !job.succeeded() {
            return Err(job_failure(&id, &job, attempt));
        }
        self.wait_for_outputs(attempt);
        match &attempt.work {
            Work::Shell(_) => Ok(BTreeMap::new()),
            Work::Builtin { .. } => read_metrics(&metrics_file(log)),
        }
    }
}

/// Submits the attempt's job held: it runs only once released. Should sbatch fail after
/// the controller took the job (a timeout, a lost answer), the job it may have left is held,
/// so it cannot run beside a retry; it is cancelled here, and failing that by the next build,
/// which finds it by name and comment.
fn submit_held(attempt: &Attempt<'_>, script: &Path, env: &[(&str, &str)]) -> Result<String, AttemptFailure> {
    let args = sbatch_args(attempt);
    client::sbatch(&args, script, env).map_err(|err| {
        let name = job_name(attempt);
        if let Ok(left) = client::jobs_named(&name, &orphans::job_comment(attempt.token)) {
            let _ = client::scancel(&left);
        }
        AttemptFailure::failed(err)
    })
}

fn job_name(attempt: &Attempt<'_>) -> String {
    orphans::job_name(attempt.run, attempt.stage.name.as_str())
}

/// sbatch's options for an attempt. The stage's `resources` map onto sbatch's own flags, and
/// `slurm_args` (checked when the pipeline loaded) come last.
fn sbatch_args(attempt: &Attempt<'_>) -> Vec<String> {
    let stage = attempt.stage;
    let resources = stage.resources();
    let mut args = vec![
        format!("--job-name={}", job_name(attempt)),
        "--hold".to_string(),
        format!("--comment={}", orphans::job_comment(attempt.token)),
        format!("--chdir={}", attempt.root.display()),
        format!("--output={}", attempt.log.display()),
        "--open-mode=append".to_string(),
        // A requeued job would run the stage a second time, perhaps beside a retry.
        "--no-requeue".to_string(),
        "--export=ALL".to_string(),
    ];
    if let Some(cpus) = resources.cpus {
        args.push(format!("--cpus-per-task={cpus}"));
    }
    if let Some(mem) = resources.mem_mb {
        args.push(format!("--mem={mem}M"));
    }
    // Slurm counts time in minutes; a `timeout_sec` alone tells its scheduler as much.
    let minutes = resources.time_min.or_else(|| stage.timeout.map(|t| t.as_secs().div_ceil(60).max(1) as u32));
    if let Some(minutes) = minutes {
        args.push(format!("--time={minutes}"));
    }
    if let Some(partition) = &resources.partition {
        args.push(format!("--partition={partition}"));
    }
    if let Some(gres) = &resources.gres {
        args.push(format!("--gres={gres}"));
    }
    args.extend(stage.slurm_args.iter().cloned());
    args
}

fn cancelled_failure(id: &str, cancelled: Cancelled, attempt: &Attempt<'_>) -> AttemptFailure {
    let timeout = attempt.stage.timeout;
    match cancelled {
        Cancelled::Killed(cause) => {
            AttemptFailure::stopped(cause, timeout, &format!("its Slurm job {id} was cancelled"))
        }
        Cancelled::Withdrawn => AttemptFailure {
            status: StageStatus::Interrupted,
            message: format!(
                "the build stopped first; its Slurm job {id} was withdrawn from the queue before it started"
            ),
        },
    }
}

/// A job that ended without success, its Slurm state named.
fn job_failure(id: &str, job: &JobState, attempt: &Attempt<'_>) -> AttemptFailure {
    let resources = attempt.stage.resources();
    let how = job.exit_text().map(|t| format!(", {t}")).unwrap_or_default();
    let mut message = format!("Slurm job {id} ended {}{how}", job.state);
    match job.state.as_str() {
        "TIMEOUT" => {
            let limit = resources.time_min.map_or(String::new(), |m| format!(" (resources.time_min = {m})"));
            message.push_str(&format!(": it ran past its time limit{limit}"));
            return AttemptFailure { status: StageStatus::TimedOut, message };
        }
        "OUT_OF_MEMORY" => {
            let limit = resources.mem_mb.map_or(String::new(), |m| format!(" (resources.mem_mb = {m})"));
            message.push_str(&format!(": it used more memory than it asked for{limit}"));
        }
        "CANCELLED" => message.push_str(": cancelled outside dagrun"),
        "NODE_FAIL" | "BOOT_FAIL" => message.push_str(": its node failed; build again to retry it"),
        _ => {}
    }
    AttemptFailure::failed(message)
}

fn file_stem(log: &Path) -> String {
    log.file_stem().map_or_else(|| "stage".into(), |s| s.to_string_lossy().into_owned())
}

/// Where a built-in on a node writes the metrics it reports.
fn metrics_file(log: &Path) -> PathBuf {
    log.with_extension("metrics.json")
}

fn read_metrics(path: &Path) -> Result<BTreeMap<String, f64>, AttemptFailure> {
    crate::metrics::read_metrics_file(path)
        .map_err(|e| AttemptFailure::failed(format!("the job ended well but its metrics file {}: {e}", path.display())))
}
