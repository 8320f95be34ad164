//! The library's top error; each module's error converts into it.

use crate::graph::CycleError;
use crate::spec::LoadError;
use crate::state::{LockError, StateError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "{cycle}\n --> {file}\n  = help: remove one of these dependencies (an `after` entry or an input another stage writes)"
    )]
    Cycle { cycle: CycleError, file: String },
    #[error("unknown stage `{name}`{}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    UnknownStage { name: String, suggestion: Option<String> },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("cannot accept `{stage}`: {reason}")]
    Accept { stage: String, reason: String },
    #[error("stage `{stage}` of a killed build is still running: {source}")]
    Orphans { stage: String, source: crate::executor::ProcessesSurvive },
    #[error("stages of a killed build are still running: {source}")]
    RunOrphans { source: crate::executor::ProcessesSurvive },
    #[error(
        "stage `{stage}` of a killed build may still run on Slurm (job name `{job}`): {reason}; with Slurm's commands on PATH, build again, or cancel it yourself (`scancel --name={job}`)"
    )]
    OrphanJobs { stage: String, job: String, reason: String },
    #[error("{0}")]
    Executor(String),
    #[cfg(feature = "dashboard")]
    #[error(transparent)]
    Serve(#[from] crate::dashboard::ServeError),
    #[error("cannot watch inputs: {message}")]
    Watch { message: String },
}

impl Error {
    /// Names the state database in errors that lack it (see [`StateError::at`]).
    pub fn at_state(self, path: &std::path::Path) -> Error {
        match self {
            Error::State(err) => Error::State(err.at(path)),
            other => other,
        }
    }

    /// Whether the error is the user's input (a bad pipeline file or stage name): exit code 2.
    pub fn is_usage(&self) -> bool {
        #[cfg(feature = "dashboard")]
        if let Error::Serve(crate::dashboard::ServeError::TokenRequired { .. }) = self {
            return true;
        }
        matches!(self, Error::Load(_) | Error::Cycle { .. } | Error::UnknownStage { .. })
    }
}
