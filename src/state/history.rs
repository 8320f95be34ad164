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

const RUN_COLUMNS: &str = "run_id, trigger, started_at, finished_at,
    CAST(round((julianday(finished_at) - julianday(started_at)) * 86400000) AS INTEGER),
    outcome, stages_ran, stages_cut_off, stages_up_to_date, stages_failed, stages_blocked, targets, stages_restored";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
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
            restored: r.get(12)?,
        },
        stages: Vec::new(),
    })
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

/// A stage's metrics as one successful run recorded them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricsRecord {
    pub component: String,
    pub run_id: i64,
    pub metrics: std::collections::BTreeMap<String, f64>,
}

impl State {
    /// The latest `limit` runs, newest first, each with its stage rows (with `stage`, only
    /// that stage's rows).
    pub fn history(&self, stage: Option<&str>, limit: usize) -> Result<Vec<RunRow>, StateError> {
        let mut runs_stmt =
            self.conn.prepare(&format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY run_id DESC LIMIT ?1"))?;
        let mut runs: Vec<RunRow> = runs_stmt.query_map(params![limit as i64], run_row)?.collect::<Result<_, _>>()?;
        let mut stages_stmt = self.conn.prepare(&format!(
            "SELECT {STAGE_COLUMNS} FROM stage_runs WHERE run_id = ?1 AND (?2 IS NULL OR component = ?2) ORDER BY id"
        ))?;
        for run in &mut runs {
            run.stages = stages_stmt.query_map(params![run.run_id, stage], stage_row)?.collect::<Result<_, _>>()?;
        }
        Ok(runs)
    }

    /// Every successful stage run that recorded metrics, oldest first, up to run `up_to`
    /// (all of them for `None`): (component, run id, metrics).
    pub fn recorded_metrics(&self, up_to: Option<i64>) -> Result<Vec<MetricsRecord>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT component, run_id, metrics FROM stage_runs
             WHERE status IN ('success', 'restored') AND metrics IS NOT NULL AND (?1 IS NULL OR run_id <= ?1) ORDER BY id",
        )?;
        let rows = stmt
            .query_map(params![up_to], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))?;
        let mut records = Vec::new();
        for row in rows {
            let (component, run_id, json) = row?;
            // A row some other tool wrote badly is skipped, not fatal to a report.
            if let Ok(metrics) = serde_json::from_str(&json) {
                records.push(MetricsRecord { component, run_id, metrics });
            }
        }
        Ok(records)
    }

    /// One run with all its stage rows, or `None` if there is no such run.
    pub fn run(&self, run_id: i64) -> Result<Option<RunRow>, StateError> {
        use rusqlite::OptionalExtension;
        let run = self
            .conn
            .query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"), [run_id], run_row)
            .optional()?;
        let Some(mut run) = run else { return Ok(None) };
        let mut stmt =
            self.conn.prepare(&format!("SELECT {STAGE_COLUMNS} FROM stage_runs WHERE run_id = ?1 ORDER BY id"))?;
        run.stages = stmt.query_map([run_id], stage_row)?.collect::<Result<_, _>>()?;
        Ok(Some(run))
    }

    /// Runs recorded as still running, newest first, with the pid of their process (the
    /// caller checks whether it lives: a killed build leaves its run `running`).
    pub fn runs_in_progress(&self) -> Result<Vec<(i64, u32, String, String)>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT run_id, pid, trigger, started_at FROM runs WHERE outcome = 'running' ORDER BY run_id DESC",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The attempts of run `run_id` still running: (stage, started at, cluster job id).
    pub fn running_attempts(&self, run_id: i64) -> Result<Vec<(String, String, Option<String>)>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT component, started_at, job_id FROM stage_runs WHERE run_id = ?1 AND status = 'running' ORDER BY id",
        )?;
        let rows = stmt.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The log file of a stage's latest attempt in a run, relative to the pipeline directory.
    pub fn log_path(&self, run_id: i64, component: &str) -> Result<Option<String>, StateError> {
        use rusqlite::OptionalExtension;
        let path = self
            .conn
            .query_row(
                "SELECT log_path FROM stage_runs WHERE run_id = ?1 AND component = ?2 AND log_path != ''
                 ORDER BY id DESC LIMIT 1",
                params![run_id, component],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?;
        Ok(path.flatten())
    }
}
