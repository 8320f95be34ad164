//! Reading the run history back: `runs` and `stage_runs`, newest first.

use rusqlite::params;

use super::{RunCounts, State, StateError};

/// One build or agent cycle.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    pub run_id: i64,
    pub trigger: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub outcome: String,
    /// The stages asked for (their upstream was built too); empty for all.
    pub targets: Vec<String>,
    pub counts: RunCounts,
    /// The stages it ran or considered (up-to-date stages are not listed).
    pub stages: Vec<StageRunRow>,
}

/// One stage in one run: executed (with each retry a row), cut off, blocked or skipped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageRunRow {
    pub run_id: i64,
    pub component: String,
    pub attempt: i64,
    pub status: String,
    pub reason: String,
    pub started_at: String,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    pub metrics: Option<serde_json::Value>,
}

const STAGE_COLUMNS: &str = "run_id, component, attempt, status, reason, started_at, duration_ms, error, metrics";

fn stage_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StageRunRow> {
    Ok(StageRunRow {
        run_id: row.get(0)?,
        component: row.get(1)?,
        attempt: row.get(2)?,
        status: row.get(3)?,
        reason: row.get(4)?,
        started_at: row.get(5)?,
        duration_ms: row.get(6)?,
        error: row.get(7)?,
        metrics: row.get::<_, Option<String>>(8)?.and_then(|m| serde_json::from_str(&m).ok()),
    })
}

impl State {
    /// The latest `limit` runs, newest first, each with its stage rows (with `stage`, only
    /// that stage's rows).
    pub fn history(&self, stage: Option<&str>, limit: usize) -> Result<Vec<RunRow>, StateError> {
        let mut runs_stmt = self.conn.prepare(
            "SELECT run_id, trigger, started_at, finished_at,
                    CAST(round((julianday(finished_at) - julianday(started_at)) * 86400000) AS INTEGER),
                    outcome, stages_ran, stages_cut_off, stages_up_to_date, stages_failed, stages_blocked, targets
             FROM runs ORDER BY run_id DESC LIMIT ?1",
        )?;
        let mut runs: Vec<RunRow> = runs_stmt
            .query_map(params![limit as i64], |r| {
                Ok(RunRow {
                    run_id: r.get(0)?,
                    trigger: r.get(1)?,
                    started_at: r.get(2)?,
                    finished_at: r.get(3)?,
                    duration_ms: r.get(4)?,
                    outcome: r.get(5)?,
                    targets: r.get::<_, String>(11)?.split_whitespace().map(str::to_string).collect(),
                    counts: RunCounts {
                        ran: r.get(6)?,
                        cut_off: r.get(7)?,
                        up_to_date: r.get(8)?,
                        failed: r.get(9)?,
                        blocked: r.get(10)?,
                    },
                    stages: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut stages_stmt = self.conn.prepare(&format!(
            "SELECT {STAGE_COLUMNS} FROM stage_runs WHERE run_id = ?1 AND (?2 IS NULL OR component = ?2) ORDER BY id"
        ))?;
        for run in &mut runs {
            run.stages = stages_stmt.query_map(params![run.run_id, stage], stage_row)?.collect::<Result<_, _>>()?;
        }
        Ok(runs)
    }
}
