//! The state database: every SQL string in dagrun lives under this module.
//!
//! WAL mode lets `status` and the dashboard read while a build writes; every change a
//! finished stage makes is in one transaction (a build writes the stages that end within a
//! few milliseconds of each other together: `batch.rs`), so a crash loses only stages whose
//! end was not yet committed, and the next build checks them as any other.

mod batch;
mod history;
mod lock;
mod records;
mod snapshot;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

pub use history::{MetricsRecord, RunRow, StageRunRow};
pub use lock::{BuildLock, LockError, LockHolder, acquire as acquire_lock};
pub use records::{
    AttemptRow, Run, RunCounts, RunId, RunOutcome, StageAttempt, StageFailure, StageRecord, StageRunId, StageStatus,
    StageSuccess,
};
pub use snapshot::PlanState;

/// The schema, one plain SQL file per version; `PRAGMA user_version` records how far a
/// database has come (rusqlite_migration's scheme).
fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect())
}

const MIGRATIONS: [&str; 7] = [
    include_str!("../../migrations/0001_initial.sql"),
    include_str!("../../migrations/0002_stage_metrics.sql"),
    include_str!("../../migrations/0003_trust.sql"),
    include_str!("../../migrations/0004_run_cache.sql"),
    include_str!("../../migrations/0005_state_token.sql"),
    include_str!("../../migrations/0006_cluster_jobs.sql"),
    include_str!("../../migrations/0007_attempt_prefix.sql"),
];

/// How long the write-ahead log may grow before a build checkpoints and truncates it: 64
/// pages, which a process opening the database reads in well under a millisecond.
const WAL_TRIM_BYTES: u64 = 64 * 4096;

/// How long a build lets the write-ahead log grow before it copies it into the database (about
/// 40 MiB of 4 KiB pages; SQLite's default is 1,000). Each stage's transaction appends about
/// ten pages (eleven in a 50-stage build's trace), mostly the same few, so a checkpoint every
/// hundred stages copied the same pages again and again, syncing each time: ten times fewer
/// checkpoints took 5 to 6% off a full build's own CPU on ext4 and 11 to 18% off its commits
/// on tmpfs. A build leaving the log over `WAL_TRIM_BYTES` checkpoints and truncates it at
/// its end (`trim_wal`).
const BUILD_CHECKPOINT_FRAMES: i64 = 10_000;

/// The newest schema version this dagrun knows.
pub fn schema_version() -> usize {
    MIGRATIONS.len()
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open state database {}: {source}{}", path.display(), open_file_limit_hint())]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error(
        "{} is not a dagrun state database (it holds other tables); point `state` in [pipeline] elsewhere, or run `dagrun build --reset-state` to move it aside",
        path.display()
    )]
    Foreign { path: PathBuf },
    #[error("{} is not an SQLite database; run `dagrun build --reset-state` to move it aside and start a new state (every stage re-runs once)", path.display())]
    NotADatabase { path: PathBuf },
    #[error("{} has schema version {found}, newer than this dagrun knows ({known}); upgrade dagrun", path.display())]
    Newer { path: PathBuf, found: usize, known: usize },
    #[error(
        "{} has schema version {found}, older than this dagrun's ({known}); run `dagrun migrate` (or a build) to upgrade it",
        path.display()
    )]
    Older { path: PathBuf, found: usize, known: usize },
    #[error(
        "another process holds a write lock on the state database {} (an open SQL transaction?); end it, or build without --no-wait to wait for it",
        path.display()
    )]
    Busy { path: PathBuf },
    #[error("stopped while waiting for another process's write lock on {}", path.display())]
    BusyStopped { path: PathBuf },
    #[error("cannot migrate state database {}: {source}", path.display())]
    Migrate { path: PathBuf, source: rusqlite_migration::Error },
    #[error("the disk holding {} is full; free some space and build again (what was recorded before is intact)", path.display())]
    DiskFull { path: PathBuf },
    /// Every symptom of a damaged file (a malformed schema or page, text that is not
    /// UTF-8, a value of the wrong type, a failed integrity check) gives this one message.
    #[error(
        "the state database at {} is damaged: run `dagrun build --reset-state` to move it aside and start a new state (every stage re-runs once)",
        path.display()
    )]
    Damaged { path: PathBuf },
    #[error(
        "the state database at {} is read-only ({source}): give dagrun write access to it and to its directory, or point `state` elsewhere",
        path.display()
    )]
    ReadOnly { path: PathBuf, source: rusqlite::Error },
    #[error("state database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

impl StateError {
    /// Names the database in errors SQLite reports without it: a full disk, a damaged or
    /// read-only file.
    pub fn at(self, path: &Path) -> StateError {
        let StateError::Sql(err) = self else { return self };
        let path = path.to_path_buf();
        if is_damage(&err) {
            return StateError::Damaged { path };
        }
        match err.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StateError::DiskFull { path },
            Some(rusqlite::ErrorCode::NotADatabase) => StateError::NotADatabase { path },
            Some(rusqlite::ErrorCode::ReadOnly) => StateError::ReadOnly { path, source: err },
            Some(rusqlite::ErrorCode::CannotOpen) => StateError::Open { path, source: err },
            _ => StateError::Sql(err),
        }
    }
}

/// How long a write waits for another process's SQLite write lock (someone's long SQL
/// transaction; builds themselves are serialised by the build lock) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// SQLite's "unable to open database file" does not say why; a tiny open-file limit
/// (`ulimit -n 8`) is a cause worth naming.
pub fn open_file_limit_hint() -> String {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(limit) if limit < 64 => {
            format!(" (the open-file limit is {limit}: raise it with `ulimit -n 1024` and try again)")
        }
        _ => String::new(),
    }
}

/// Whether an SQLite error means the file is damaged: SQLite says so, or a value read back
/// is not what dagrun ever writes (bytes that are not UTF-8, a text where a number was).
fn is_damage(err: &rusqlite::Error) -> bool {
    use rusqlite::Error as E;
    matches!(
        err,
        E::FromSqlConversionFailure(..) | E::InvalidColumnType(..) | E::Utf8Error(..) | E::IntegralValueOutOfRange(..)
    ) || err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt)
}

/// An open, migrated state database.
pub struct State {
    conn: Connection,
    path: PathBuf,
    /// The token of the snapshot on disk, once this process has read or written it.
    snapshot_token: std::cell::Cell<Option<i64>>,
    /// `PRAGMA data_version` when the plan state was loaded: it moves only when another
    /// connection commits, so while it stands, the tables are that plan state plus this
    /// connection's own writes.
    loaded_at_version: std::cell::Cell<Option<i64>>,
    /// The stages whose records this connection has written since the plan state was loaded.
    written: std::cell::RefCell<std::collections::HashSet<String>>,
    /// Whether changes are held for one commit (see `batch.rs`).
    batch: std::cell::Cell<batch::Batch>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("path", &self.path).finish()
    }
}

impl State {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<State, StateError> {
        let mut state = State::open_unmigrated(path)?;
        state.migrate()?;
        Ok(state)
    }

    fn with(conn: Connection, path: &Path) -> State {
        State {
            conn,
            path: path.to_path_buf(),
            snapshot_token: Default::default(),
            loaded_at_version: Default::default(),
            written: Default::default(),
            batch: Default::default(),
        }
    }

    /// Opens (creating and migrating) the database for a build. Another process may hold
    /// SQLite's write lock (someone's open SQL transaction): then `on_wait` is called and
    /// the build waits until the lock is free (giving up as soon as `stop()` says so), or
    /// fails at once when `wait` is false.
    pub fn open_for_build(
        path: &Path,
        wait: bool,
        on_wait: impl FnOnce(),
        stop: impl Fn() -> bool,
    ) -> Result<State, StateError> {
        let mut state = State::open_unmigrated(path)?;
        state.wait_for_write_lock(wait, on_wait, stop)?;
        state.migrate()?;
        state.conn.pragma_update(None, "wal_autocheckpoint", BUILD_CHECKPOINT_FRAMES)?;
        Ok(state)
    }

    fn wait_for_write_lock(
        &self,
        wait: bool,
        on_wait: impl FnOnce(),
        stop: impl Fn() -> bool,
    ) -> Result<(), StateError> {
        let path = || self.path.clone();
        self.conn.busy_timeout(Duration::ZERO)?;
        let mut on_wait = Some(on_wait);
        let result = loop {
            match self.conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
                Ok(()) => break Ok(()),
                Err(err) if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                    if !wait {
                        break Err(StateError::Busy { path: path() });
                    }
                    if let Some(on_wait) = on_wait.take() {
                        on_wait();
                    }
                    if stop() {
                        break Err(StateError::BusyStopped { path: path() });
                    }
                    // Polled, so that a stop request is honoured while waiting.
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => break Err(err.into()),
            }
        };
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        result
    }

    /// Opens an existing database for reading only: no migration, no write, no lock taken
    /// beyond SQLite's own (WAL readers never block the build that writes).
    pub fn open_read_only(path: &Path) -> Result<State, StateError> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StateError::Open { path: path.to_path_buf(), source })?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(State::with(conn, path))
    }

    /// What readers (`status`, `why`, `history`, `graph`, `build -n`, the dashboard) open:
    /// the database read-only, at this dagrun's schema, or `None` when nothing was ever
    /// recorded. A reader never migrates, writes or saves anything, so it can never make a
    /// build wait or fail.
    pub fn open_reader(path: &Path) -> Result<Option<State>, StateError> {
        if !path.exists() {
            return Ok(None);
        }
        let state = State::open_read_only(path)?;
        let version = state.known_version()?;
        match version.cmp(&schema_version()) {
            _ if version == 0 => Ok(None), // an empty database: nothing recorded yet
            std::cmp::Ordering::Equal => Ok(Some(state)),
            std::cmp::Ordering::Less => {
                Err(StateError::Older { path: path.to_path_buf(), found: version, known: schema_version() })
            }
            std::cmp::Ordering::Greater => unreachable!("known_version refuses newer schemas"),
        }
    }

    /// The schema version, if this dagrun can use the database: not newer than it knows, and
    /// not another program's (tables, but no version).
    fn known_version(&self) -> Result<usize, StateError> {
        let version: usize = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > schema_version() {
            return Err(self.newer(version));
        }
        if version == 0 {
            let tables: i64 =
                self.conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))?;
            if tables > 0 {
                return Err(StateError::Foreign { path: self.path.clone() });
            }
        }
        Ok(version)
    }

    /// Opens (creating if needed) the database at `path` without touching its schema.
    pub fn open_unmigrated(path: &Path) -> Result<State, StateError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let open_err = |source| StateError::Open { path: path.to_path_buf(), source };
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)
            .map_err(open_err)?;
        let mut state = State::with(conn, path);
        state.configure()?;
        Ok(state)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A schema version above this dagrun's: a newer dagrun wrote it, unless the file is
    /// damaged (a garbage header), which an integrity check tells.
    fn newer(&self, found: usize) -> StateError {
        if !self.passes_quick_check() {
            return StateError::Damaged { path: self.path.clone() };
        }
        StateError::Newer { path: self.path.clone(), found, known: schema_version() }
    }

    /// `PRAGMA quick_check`: run only when something already looks wrong, as it reads the
    /// whole file.
    pub fn passes_quick_check(&self) -> bool {
        let result: Result<String, _> = self.conn.query_row("PRAGMA quick_check", [], |r| r.get(0));
        result.is_ok_and(|r| r == "ok")
    }

    /// A value that dagrun never writes (a hash that is not hex, an unknown status): the
    /// file was damaged.
    pub(crate) fn damaged(&self) -> StateError {
        StateError::Damaged { path: self.path.clone() }
    }

    fn configure(&mut self) -> Result<(), StateError> {
        let is_not_db = |e: &rusqlite::Error| e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase);
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        // Every transaction takes the write lock at BEGIN, where the busy timeout applies;
        // a deferred one upgraded later would fail at once with "database is locked".
        self.conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        // Per-stage writes reuse their prepared statements (parsing one cost as much as
        // running it); room for every statement a build uses.
        self.conn.set_prepared_statement_cache_capacity(64);
        // journal_mode is the first statement that reads the file: a non-database fails here.
        let mode: String = self.conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(|e| {
            if is_not_db(&e) { StateError::NotADatabase { path: self.path.clone() } } else { StateError::Sql(e) }
        })?;
        debug_assert!(mode.eq_ignore_ascii_case("wal") || mode.eq_ignore_ascii_case("memory"));
        // In WAL mode NORMAL loses no committed transaction on a process crash, only
        // possibly the last ones on power loss, and avoids an fsync per stage.
        self.conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        // Temporary data in memory, never in files. Each stage's change is a savepoint of the
        // coordinator's held transaction (`batch.rs`), and a savepoint whose page splits
        // journal more than 64 KiB spilled its statement journal to a new file in the
        // temporary directory: 80 files made and unlinked in a 1,000-stage full build, each a
        // new inode (`strace`). What goes there is small: a stage's pages, or a query's sort
        // of at most one row a component.
        self.conn.pragma_update(None, "temp_store", "MEMORY")?;
        // The WAL stays when the process exits, to be checkpointed by a later build once it
        // is long (`trim_wal`). Checkpointing at every close cost each build, no-op or not,
        // four fsyncs: the WAL recreated, the directory, the WAL and the database.
        self.conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        Ok(())
    }

    /// Brings the schema to the newest version; returns (version before, version after).
    /// Refuses databases that were not made by dagrun, so user data is never written over.
    pub fn migrate(&mut self) -> Result<(usize, usize), StateError> {
        let version = self.known_version()?;
        if version == schema_version() {
            return Ok((version, version));
        }
        migrations()
            .to_latest(&mut self.conn)
            .map_err(|source| StateError::Migrate { path: self.path.clone(), source })?;
        Ok((version, schema_version()))
    }

    /// Whether anything is recorded `running`: under the build lock, what a dead build left.
    /// After a build that ended, as most have, there is nothing: two reads (one by an index)
    /// spare every build the look for orphans and the sweep's write transaction.
    pub fn anything_unfinished(&self) -> Result<bool, StateError> {
        let anything = "SELECT EXISTS (SELECT 1 FROM stage_runs WHERE status = 'running')
                            OR EXISTS (SELECT 1 FROM runs WHERE outcome = 'running')";
        Ok(self.conn.prepare_cached(anything)?.query_row([], |r| r.get::<_, bool>(0))?)
    }

    /// Marks what a dead build left `running` as interrupted; returns the stages affected.
    /// Call only while holding the build lock, after its processes were ended: then nothing
    /// is really running.
    /// `unrecorded`: stages whose processes a dead run left (found by its attempt prefix);
    /// each that has no `running` row in that run (it started shortly before its build
    /// died) gets an `interrupted` one.
    pub fn sweep_unfinished(&mut self, unrecorded: &[(RunId, String)]) -> Result<Vec<String>, StateError> {
        self.sweep("status = 'running'", Some("outcome = 'running'"), unrecorded)
    }

    /// Marks the running built-in stages (no process group) of the builds of process `pid`
    /// as interrupted, when it exits with them still running. Shell stages, and the runs,
    /// stay `running`: the next build ends what carries the runs' attempt prefixes (a shell
    /// attempt may have started before its row was recorded), then sweeps them.
    pub fn sweep_in_process(&mut self, pid: u32) -> Result<Vec<String>, StateError> {
        let rows = format!(
            "status = 'running' AND attempt_token IS NULL
             AND run_id IN (SELECT run_id FROM runs WHERE outcome = 'running' AND pid = {pid})"
        );
        self.sweep(&rows, None, &[])
    }

    /// Marks the `stage_runs` rows matching `rows`, and the `runs` matching `runs`, as
    /// interrupted; records each of `unrecorded` (a run and a stage) without a running row
    /// in its run as an interrupted attempt of it.
    fn sweep(
        &mut self,
        rows: &str,
        runs: Option<&str>,
        unrecorded: &[(RunId, String)],
    ) -> Result<Vec<String>, StateError> {
        let now = timestamp(SystemTime::now());
        let tx = self.conn.transaction()?;
        let stages: Vec<String> = {
            // Deduplicated and sorted here: with DISTINCT and ORDER BY in the query, SQLite
            // walks the by-component index over every row ever recorded instead of the
            // small index of running rows (5 ms of a 10,000-stage no-op build).
            let mut stmt = tx.prepare(&format!("SELECT component FROM stage_runs WHERE {rows}"))?;
            let mut found: std::collections::BTreeSet<String> =
                stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            let mut insert = tx.prepare(
                "INSERT INTO stage_runs (run_id, component, attempt, status, reason, started_at, finished_at, error)
                 SELECT ?1, ?2, 1 + (SELECT count(*) FROM stage_runs WHERE run_id = ?1 AND component = ?2),
                     'interrupted', 'its build died before recording why it ran',
                     (SELECT started_at FROM runs WHERE run_id = ?1), ?3,
                     'the build running this stage died before it finished'
                 WHERE NOT EXISTS (SELECT 1 FROM stage_runs WHERE run_id = ?1 AND component = ?2 AND status = 'running')",
            )?;
            for (run, stage) in unrecorded {
                insert.execute(params![run.0, stage, now])?;
                found.insert(stage.clone());
            }
            found.into_iter().collect()
        };
        tx.execute(
            &format!(
                "UPDATE stage_runs SET status = 'interrupted', finished_at = ?1,
                     error = 'the build running this stage died before it finished' WHERE {rows}"
            ),
            [&now],
        )?;
        for stage in &stages {
            tx.execute(
                "INSERT INTO orchestrator_state (component, is_dirty, run_count, failure_count, last_status, last_error)
                 VALUES (?1, 1, 1, 1, 'interrupted', 'the build running this stage died before it finished')
                 ON CONFLICT (component) DO UPDATE SET is_dirty = 1, run_count = run_count + 1,
                     failure_count = failure_count + 1, last_status = 'interrupted', last_error = excluded.last_error",
                [stage],
            )?;
        }
        // A dead run ended when its last stage did, not when it is found.
        if let Some(runs) = runs {
            tx.execute(
                &format!(
                    "UPDATE runs SET outcome = 'interrupted',
                         finished_at = (SELECT max(finished_at) FROM stage_runs WHERE stage_runs.run_id = runs.run_id AND status != 'interrupted')
                     WHERE {runs}"
                ),
                [],
            )?;
        }
        tx.commit()?;
        self.written.get_mut().extend(stages.iter().cloned());
        Ok(stages)
    }

    /// Sets `is_dirty` on the given stages so that the next build re-runs them.
    pub fn invalidate(&mut self, components: &[&str]) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        for component in components {
            tx.execute(
                "INSERT INTO orchestrator_state (component, is_dirty, invalidations) VALUES (?1, 1, 1)
                 ON CONFLICT (component) DO UPDATE SET is_dirty = 1, invalidations = invalidations + 1",
                [component],
            )?;
        }
        tx.commit()?;
        self.written.get_mut().extend(components.iter().map(|c| c.to_string()));
        Ok(())
    }

    /// The runs a dead build left `running`, with their attempt prefixes: any process
    /// carrying a token with one of them is what such a build left, recorded or not.
    /// Call only while holding the build lock: then none of them belongs to a live build.
    pub fn unfinished_runs(&self) -> Result<Vec<(RunId, String)>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT run_id, attempt_prefix FROM runs WHERE outcome = 'running' AND attempt_prefix IS NOT NULL
             ORDER BY run_id",
        )?;
        let runs = stmt.query_map([], |r| Ok((RunId(r.get(0)?), r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(runs)
    }

    /// The shell attempts and cluster jobs a dead build left `running`, with their tokens.
    /// Call only while holding the build lock: then none of them belongs to a live build.
    pub fn unfinished_attempts(&self) -> Result<Vec<UnfinishedAttempt>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT component, attempt_token, run_id, executor, job_id FROM stage_runs
             WHERE status = 'running' AND attempt_token IS NOT NULL ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(UnfinishedAttempt {
                component: r.get(0)?,
                token: r.get(1)?,
                run: r.get(2)?,
                on_slurm: r.get::<_, Option<String>>(3)?.as_deref() == Some("slurm"),
                job_id: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The JSON manifest of what the last successful fingerprint covered.
    pub fn fingerprint_inputs(&self, component: &str) -> Result<Option<String>, StateError> {
        let json = self
            .conn
            .query_row("SELECT fingerprint_inputs FROM orchestrator_state WHERE component = ?1", [component], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()?;
        Ok(json.flatten())
    }

    /// Records a run that begins, with the prefix that starts the token of each of its local
    /// shell attempts (see migration 0007).
    pub fn begin_run(&self, trigger: &str, targets: &[&str], jobs: usize) -> Result<Run, StateError> {
        let attempt_prefix = crate::unique::hex("run", 16);
        self.conn.execute(
            "INSERT INTO runs (trigger, started_at, pid, jobs, targets, attempt_prefix) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                trigger,
                timestamp(SystemTime::now()),
                std::process::id(),
                jobs as i64,
                targets.join(" "),
                attempt_prefix
            ],
        )?;
        Ok(Run { id: RunId(self.conn.last_insert_rowid()), attempt_prefix })
    }

    pub fn finish_run(&self, run: RunId, outcome: RunOutcome, counts: &RunCounts) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE runs SET finished_at = ?2, outcome = ?3, stages_ran = ?4, stages_cut_off = ?5,
                 stages_up_to_date = ?6, stages_failed = ?7, stages_blocked = ?8, stages_restored = ?9 WHERE run_id = ?1",
            params![
                run.0,
                timestamp(SystemTime::now()),
                outcome.as_str(),
                counts.ran,
                counts.cut_off,
                counts.up_to_date,
                counts.failed,
                counts.blocked,
                counts.restored
            ],
        )?;
        Ok(())
    }

    /// Every stage's record and the stat cache: from the snapshot when it is current, else
    /// from the tables (read in one transaction).
    pub fn load_plan_state(&self) -> Result<snapshot::PlanState, StateError> {
        // Without the bookkeeping of `load_plan_state_keeping`: only a build's
        // `refresh_snapshot` reads it.
        Ok(self.load_plan_state_keeping_at(None)?.1)
    }

    /// [`load_plan_state`](Self::load_plan_state), but from `kept` (a plan state held in
    /// memory since a build of this process, with the token it was read under) when the
    /// token has not moved since: nobody has changed what a plan reads.
    /// Returns it with the token it was read under.
    pub fn load_plan_state_keeping(
        &self,
        kept: Option<(i64, snapshot::PlanState)>,
    ) -> Result<(Option<i64>, snapshot::PlanState), StateError> {
        // Read before the token: a commit by anyone after this moves it.
        let version = self.data_version()?;
        let loaded = self.load_plan_state_keeping_at(kept)?;
        self.loaded_at_version.set(Some(version));
        self.written.borrow_mut().clear();
        Ok(loaded)
    }

    fn load_plan_state_keeping_at(
        &self,
        kept: Option<(i64, snapshot::PlanState)>,
    ) -> Result<(Option<i64>, snapshot::PlanState), StateError> {
        let token = self.token()?;
        if let Some((kept_token, plan_state)) = kept
            && token == Some(kept_token)
        {
            self.snapshot_token.set(token);
            return Ok((token, plan_state));
        }
        if let Some(token) = token
            && let Some(plan_state) = snapshot::read(&snapshot::path_for(&self.path), token)
        {
            self.snapshot_token.set(Some(token));
            return Ok((Some(token), plan_state));
        }
        self.load_plan_state_from_tables()
    }

    /// After a build: the plan state the tables now hold, with their token, given the one the
    /// build loaded (`plan_state`, its stat cache grown by what the build hashed); the
    /// snapshot is rewritten if the state changed (best effort: a snapshot that cannot be
    /// written is only a slower next load). When nobody else has committed since the load,
    /// that is the loaded plan state with the records this build wrote read again; else all
    /// of it is read from the tables. The token is `None` if its row is gone.
    pub fn refresh_snapshot(
        &self,
        plan_state: snapshot::PlanState,
    ) -> Result<(Option<i64>, snapshot::PlanState), StateError> {
        let token = self.token()?;
        if self.snapshot_token.get() == token {
            return Ok((token, plan_state));
        }
        let (token, plan_state) = match token {
            Some(token)
                if self.loaded_at_version.get() == Some(self.data_version()?) && self.only_own_triggers()? =>
            {
                (Some(token), self.with_own_writes(plan_state)?)
            }
            _ => self.load_plan_state_from_tables()?,
        };
        let Some(token) = token else { return Ok((None, plan_state)) };
        if snapshot::write(&snapshot::path_for(&self.path), token, &plan_state).is_ok() {
            self.snapshot_token.set(Some(token));
        }
        Ok((Some(token), plan_state))
    }

    /// `plan_state` with the records this connection wrote since it was loaded read again.
    /// Its stat cache already holds every entry the build wrote: each was hashed in memory
    /// before it was written.
    fn with_own_writes(&self, (mut records, entries): snapshot::PlanState) -> Result<snapshot::PlanState, StateError> {
        for component in self.written.borrow().iter() {
            match self.load_record(component)? {
                Some(record) => records.insert(component.clone(), record),
                None => records.remove(component),
            };
        }
        Ok((records, entries))
    }

    /// Whether the database has no triggers but dagrun's (migration 0005's): someone's own
    /// trigger could change other stages' rows within this connection's writes, unseen by
    /// `data_version` and `written`.
    fn only_own_triggers(&self) -> Result<bool, StateError> {
        let others: i64 = self.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name NOT IN (
                 'orchestrator_state_inserted', 'orchestrator_state_updated', 'orchestrator_state_deleted',
                 'stage_outputs_inserted', 'stage_outputs_updated', 'stage_outputs_deleted',
                 'file_hashes_inserted', 'file_hashes_updated', 'file_hashes_deleted')",
            [],
            |r| r.get(0),
        )?;
        Ok(others == 0)
    }

    fn data_version(&self) -> Result<i64, StateError> {
        Ok(self.conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    /// Keeps the write-ahead log short. Nobody holds the database open between builds, so
    /// whoever opens it first rebuilds the log's index by reading every frame of it: after a
    /// big build, each no-op build read megabytes. Once the log is over `WAL_TRIM_BYTES`, a
    /// build checkpoints it into the database and truncates it: a few fsyncs, once in a
    /// while (a no-op build adds two pages). A reader in the way only postpones it.
    ///
    /// Best effort, after everything is recorded: it never waits for a reader, and never fails
    /// the build (what it could not do, a later build does).
    pub fn trim_wal(&self) {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        if std::fs::metadata(&wal).map_or(0, |m| m.len()) <= WAL_TRIM_BYTES {
            return;
        }
        if self.conn.busy_timeout(Duration::ZERO).is_ok() {
            let _ = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            let _ = self.conn.busy_timeout(BUSY_TIMEOUT);
        }
    }

    /// The state token (see migration 0005): it changes whenever anyone changes what a plan
    /// reads. `None` if someone deleted its row: then no snapshot is ever used.
    fn token(&self) -> Result<Option<i64>, StateError> {
        Ok(self.conn.query_row("SELECT token FROM state_token WHERE id = 1", [], |r| r.get(0)).optional()?)
    }

    fn load_plan_state_from_tables(&self) -> Result<(Option<i64>, snapshot::PlanState), StateError> {
        // Deferred: a read, which must not take the write lock writers' BEGIN takes.
        let read = rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Deferred)?;
        let token = self.token()?;
        let records = self.load_records()?;
        let entries = self.load_hash_cache()?;
        read.commit()?;
        Ok((token, (records, entries)))
    }

    /// Writes stat-cache entries hashed outside any stage (e.g. by `status`).
    pub fn save_hash_cache(&mut self, entries: &[(String, crate::fingerprint::CacheEntry)]) -> Result<(), StateError> {
        if entries.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        records::put_cache_entries(&tx, entries)?;
        tx.commit()?;
        Ok(())
    }
}

/// A shell attempt that never finished, and the token in the environment of its processes.
#[derive(Debug, Clone)]
pub struct UnfinishedAttempt {
    pub component: String,
    pub token: String,
    pub run: i64,
    /// Handed to Slurm: its job is found by `job_id`, if sbatch's answer was recorded, or by
    /// its name and comment.
    pub on_slurm: bool,
    pub job_id: Option<String>,
}

/// RFC 3339 UTC with milliseconds: sorts as text, readable in plain SQL.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}
