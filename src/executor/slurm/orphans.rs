//! The jobs of a killed build. The attempt's row and its token (the job's comment) are
//! recorded before `sbatch` runs, and its job id before the held job is released; the next
//! build finds the job by its id, or by its name (made from the run and the stage) and
//! comment, cancels it and waits until Slurm says it ended, before anything runs: a stage
//! never runs twice at once, and a job that can still write never has its outputs trusted.

use std::time::{Duration, Instant};

use super::client;

/// How long a cancelled job may take to end before the build gives up with an error.
const END_WITHIN: Duration = Duration::from_secs(120);

/// The name of an attempt's job: `dagrun-<run id>-<stage>`.
pub fn job_name(run: i64, stage: &str) -> String {
    format!("dagrun-{run}-{stage}")
}

/// The comment a job carries: its attempt's token, which no other job shares.
pub(super) fn job_comment(token: &str) -> String {
    format!("dagrun:{token}")
}

/// Cancels what is left of a dead build's attempt of `stage` (in run `run`), and waits until
/// it has ended. Returns the ids of the jobs that were still queued or running.
pub fn cancel_orphan_jobs(run: i64, stage: &str, token: &str, job_id: Option<&str>) -> Result<Vec<String>, String> {
    let name = job_name(run, stage);
    let mut ids = client::jobs_named(&name, &job_comment(token))?;
    if let Some(id) = job_id
        && !ids.iter().any(|i| i == id)
    {
        ids.push(id.to_string());
    }
    let mut live: Vec<String> = {
        let states = client::job_states(&ids.iter().map(String::as_str).collect::<Vec<_>>())?;
        ids.into_iter().filter(|id| states.get(id).is_some_and(|s| !s.is_final())).collect()
    };
    if live.is_empty() {
        return Ok(live);
    }
    // One may end between the look and the scancel, failing the call: the wait below is what
    // counts.
    let _ = client::scancel(&live);
    let cancelled = live.clone();
    let until = Instant::now() + END_WITHIN;
    while !live.is_empty() {
        if Instant::now() > until {
            return Err(format!(
                "Slurm job {} did not end within {}s of scancel; end it (scancel -f) and build again",
                live.join(", "),
                END_WITHIN.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
        let states = client::job_states(&live.iter().map(String::as_str).collect::<Vec<_>>())?;
        live.retain(|id| states.get(id).is_some_and(|s| !s.is_final()));
    }
    Ok(cancelled)
}
