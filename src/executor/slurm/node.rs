//! A built-in stage on a cluster node: the job runs `dagrun run-stage JOB_FILE`, and this
//! runs the built-in from what the coordinator wrote in the job file. Everything the
//! function sees (params, resolved inputs, outputs) is what the coordinator fingerprinted,
//! never read again from a pipeline file that may have been edited since.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::builtin::{BuiltinContext, Registry};

/// The job file: JSON, so that a person looking at a job on the cluster can read it.
#[derive(Serialize, Deserialize)]
pub struct NodeJob {
    pub stage: String,
    pub builtin: String,
    /// The built-in's version string the stage was fingerprinted with.
    pub version: String,
    pub root: PathBuf,
    /// The stage's params as TOML text: exact, whatever the value types.
    pub params: String,
    /// Relative to `root`.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Where the metrics the built-in reports are written, as a JSON object.
    pub metrics: PathBuf,
}

/// Runs the built-in a job file names; its log is this process's stdout (the job's log).
pub fn run_stage_job(job_file: &Path, registry: &Registry, cancel: &AtomicBool) -> Result<(), String> {
    let text = std::fs::read_to_string(job_file).map_err(|e| format!("cannot read {}: {e}", job_file.display()))?;
    let job: NodeJob =
        serde_json::from_str(&text).map_err(|e| format!("{} is not a dagrun job file: {e}", job_file.display()))?;
    let builtin = registry
        .get(&job.builtin)
        .ok_or_else(|| format!("this dagrun has no built-in `{}`: run the same dagrun on every node", job.builtin))?;
    if builtin.version() != job.version {
        return Err(format!(
            "built-in `{}` here is version {}, but the stage was fingerprinted with {}: run the same dagrun on every node",
            job.builtin,
            builtin.version(),
            job.version
        ));
    }
    let params: toml::Table = toml::from_str(&job.params).map_err(|e| format!("bad params in the job file: {e}"))?;
    let mut metrics = BTreeMap::new();
    let mut log = std::io::stdout();
    let ctx = BuiltinContext {
        stage: &job.stage,
        root: &job.root,
        params: &params,
        inputs: job.inputs.iter().map(|p| job.root.join(p)).collect(),
        outputs: job.outputs.iter().map(|p| job.root.join(p)).collect(),
        log: &mut log,
        cancel,
        metrics: &mut metrics,
    };
    crate::executor::run_builtin(builtin, ctx).map_err(|failure| failure.message)?;
    let json = serde_json::to_vec(&metrics).expect("metrics serialise");
    let mut file = std::fs::File::create(&job.metrics)
        .map_err(|e| format!("cannot write metrics to {}: {e}", job.metrics.display()))?;
    file.write_all(&json).and_then(|()| file.sync_all()).map_err(|e| format!("cannot write metrics: {e}"))
}
