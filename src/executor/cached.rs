//! The executor's use of the run-cache: a dirty stage restored instead of run, and a
//! success stored.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use super::Shared;
use super::Success;
use super::outputs::collect_outputs;
use super::task::{append_log, remove_outputs};
use crate::fingerprint::{OutputHash, output_hash};
use crate::planner::{DirtyReason, Evaluation};
use crate::spec::StageIdx;

/// Whether the run-cache serves this stage: on for the build, and the stage has outputs,
/// is not `cache = false` and does not run every time (a stage with no outputs, or one that
/// always runs, is there for its side effects).
fn cache_for<'a>(shared: &Shared<'a>, idx: StageIdx) -> Option<&'a dyn crate::runcache::Store> {
    let stage = &shared.eval.spec.stages[idx];
    let serves = stage.cache && !stage.always_run && !stage.outputs.is_empty() && !shared.eval.force;
    shared.run_cache.filter(|_| serves)
}

/// Restores a dirty stage's outputs from the run-cache when its fingerprint was stored,
/// checked file by file and then as a whole against the recorded output hash. Anything
/// short of that leaves no outputs behind and returns `None`: the stage runs.
pub(super) fn restore_from_cache(
    shared: &Shared<'_>,
    idx: StageIdx,
    eval: &Evaluation,
    reason: &DirtyReason,
) -> Option<Success> {
    use crate::runcache::{forget, lookup, restore};
    // `invalidate` asks for a run: the recorded result is not to be trusted, nor a stored one.
    if matches!(reason, DirtyReason::Invalidated) {
        return None;
    }
    let store = cache_for(shared, idx)?;
    let spec = shared.eval.spec;
    let stage = &spec.stages[idx];
    // The common miss, found before anything is touched.
    let manifest = lookup(store, &eval.fingerprint, &stage.outputs)?;
    let key = crate::runcache::key(&eval.fingerprint);
    let started = Instant::now();
    remove_outputs(shared, idx).ok()?;
    let log_path = shared.log_path(idx, 1);
    let note = |text: &str| {
        append_log(&spec.root.join(&log_path), text);
    };
    if let Err(problem) = restore(store, &spec.root, &eval.fingerprint, &manifest) {
        note(&format!("run-cache entry {key} not restored ({problem}); running the stage"));
        let _ = remove_outputs(shared, idx);
        return None;
    }
    let checked = collect_outputs(shared, idx, eval)
        .ok()
        .map(|(outputs, moved)| (output_hash(&outputs), outputs, moved))
        .filter(|(hash, _, _)| hash.to_hex() == manifest.output_hash);
    let Some((hash, outputs, moved)) = checked else {
        note(&format!(
            "run-cache entry {key} restored outputs that differ from those recorded; entry removed, running the stage"
        ));
        forget(store, &eval.fingerprint);
        let _ = remove_outputs(shared, idx);
        return None;
    };
    note(&format!("restored from the run-cache ({}, entry {key}) instead of running", store.describe()));
    let duration = started.elapsed();
    Some(Success {
        restored: Some((reason.clone(), log_path)),
        eval: eval.clone(),
        metrics: manifest.metrics,
        output_hash: hash,
        outputs,
        duration,
        at: SystemTime::now(),
        moved,
    })
}

/// Stores a success's outputs in the run-cache. A failure to store fails nothing: it is
/// noted in the stage's log, and the next switch back runs the stage.
pub(super) fn store_in_cache(
    shared: &Shared<'_>,
    idx: StageIdx,
    eval: &Evaluation,
    output_hash: &OutputHash,
    metrics: &BTreeMap<String, f64>,
    log_path: &str,
) {
    let Some(store) = cache_for(shared, idx) else { return };
    let spec = shared.eval.spec;
    let stage = &spec.stages[idx];
    let saved = crate::runcache::save(
        store,
        &spec.root,
        stage.name.as_str(),
        &eval.fingerprint,
        &stage.outputs,
        output_hash,
        metrics,
    );
    if let Err(err) = saved {
        let text = format!("dagrun: outputs not stored in the run-cache ({}): {err}", store.describe());
        append_log(&spec.root.join(log_path), &text);
    }
}
