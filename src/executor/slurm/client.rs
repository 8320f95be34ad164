//! Slurm's own commands (`sbatch`, `squeue`, `sacct`, `scancel`), each run with a time limit:
//! Slurm's clients retry an unreachable controller for minutes, and a build must stay
//! responsive (Ctrl-C) meanwhile. Arguments are passed as argv, never through a shell.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::queue::{JobState, SQUEUE_FORMAT, parse_sacct, parse_squeue};

/// How long one client call may take.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// Runs `command` to its end or for at most `CALL_LIMIT`; its stdout, or an error naming the
/// command and what it printed.
pub fn call(command: Command) -> Result<String, String> {
    call_within(command, CALL_LIMIT)
}

/// [`call`] with a time limit of its own.
fn call_within(mut command: Command, limit: Duration) -> Result<String, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("`{program}` is not installed here: the slurm executor needs Slurm's commands on PATH")
        }
        _ => format!("cannot run `{program}`: {e}"),
    })?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output: Output = match rx.recv_timeout(limit) {
        Ok(output) => output.map_err(|e| format!("`{program}` failed: {e}"))?,
        Err(_) => {
            if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            return Err(format!("`{program}` did not answer within {}s: is slurmctld reachable?", limit.as_secs()));
        }
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("`{program}` failed ({}): {}", output.status, stderr.trim()))
}

/// Input variables of sbatch that would change what dagrun submits: an array job, a blocking
/// sbatch, or another cluster than the one squeue and scancel ask.
const SBATCH_VARS_OF_DAGRUN: &[&str] = &["SBATCH_ARRAY_INX", "SBATCH_WAIT", "SBATCH_CLUSTERS", "SBATCH_HOLD"];

/// `sbatch --parsable ARGS SCRIPT` with `env` added to dagrun's environment (sbatch hands its
/// environment to the job): the job id. The variables a stage is given are left out of what
/// dagrun inherited, as for a local stage: the job gets its own and no other.
pub fn sbatch(args: &[String], script: &std::path::Path, env: &[(&str, &str)]) -> Result<String, String> {
    let mut command = Command::new("sbatch");
    command.arg("--parsable").args(args).arg(script);
    for (key, _) in std::env::vars_os().filter(|(key, _)| super::super::runner::is_stage_variable(key)) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    for var in SBATCH_VARS_OF_DAGRUN {
        command.env_remove(var);
    }
    let out = call(command)?;
    // `--parsable` prints `id` or `id;cluster`.
    let id = out.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return Err(format!("sbatch answered `{}`, not a job id", out.trim()));
    }
    Ok(id)
}

/// The state of each of `ids` that Slurm still knows: one `squeue` call for all of them,
/// then one `sacct` call for those `squeue` no longer lists (it forgets ended jobs after
/// `MinJobAge`). `sacct` needs accounting; without it, `sacct -c` reads the job completion
/// log. A job neither knows is missing from the answer.
pub fn job_states(ids: &[&str]) -> Result<HashMap<String, JobState>, String> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let list = ids.join(",");
    let mut command = Command::new("squeue");
    command.args(["-h", "--states=all", "-j", &list, "-O", SQUEUE_FORMAT]);
    let mut states = match call(command) {
        Ok(text) => parse_squeue(&text),
        // One id it has forgotten fails the call; several are listed as far as it knows them.
        Err(err) if err.contains("Invalid job id") => HashMap::new(),
        Err(err) => return Err(err),
    };
    let forgotten: Vec<&str> = ids.iter().copied().filter(|id| !states.contains_key(*id)).collect();
    if !forgotten.is_empty() {
        states.extend(accounted(&forgotten));
    }
    Ok(states)
}

/// What `squeue` says of jobs `ids` now, asked once with a short limit: for readers
/// (`status`, the dashboard), which must not wait on an unreachable controller.
pub fn current_states(ids: &[&str]) -> Result<HashMap<String, JobState>, String> {
    let mut command = Command::new("squeue");
    command.args(["-h", "--states=all", "-j", &ids.join(","), "-O", SQUEUE_FORMAT]);
    call_within(command, Duration::from_secs(5)).map(|text| parse_squeue(&text))
}

/// What `sacct` (or, without accounting storage, `sacct -c`) knows of ended jobs.
fn accounted(ids: &[&str]) -> HashMap<String, JobState> {
    let list = ids.join(",");
    let args = ["-X", "-n", "-P", "-j", &list, "-o", "JobID,State,ExitCode"];
    let mut command = Command::new("sacct");
    command.args(args);
    match call(command) {
        Ok(text) if !text.trim().is_empty() => parse_sacct(&text),
        _ => {
            let mut command = Command::new("sacct");
            command.arg("-c").args(args);
            call(command).map(|text| parse_sacct(&text)).unwrap_or_default()
        }
    }
}

/// `scontrol release ID`: a held job may start.
pub fn release(id: &str) -> Result<(), String> {
    let mut command = Command::new("scontrol");
    command.args(["release", id]);
    call(command).map(drop)
}

/// `scancel IDS`.
pub fn scancel<S: AsRef<OsStr>>(ids: &[S]) -> Result<(), String> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut command = Command::new("scancel");
    command.args(ids);
    call(command).map(drop)
}

/// The queued or running jobs named `name` whose comment is `comment`: what a killed build
/// submitted before it could record the job id.
pub fn jobs_named(name: &str, comment: &str) -> Result<Vec<String>, String> {
    let mut command = Command::new("squeue");
    command.args(["-h", "-n", name, "-O", "JobID:30,Comment:200"]);
    let text = call(command)?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once(char::is_whitespace))
        .filter(|(_, c)| c.trim() == comment)
        .map(|(id, _)| id.to_string())
        .collect())
}
