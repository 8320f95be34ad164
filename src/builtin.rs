//! Built-in (`fn`) stages: Rust functions registered by name. The engine knows only this
//! trait; the functions themselves (e.g. the market pipeline) live outside it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// What a built-in stage's function gets to work with.
pub struct BuiltinContext<'a> {
    pub stage: &'a str,
    /// The pipeline directory.
    pub root: &'a Path,
    pub params: &'a toml::Table,
    /// Resolved input paths (globs expanded), absolute.
    pub inputs: Vec<PathBuf>,
    /// Declared output paths, absolute. Their parent directories exist.
    pub outputs: Vec<PathBuf>,
    /// The stage's log file.
    pub log: &'a mut dyn Write,
    /// Set when the build is interrupted; long-running functions should check it.
    pub cancel: &'a AtomicBool,
    /// Numbers worth keeping (accuracy, PnL...): recorded in `stage_runs.metrics` and shown
    /// when the stage finishes.
    pub metrics: &'a mut BTreeMap<String, f64>,
}

pub type BuiltinError = Box<dyn std::error::Error + Send + Sync>;

/// A built-in stage. Its version string is part of the fingerprint: bump it when the
/// function's behaviour changes so that stages using it re-run.
pub trait Builtin: Send + Sync {
    fn version(&self) -> &str;
    fn run(&self, ctx: &mut BuiltinContext<'_>) -> Result<(), BuiltinError>;
}

/// The built-in stages a pipeline may name with `fn = "..."`.
#[derive(Clone, Default)]
pub struct Registry {
    stages: BTreeMap<String, Arc<dyn Builtin>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn register(&mut self, name: impl Into<String>, stage: impl Builtin + 'static) -> &mut Self {
        self.stages.insert(name.into(), Arc::new(stage));
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Builtin>> {
        self.stages.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.stages.keys().map(String::as_str).collect()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.stages.keys()).finish()
    }
}
