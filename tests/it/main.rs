//! dagrun's integration tests: the real binary, temp directories, real SQLite.

mod sandbox;

mod agent;
mod build;
mod examples;
mod explain;
mod failures;
mod faults;
mod fuzz;
#[cfg(feature = "markets")]
mod markets;
mod parallel;
mod property;
mod state;
mod validation;
