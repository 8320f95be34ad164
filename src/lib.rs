//! dagrun: an incremental pipeline engine. Stages declared in `pipeline.toml` form a DAG;
//! each stage's inputs are fingerprinted by content (BLAKE3); a stage re-runs only when
//! something it depends on really changed; state lives in SQLite.
//!
//! The library never prints: [`Engine`] methods return values and report progress as
//! [`Event`]s. See ARCHITECTURE.md for the map.

pub mod agent;
pub mod builtin;
pub mod cancel;
#[cfg(feature = "dashboard")]
pub mod dashboard;
pub mod engine;
pub mod error;
pub mod event;
pub mod executor;
pub mod fingerprint;
pub mod graph;
mod hashing_io;
#[cfg(feature = "markets")]
pub mod markets;
pub mod metrics;
pub mod planner;
mod reserve;
pub mod runcache;
pub mod spec;
pub mod state;
mod unique;
mod watch;

pub use builtin::{Builtin, BuiltinContext, Registry};
pub use cancel::CancelToken;
pub use engine::{BuildOptions, ClusterJob, Engine, LiveBuild, RunningStage, StageReport, WhyReport};
pub use error::Error;
pub use event::{BuildSummary, Event};
pub use planner::DirtyReason;
