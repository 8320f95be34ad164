//! One attempt of one stage, and the [`Executor`] trait: where an attempt runs. The local
//! executor runs it as dagrun's own child process (or, for a built-in, in dagrun's own
//! process); the Slurm executor as a batch job. Whichever ran it, the worker then checks and
//! hashes the outputs on this machine the same way (`outputs.rs`), so fingerprints, early
//! cutoff and the recorded state do not depend on the executor.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::runner::{AttemptFailure, ShellCommand};
use super::watchdog::Watchdog;
use crate::builtin::Builtin;
use crate::spec::Stage;

/// What an attempt runs.
pub enum Work<'a> {
    /// A shell command, its substituted values in the environment (`runner::expand_command`).
    Shell(ShellCommand),
    /// A built-in stage's function.
    Builtin {
        name: &'a str,
        builtin: &'a Arc<dyn Builtin>,
        /// Resolved input paths (globs expanded) and declared outputs, relative to the root.
        inputs: Vec<String>,
        outputs: Vec<String>,
    },
}

/// One attempt, ready to run: its outputs' old versions are gone and their directories exist.
pub struct Attempt<'a> {
    pub stage: &'a Stage,
    /// The pipeline directory: the attempt's working directory.
    pub root: &'a Path,
    pub work: Work<'a>,
    /// The attempt's log, absolute: its output goes there, after any note dagrun wrote.
    pub log: &'a Path,
    /// Unique to the attempt and findable by a later build (`group.rs`): in the environment of
    /// a shell attempt's processes, and the comment of a cluster job.
    pub token: &'a str,
    /// The run this attempt belongs to (a cluster job is named after it).
    pub run: i64,
}

/// How the build talks to a running attempt.
pub struct Control<'a> {
    /// Timeouts and interruption (Ctrl-C, the agent's shutdown): the attempt is ended. While
    /// it only drains, a cluster job still queued is withdrawn.
    pub watchdog: &'a Watchdog,
    /// The build starts nothing new (it drains or is interrupted, `--fail-fast` after a
    /// failure, or a state write that failed): a cluster job still queued has not started,
    /// so it is withdrawn; a running one finishes (or is ended by the watchdog).
    pub stop_starting: &'a (dyn Fn() -> bool + Sync),
    /// A cluster executor reports the job id it was given; `true` once the state has recorded
    /// it (the job may then start), `false` if it could not be.
    pub submitted: &'a (dyn Fn(&str) -> bool + Sync),
    /// To call once the attempt runs (its process started, its job submitted). The worker's
    /// report of the stage it ran before may wait for this, so that the coordinator does not
    /// wake while the attempt's process is being started (see the worker loop in
    /// `executor::execute`); without the call, the coordinator reads that report up to
    /// `START_NOTICE` later.
    pub running: &'a (dyn Fn() + Sync),
}

/// Where an attempt runs.
///
/// `run` returns only once nothing of the attempt can run or write any more (every process
/// of it dead, or its job ended), so that its outputs can be hashed; it returns the metrics a
/// built-in reported. A new executor (a Kubernetes Job, say) implements this and nothing else:
/// see ARCHITECTURE.md.
pub trait Executor: Sync {
    fn run(&self, attempt: &Attempt<'_>, control: &Control<'_>) -> Result<BTreeMap<String, f64>, AttemptFailure>;
}
