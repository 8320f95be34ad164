//! What the engine reports while it works. The library never prints: a caller (the CLI,
//! the agent, the dashboard) receives these and renders them as it likes.

use std::path::Path;
use std::time::Duration;

use crate::planner::DirtyReason;
use crate::state::{LockHolder, RunCounts, RunId, StageStatus};

#[derive(Debug)]
pub enum Event<'a> {
    /// Another build holds the lock; this one waits for it.
    LockWaiting {
        path: &'a Path,
        holder: &'a LockHolder,
    },
    /// `--reset-state`: the old state database was moved here.
    StateReset {
        moved_to: &'a Path,
    },
    /// Stages a dead build left running, now recorded as interrupted.
    SweptInterrupted {
        stages: &'a [String],
    },
    /// Another process holds SQLite's write lock on the state database; the build waits.
    StateBusy {
        path: &'a std::path::Path,
    },
    /// Processes a dead build's stage left running, ended before anything runs.
    OrphansEnded {
        stage: &'a str,
        processes: usize,
    },
    /// Jobs a dead build left queued or running on a cluster, cancelled before anything runs.
    OrphanJobsCancelled {
        stage: &'a str,
        jobs: &'a [String],
    },
    /// A cluster executor submitted the stage's attempt as job `job_id`.
    JobSubmitted {
        stage: &'a str,
        job_id: &'a str,
    },
    BuildStarted {
        run: RunId,
        selected: usize,
        to_check: usize,
        jobs: usize,
    },
    StageStarted {
        stage: &'a str,
        attempt: u32,
        reason: &'a DirtyReason,
    },
    StageSucceeded {
        stage: &'a str,
        duration: Duration,
        output_changed: bool,
        /// What the stage reported, e.g. a model's accuracy.
        metrics: &'a std::collections::BTreeMap<String, f64>,
    },
    /// The run-cache's directory cannot be opened: the build goes on without it.
    RunCacheUnavailable {
        dir: &'a std::path::Path,
        error: &'a str,
    },
    /// Its outputs were restored from the run-cache (its fingerprint had run before) instead
    /// of running it.
    StageRestored {
        stage: &'a str,
        /// Why it was dirty.
        reason: &'a DirtyReason,
        duration: Duration,
        output_changed: bool,
    },
    /// Its upstream re-ran but produced the outputs it had before, so this stage did not run.
    StageCutOff {
        stage: &'a str,
    },
    StageFailed {
        stage: &'a str,
        status: StageStatus,
        error: &'a str,
        log_path: Option<&'a str>,
        will_retry: bool,
    },
    /// Not run because an upstream stage failed (or the build stopped first).
    StageBlocked {
        stage: &'a str,
        upstream: Option<&'a str>,
    },
    /// An input file changed while the stage ran; the stage stays dirty.
    InputMoved {
        stage: &'a str,
        path: &'a str,
    },
    BuildFinished {
        summary: &'a BuildSummary,
    },
}

impl Event<'_> {
    /// The event as one JSON object, `{"event": "...", ...}`: the `--json` output format.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Event::LockWaiting { path, holder } => {
                json!({ "event": "lock_waiting", "path": path.display().to_string(), "pid": holder.pid, "since": holder.since })
            }
            Event::StateReset { moved_to } => {
                json!({ "event": "state_reset", "moved_to": moved_to.display().to_string() })
            }
            Event::SweptInterrupted { stages } => json!({ "event": "swept_interrupted", "stages": stages }),
            Event::StateBusy { path } => json!({ "event": "state_busy", "path": path.display().to_string() }),
            Event::OrphansEnded { stage, processes } => {
                json!({ "event": "orphans_ended", "stage": stage, "processes": processes })
            }
            Event::OrphanJobsCancelled { stage, jobs } => {
                json!({ "event": "orphan_jobs_cancelled", "stage": stage, "jobs": jobs })
            }
            Event::JobSubmitted { stage, job_id } => {
                json!({ "event": "job_submitted", "stage": stage, "job_id": job_id })
            }
            Event::BuildStarted { run, selected, to_check, jobs } => {
                json!({ "event": "build_started", "run_id": run.0, "selected": selected, "to_check": to_check, "jobs": jobs })
            }
            Event::StageStarted { stage, attempt, reason } => {
                json!({ "event": "stage_started", "stage": stage, "attempt": attempt, "reason": reason, "reason_text": reason.to_string() })
            }
            Event::StageSucceeded { stage, duration, output_changed, metrics } => json!({
                "event": "stage_finished", "stage": stage, "duration_s": duration.as_secs_f64(),
                "output_changed": output_changed, "metrics": metrics,
            }),
            Event::StageRestored { stage, reason, duration, output_changed } => json!({
                "event": "stage_restored", "stage": stage, "reason": reason, "reason_text": reason.to_string(),
                "duration_s": duration.as_secs_f64(),
                "output_changed": output_changed,
            }),
            Event::StageCutOff { stage } => json!({ "event": "stage_cut_off", "stage": stage }),
            Event::RunCacheUnavailable { dir, error } => {
                json!({ "event": "run_cache_unavailable", "dir": dir.display().to_string(), "error": error })
            }
            Event::StageFailed { stage, status, error, log_path, will_retry } => json!({
                "event": "stage_failed", "stage": stage, "status": status, "error": error,
                "log_path": log_path, "will_retry": will_retry,
            }),
            Event::StageBlocked { stage, upstream } => {
                json!({ "event": "stage_blocked", "stage": stage, "upstream": upstream })
            }
            Event::InputMoved { stage, path } => json!({ "event": "input_moved", "stage": stage, "path": path }),
            Event::BuildFinished { summary } => {
                let mut value = serde_json::to_value(summary).expect("the summary serialises");
                value["event"] = json!("summary");
                value["succeeded"] = json!(summary.succeeded());
                value
            }
        }
    }
}

/// One failed stage, for the end-of-build summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedStage {
    pub stage: String,
    pub status: StageStatus,
    pub error: String,
    pub log_path: Option<String>,
    pub log_tail: String,
}

/// The result of a build.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BuildSummary {
    pub run_id: Option<i64>,
    pub counts: RunCounts,
    #[serde(serialize_with = "as_secs")]
    pub elapsed: Duration,
    pub failures: Vec<FailedStage>,
    pub interrupted: bool,
    /// The state token once the build had written everything: a later build told nobody
    /// wrote since (`BuildOptions::since`) checks it.
    #[serde(skip)]
    pub state_token: Option<i64>,
}

impl BuildSummary {
    pub fn succeeded(&self) -> bool {
        self.counts.failed == 0 && self.counts.blocked == 0 && !self.interrupted
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
