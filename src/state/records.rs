//! Rows of the state database as Rust values, and the per-stage transactions.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, params};

use super::{State, StateError, timestamp};
use crate::fingerprint::{CacheEntry, FileHash, Fingerprint, FingerprintInputs, OutputHash};

/// `runs.run_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunId(pub i64);

/// A run as `State::begin_run` recorded it.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: RunId,
    /// What the token of each of its local shell attempts starts with (`runs.attempt_prefix`).
    pub attempt_prefix: String,
}

/// `stage_runs.id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageRunId(pub i64);

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Success,
    Failed,
    Interrupted,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Success => "success",
            RunOutcome::Failed => "failed",
            RunOutcome::Interrupted => "interrupted",
        }
    }
}

/// How one stage execution ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Running,
    Success,
    Failed,
    TimedOut,
    Interrupted,
    /// Not run: its upstream re-ran with identical outputs.
    CutOff,
    /// Not run: an upstream stage failed.
    Blocked,
    /// Not run: the build stopped first.
    Skipped,
    /// Recorded as up to date by `dagrun accept`, without running.
    Accepted,
    /// Its outputs were restored from the run-cache instead of running it.
    Restored,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Running => "running",
            StageStatus::Success => "success",
            StageStatus::Failed => "failed",
            StageStatus::TimedOut => "timed_out",
            StageStatus::Interrupted => "interrupted",
            StageStatus::CutOff => "cut_off",
            StageStatus::Blocked => "blocked",
            StageStatus::Skipped => "skipped",
            StageStatus::Accepted => "accepted",
            StageStatus::Restored => "restored",
        }
    }

    pub fn parse(text: &str) -> Option<StageStatus> {
        Some(match text {
            "running" => StageStatus::Running,
            "success" => StageStatus::Success,
            "failed" => StageStatus::Failed,
            "timed_out" => StageStatus::TimedOut,
            "interrupted" => StageStatus::Interrupted,
            "cut_off" => StageStatus::CutOff,
            "blocked" => StageStatus::Blocked,
            "skipped" => StageStatus::Skipped,
            "accepted" => StageStatus::Accepted,
            "restored" => StageStatus::Restored,
            _ => return None,
        })
    }
}

/// Stage counts of one build, as the summary line and the `runs` row report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunCounts {
    pub ran: u32,
    /// Restored from the run-cache instead of run.
    pub restored: u32,
    pub cut_off: u32,
    pub up_to_date: u32,
    pub failed: u32,
    pub blocked: u32,
}

/// A stage's row of `orchestrator_state` with its recorded outputs.
#[derive(Debug, Clone, Default)]
pub struct StageRecord {
    pub last_run_at: Option<String>,
    pub is_dirty: bool,
    pub run_count: i64,
    pub failure_count: i64,
    pub fingerprint: Option<Fingerprint>,
    pub output_hash: Option<OutputHash>,
    pub last_status: Option<StageStatus>,
    pub last_duration_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Each output path's hash at the last success. A list, not a map: a stage has a few
    /// outputs, and a map's smallest node cost 600 bytes a stage at 100,000 stages.
    pub outputs: Vec<(String, FileHash)>,
    /// How many times `dagrun invalidate` marked the stage (a generation counter).
    pub invalidations: i64,
}

impl StageRecord {
    /// The hash recorded for output `path` at the last success.
    pub fn output(&self, path: &str) -> Option<&FileHash> {
        self.outputs.iter().find(|(p, _)| p == path).map(|(_, hash)| hash)
    }
}

/// The start of one stage execution.
#[derive(Debug, Clone)]
pub struct StageAttempt<'a> {
    pub run: RunId,
    pub component: &'a str,
    pub attempt: u32,
    pub reason: &'a str,
    pub started_at: SystemTime,
    pub log_path: &'a str,
    /// The stage's `resources` as JSON, `None` when it declares none.
    pub resources: Option<&'a str>,
    /// The token in the environment of every process of a shell attempt, and the comment of
    /// a Slurm attempt's job (built-ins' included).
    pub token: Option<&'a str>,
    /// `Some("slurm")` for an attempt run as a cluster job; `None`: a local one.
    pub executor: Option<&'a str>,
}

/// A recorded hash: `NULL` is none; any text must parse, or the file is damaged. Read in
/// place, without a `String` per value: a build reads two per stage and one per file.
fn parse_hash<T: std::str::FromStr>(
    state: &State,
    value: rusqlite::types::ValueRef<'_>,
) -> Result<Option<T>, StateError> {
    match value {
        rusqlite::types::ValueRef::Null => Ok(None),
        rusqlite::types::ValueRef::Text(bytes) => {
            std::str::from_utf8(bytes).ok().and_then(|text| text.parse().ok()).map(Some).ok_or_else(|| state.damaged())
        }
        _ => Err(state.damaged()),
    }
}

/// What `record_of` reads, in its order.
const RECORD_COLUMNS: &str = "component, last_run_at, is_dirty, run_count, failure_count, fingerprint, output_hash,
    last_status, last_duration_ms, last_error, invalidations";

impl State {
    /// Every stage's recorded state, by component name.
    pub fn load_records(&self) -> Result<HashMap<String, StageRecord>, StateError> {
        let mut records = HashMap::new();
        let mut stmt = self.conn.prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM orchestrator_state"))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            records.insert(row.get(0)?, self.record_of(row)?);
        }
        let mut stmt = self.conn.prepare_cached("SELECT component, path, hash FROM stage_outputs")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let component = row.get_ref(0)?.as_str().map_err(|_| self.damaged())?;
            if let (Some(record), Some(hash)) = (records.get_mut(component), parse_hash(self, row.get_ref(2)?)?) {
                record.outputs.push((row.get(1)?, hash));
            }
        }
        Ok(records)
    }

    /// One stage's recorded state, as `load_records` gives it; `None` without a record.
    pub(super) fn load_record(&self, component: &str) -> Result<Option<StageRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM orchestrator_state WHERE component = ?1"))?;
        let mut rows = stmt.query([component])?;
        let Some(row) = rows.next()? else { return Ok(None) };
        let mut record = self.record_of(row)?;
        let mut stmt = self.conn.prepare_cached("SELECT path, hash FROM stage_outputs WHERE component = ?1")?;
        let mut rows = stmt.query([component])?;
        while let Some(row) = rows.next()? {
            if let Some(hash) = parse_hash(self, row.get_ref(1)?)? {
                record.outputs.push((row.get(0)?, hash));
            }
        }
        Ok(Some(record))
    }

    /// A row of `RECORD_COLUMNS` as a record, without its outputs.
    fn record_of(&self, row: &rusqlite::Row<'_>) -> Result<StageRecord, StateError> {
        Ok(StageRecord {
            last_run_at: row.get(1)?,
            is_dirty: row.get(2)?,
            run_count: row.get(3)?,
            failure_count: row.get(4)?,
            fingerprint: parse_hash(self, row.get_ref(5)?)?,
            output_hash: parse_hash(self, row.get_ref(6)?)?,
            last_status: match row.get_ref(7)?.as_str_or_null() {
                Ok(None) => None,
                Ok(Some(text)) => Some(StageStatus::parse(text).ok_or_else(|| self.damaged())?),
                Err(_) => return Err(self.damaged()),
            },
            last_duration_ms: row.get(8)?,
            last_error: row.get(9)?,
            outputs: Vec::new(),
            invalidations: row.get(10)?,
        })
    }

    /// The whole stat cache.
    pub fn load_hash_cache(&self) -> Result<HashMap<String, CacheEntry>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT path, size, mtime_ns, inode, hash, cached_at_ns, ctime_ns, dev FROM file_hashes")?;
        let mut rows = stmt.query([])?;
        let mut entries = HashMap::new();
        while let Some(row) = rows.next()? {
            let Some(hash) = parse_hash(self, row.get_ref(4)?)? else { continue };
            let entry = CacheEntry {
                size: row.get::<_, i64>(1)? as u64,
                mtime_ns: row.get(2)?,
                inode: row.get::<_, i64>(3)? as u64,
                hash,
                cached_at_ns: row.get(5)?,
                ctime_ns: row.get(6)?,
                dev: row.get::<_, i64>(7)? as u64,
            };
            entries.insert(row.get(0)?, entry);
        }
        Ok(entries)
    }

    /// Records that a stage execution started (status `running`).
    pub fn stage_started(&self, attempt: &StageAttempt<'_>) -> Result<StageRunId, StateError> {
        self.change(|conn| insert_attempt(conn, attempt, None))
    }

    /// The cluster job an attempt was submitted as.
    pub fn record_job_id(&self, row: StageRunId, job_id: &str) -> Result<(), StateError> {
        self.change(|conn| {
            conn.prepare_cached("UPDATE stage_runs SET job_id = ?2 WHERE id = ?1")?.execute(params![row.0, job_id])?;
            Ok(())
        })
    }

    /// A stage the build considered but did not run (cut off, blocked, skipped): one
    /// finished `stage_runs` row, so `history` can say what happened to it.
    pub fn record_not_run(
        &self,
        run: RunId,
        component: &str,
        status: StageStatus,
        reason: &str,
        at: SystemTime,
    ) -> Result<(), StateError> {
        let now = timestamp(at);
        self.change(|conn| {
            conn.prepare_cached(
                "INSERT INTO stage_runs (run_id, component, status, reason, started_at, finished_at, duration_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, 0)",
            )?
            .execute(params![run.0, component, status.as_str(), reason, now])?;
            Ok(())
        })
    }

    /// One change (see `batch.rs`): the execution row, the stage's state with its new fingerprint and
    /// output hashes, and the stat-cache entries hashed so far.
    pub fn record_success(
        &mut self,
        success: &StageSuccess<'_>,
        cache: &[(String, CacheEntry)],
    ) -> Result<(), StateError> {
        let finished = timestamp(success.finished_at);
        let duration_ms = success.duration.as_millis() as i64;
        let manifest = serde_json::to_string(success.fingerprint_inputs).expect("fingerprint inputs serialise");
        let fingerprint = success.fingerprint.to_hex();
        let output_hash = success.output_hash.to_hex();
        self.change(|tx| {
            success.row.write_end(
                tx,
                &AttemptEnd {
                    status: success.status,
                    finished_at: &finished,
                    duration_ms,
                    fingerprint: Some(&fingerprint),
                    output_hash: Some(&output_hash),
                    metrics: metrics_json(success.metrics),
                    error: None,
                },
            )?;
            tx.prepare_cached(
                "INSERT INTO orchestrator_state (component, last_run_at, is_dirty, run_count, failure_count, fingerprint,
                     output_hash, last_status, last_duration_ms, last_error, fingerprint_inputs,
                     restore_count)
                 VALUES (?1, ?2, ?3, ?8, 0, ?4, ?5, ?10, ?6, NULL, ?7, ?11)
                 ON CONFLICT (component) DO UPDATE SET last_run_at = excluded.last_run_at,
                     is_dirty = excluded.is_dirty OR invalidations != ?9,
                     run_count = run_count + excluded.run_count, fingerprint = excluded.fingerprint, output_hash = excluded.output_hash,
                     last_status = excluded.last_status, last_duration_ms = excluded.last_duration_ms, last_error = NULL,
                     fingerprint_inputs = excluded.fingerprint_inputs, restore_count = restore_count + excluded.restore_count",
            )?
            .execute(
                params![
                    success.component,
                    finished,
                    success.still_dirty,
                    fingerprint,
                    output_hash,
                    duration_ms,
                    manifest,
                    i64::from(success.status == StageStatus::Success),
                    success.invalidations_seen,
                    // `accept` records a success; a restore says so.
                    if success.status == StageStatus::Restored { "restored" } else { "success" },
                    i64::from(success.status == StageStatus::Restored)
                ],
            )?;
            tx.prepare_cached("DELETE FROM stage_outputs WHERE component = ?1")?.execute([success.component])?;
            {
                let mut insert =
                    tx.prepare_cached("INSERT INTO stage_outputs (component, path, hash) VALUES (?1, ?2, ?3)")?;
                for (path, hash) in success.outputs {
                    insert.execute(params![success.component, path, hash.to_hex()])?;
                }
            }
            put_cache_entries(tx, cache)?;
            Ok(())
        })?;
        self.written.get_mut().insert(success.component.to_string());
        Ok(())
    }

    /// One change (see `batch.rs`): the execution row and the stage's failure; its last good
    /// fingerprint and outputs stay recorded, and it is marked dirty.
    pub fn record_failure(
        &mut self,
        failure: &StageFailure<'_>,
        cache: &[(String, CacheEntry)],
    ) -> Result<(), StateError> {
        let finished = timestamp(failure.finished_at);
        let duration_ms = failure.duration.as_millis() as i64;
        self.change(|tx| {
            failure.row.write_end(
                tx,
                &AttemptEnd {
                    status: failure.status,
                    finished_at: &finished,
                    duration_ms,
                    fingerprint: None,
                    output_hash: None,
                    metrics: None,
                    error: Some(failure.error),
                },
            )?;
            tx.prepare_cached(
                "INSERT INTO orchestrator_state (component, is_dirty, run_count, failure_count, last_status,
                     last_duration_ms, last_error)
                 VALUES (?1, 1, 1, 1, ?2, ?3, ?4)
                 ON CONFLICT (component) DO UPDATE SET is_dirty = 1, run_count = run_count + 1,
                     failure_count = failure_count + 1, last_status = excluded.last_status,
                     last_duration_ms = excluded.last_duration_ms, last_error = excluded.last_error",
            )?
            .execute(params![failure.component, failure.status.as_str(), duration_ms, failure.error])?;
            put_cache_entries(tx, cache)?;
            Ok(())
        })?;
        self.written.get_mut().insert(failure.component.to_string());
        Ok(())
    }
}

/// The end of an attempt, as its `stage_runs` row holds it.
struct AttemptEnd<'a> {
    status: StageStatus,
    finished_at: &'a str,
    duration_ms: i64,
    fingerprint: Option<&'a str>,
    output_hash: Option<&'a str>,
    metrics: Option<String>,
    error: Option<&'a str>,
}

/// The `stage_runs` row of an attempt as it ends: recorded when it started, or not yet (an
/// attempt that did not wait for its row and ended before the coordinator wrote it), in which
/// case the row is written whole in the transaction that records its end.
#[derive(Debug, Clone)]
pub enum AttemptRow<'a> {
    Recorded(StageRunId),
    Unrecorded(StageAttempt<'a>),
}

impl AttemptRow<'_> {
    /// Writes how the attempt ended: over its `running` row, or, when it has none yet, as
    /// one whole row, so that it never shows as `running`. (Whole, rather than inserted and
    /// then ended over: one statement fewer for every attempt that ends before its `running`
    /// row is due, which took 3% off dagrun's own CPU in a full build of 1,000 short stages.)
    fn write_end(&self, tx: &Connection, end: &AttemptEnd<'_>) -> Result<(), StateError> {
        match self {
            AttemptRow::Recorded(id) => {
                tx.prepare_cached(
                    "UPDATE stage_runs SET status = ?2, finished_at = ?3, duration_ms = ?4, fingerprint = ?5,
                         output_hash = ?6, metrics = ?7, error = ?8 WHERE id = ?1",
                )?
                .execute(params![
                    id.0,
                    end.status.as_str(),
                    end.finished_at,
                    end.duration_ms,
                    end.fingerprint,
                    end.output_hash,
                    end.metrics,
                    end.error
                ])?;
            }
            AttemptRow::Unrecorded(attempt) => {
                insert_attempt(tx, attempt, Some(end))?;
            }
        }
        Ok(())
    }
}

/// What a successful stage execution records.
#[derive(Debug)]
pub struct StageSuccess<'a> {
    pub row: AttemptRow<'a>,
    pub component: &'a str,
    pub finished_at: SystemTime,
    pub duration: Duration,
    pub fingerprint: Fingerprint,
    pub fingerprint_inputs: &'a FingerprintInputs,
    pub output_hash: OutputHash,
    pub outputs: &'a BTreeMap<String, FileHash>,
    /// An input changed while the stage ran: keep it dirty so the next build re-runs it.
    pub still_dirty: bool,
    /// What the stage reported (built-ins only), stored as a JSON object when not empty.
    pub metrics: &'a BTreeMap<String, f64>,
    /// `Success` for a run; `Accepted` for `dagrun accept` and `Restored` for a restore
    /// from the run-cache, neither of which counts as a run.
    pub status: StageStatus,
    /// The stage's invalidation count when the build read its record: an `invalidate`
    /// made since (while the stage ran) keeps it dirty.
    pub invalidations_seen: i64,
}

/// What a failed stage execution records.
#[derive(Debug)]
pub struct StageFailure<'a> {
    pub row: AttemptRow<'a>,
    pub component: &'a str,
    pub status: StageStatus,
    pub finished_at: SystemTime,
    pub duration: Duration,
    pub error: &'a str,
}

/// Metrics as JSON; non-finite numbers (which JSON cannot hold) become null.
fn metrics_json(metrics: &BTreeMap<String, f64>) -> Option<String> {
    (!metrics.is_empty()).then(|| serde_json::to_string(metrics).expect("a map of numbers serialises"))
}

/// Inserts an attempt's `stage_runs` row with its end if it has ended, else as `running` (its
/// end is then written over it by [`AttemptRow::write_end`]).
fn insert_attempt(
    conn: &Connection,
    attempt: &StageAttempt<'_>,
    end: Option<&AttemptEnd<'_>>,
) -> Result<StageRunId, StateError> {
    conn.prepare_cached(
        "INSERT INTO stage_runs (run_id, component, attempt, status, reason, started_at, log_path, resources,
             attempt_token, executor, finished_at, duration_ms, fingerprint, output_hash, metrics, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        attempt.run.0,
        attempt.component,
        attempt.attempt,
        end.map_or(StageStatus::Running, |end| end.status).as_str(),
        attempt.reason,
        timestamp(attempt.started_at),
        attempt.log_path,
        attempt.resources,
        attempt.token,
        attempt.executor,
        end.map(|end| end.finished_at),
        end.map(|end| end.duration_ms),
        end.and_then(|end| end.fingerprint),
        end.and_then(|end| end.output_hash),
        end.and_then(|end| end.metrics.as_deref()),
        end.and_then(|end| end.error)
    ])?;
    Ok(StageRunId(conn.last_insert_rowid()))
}

pub(super) fn put_cache_entries(tx: &Connection, entries: &[(String, CacheEntry)]) -> Result<(), StateError> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, inode, hash, cached_at_ns, ctime_ns, dev)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for (path, entry) in entries {
        stmt.execute(params![
            path,
            entry.size as i64,
            entry.mtime_ns,
            entry.inode as i64,
            entry.hash.to_hex(),
            entry.cached_at_ns,
            entry.ctime_ns,
            entry.dev as i64
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every column of a component's `stage_runs` rows but the row's id and the component.
    fn rows_of(state: &State, component: &str) -> Vec<Vec<rusqlite::types::Value>> {
        let mut stmt = state
            .conn
            .prepare(
                "SELECT run_id, attempt, status, reason, started_at, finished_at, duration_ms, fingerprint,
                     output_hash, error, log_path, metrics, attempt_token, resources, executor, job_id
                 FROM stage_runs WHERE component = ?1 ORDER BY id",
            )
            .unwrap();
        stmt.query_map([component], |row| (0..16).map(|i| row.get(i)).collect()).unwrap().map(Result::unwrap).collect()
    }

    /// An attempt's row is written `running` when it starts and ended over, or, when it ends
    /// before that, written whole: either way it reads the same, a success's and a failure's.
    #[test]
    fn an_attempt_row_written_whole_reads_as_one_written_running_then_ended() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(&dir.path().join("state.db")).unwrap();
        let run = state.begin_run("build", &[], 2).unwrap();
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let attempt = |component| StageAttempt {
            run: run.id,
            component,
            attempt: 1,
            reason: "never succeeded",
            started_at: started,
            log_path: ".dagrun/logs/1/x.log",
            resources: Some(r#"{"cpus":2}"#),
            token: Some("token"),
            executor: None,
        };
        let hash = |byte: u8| blake3::Hash::from_bytes([byte; 32]);
        let inputs = FingerprintInputs::covering_nothing();
        let outputs = BTreeMap::from([("out.txt".to_string(), FileHash(hash(3)))]);
        let metrics = BTreeMap::from([("loss".to_string(), 0.5)]);
        let success = |row, component| StageSuccess {
            row,
            component,
            finished_at: started + Duration::from_millis(2_500),
            duration: Duration::from_millis(2_500),
            fingerprint: Fingerprint(hash(1)),
            fingerprint_inputs: &inputs,
            output_hash: OutputHash(hash(2)),
            outputs: &outputs,
            still_dirty: false,
            metrics: &metrics,
            status: StageStatus::Success,
            invalidations_seen: 0,
        };
        let failure = |row, component| StageFailure {
            row,
            component,
            status: StageStatus::Failed,
            finished_at: started + Duration::from_millis(700),
            duration: Duration::from_millis(700),
            error: "exit status 3",
        };

        let running = state.stage_started(&attempt("ran")).unwrap();
        state.record_success(&success(AttemptRow::Recorded(running), "ran"), &[]).unwrap();
        state.record_success(&success(AttemptRow::Unrecorded(attempt("quick")), "quick"), &[]).unwrap();
        let running = state.stage_started(&attempt("ran_and_failed")).unwrap();
        state.record_failure(&failure(AttemptRow::Recorded(running), "ran_and_failed"), &[]).unwrap();
        state
            .record_failure(&failure(AttemptRow::Unrecorded(attempt("failed_quickly")), "failed_quickly"), &[])
            .unwrap();

        let succeeded = rows_of(&state, "ran");
        assert_eq!(rows_of(&state, "quick"), succeeded);
        use rusqlite::types::Value::{Integer, Null, Text};
        // status, finished_at, duration_ms, fingerprint, output_hash, error, metrics
        let ends = |row: &[rusqlite::types::Value]| [2, 5, 6, 7, 8, 9, 11].map(|i| row[i].clone());
        assert_eq!(
            ends(&succeeded[0]),
            [
                Text("success".into()),
                Text(timestamp(started + Duration::from_millis(2_500))),
                Integer(2_500),
                Text(Fingerprint(hash(1)).to_hex()),
                Text(OutputHash(hash(2)).to_hex()),
                Null,
                Text(r#"{"loss":0.5}"#.into())
            ]
        );

        let failed = rows_of(&state, "ran_and_failed");
        assert_eq!(rows_of(&state, "failed_quickly"), failed);
        assert_eq!(
            ends(&failed[0]),
            [
                Text("failed".into()),
                Text(timestamp(started + Duration::from_millis(700))),
                Integer(700),
                Null,
                Null,
                Text("exit status 3".into()),
                Null
            ]
        );
    }
}
