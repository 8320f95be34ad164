//! What a finished attempt leaves: its declared outputs hashed (each must exist), the
//! inputs that moved while it ran, and the numbers of its metrics files. Whatever ran the
//! stage (a local process, a cluster job), this is how its result is read.

use std::collections::BTreeMap;

use super::Shared;
use super::runner::AttemptFailure;
use crate::fingerprint::FileHash;
use crate::planner::Evaluation;
use crate::spec::StageIdx;

/// Adds the numbers of the stage's declared metrics files to `metrics`. A file the stage
/// declared but wrote unreadably fails the attempt: the declaration is a promise.
pub(super) fn read_declared_metrics(
    shared: &Shared<'_>,
    idx: StageIdx,
    metrics: &mut BTreeMap<String, f64>,
) -> Result<(), AttemptFailure> {
    let spec = shared.eval.spec;
    for file in &spec.stages[idx].metrics {
        let read = crate::metrics::read_metrics_file(&file.to_path(&spec.root))
            .map_err(|e| AttemptFailure::failed(format!("metrics file `{file}`: {e}")))?;
        metrics.extend(read);
    }
    Ok(())
}

pub(super) type CollectedOutputs = (BTreeMap<String, FileHash>, Vec<String>);

/// After a clean exit: every declared output must exist; hash them, and find inputs that
/// changed while the stage ran.
pub(super) fn collect_outputs(
    shared: &Shared<'_>,
    idx: StageIdx,
    eval: &Evaluation,
) -> Result<CollectedOutputs, AttemptFailure> {
    let stage = &shared.eval.spec.stages[idx];
    let paths: Vec<&str> = stage.outputs.iter().map(|o| o.as_str()).collect();
    let mut outputs = BTreeMap::new();
    for (path, hashed) in shared.eval.cache.hash_paths(&paths) {
        match hashed {
            Ok(hash) => {
                outputs.insert(path.to_string(), hash);
            }
            Err(crate::fingerprint::HashError::Missing { .. }) => {
                return Err(AttemptFailure::failed(format!(
                    "the stage exited 0 but did not write its output `{path}`"
                )));
            }
            Err(err) => return Err(AttemptFailure::failed(format!("cannot hash output: {err}"))),
        }
    }
    let before: Vec<&str> = eval.inputs.inputs.keys().map(String::as_str).collect();
    let moved = shared
        .eval
        .cache
        .hash_paths(&before)
        .into_iter()
        .filter(|(path, now)| now.as_ref().ok() != eval.inputs.inputs.get(*path))
        .map(|(path, _)| path.to_string())
        .collect();
    Ok((outputs, moved))
}
