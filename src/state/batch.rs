//! Several stages' changes in one transaction: while a build runs, the coordinator writes the
//! ends of the stages that end within a few milliseconds of each other together
//! (`executor/coordinator.rs`, `COMMIT_WINDOW`), holding them in memory meanwhile, so that the
//! write lock is taken only for as long as the writing takes.
//!
//! Each stage's change stays whole: it is in one transaction with the others' or alone, and
//! one that fails is undone alone (a savepoint each); a commit that fails loses the batch. What
//! a crash loses is what a crash always lost, stages whose end was not yet committed, which the
//! next build checks as it would any stage; only now it may be the stages of the last few
//! milliseconds rather than the last one.
//!
//! Why: a commit writes every page the transaction touched to the write-ahead log (about ten
//! pages a stage, mostly the same few: the pages of `orchestrator_state`, `stage_runs`,
//! `stage_outputs`, `file_hashes` and their indexes), and on ext4 those writes were a fifth of
//! the coordinator's CPU in a full build of 1,000 small stages (`perf record`, 18.8% of its
//! samples in `pwrite64`); one commit for several stages writes each page once.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::{State, StateError};

/// Whether changes are held for one commit.
#[derive(Debug, Clone, Copy, Default)]
pub(super) enum Batch {
    /// Each change is a transaction of its own.
    #[default]
    Off,
    /// The next change opens a transaction that stays open until `stop_holding`.
    Holding,
    /// A transaction is open, holding changes not yet committed.
    Open,
}

impl State {
    /// From now on, changes are held in one transaction until [`stop_holding`](Self::stop_holding).
    pub fn hold_commits(&self) {
        if matches!(self.batch.get(), Batch::Off) {
            self.batch.set(Batch::Holding);
        }
    }

    /// Commits what is held, and makes each change a transaction of its own again. A commit
    /// that fails (a full disk) rolls back everything held.
    pub fn stop_holding(&self) -> Result<(), StateError> {
        let open = matches!(self.batch.get(), Batch::Open);
        self.batch.set(Batch::Off);
        if open && let Err(err) = self.conn.execute_batch("COMMIT") {
            self.roll_back();
            return Err(err.into());
        }
        Ok(())
    }

    /// Drops what is held, uncommitted (after a panic: none of it is then trusted), and makes
    /// each change a transaction of its own again.
    pub fn drop_held(&self) {
        if let Batch::Open = self.batch.get() {
            self.roll_back();
        }
        self.batch.set(Batch::Off);
    }

    /// Writes one stage's change: in a transaction of its own, or in the held one.
    pub(super) fn change<T>(&self, write: impl FnOnce(&Connection) -> Result<T, StateError>) -> Result<T, StateError> {
        match self.batch.get() {
            Batch::Off => {
                let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
                let value = write(&tx)?;
                tx.commit()?;
                Ok(value)
            }
            Batch::Holding => {
                // Takes the write lock, where the busy timeout applies (see `configure`).
                self.conn.execute_batch("BEGIN IMMEDIATE")?;
                self.batch.set(Batch::Open);
                self.held_change(write)
            }
            Batch::Open => self.held_change(write),
        }
    }

    /// A change in the held transaction, in a savepoint of its own: if it fails, only what it
    /// wrote is undone, and the other stages' changes stay held. If SQLite has ended the whole
    /// transaction itself (as it may on a full disk or an I/O error), they are gone with it.
    fn held_change<T>(&self, write: impl FnOnce(&Connection) -> Result<T, StateError>) -> Result<T, StateError> {
        self.conn.prepare_cached("SAVEPOINT change")?.execute([])?;
        let written = write(&self.conn);
        let ended = match &written {
            Ok(_) => self.conn.prepare_cached("RELEASE change").and_then(|mut release| release.execute([])),
            Err(_) => self.conn.execute_batch("ROLLBACK TO change; RELEASE change").map(|()| 0),
        };
        if let Err(err) = ended {
            // The savepoint could not be ended: nothing held can be trusted.
            self.roll_back();
            self.batch.set(Batch::Holding);
            return Err(written.err().unwrap_or(err.into()));
        }
        if self.conn.is_autocommit() {
            self.batch.set(Batch::Holding);
        }
        written
    }

    fn roll_back(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::super::{RunId, StageStatus};
    use super::*;

    /// What another connection (`status`, the dashboard) sees: the components with rows.
    fn seen(path: &std::path::Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn.prepare("SELECT component FROM stage_runs ORDER BY id").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    /// A new state database with one run begun; the directory lives as long as the first value.
    fn new_state() -> (tempfile::TempDir, std::path::PathBuf, State, RunId) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let state = State::open(&path).unwrap();
        let run = state.begin_run("build", &[], 2).unwrap().id;
        (dir, path, state, run)
    }

    fn not_run(state: &State, run: RunId, component: &str) -> Result<(), StateError> {
        state.record_not_run(run, component, StageStatus::CutOff, "upstream outputs unchanged", SystemTime::now())
    }

    /// A held change's savepoint journals the pages it changes; past 64 KiB SQLite would
    /// spill that journal to a new file in the temporary directory, a new inode a commit.
    #[test]
    fn savepoint_journals_stay_in_memory() {
        let (_dir, _path, state, _run) = new_state();
        let temp_store: i64 = state.conn.query_row("PRAGMA temp_store", [], |r| r.get(0)).unwrap();
        assert_eq!(temp_store, 2, "temp_store = MEMORY");
    }

    #[test]
    fn held_changes_are_seen_by_others_once_committed_together() {
        let (_dir, path, state, run) = new_state();
        state.hold_commits();
        not_run(&state, run, "a").unwrap();
        not_run(&state, run, "b").unwrap();
        assert!(seen(&path).is_empty(), "held changes are not committed yet");
        state.stop_holding().unwrap();
        assert_eq!(seen(&path), ["a", "b"]);
        not_run(&state, run, "c").unwrap();
        assert_eq!(seen(&path), ["a", "b", "c"], "no longer held: each change commits at once");
    }

    #[test]
    fn a_failed_change_is_undone_alone_and_the_others_stay_held() {
        let (_dir, path, state, run) = new_state();
        state.hold_commits();
        not_run(&state, run, "a").unwrap();
        // No such run: the row's foreign key fails.
        assert!(not_run(&state, RunId(run.0 + 100), "b").is_err());
        not_run(&state, run, "c").unwrap();
        assert!(seen(&path).is_empty(), "the batch is still open");
        state.stop_holding().unwrap();
        assert_eq!(seen(&path), ["a", "c"]);
    }

    #[test]
    fn dropped_changes_are_never_committed() {
        let (_dir, path, state, run) = new_state();
        state.hold_commits();
        not_run(&state, run, "a").unwrap();
        state.drop_held();
        not_run(&state, run, "b").unwrap();
        assert_eq!(seen(&path), ["b"]);
    }
}
