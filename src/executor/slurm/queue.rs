//! What Slurm says about jobs: `squeue` and `sacct` lines parsed into [`JobState`]s, and
//! which states are final. Pure: the commands themselves are run by `client.rs`.

use std::collections::HashMap;

/// A job's state as Slurm names it (`PENDING`, `RUNNING`, `COMPLETED`, `TIMEOUT`, ...), with
/// its exit code once it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobState {
    pub state: String,
    /// The batch script's exit code; `None` if it was killed by a signal or has not ended.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why a pending job waits, or why it ended (`Resources`, `NonZeroExitCode`, `TimeLimit`).
    pub reason: String,
}

/// States after which the job runs nothing more. `COMPLETING` is not one: some of the job's
/// processes may still be running, and its outputs may still change.
const FINAL_STATES: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "CANCELLED",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
    "SPECIAL_EXIT",
    "REVOKED",
];

impl JobState {
    pub fn is_final(&self) -> bool {
        FINAL_STATES.contains(&self.state.as_str())
    }

    pub fn is_pending(&self) -> bool {
        self.state == "PENDING"
    }

    pub fn is_running(&self) -> bool {
        !self.is_final() && !self.is_pending()
    }

    pub fn succeeded(&self) -> bool {
        self.state == "COMPLETED" && self.exit_code == Some(0)
    }

    /// How the job ended, for an error message: `exit status 3`, `killed by signal 9`.
    pub fn exit_text(&self) -> Option<String> {
        match (self.exit_code, self.signal) {
            (_, Some(signal)) if signal != 0 => Some(format!("killed by signal {signal}")),
            (Some(code), _) if code != 0 => Some(format!("exit status {code}")),
            _ => None,
        }
    }
}

/// The `squeue --Format` this module parses: fixed-width columns, the reason last since it
/// may hold spaces.
pub const SQUEUE_FORMAT: &str = "JobID:30,State:30,exit_code:12,Reason:200";

/// `squeue -h --states=all -O SQUEUE_FORMAT` output: each job's state. `exit_code` there is
/// the raw wait status (`768` for exit 3).
pub fn parse_squeue(text: &str) -> HashMap<String, JobState> {
    let mut jobs = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(id), Some(state), Some(status)) = (fields.next(), fields.next(), fields.next()) else { continue };
        let reason = fields.collect::<Vec<_>>().join(" ");
        let raw: i32 = status.parse().unwrap_or(0);
        let state = state.trim_end_matches('+').to_string();
        let ended = FINAL_STATES.contains(&state.as_str());
        let (exit_code, signal) = if ended { (Some((raw >> 8) & 0xff), Some(raw & 0x7f)) } else { (None, None) };
        jobs.insert(id.to_string(), JobState { state, exit_code, signal, reason });
    }
    jobs
}

/// `sacct -X -n -P -o JobID,State,ExitCode` output (`2|FAILED|3:0`, `4|CANCELLED by 0|0:15`).
pub fn parse_sacct(text: &str) -> HashMap<String, JobState> {
    let mut jobs = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split('|');
        let (Some(id), Some(state), Some(exit)) = (fields.next(), fields.next(), fields.next()) else { continue };
        let state = state.split_whitespace().next().unwrap_or_default().trim_end_matches('+').to_string();
        let (code, signal) = exit.split_once(':').unwrap_or((exit, "0"));
        let job = JobState {
            state,
            exit_code: code.trim().parse().ok(),
            signal: signal.trim().parse().ok(),
            reason: String::new(),
        };
        jobs.insert(id.trim().to_string(), job);
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_give_states_exit_codes_and_reasons() {
        let text = "2     FAILED      768     NonZeroExitCode\n\
                    4     PENDING     0       ReqNodeNotAvail, UnavailableNodes:n1\n\
                    5     COMPLETING  0       None\n\
                    6     TIMEOUT     15      TimeLimit\n";
        let jobs = parse_squeue(text);
        let failed = &jobs["2"];
        assert!(failed.is_final() && !failed.succeeded());
        assert_eq!((failed.exit_code, failed.exit_text().as_deref()), (Some(3), Some("exit status 3")));
        assert_eq!(jobs["4"].reason, "ReqNodeNotAvail, UnavailableNodes:n1");
        assert!(jobs["4"].is_pending() && !jobs["4"].is_final());
        assert!(jobs["5"].is_running() && !jobs["5"].is_final(), "COMPLETING may still write");
        assert_eq!(jobs["6"].exit_text().as_deref(), Some("killed by signal 15"));
    }

    #[test]
    fn sacct_lines_give_states_and_exit_codes() {
        let jobs = parse_sacct("2|FAILED|3:0\n4|CANCELLED by 0|0:15\n7|COMPLETED|0:0\n");
        assert_eq!(jobs["2"].exit_text().as_deref(), Some("exit status 3"));
        assert_eq!(jobs["4"].state, "CANCELLED");
        assert!(jobs["7"].succeeded());
    }
}
