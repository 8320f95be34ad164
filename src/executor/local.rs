//! The local executor: a shell attempt as dagrun's child process in a process group of its
//! own, a built-in in dagrun's own process.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::attempt::{Attempt, Control, Executor, Work};
use super::log::AttemptLog;
use super::runner::{self, AttemptFailure, ShellJob};
use super::spawn::BaseEnvironment;
use crate::builtin::BuiltinContext;

/// Runs attempts on this machine.
pub struct Local {
    /// What each shell attempt's environment starts from.
    base_env: BaseEnvironment,
}

impl Local {
    /// For one build: its shell attempts get dagrun's environment as it is now.
    pub fn new() -> Local {
        Local { base_env: BaseEnvironment::capture(runner::is_stage_variable) }
    }
}

impl Default for Local {
    fn default() -> Local {
        Local::new()
    }
}

impl Executor for Local {
    fn run(&self, attempt: &Attempt<'_>, control: &Control<'_>) -> Result<BTreeMap<String, f64>, AttemptFailure> {
        let mut log = AttemptLog::new(attempt.log);
        let stage = attempt.stage;
        match &attempt.work {
            Work::Shell(command) => {
                let job = ShellJob {
                    stage: stage.name.as_str(),
                    command: &command.script,
                    base_env: &self.base_env,
                    env: &command.env,
                    root: attempt.root,
                    log: &mut log,
                    timeout: stage.timeout,
                    token: attempt.token,
                    on_spawned: control.running,
                };
                runner::run_shell(job, control.watchdog).map(|()| BTreeMap::new())
            }
            Work::Builtin { builtin, inputs, outputs, .. } => {
                // A built-in's writes to its log are best effort: make sure there is one.
                log.file()
                    .map_err(|e| AttemptFailure::failed(format!("cannot create log {}: {e}", attempt.log.display())))?;
                let mut metrics = BTreeMap::new();
                let watch = control.watchdog.watch_builtin(stage.timeout);
                (control.running)();
                let ctx = BuiltinContext {
                    stage: stage.name.as_str(),
                    root: attempt.root,
                    params: &stage.params,
                    inputs: inputs.iter().map(|p| attempt.root.join(p)).collect(),
                    outputs: outputs.iter().map(|p| attempt.root.join(p)).collect::<Vec<PathBuf>>(),
                    log: &mut log,
                    cancel: &watch.flag,
                    metrics: &mut metrics,
                };
                let result = runner::run_builtin(builtin, ctx);
                match control.watchdog.unwatch_builtin(&watch) {
                    Some(cause) => Err(AttemptFailure::stopped(cause, stage.timeout, "the built-in was told to stop")),
                    None => result.map(|()| metrics),
                }
            }
        }
    }
}
