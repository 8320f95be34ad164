//! The example market-data pipeline: built-in stages `markets.*` on Arrow and linfa.
//!
//! markets → ticks → features → model → inference → backtest ┐
//!                           └────────→ baseline ───────────┴→ publish
//!
//! Tables travel as Arrow IPC files sorted by (market_id, ts); outputs are byte-identical
//! for identical inputs and params (no timestamps inside data files), so early cutoff works.
//! The engine never imports this module; the `dagrun` binary registers it.

mod backtest;
mod chart;
mod features;
mod ingest;
mod model;
mod params;
mod report;
mod stages;
mod synth;
mod table;

use std::path::Path;

use crate::builtin::{Builtin, BuiltinContext, BuiltinError, Registry};

pub use backtest::{Backtest, Execution, Leg, simulate};
pub use features::{FEATURES, compute_features};

/// An error inside a market stage; its text is what the user sees.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StageError(String);

impl StageError {
    pub fn msg(message: impl Into<String>) -> StageError {
        StageError(message.into())
    }

    pub fn io(path: &Path, err: std::io::Error) -> StageError {
        StageError(format!("{}: {err}", path.display()))
    }
}

type StageFn = fn(&mut BuiltinContext<'_>) -> Result<(), StageError>;

/// A built-in stage made of a version string and a function.
struct MarketStage {
    version: &'static str,
    run: StageFn,
}

impl Builtin for MarketStage {
    fn version(&self) -> &str {
        self.version
    }

    fn run(&self, ctx: &mut BuiltinContext<'_>) -> Result<(), BuiltinError> {
        (self.run)(ctx).map_err(Into::into)
    }
}

/// Registers every `markets.*` stage. Bump a stage's version when its output changes for
/// the same inputs, so pipelines using it re-run.
pub fn register(registry: &mut Registry) {
    let stages: [(&str, &'static str, StageFn); 8] = [
        ("markets.markets", "3", stages::markets),
        ("markets.ticks", "5", stages::ticks),
        ("markets.features", "2", stages::features),
        ("markets.model", "3", stages::model),
        ("markets.inference", "3", stages::inference),
        ("markets.backtest", "3", stages::backtest),
        ("markets.baseline", "3", stages::baseline),
        ("markets.publish", "3", stages::publish),
    ];
    for (name, version, run) in stages {
        registry.register(name, MarketStage { version, run });
    }
}
