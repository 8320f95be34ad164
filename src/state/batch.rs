//! Group commit: while a build runs, the changes of the stages that end within a few
//! milliseconds of each other are committed in one transaction.
//!
//! Each stage's change stays whole: it is in one transaction with the others' or alone, and a
//! write that fails rolls back the whole batch it was in. What a crash loses is what a crash
//! always lost, stages whose end was not yet recorded, which the next build runs again; only
//! now it may be the stages of the last few milliseconds rather than the last one.
//!
//! Why: a commit writes every page the transaction touched to the write-ahead log (about ten
//! pages a stage, mostly the same few: the pages of `orchestrator_state`, `stage_runs`,
//! `stage_outputs`, `file_hashes` and their indexes), and on ext4 those writes were a fifth of
//! the coordinator's CPU in a full build of 1,000 small stages (`perf record`, 18.8% of its
//! samples in `pwrite64`); one commit for several stages writes each page once.

use std::time::Instant;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::{State, StateError};

/// Whether changes are held for one commit.
#[derive(Debug, Clone, Copy, Default)]
pub(super) enum Batch {
    /// Each change is a transaction of its own.
    #[default]
    Off,
    /// The next change opens a transaction that stays open until `commit_held`.
    Holding,
    /// A transaction is open, since the moment given, holding changes not yet committed.
    Open(Instant),
}

impl State {
    /// From now on, changes are held in one transaction until [`commit_held`](Self::commit_held)
    /// (a build calls it a few milliseconds after the first held change, and before it answers
    /// anyone waiting for a change to be recorded), until [`stop_holding`](Self::stop_holding).
    pub fn hold_commits(&self) {
        if matches!(self.batch.get(), Batch::Off) {
            self.batch.set(Batch::Holding);
        }
    }

    /// Since when changes wait to be committed, if any do.
    pub fn held_since(&self) -> Option<Instant> {
        match self.batch.get() {
            Batch::Open(since) => Some(since),
            Batch::Off | Batch::Holding => None,
        }
    }

    /// Commits the changes held so far; later ones are held again. A commit that fails
    /// (a full disk) rolls them all back.
    pub fn commit_held(&self) -> Result<(), StateError> {
        let Batch::Open(_) = self.batch.get() else { return Ok(()) };
        self.batch.set(Batch::Holding);
        if let Err(err) = self.conn.execute_batch("COMMIT") {
            self.roll_back();
            return Err(err.into());
        }
        Ok(())
    }

    /// Commits what is held, and makes each change a transaction of its own again.
    pub fn stop_holding(&self) -> Result<(), StateError> {
        let committed = self.commit_held();
        self.batch.set(Batch::Off);
        committed
    }

    /// Drops what is held, uncommitted (after a panic: none of it is then trusted), and makes
    /// each change a transaction of its own again.
    pub fn drop_held(&self) {
        if let Batch::Open(_) = self.batch.get() {
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
                self.batch.set(Batch::Open(Instant::now()));
                self.held_change(write)
            }
            Batch::Open(_) => self.held_change(write),
        }
    }

    /// A change in the held transaction; if it fails, part of it may be written, so the whole
    /// batch is rolled back and no stage is left half recorded.
    fn held_change<T>(&self, write: impl FnOnce(&Connection) -> Result<T, StateError>) -> Result<T, StateError> {
        let written = write(&self.conn);
        if written.is_err() {
            self.roll_back();
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
    use super::super::{RunId, StageStatus};
    use super::*;

    /// What another connection (`status`, the dashboard) sees: the components with rows.
    fn seen(path: &std::path::Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn.prepare("SELECT component FROM stage_runs ORDER BY id").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    fn not_run(state: &State, run: RunId, component: &str) -> Result<(), StateError> {
        state.record_not_run(run, component, StageStatus::CutOff, "upstream outputs unchanged")
    }

    #[test]
    fn held_changes_are_seen_by_others_once_committed_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let state = State::open(&path).unwrap();
        let run = state.begin_run("build", &[], 2).unwrap().id;
        state.hold_commits();
        assert_eq!(state.held_since(), None, "nothing held before the first change");
        not_run(&state, run, "a").unwrap();
        not_run(&state, run, "b").unwrap();
        assert!(state.held_since().is_some());
        assert!(seen(&path).is_empty(), "held changes are not committed yet");
        state.commit_held().unwrap();
        assert_eq!(seen(&path), ["a", "b"]);
        not_run(&state, run, "c").unwrap();
        state.stop_holding().unwrap();
        assert_eq!(seen(&path), ["a", "b", "c"]);
        not_run(&state, run, "d").unwrap();
        assert_eq!(state.held_since(), None, "no longer held: each change commits at once");
        assert_eq!(seen(&path), ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_failed_change_rolls_back_its_whole_batch_and_later_ones_are_held_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let state = State::open(&path).unwrap();
        let run = state.begin_run("build", &[], 2).unwrap().id;
        state.hold_commits();
        not_run(&state, run, "a").unwrap();
        // No such run: the row's foreign key fails.
        assert!(not_run(&state, RunId(run.0 + 100), "b").is_err());
        assert_eq!(state.held_since(), None, "the batch was rolled back");
        not_run(&state, run, "c").unwrap();
        state.stop_holding().unwrap();
        assert_eq!(seen(&path), ["c"], "`a` went with the batch the failure was in");
    }

    #[test]
    fn dropped_changes_are_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let state = State::open(&path).unwrap();
        let run = state.begin_run("build", &[], 2).unwrap().id;
        state.hold_commits();
        not_run(&state, run, "a").unwrap();
        state.drop_held();
        not_run(&state, run, "b").unwrap();
        assert_eq!(seen(&path), ["b"]);
    }
}
