//! dagrun's integration tests: the real binary, temp directories, real SQLite.

mod sandbox;

mod agent;
#[cfg(all(feature = "dashboard", feature = "markets"))]
mod browser;
mod build;
#[cfg(feature = "dashboard")]
mod dashboard;
mod dvc;
mod examples;
mod explain;
mod failures;
mod faults;
mod fuzz;
mod globs;
#[cfg(feature = "markets")]
mod market_data;
mod markets;
mod metrics;
mod named_paths;
mod parallel;
mod params_files;
mod paths;
mod property;
mod quoting;
mod run_cache;
mod slurm;
mod spec_cache;
mod state;
mod templates;
mod terminal;
mod trust;
mod validation;
