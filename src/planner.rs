//! Decides, for each stage, whether it must run and why. Reads files and recorded state;
//! spawns nothing and writes nothing.

use std::collections::HashMap;
use std::fmt;

use rayon::prelude::*;
use serde::Serialize;

use crate::builtin::Registry;
use crate::fingerprint::{
    ActionId, ActionRef, FileHash, Fingerprint, FingerprintFields, FingerprintInputs, HashCache, HashError, NameKey,
    OutputHash,
};
use crate::graph::Dag;
use crate::spec::{Action, GlobPattern, Input, RelPath, Spec, StageIdx};
use crate::state::{StageRecord, StageStatus};

/// Why a stage must run (or cannot).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DirtyReason {
    /// `--force`.
    Forced,
    /// `always_run = true` (DVC's `always_changed`).
    AlwaysRuns,
    /// No recorded success.
    NeverSucceeded,
    /// The last execution did not succeed.
    LastRunFailed {
        status: StageStatus,
    },
    /// `dagrun invalidate`.
    Invalidated,
    /// The fingerprint differs from the one recorded at the last success; `changes` says
    /// how (empty until explained against the recorded manifest).
    Changed {
        changes: Vec<Change>,
    },
    OutputMissing {
        path: String,
    },
    OutputModified {
        path: String,
    },
    /// An upstream stage must run first; whether this one runs depends on its outputs.
    UpstreamDirty {
        stage: String,
    },
    /// A source input is missing or unreadable: the stage cannot run.
    InputUnavailable {
        path: String,
        error: String,
    },
}

/// One difference between the recorded fingerprint inputs and the current ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Command { old: String, new: String },
    Builtin { old: String, new: String },
    Param { key: String, old: Option<String>, new: Option<String> },
    Env { name: String },
    InputChanged { path: String, old: String, new: String },
    InputAdded { path: String },
    InputRemoved { path: String },
    DeclaredInputs,
    Outputs,
    Names,
    Upstream { stage: String, old: String, new: String },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
        match self {
            Change::Command { .. } => f.write_str("command changed"),
            Change::Builtin { old, new } => write!(f, "built-in changed: {old} -> {new}"),
            Change::Param { key, old, new } => write!(f, "param `{key}` changed: {} -> {}", shown(old), shown(new)),
            Change::Env { name } => write!(f, "env `{name}` changed"),
            Change::InputChanged { path, old, new } => write!(f, "input `{path}` changed ({old} -> {new})"),
            Change::InputAdded { path } => write!(f, "input `{path}` added"),
            Change::InputRemoved { path } => write!(f, "input `{path}` removed"),
            Change::DeclaredInputs => f.write_str("declared inputs changed"),
            Change::Outputs => f.write_str("declared outputs changed"),
            Change::Names => f.write_str("names of inputs or outputs changed"),
            Change::Upstream { stage, .. } => write!(f, "upstream `{stage}` output changed"),
        }
    }
}

impl fmt::Display for DirtyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirtyReason::Forced => f.write_str("forced"),
            DirtyReason::AlwaysRuns => f.write_str("always runs (`always_run = true`)"),
            DirtyReason::NeverSucceeded => f.write_str("never succeeded"),
            DirtyReason::LastRunFailed { status: StageStatus::TimedOut } => f.write_str("last run timed out"),
            DirtyReason::LastRunFailed { status: StageStatus::Interrupted | StageStatus::Running } => {
                f.write_str("last run was interrupted")
            }
            DirtyReason::LastRunFailed { .. } => f.write_str("last run failed"),
            DirtyReason::Invalidated => f.write_str("invalidated"),
            DirtyReason::Changed { changes } if changes.is_empty() => f.write_str("fingerprint changed"),
            DirtyReason::Changed { changes } => {
                let words: Vec<String> = changes.iter().map(ToString::to_string).collect();
                f.write_str(&words.join("; "))
            }
            DirtyReason::OutputMissing { path } => write!(f, "output `{path}` is missing"),
            DirtyReason::OutputModified { path } => write!(f, "output `{path}` was modified"),
            DirtyReason::UpstreamDirty { stage } => write!(f, "upstream `{stage}` is dirty"),
            DirtyReason::InputUnavailable { error, .. } => write!(f, "input {error}"),
        }
    }
}

/// A stage's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    UpToDate,
    Dirty(DirtyReason),
}

impl Verdict {
    pub fn is_dirty(&self) -> bool {
        matches!(self, Verdict::Dirty(_))
    }
}

/// What evaluating a stage found: its fingerprint now, and whether it must run.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub inputs: FingerprintInputs,
    pub fingerprint: Fingerprint,
    pub verdict: Verdict,
    /// Each declared input's paths after glob expansion, in declaration order, for
    /// `${inputs}`, `${inputs.NAME}` and built-ins.
    pub input_paths: Vec<Vec<String>>,
}

/// What evaluation reads: the pipeline, recorded state and the stat cache.
#[derive(Clone, Copy)]
pub struct EvalContext<'a> {
    pub spec: &'a Spec,
    pub dag: &'a Dag,
    pub records: &'a HashMap<String, StageRecord>,
    pub cache: &'a HashCache,
    pub registry: &'a Registry,
    pub force: bool,
}

impl EvalContext<'_> {
    /// The output hash recorded at stage `idx`'s last success.
    pub fn recorded_output_hash(&self, idx: StageIdx) -> Option<OutputHash> {
        self.records.get(self.spec.stages[idx].name.as_str()).and_then(|r| r.output_hash)
    }
}

/// Evaluates one stage given the output hash of each upstream stage (`None`: not built),
/// keeping everything its fingerprint covers, to explain and record it.
pub fn evaluate_stage(
    ctx: &EvalContext<'_>,
    idx: StageIdx,
    upstream_hash: &dyn Fn(StageIdx) -> Option<OutputHash>,
) -> Evaluation {
    evaluate_with(ctx, idx, upstream_hash, |found| found.into_evaluation())
}

/// What evaluating a stage found, borrowed from the spec and from the evaluation itself:
/// the caller keeps what it needs. A plan keeps the verdict alone, and so copies no string of
/// the spec: making and freeing those was most of the planning of a pipeline up to date.
struct Found<'a> {
    fields: FingerprintFields<'a, Input, RelPath>,
    fingerprint: Fingerprint,
    verdict: Verdict,
    /// Each glob input's matches, in the order of the stage's inputs.
    globbed: &'a [Vec<String>],
}

impl Found<'_> {
    fn into_evaluation(self) -> Evaluation {
        let inputs = self.fields.to_inputs();
        debug_assert_eq!(inputs.fingerprint(), self.fingerprint, "the manifest is what was hashed");
        let mut globbed = self.globbed.iter();
        let input_paths = self
            .fields
            .declared_inputs
            .iter()
            .map(|input| match input {
                Input::Path(path) => vec![path.to_string()],
                Input::Glob(_) => globbed.next().cloned().unwrap_or_default(),
            })
            .collect();
        Evaluation { inputs, fingerprint: self.fingerprint, verdict: self.verdict, input_paths }
    }
}

/// Evaluates one stage (see [`evaluate_stage`]) and hands what it found to `keep`.
fn evaluate_with<R>(
    ctx: &EvalContext<'_>,
    idx: StageIdx,
    upstream_hash: &dyn Fn(StageIdx) -> Option<OutputHash>,
    keep: impl FnOnce(Found<'_>) -> R,
) -> R {
    let stage = &ctx.spec.stages[idx];
    let (globbed, empty_glob) = expand_globs(ctx, idx);
    let sources = source_inputs(ctx, idx, &globbed);
    let (inputs, unavailable) = hash_sources(ctx, &sources, empty_glob);
    let (upstream, unbuilt) = upstream_hashes(ctx, idx, upstream_hash);
    let env_values = env_values(stage);
    let env: Vec<(&str, Option<&str>)> = env_values.iter().map(|(name, value)| (*name, value.as_deref())).collect();
    let names = name_keys(stage);
    let fields = FingerprintFields {
        action: action_ref(ctx, stage),
        params: &stage.params,
        env: &env,
        inputs: &inputs,
        declared_inputs: &stage.inputs,
        outputs: &stage.outputs,
        names: &names,
        upstream: &upstream,
    };
    let fingerprint = fields.fingerprint();
    let verdict = verdict(ctx, idx, unavailable, unbuilt, fingerprint);
    keep(Found { fields, fingerprint, verdict, globbed: &globbed })
}

/// Whether a stage must run, given what its evaluation found: an input it cannot read, the
/// last upstream stage that was never built, and its fingerprint now.
fn verdict(
    ctx: &EvalContext<'_>,
    idx: StageIdx,
    unavailable: Option<DirtyReason>,
    unbuilt_upstream: Option<&str>,
    fingerprint: Fingerprint,
) -> Verdict {
    let stage = &ctx.spec.stages[idx];
    let record = ctx.records.get(stage.name.as_str());
    if let Some(reason) = unavailable {
        Verdict::Dirty(reason)
    } else if let Some(reason) = own_reason(ctx, record, fingerprint, stage.always_run) {
        Verdict::Dirty(reason)
    } else if let Some(stage) = unbuilt_upstream {
        Verdict::Dirty(DirtyReason::UpstreamDirty { stage: stage.to_string() })
    } else {
        check_outputs(ctx, idx, record.expect("own_reason is NeverSucceeded without a record"))
    }
}

/// The content hash of each source input, sorted by path, each path once (as the
/// fingerprint's map holds them), and why the stage cannot read them all, if so: a glob that
/// matches nothing (`empty_glob`) before anything else, else the first source that cannot be
/// read.
fn hash_sources<'p>(
    ctx: &EvalContext<'_>,
    sources: &[&'p str],
    empty_glob: Option<&GlobPattern>,
) -> (Vec<(&'p str, FileHash)>, Option<DirtyReason>) {
    let mut unavailable = empty_glob.map(|glob| DirtyReason::InputUnavailable {
        path: glob.to_string(),
        error: format!("glob `{glob}` matches no file and no stage writes one; add a matching file or fix the pattern"),
    });
    let mut hashes = Vec::with_capacity(sources.len());
    for (path, hashed) in ctx.cache.hash_paths(sources) {
        match hashed {
            Ok(hash) => hashes.push((path, hash)),
            Err(err) => {
                let error = match &err {
                    HashError::Missing { .. } => format!("`{path}` does not exist and no stage writes it"),
                    other => other.to_string(),
                };
                unavailable.get_or_insert(DirtyReason::InputUnavailable { path: path.to_string(), error });
            }
        }
    }
    hashes.sort_unstable_by_key(|&(path, _)| path);
    hashes.dedup_by_key(|&mut (path, _)| path);
    (hashes, unavailable)
}

/// The recorded output hash of each upstream stage, sorted by name, and the last upstream
/// stage, in the graph's order, that has none (never built).
fn upstream_hashes<'s>(
    ctx: &EvalContext<'s>,
    idx: StageIdx,
    upstream_hash: &dyn Fn(StageIdx) -> Option<OutputHash>,
) -> (Vec<(&'s str, OutputHash)>, Option<&'s str>) {
    let mut upstream = Vec::new();
    let mut unbuilt = None;
    for up in ctx.dag.upstream(idx) {
        let name = ctx.spec.stages[up].name.as_str();
        match upstream_hash(up) {
            Some(hash) => upstream.push((name, hash)),
            None => unbuilt = Some(name),
        }
    }
    upstream.sort_unstable_by_key(|&(name, _)| name);
    upstream.dedup_by_key(|&mut (name, _)| name);
    (upstream, unbuilt)
}

fn action_ref<'s>(ctx: &EvalContext<'s>, stage: &'s crate::spec::Stage) -> ActionRef<'s> {
    match &stage.action {
        Action::Shell { cmd } => ActionRef::Shell { cmd },
        Action::Builtin { name } => {
            ActionRef::Builtin { name, version: ctx.registry.get(name).map(|b| b.version()).unwrap_or_default() }
        }
    }
}

/// The stage's declared environment variables with their values now, sorted by name, each once.
fn env_values(stage: &crate::spec::Stage) -> Vec<(&str, Option<String>)> {
    let mut env: Vec<(&str, Option<String>)> =
        stage.env.iter().map(|name| (name.as_str(), std::env::var(name).ok())).collect();
    env.sort_unstable_by(|a, b| a.0.cmp(b.0));
    env.dedup_by(|a, b| a.0 == b.0);
    env
}

/// `inputs.NAME` and `outputs.NAME` -> the path each name stands for, sorted by name (all of
/// `inputs.` sorts before `outputs.`, and each table is sorted by its names).
fn name_keys(stage: &crate::spec::Stage) -> Vec<(NameKey<'_>, &str)> {
    let inputs = stage
        .named_inputs()
        .iter()
        .map(|(name, &i)| (NameKey { prefix: "inputs.", name }, stage.inputs[i].as_rel().as_str()));
    let outputs = stage
        .named_outputs()
        .iter()
        .map(|(name, &i)| (NameKey { prefix: "outputs.", name }, stage.outputs[i].as_str()));
    inputs.chain(outputs).collect()
}

/// The reasons a stage is dirty that need no output hashing, in the order README.md lists them.
fn own_reason(
    ctx: &EvalContext<'_>,
    record: Option<&StageRecord>,
    fingerprint: Fingerprint,
    always_run: bool,
) -> Option<DirtyReason> {
    if let Some(reason) = record_reason(ctx.force, record, always_run) {
        return Some(reason);
    }
    let record = record.expect("record_reason is NeverSucceeded without a record");
    if record.fingerprint != Some(fingerprint) {
        return Some(DirtyReason::Changed { changes: Vec::new() });
    }
    if record.is_dirty {
        return Some(DirtyReason::Invalidated);
    }
    None
}

/// The reasons a stage is dirty that its record alone gives (no fingerprint needed), except
/// an invalidation, which `own_reason` names after a changed fingerprint.
fn record_reason(force: bool, record: Option<&StageRecord>, always_run: bool) -> Option<DirtyReason> {
    if force {
        return Some(DirtyReason::Forced);
    }
    if always_run {
        return Some(DirtyReason::AlwaysRuns);
    }
    // A failure says more than "never succeeded", so it is checked first.
    if let Some(status) =
        record.and_then(|r| r.last_status).filter(|&s| !matches!(s, StageStatus::Success | StageStatus::Restored))
    {
        return Some(DirtyReason::LastRunFailed { status });
    }
    if record.is_none_or(|r| r.fingerprint.is_none()) {
        return Some(DirtyReason::NeverSucceeded);
    }
    None
}

/// Up to date only if every declared output still has the content recorded at the last success.
fn check_outputs(ctx: &EvalContext<'_>, idx: StageIdx, record: &StageRecord) -> Verdict {
    let stage = &ctx.spec.stages[idx];
    let paths: Vec<&str> = stage.outputs.iter().map(|o| o.as_str()).collect();
    for (path, hashed) in ctx.cache.hash_paths(&paths) {
        let reason = match hashed {
            Err(_) => DirtyReason::OutputMissing { path: path.to_string() },
            Ok(hash) if record.output(path) != Some(&hash) => DirtyReason::OutputModified { path: path.to_string() },
            Ok(_) => continue,
        };
        return Verdict::Dirty(reason);
    }
    Verdict::UpToDate
}

/// Each glob input's matches, in the order of the stage's inputs, and the first glob that
/// matches nothing and that no stage's output reaches: like a missing literal input, it means
/// the stage cannot run. (One a stage writes into may be empty until that stage has run.)
fn expand_globs<'s>(ctx: &EvalContext<'s>, idx: StageIdx) -> (Vec<Vec<String>>, Option<&'s GlobPattern>) {
    let mut globbed = Vec::new();
    let mut empty_glob = None;
    for input in &ctx.spec.stages[idx].inputs {
        if let Input::Glob(glob) = input {
            let paths = expand_glob(ctx.spec, glob);
            if paths.is_empty() && empty_glob.is_none() && ctx.dag.writers_of(input).is_empty() {
                empty_glob = Some(&**glob);
            }
            globbed.push(paths);
        }
    }
    (globbed, empty_glob)
}

/// The stage's inputs no stage writes, in the order declared (a glob's matches in its place):
/// the files to hash. Inputs another stage writes are covered by that stage's output hash.
fn source_inputs<'a>(ctx: &EvalContext<'a>, idx: StageIdx, globbed: &'a [Vec<String>]) -> Vec<&'a str> {
    let mut sources = Vec::new();
    let mut globbed = globbed.iter();
    for (i, input) in ctx.spec.stages[idx].inputs.iter().enumerate() {
        match input {
            Input::Path(path) if !ctx.dag.writes_input(idx, i) => sources.push(path.as_str()),
            Input::Path(_) => {}
            Input::Glob(_) => {
                for path in globbed.next().into_iter().flatten() {
                    let produced =
                        crate::spec::normalize(&ctx.spec.root, path).is_ok_and(|p| ctx.dag.producer_of(&p).is_some());
                    if !produced {
                        sources.push(path.as_str());
                    }
                }
            }
        }
    }
    sources
}

/// Files matching a glob, relative to the root, sorted; never the state database's files.
fn expand_glob(spec: &Spec, glob: &GlobPattern) -> Vec<String> {
    let root = &spec.root;
    let state = spec.state_path.strip_prefix(root).ok().and_then(|p| p.to_str()).unwrap_or("");
    let is_state = |p: &str| {
        !state.is_empty() && p.starts_with(state) && matches!(&p[state.len()..], "" | "-wal" | "-shm" | "-journal")
    };
    let mut found = glob.expand(root);
    found.retain(|p| !is_state(p));
    found
}

/// Compares recorded fingerprint inputs with current ones, field by field.
pub fn explain_change(old: &FingerprintInputs, new: &FingerprintInputs) -> Vec<Change> {
    let mut changes = Vec::new();
    match (&old.action, &new.action) {
        (a, b) if a == b => {}
        (ActionId::Builtin { name: on, version: ov }, ActionId::Builtin { name: nn, version: nv }) => {
            changes.push(Change::Builtin { old: format!("{on} {ov}"), new: format!("{nn} {nv}") })
        }
        (old_action, new_action) => {
            changes.push(Change::Command { old: action_text(old_action), new: action_text(new_action) })
        }
    }
    let keys: std::collections::BTreeSet<&String> = old.params.keys().chain(new.params.keys()).collect();
    for key in keys {
        let (o, n) = (old.params.get(key), new.params.get(key));
        if o != n {
            changes.push(Change::Param {
                key: key.clone(),
                old: o.map(ToString::to_string),
                new: n.map(ToString::to_string),
            });
        }
    }
    let names: std::collections::BTreeSet<&String> = old.env.keys().chain(new.env.keys()).collect();
    for name in names {
        if old.env.get(name) != new.env.get(name) {
            changes.push(Change::Env { name: name.clone() });
        }
    }
    for (path, hash) in &new.inputs {
        match old.inputs.get(path) {
            None => changes.push(Change::InputAdded { path: path.clone() }),
            Some(was) if was != hash => {
                changes.push(Change::InputChanged { path: path.clone(), old: was.short(), new: hash.short() })
            }
            Some(_) => {}
        }
    }
    for path in old.inputs.keys().filter(|p| !new.inputs.contains_key(*p)) {
        changes.push(Change::InputRemoved { path: path.clone() });
    }
    if old.declared_inputs != new.declared_inputs {
        changes.push(Change::DeclaredInputs);
    }
    if old.outputs != new.outputs {
        changes.push(Change::Outputs);
    }
    if old.names != new.names {
        changes.push(Change::Names);
    }
    let stages: std::collections::BTreeSet<&String> = old.upstream.keys().chain(new.upstream.keys()).collect();
    for stage in stages {
        let (was, now) = (old.upstream.get(stage), new.upstream.get(stage));
        if was != now {
            let short = |h: Option<&OutputHash>| h.map_or_else(|| "(none)".to_string(), OutputHash::short);
            changes.push(Change::Upstream { stage: stage.clone(), old: short(was), new: short(now) });
        }
    }
    changes
}

fn action_text(action: &ActionId) -> String {
    match action {
        ActionId::Shell { cmd } => cmd.clone(),
        ActionId::Builtin { name, version } => format!("fn {name} {version}"),
    }
}

/// The verdict for every selected stage, before anything runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Indexed by stage; `None` for stages outside the selection.
    verdicts: Vec<Option<Verdict>>,
}

impl Plan {
    pub fn verdict(&self, idx: StageIdx) -> Option<&Verdict> {
        self.verdicts[idx].as_ref()
    }
}

/// The verdict of every selected stage, for a build: only the verdict is kept (a build
/// evaluates a dirty stage again when it is about to run), so that a large pipeline's plan
/// holds one verdict a stage, not everything it was hashed from.
///
/// `evaluate`, when the caller knows what can have changed since the state was last written
/// and by whom (the agent under `--watch`: its own build wrote the state, nobody has since,
/// and its watcher names every file that changed): only those stages are evaluated, which
/// must be every stage touched (a source input or an output changed) and every one not
/// clean by its record ([`unclean_by_record`]); the others are up to date as recorded, since
/// nothing they are fingerprinted on can have moved. Downstream of a dirty stage is marked
/// as in a full plan, and evaluated again by the executor once its upstream is done.
pub fn plan_build(ctx: &EvalContext<'_>, selected: &[bool], evaluate: Option<&[bool]>) -> Plan {
    let recorded_hash = |up: StageIdx| ctx.recorded_output_hash(up);
    let mut verdicts: Vec<Option<Verdict>> = (0..ctx.spec.stages.len())
        .into_par_iter()
        .map(|idx| {
            selected[idx].then(|| match evaluate {
                Some(evaluate) if !evaluate[idx] => Verdict::UpToDate,
                _ => evaluate_with(ctx, idx, &recorded_hash, |found| found.verdict),
            })
        })
        .collect();
    mark_upstream_dirty(
        ctx,
        &mut verdicts,
        |v| v.as_ref().is_some_and(Verdict::is_dirty),
        |v| matches!(v, Some(Verdict::UpToDate)),
        |v, reason| *v = Some(Verdict::Dirty(reason)),
    );
    Plan { verdicts }
}

/// By stage index: whether a stage's record alone leaves it dirty, whatever the files say
/// (never succeeded, last run failed, invalidated, or runs every time).
pub fn unclean_by_record(spec: &Spec, records: &HashMap<String, StageRecord>) -> Vec<bool> {
    spec.stages
        .par_iter()
        .map(|stage| {
            let record = records.get(stage.name.as_str());
            record_reason(false, record, stage.always_run).is_some() || record.is_some_and(|r| r.is_dirty)
        })
        .collect()
}

/// A stage's evaluation as [`evaluate_all`] keeps it: an up-to-date stage by its
/// fingerprint alone, a dirty one whole. A whole `Evaluation` is 328 bytes before anything
/// it points to: 33 MB for 100,000 up-to-date stages, against 4 MB this way.
#[derive(Debug)]
pub enum Evaluated {
    UpToDate(Fingerprint),
    Dirty(Box<Evaluation>),
}

impl Evaluated {
    pub fn fingerprint(&self) -> Fingerprint {
        match self {
            Evaluated::UpToDate(fingerprint) => *fingerprint,
            Evaluated::Dirty(eval) => eval.fingerprint,
        }
    }
}

/// Every selected stage's evaluation, verdicts as [`plan_build`] gives them: for `status`,
/// `why` and `accept`, which explain a dirty stage by what its fingerprint covered.
pub fn evaluate_all(ctx: &EvalContext<'_>, selected: &[bool]) -> Vec<Option<Evaluated>> {
    let recorded_hash = |up: StageIdx| ctx.recorded_output_hash(up);
    let mut evaluations: Vec<Option<Evaluated>> = (0..ctx.spec.stages.len())
        .into_par_iter()
        .map(|idx| {
            selected[idx].then(|| {
                evaluate_with(ctx, idx, &recorded_hash, |found| match found.verdict {
                    Verdict::UpToDate => Evaluated::UpToDate(found.fingerprint),
                    Verdict::Dirty(_) => Evaluated::Dirty(Box::new(found.into_evaluation())),
                })
            })
        })
        .collect();
    mark_upstream_dirty(
        ctx,
        &mut evaluations,
        |e| matches!(e, Some(Evaluated::Dirty(_))),
        |e| matches!(e, Some(Evaluated::UpToDate(_))),
        |e, reason| {
            let fingerprint = e.as_ref().map(Evaluated::fingerprint).expect("only up-to-date stages are marked");
            *e = Some(Evaluated::Dirty(Box::new(Evaluation {
                inputs: FingerprintInputs::covering_nothing(),
                fingerprint,
                verdict: Verdict::Dirty(reason),
                input_paths: Vec::new(),
            })));
        },
    );
    evaluations
}

/// Marks each up-to-date stage downstream of a dirty one as `UpstreamDirty` (`mark`),
/// naming the first of its upstream stages that is dirty by then (upstream stages are marked
/// first). Visits only what lies downstream of a dirty stage.
fn mark_upstream_dirty<T>(
    ctx: &EvalContext<'_>,
    items: &mut [T],
    is_dirty: impl Fn(&T) -> bool,
    is_up_to_date: impl Fn(&T) -> bool,
    mark: impl Fn(&mut T, DirtyReason),
) {
    let dirty: Vec<StageIdx> = (0..items.len()).filter(|&idx| is_dirty(&items[idx])).collect();
    let cone = ctx.dag.downstream_through(&dirty, |idx| is_up_to_date(&items[idx]));
    for idx in cone {
        if let Some(up) = ctx.dag.upstream(idx).find(|&up| is_dirty(&items[up])) {
            let stage = ctx.spec.stages[up].name.to_string();
            mark(&mut items[idx], DirtyReason::UpstreamDirty { stage });
        }
    }
}

/// Fills in how a fingerprint changed, by comparing with the manifest recorded at the
/// stage's last success. Other reasons pass through unchanged.
pub fn explain_reason(
    state: &crate::state::State,
    stage: &str,
    reason: DirtyReason,
    current: &FingerprintInputs,
) -> DirtyReason {
    match reason {
        DirtyReason::Changed { changes } if changes.is_empty() => {
            let recorded = state
                .fingerprint_inputs(stage)
                .ok()
                .flatten()
                .and_then(|json| serde_json::from_str::<FingerprintInputs>(&json).ok());
            let changes = recorded.map(|old| explain_change(&old, current)).unwrap_or_default();
            DirtyReason::Changed { changes }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::{Builtin, BuiltinContext, BuiltinError};
    use crate::fingerprint::CacheClock;

    struct Echo;

    impl Builtin for Echo {
        fn version(&self) -> &str {
            "3"
        }

        fn run(&self, _: &mut BuiltinContext<'_>) -> Result<(), BuiltinError> {
            Ok(())
        }
    }

    /// A plan keeps an evaluation's verdict alone; the worker records its fingerprint and
    /// its manifest (`FingerprintInputs`). They must all agree exactly, or a stage recorded
    /// up to date would be planned as dirty, or explained by a manifest that is not what was
    /// hashed.
    #[test]
    fn the_verdict_a_plan_keeps_and_the_manifest_recorded_agree_with_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("data")).unwrap();
        let files = [("a.txt", "a"), ("b.txt", "b"), ("data/y.csv", "y"), ("data/x.csv", "x")];
        let outputs = [("up.out", "u"), ("r.out", "r"), ("o.out", "o"), ("l.out", "l"), ("e.out", "e")];
        for (file, text) in files.iter().chain(&outputs) {
            std::fs::write(root.join(file), text).unwrap();
        }
        let pipeline = r#"
[stages.up]
cmd = "cat a.txt > up.out"
inputs = ["a.txt"]
outputs = ["up.out"]

[stages.named]
cmd = "cat ${inputs.second} ${inputs.first} ${inputs.csv} > ${outputs.result} && echo ${params.k} > ${outputs.other}"
inputs = { second = "up.out", first = "b.txt", csv = "data/*.csv" }
outputs = { result = "r.out", other = "o.out" }
params = { k = 1, z = [1.5, "x", { t = true }] }
env = ["PATH", "DAGRUN_TEST_SURELY_UNSET", "HOME", "PATH"]

[stages.listed]
cmd = "cat b.txt b.txt up.out > l.out"
inputs = ["b.txt", "b.txt", "up.out", "data/*.csv", "data/x.csv"]
outputs = ["l.out"]
after = ["up", "named"]

[stages.builtin]
fn = "t.echo"
inputs = ["up.out", "a.txt"]
outputs = ["e.out"]
"#;
        let file = root.join("pipeline.toml");
        std::fs::write(&file, pipeline).unwrap();
        let spec = crate::spec::load_spec(&file, &["t.echo"]).unwrap();
        let dag = Dag::build(&spec).unwrap();
        let cache = HashCache::new(root, HashMap::new(), &CacheClock::Local);
        let mut registry = Registry::new();
        registry.register("t.echo", Echo);
        let up_hash = OutputHash(blake3::hash(b"up"));
        let upstream_cases: [&dyn Fn(StageIdx) -> Option<OutputHash>; 3] =
            [&|_| None, &|_| Some(OutputHash(blake3::hash(b"other"))), &|_| Some(up_hash)];
        let mut records = HashMap::new();
        for round in 0..2 {
            let ctx = EvalContext {
                spec: &spec,
                dag: &dag,
                records: &records,
                cache: &cache,
                registry: &registry,
                force: false,
            };
            let mut recorded = HashMap::new();
            for idx in 0..spec.stages.len() {
                let name = spec.stages[idx].name.as_str();
                for (case, upstream_hash) in upstream_cases.into_iter().enumerate() {
                    let full = evaluate_stage(&ctx, idx, upstream_hash);
                    assert_eq!(full.inputs.fingerprint(), full.fingerprint, "{name}, round {round}");
                    let verdict = evaluate_with(&ctx, idx, upstream_hash, |found| found.verdict);
                    assert_eq!(verdict, full.verdict, "{name}, round {round}");
                    // The last case is recorded: the next round finds it up to date.
                    if round == 1 && case == upstream_cases.len() - 1 {
                        assert_eq!(verdict, Verdict::UpToDate, "{name}");
                    }
                    recorded.insert(name.to_string(), full.fingerprint);
                }
            }
            // The second round finds records of these fingerprints and outputs: the verdicts
            // then come from the fingerprints and the outputs.
            records = recorded
                .into_iter()
                .map(|(name, fingerprint)| {
                    let idx = spec.stage_index(&name).unwrap();
                    let outputs = spec.stages[idx]
                        .outputs
                        .iter()
                        .map(|o| (o.to_string(), cache.hash_path(o.as_str()).unwrap()))
                        .collect();
                    let record = StageRecord {
                        fingerprint: Some(fingerprint),
                        last_status: Some(StageStatus::Success),
                        outputs,
                        ..Default::default()
                    };
                    (name, record)
                })
                .collect();
        }
    }
}
