//! The engine: a loaded pipeline and the commands run against it. Start reading here.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::builtin::Registry;
use crate::cancel::CancelToken;
use crate::error::Error;
use crate::event::{BuildSummary, Event};
use crate::executor::{AttemptTokens, ExecOptions, end_attempt, execute};
use crate::fingerprint::{CacheClock, Fingerprint, HashCache};
use crate::graph::Dag;
use crate::planner::{DirtyReason, EvalContext, Evaluated, Verdict, evaluate_all, explain_reason, plan_build};
use crate::spec::{Spec, SpecCacheEntry, StageIdx, load_spec_cached, suggest};
use crate::state::{RunId, RunOutcome, StageRecord, StageStatus, State, UnfinishedAttempt, acquire_lock};

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Stages to build with their upstream; empty for all.
    pub targets: Vec<String>,
    /// Parallel stages; `None` for the pipeline's `jobs` or the number of cores.
    pub jobs: Option<usize>,
    pub force: bool,
    pub fail_fast: bool,
    /// Wait for another build's lock instead of failing at once.
    pub wait_for_lock: bool,
    /// Recorded in `runs.trigger`: `build`, `agent-once`, ...
    pub trigger: String,
    /// Move the state database aside (kept, renamed) and start a new one.
    pub reset_state: bool,
    /// Cancel it (e.g. on Ctrl-C) to stop the build: running stages are killed.
    pub cancel: CancelToken,
    /// Neither restore from the run-cache nor store in it.
    pub no_cache: bool,
    /// `--executor`: where stages run that do not name their own executor; `None`: the
    /// pipeline's `executor`.
    pub executor: Option<crate::spec::ExecutorKind>,
    /// What changed since an earlier build of this same engine (the agent's watcher): the
    /// plan then evaluates only what that can have made dirty, if the state is still as that
    /// build left it. `None`: a full plan.
    pub since: Option<SinceLastBuild>,
}

/// What changed since an earlier build, as a watcher that saw every change knows it.
#[derive(Debug, Clone)]
pub struct SinceLastBuild {
    /// The state token that build left (`BuildSummary::state_token`, which a build that
    /// did not finish every stage it could leaves empty).
    pub state_token: i64,
    /// By stage index: an input or an output of it changed.
    pub touched: Vec<bool>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            targets: Vec::new(),
            jobs: None,
            force: false,
            fail_fast: false,
            wait_for_lock: true,
            trigger: "build".into(),
            reset_state: false,
            cancel: CancelToken::new(),
            no_cache: false,
            executor: None,
            since: None,
        }
    }
}

/// One stage as `status` and `build --dry-run` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageReport {
    pub stage: String,
    pub dirty: bool,
    /// Why it is dirty, `None` when up to date. (Boxed: most stages are up to date, and a
    /// reason is 56 bytes: 5 MB of a `status` at 100,000 stages.)
    pub reason: Option<Box<DirtyReason>>,
    pub last_run_at: Option<String>,
    pub run_count: i64,
    pub failure_count: i64,
    pub last_status: Option<StageStatus>,
    pub last_duration_ms: Option<i64>,
    pub last_error: Option<String>,
    /// The fingerprint now, and the one recorded at the last success (hex in JSON; kept as
    /// bytes, not text: at 100,000 stages the text was 16 MB of a `status`).
    pub fingerprint: Fingerprint,
    pub recorded_fingerprint: Option<Fingerprint>,
}

/// What a build of an engine left for its next one: the plan state (records and stat cache)
/// with the state token it was read under, and, once `prepare_next_build` made it, which
/// stages its records leave dirty, by index.
#[derive(Debug)]
struct KeptPlanState {
    token: i64,
    plan_state: crate::state::PlanState,
    unclean: Option<Vec<bool>>,
}

/// A build of another dagrun process, running now.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LiveBuild {
    pub run_id: i64,
    pub pid: u32,
    pub trigger: String,
    pub started_at: String,
}

/// A stage that another process's build is running now.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunningStage {
    pub stage: String,
    pub pid: u32,
    pub run_id: i64,
    pub started_at: String,
    /// The cluster job running it, for a stage on Slurm.
    pub job: Option<ClusterJob>,
}

/// A stage's Slurm job, and its state as `squeue` reports it now (`None`: Slurm did not say).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClusterJob {
    pub id: String,
    pub state: Option<String>,
}

impl std::fmt::Display for ClusterJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slurm job {} {}", self.id, self.state.as_deref().unwrap_or("(state unknown)"))
    }
}

/// The attempts of a run still recorded as running, each with its cluster job and the job's
/// state: one `squeue` call for all of them, best effort (a reader never fails for Slurm).
pub fn running_attempts_with_jobs(
    state: &State,
    run_id: i64,
) -> Result<Vec<(String, String, Option<ClusterJob>)>, Error> {
    let attempts = state.running_attempts(run_id)?;
    let ids: Vec<&str> = attempts.iter().filter_map(|(_, _, id)| id.as_deref()).collect();
    let states = if ids.is_empty() { Default::default() } else { crate::executor::slurm::current_states_or_none(&ids) };
    Ok(attempts
        .into_iter()
        .map(|(stage, started_at, id)| {
            let job = id.map(|id| ClusterJob { state: states.get(&id).map(|s| s.state.clone()), id });
            (stage, started_at, job)
        })
        .collect())
}

/// Whether `pid` is a dagrun process now (a pid may be reused by anything once its
/// process is gone).
fn is_dagrun(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).next().is_some_and(|exe| exe.ends_with(b"dagrun")))
}

/// The answer to `dagrun why STAGE`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WhyReport {
    pub stage: StageReport,
    /// For a stage waiting on a dirty upstream: each dirty stage back to the one that
    /// changed first (the root cause last).
    pub chain: Vec<StageReport>,
}

/// A loaded, validated pipeline.
#[derive(Debug)]
pub struct Engine {
    spec: Spec,
    dag: Dag,
    registry: Registry,
    /// The validated spec, for the next load to skip parsing; written by the engine's first
    /// build (readers write nothing), then dropped: a long-lived engine (the agent) wrote
    /// 14 MB at every cycle of a 100,000-stage pipeline.
    spec_cache: std::sync::Mutex<Option<SpecCacheEntry>>,
    /// What the last build of this engine left in the state (records and stat cache) with
    /// the state token it was read under: the next build of a long-lived engine (the agent,
    /// the dashboard) starts from it instead of decoding the snapshot, if the token has not
    /// moved since.
    last_plan_state: std::sync::Mutex<Option<KeptPlanState>>,
    /// Which stages declare each path, made on first use (`stages_touched_by`).
    declared: std::sync::OnceLock<DeclaredPaths>,
}

/// Every path the stages declare (source inputs, produced inputs and outputs), and which
/// stages declare it; globs and paths outside the pipeline directory apart.
#[derive(Debug)]
struct DeclaredPaths {
    by_path: std::collections::HashMap<String, Vec<StageIdx>>,
    globs: Vec<(StageIdx, crate::spec::GlobPattern)>,
    outside: Vec<(StageIdx, PathBuf)>,
}

impl DeclaredPaths {
    fn of(spec: &Spec) -> DeclaredPaths {
        let mut paths = DeclaredPaths { by_path: Default::default(), globs: Vec::new(), outside: Vec::new() };
        for (idx, stage) in spec.stages.iter().enumerate() {
            let inputs = stage.inputs.iter().filter_map(|input| match input {
                crate::spec::Input::Path(p) => Some(p),
                crate::spec::Input::Glob(glob) => {
                    paths.globs.push((idx, (**glob).clone()));
                    None
                }
            });
            for path in inputs.chain(&stage.outputs) {
                if path.is_outside() {
                    paths.outside.push((idx, path.to_path(&spec.root)));
                } else {
                    paths.by_path.entry(path.as_str().to_string()).or_default().push(idx);
                }
            }
        }
        paths
    }
}

impl Engine {
    /// Loads `pipeline.toml`, validating it against the built-in stages in `registry`.
    pub fn load(file: &Path, registry: Registry) -> Result<Engine, Error> {
        let loaded = load_spec_cached(file, &registry.names())?;
        let spec = loaded.spec;
        let dag = Dag::build(&spec).map_err(|cycle| Error::Cycle { cycle, file: file.display().to_string() })?;
        Ok(Engine {
            spec,
            dag,
            registry,
            spec_cache: std::sync::Mutex::new(loaded.cache_entry),
            last_plan_state: Default::default(),
            declared: Default::default(),
        })
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn dag(&self) -> &Dag {
        &self.dag
    }

    /// The run-cache, or `None` (said in an event) when its directory cannot be opened:
    /// a build never fails for want of a cache.
    fn open_run_cache(
        &self,
        on_event: &mut dyn FnMut(&Event<'_>),
    ) -> Option<std::sync::Arc<dyn crate::runcache::Store>> {
        let dir = self.spec.cache_dir();
        // `cache_dir` was checked at load; `DAGRUN_CACHE_DIR` can only be checked here.
        // Outputs are deleted before their stage runs: a cache inside one would go with it.
        if std::env::var_os("DAGRUN_CACHE_DIR").is_some_and(|d| !d.is_empty())
            && let Some((_, output)) = crate::spec::output_holding(&self.spec.root, &self.spec.stages, &dir)
        {
            let error = format!("it is inside output `{output}`, which is deleted before its stage runs");
            on_event(&Event::RunCacheUnavailable { dir: &dir, error: &error });
            return None;
        }
        match crate::runcache::FsStore::open(&dir) {
            Ok(store) => Some(std::sync::Arc::new(store)),
            Err(err) => {
                on_event(&Event::RunCacheUnavailable { dir: &dir, error: &err.to_string() });
                None
            }
        }
    }

    /// By stage index: whether one of `changed` (absolute paths) is, holds or lies under a
    /// declared input or output of the stage, or matches a glob input. Costs a few lookups
    /// per change, not a pass over the stages (a cycle sees every file the last one wrote).
    pub fn stages_touched_by(&self, changed: &std::collections::HashSet<PathBuf>) -> Vec<bool> {
        let index = self.declared();
        let root = &self.spec.root;
        let mut touched = vec![false; self.spec.stages.len()];
        let mut mark = |stages: &[StageIdx]| stages.iter().for_each(|&idx| touched[idx] = true);
        // A path written `root/../x` strips to `../x`: it is outside, and so are paths that are
        // not text (compared whole, with the declared paths outside the directory).
        let relative: std::collections::HashSet<&str> =
            changed.iter().filter_map(|p| crate::spec::relative_inside(p, root)).collect();
        for &path in &relative {
            // It is a declared path, or lies under one (a directory input or output).
            let within = std::iter::once(path).chain(path.match_indices('/').map(|(i, _)| &path[..i]));
            for declared in within {
                if let Some(stages) = index.by_path.get(declared) {
                    mark(stages);
                }
            }
            // Not a plain file (now): a directory, a link or nothing, which may hold declared
            // paths; the rare case that needs a pass over them.
            let full = root.join(path);
            if !std::fs::symlink_metadata(&full).is_ok_and(|m| m.is_file()) {
                let prefix = format!("{path}/");
                for (declared, stages) in &index.by_path {
                    if declared.starts_with(&prefix) {
                        mark(stages);
                    }
                }
            }
        }
        for (idx, glob) in &index.globs {
            if relative.iter().any(|c| glob.covers(c)) {
                touched[*idx] = true;
            }
        }
        let outside: Vec<&PathBuf> =
            changed.iter().filter(|p| crate::spec::relative_inside(p, root).is_none()).collect();
        for (idx, path) in &index.outside {
            if outside.iter().any(|c| c.starts_with(path) || path.starts_with(c)) {
                touched[*idx] = true;
            }
        }
        touched
    }

    /// The Slurm executor, if a stage the plan will run goes to Slurm; an error if Slurm's
    /// commands are not here, before anything runs.
    fn slurm_for(
        &self,
        plan: &crate::planner::Plan,
        executor: Option<crate::spec::ExecutorKind>,
    ) -> Result<Option<std::sync::Arc<crate::executor::slurm::Slurm>>, Error> {
        use crate::spec::ExecutorKind;
        let on_slurm = (0..self.spec.stages.len()).any(|idx| {
            self.spec.executor_of(idx, executor) == ExecutorKind::Slurm
                && plan.verdict(idx).is_some_and(Verdict::is_dirty)
        });
        if !on_slurm {
            return Ok(None);
        }
        let slurm = crate::executor::slurm::Slurm::new(self.spec.latency_wait).map_err(Error::Executor)?;
        Ok(Some(std::sync::Arc::new(slurm)))
    }

    /// Runs every dirty stage among `targets` and their upstream, in dependency order.
    pub fn build(&self, opts: &BuildOptions, on_event: &mut dyn FnMut(&Event<'_>)) -> Result<BuildSummary, Error> {
        let started = Instant::now();
        let selected = self.select(&opts.targets)?;
        let _locks = self.lock(opts.wait_for_lock, on_event, &|| opts.cancel.is_stopping())?;
        if opts.reset_state {
            // The old state names what a killed build left running: end that before the
            // state is moved aside (best effort: the file may be damaged, hence the reset).
            if let Ok(old) = State::open_read_only(&self.spec.state_path) {
                // Each read on its own: a state from before schema 7 has no prefixes, yet its
                // rows may name attempts; a damaged one may answer one and not the other.
                let runs = old.unfinished_runs().unwrap_or_default();
                let attempts = old.unfinished_attempts().unwrap_or_default();
                end_attempts(&runs, attempts, on_event)?;
            }
        }
        if opts.reset_state
            && let Some(moved_to) = self.move_state_aside()?
        {
            on_event(&Event::StateReset { moved_to: &moved_to });
        }
        let state_path = &self.spec.state_path;
        let mut state = State::open_for_build(
            state_path,
            opts.wait_for_lock,
            || on_event(&Event::StateBusy { path: state_path }),
            || opts.cancel.is_stopping(),
        )?;
        if let Some(entry) = self.spec_cache.lock().expect("spec cache poisoned").take() {
            entry.write(&self.spec);
        }
        let swept = end_unfinished(&mut state, &self.spec, on_event)?;
        if !swept.is_empty() {
            on_event(&Event::SweptInterrupted { stages: &swept });
        }

        let kept = self.last_plan_state.lock().expect("last plan state poisoned").take();
        let (kept, unclean) = match kept {
            Some(kept) => (Some((kept.token, kept.plan_state)), kept.unclean.map(|unclean| (kept.token, unclean))),
            None => (None, None),
        };
        let (token, (records, entries)) = state.load_plan_state_keeping(kept)?;
        // Only what changed since our own last build is looked at, if nobody wrote since:
        // the records were read under the token that build left.
        let touched = match &opts.since {
            Some(since)
                if !opts.force
                    && swept.is_empty()
                    && token == Some(since.state_token)
                    && since.touched.len() == self.spec.stages.len() =>
            {
                Some(&since.touched)
            }
            _ => None,
        };
        let cache = HashCache::new(&self.spec.root, entries, &self.writer_clock());
        let ctx = self.eval_context(&records, &cache, opts.force);
        let evaluate = touched.map(|touched| {
            // As `prepare_next_build` left it, if for these records.
            let unclean = match unclean {
                Some((computed_for, unclean)) if Some(computed_for) == token => unclean,
                _ => crate::planner::unclean_by_record(&self.spec, &records),
            };
            touched.iter().zip(&unclean).map(|(touched, unclean)| *touched || *unclean).collect::<Vec<bool>>()
        });
        let plan = plan_build(&ctx, &selected, evaluate.as_deref());

        let jobs =
            opts.jobs.or(self.spec.jobs).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let targets: Vec<&str> = opts.targets.iter().map(String::as_str).collect();
        let begun = state.begin_run(&opts.trigger, &targets, jobs)?;
        let run = begun.id;
        let to_check = (0..self.spec.stages.len()).filter(|&i| plan.verdict(i).is_some_and(Verdict::is_dirty)).count();
        on_event(&Event::BuildStarted { run, selected: selected.iter().filter(|&&s| s).count(), to_check, jobs });

        // Opened only when a stage may run or be restored: a no-op build makes no directory.
        let run_cache = if opts.no_cache || to_check == 0 { None } else { self.open_run_cache(on_event) };
        let slurm = match self.slurm_for(&plan, opts.executor) {
            Ok(slurm) => slurm,
            Err(err) => {
                let _ = state.finish_run(run, RunOutcome::Failed, &Default::default());
                return Err(err);
            }
        };
        let exec_opts = ExecOptions {
            jobs,
            fail_fast: opts.fail_fast,
            cancel: opts.cancel.clone(),
            run_cache,
            executor: opts.executor,
            slurm,
        };
        let executed = execute(&ctx, &plan, &mut state, &begun, &exec_opts, on_event);
        // The run-cache's entries of this build sealed into a pack (see `runcache::FsStore`).
        drop(exec_opts);
        if !opts.cancel.is_stopping() {
            cache.rehash_racy();
        }
        // Cache entries of stages that did not run (e.g. an up-to-date check) are kept too,
        // and those `rehash_racy` made trusted.
        let cached = state.save_hash_cache(&cache.take_fresh());
        let outcome = match executed {
            Ok(outcome) => outcome,
            Err(err) => {
                let _ = state.finish_run(run, RunOutcome::Failed, &Default::default());
                return Err(err.into());
            }
        };
        let summary = BuildSummary {
            run_id: Some(run.0),
            counts: outcome.counts,
            elapsed: started.elapsed(),
            failures: outcome.failures,
            interrupted: outcome.interrupted,
            state_token: None,
        };
        let run_outcome = match (summary.interrupted, summary.succeeded()) {
            (true, _) => RunOutcome::Interrupted,
            (false, true) => RunOutcome::Success,
            (false, false) => RunOutcome::Failed,
        };
        state.finish_run(run, run_outcome, &summary.counts)?;
        cached?;
        // Kept for the next build of this engine, with the token it was read under: what the
        // snapshot now holds, or, when nothing changed, what this build started from.
        let (token, plan_state) = state.refresh_snapshot((records, cache.into_entries()))?;
        let kept = token.map(|token| KeptPlanState { token, plan_state, unclean: None });
        *self.last_plan_state.lock().expect("last plan state poisoned") = kept;
        state.trim_wal();
        // A build that stopped starting stages (interrupted, or --fail-fast) may have left a
        // dirty stage unrun with a clean record: no later plan may take its word.
        let complete = !summary.interrupted && !opts.fail_fast;
        let summary = BuildSummary { state_token: token.filter(|_| complete), ..summary };
        on_event(&Event::BuildFinished { summary: &summary });
        Ok(summary)
    }

    /// Every selected stage in dependency order, up to date or dirty and why, without
    /// running anything. Opens the state read-only (WAL: never blocking a build, never
    /// written to, migrated or cached into); creates nothing when there is no database yet.
    pub fn status(&self, targets: &[String], force: bool) -> Result<Vec<StageReport>, Error> {
        let selected = self.select(targets)?;
        let state = State::open_reader(&self.spec.state_path)?;
        let (mut records, entries) = match &state {
            Some(state) => state.load_plan_state()?,
            None => Default::default(),
        };
        let cache = HashCache::new(&self.spec.root, entries, &CacheClock::Local);
        let mut evaluations = evaluate_all(&self.eval_context(&records, &cache, force), &selected);
        // Not needed any more: at 100,000 stages the stat cache is tens of MB.
        drop(cache);
        let mut reports = Vec::with_capacity(selected.iter().filter(|s| **s).count());
        for &idx in self.dag.topo_order() {
            let Some(evaluated) = evaluations[idx].take() else { continue };
            let name = self.spec.stages[idx].name.as_str();
            let fingerprint = evaluated.fingerprint();
            let reason = match evaluated {
                Evaluated::UpToDate(_) => None,
                Evaluated::Dirty(eval) => match eval.verdict {
                    Verdict::UpToDate => None, // never: evaluate_all keeps those as UpToDate
                    Verdict::Dirty(reason) => Some(match &state {
                        Some(state) => explain_reason(state, name, reason, &eval.inputs),
                        None => reason,
                    }),
                },
            };
            // Each stage is reported once: its record is moved into the report, not copied.
            let record = records.remove(name).unwrap_or_default();
            reports.push(report(name, reason, fingerprint, record));
        }
        Ok(reports)
    }

    /// Work the next watch cycle would do before its first stage, done now, while the agent
    /// waits for a change: the index of declared paths, and which stages the records this
    /// engine kept leave dirty (100,000 lookups at 100,000 stages: 20 ms off the time from an
    /// edit to its first stage).
    pub fn prepare_next_build(&self) {
        // The index `stages_touched_by` reads: 140 ms to make at 100,000 stages.
        self.declared();
        let mut kept = self.last_plan_state.lock().expect("last plan state poisoned");
        if let Some(kept) = kept.as_mut()
            && kept.unclean.is_none()
        {
            kept.unclean = Some(crate::planner::unclean_by_record(&self.spec, &kept.plan_state.0));
        }
    }

    /// Why a stage is or is not dirty, following a dirty upstream back to its cause.
    pub fn why(&self, stage: &str) -> Result<WhyReport, Error> {
        self.stage_index(stage)?;
        let mut reports: std::collections::HashMap<String, StageReport> =
            self.status(&[stage.to_string()], false)?.into_iter().map(|r| (r.stage.clone(), r)).collect();
        let target = reports.remove(stage).expect("status covers the stage asked about");
        let mut chain = Vec::new();
        let mut next = target.reason.clone();
        while let Some(DirtyReason::UpstreamDirty { stage: up }) = next.as_deref() {
            let Some(report) = reports.remove(up) else { break };
            next = report.reason.clone();
            chain.push(report);
        }
        Ok(WhyReport { stage: target, chain })
    }

    /// Records the stages' current inputs and outputs as up to date without running them
    /// (DVC's `commit`, Snakemake's `--touch`), in dependency order, so that a stage
    /// accepted after its upstream sees the upstream's new output hash. Every output must
    /// exist. Returns the stages accepted.
    pub fn accept(&self, stages: &[String], on_event: &mut dyn FnMut(&Event<'_>)) -> Result<Vec<String>, Error> {
        let wanted = stages.iter().map(|s| self.stage_index(s)).collect::<Result<Vec<_>, _>>()?;
        let _locks = self.lock(true, on_event, &|| false)?;
        let mut state = State::open(&self.spec.state_path)?;
        end_unfinished(&mut state, &self.spec, on_event)?;
        let (records, entries) = state.load_plan_state()?;
        let cache = HashCache::new(&self.spec.root, entries, &self.writer_clock());
        let ctx = self.eval_context(&records, &cache, false);
        // Accepting a stage vouches for its outputs given its upstream's recorded outputs:
        // every upstream stage outside the accepted set must itself be up to date.
        let evaluations = evaluate_all(&ctx, &self.dag.with_upstream(&wanted));
        for &idx in &wanted {
            let dirty_upstream = self.dag.upstream(idx).filter(|up| !wanted.contains(up)).find_map(|up| {
                let Some(Evaluated::Dirty(eval)) = &evaluations[up] else { return None };
                match &eval.verdict {
                    Verdict::Dirty(reason) => Some((
                        up,
                        explain_reason(&state, self.spec.stages[up].name.as_str(), reason.clone(), &eval.inputs),
                    )),
                    Verdict::UpToDate => None,
                }
            });
            if let Some((up, reason)) = dirty_upstream {
                let up = &self.spec.stages[up].name;
                return Err(Error::Accept {
                    stage: self.spec.stages[idx].name.to_string(),
                    reason: format!("its upstream `{up}` is dirty ({reason}); build `{up}` first, or accept it too"),
                });
            }
        }
        let run = state.begin_run("accept", &stages.iter().map(String::as_str).collect::<Vec<_>>(), 1)?.id;
        let mut hashes: std::collections::HashMap<StageIdx, crate::fingerprint::OutputHash> =
            std::collections::HashMap::new();
        let mut accepted = Vec::new();
        for &idx in self.dag.topo_order().iter().filter(|i| wanted.contains(i)) {
            let stage = &self.spec.stages[idx];
            let upstream = |up: StageIdx| hashes.get(&up).copied().or_else(|| ctx.recorded_output_hash(up));
            let eval = crate::planner::evaluate_stage(&ctx, idx, &upstream);
            if let Verdict::Dirty(reason @ (DirtyReason::InputUnavailable { .. } | DirtyReason::UpstreamDirty { .. })) =
                &eval.verdict
            {
                let _ = state.finish_run(run, RunOutcome::Failed, &Default::default());
                return Err(Error::Accept { stage: stage.name.to_string(), reason: reason.to_string() });
            }
            let mut outputs = std::collections::BTreeMap::new();
            let paths: Vec<&str> = stage.outputs.iter().map(|o| o.as_str()).collect();
            for (path, hashed) in cache.hash_paths(&paths) {
                match hashed {
                    Ok(hash) => {
                        outputs.insert(path.to_string(), hash);
                    }
                    Err(err) => {
                        let _ = state.finish_run(run, RunOutcome::Failed, &Default::default());
                        return Err(Error::Accept {
                            stage: stage.name.to_string(),
                            reason: format!("output {err}; build it instead"),
                        });
                    }
                }
            }
            let output_hash = crate::fingerprint::output_hash(&outputs);
            let now = std::time::SystemTime::now();
            let reason = "accepted as up to date (dagrun accept)";
            let row = crate::state::AttemptRow::Unrecorded(crate::state::StageAttempt {
                run,
                component: stage.name.as_str(),
                attempt: 1,
                reason,
                started_at: now,
                log_path: "",
                resources: None,
                token: None,
                executor: None,
            });
            let success = crate::state::StageSuccess {
                row,
                component: stage.name.as_str(),
                finished_at: now,
                duration: std::time::Duration::ZERO,
                fingerprint: eval.fingerprint,
                fingerprint_inputs: &eval.inputs,
                output_hash,
                outputs: &outputs,
                still_dirty: false,
                metrics: &Default::default(),
                status: StageStatus::Accepted,
                invalidations_seen: records.get(stage.name.as_str()).map_or(0, |r| r.invalidations),
            };
            state.record_success(&success, &cache.take_fresh())?;
            hashes.insert(idx, output_hash);
            accepted.push(stage.name.to_string());
        }
        state.finish_run(run, RunOutcome::Success, &Default::default())?;
        Ok(accepted)
    }

    /// Marks stages (and with `downstream`, everything after them) dirty. Returns their names.
    pub fn invalidate(&self, stages: &[String], downstream: bool) -> Result<Vec<String>, Error> {
        let mut indices = self.stages_named(stages)?;
        if downstream {
            indices = self.dag.with_downstream(&indices);
        }
        let names: Vec<&str> = indices.iter().map(|&i| self.spec.stages[i].name.as_str()).collect();
        let mut state = State::open(&self.spec.state_path)?;
        state.invalidate(&names)?;
        Ok(names.into_iter().map(str::to_string).collect())
    }

    /// The latest `limit` runs, newest first; with `stage`, that stage's part in them.
    /// Builds of other dagrun processes running now, newest first: `runs` rows still
    /// `running` whose process is alive and a dagrun (a killed build leaves its row
    /// `running` until the next build sweeps it). Read-only.
    pub fn live_builds(&self) -> Result<Vec<LiveBuild>, Error> {
        let Some(state) = State::open_reader(&self.spec.state_path)? else { return Ok(Vec::new()) };
        Ok(state
            .runs_in_progress()?
            .into_iter()
            .filter(|&(_, pid, _, _)| pid != std::process::id() && is_dagrun(pid))
            .map(|(run_id, pid, trigger, started_at)| LiveBuild { run_id, pid, trigger, started_at })
            .collect())
    }

    /// The stages other processes' builds are running now, with their pid and start.
    pub fn running_elsewhere(&self) -> Result<Vec<RunningStage>, Error> {
        let builds = self.live_builds()?;
        let Some(state) = State::open_reader(&self.spec.state_path)? else { return Ok(Vec::new()) };
        let mut running = Vec::new();
        for build in builds {
            for (stage, started_at, job) in running_attempts_with_jobs(&state, build.run_id)? {
                running.push(RunningStage { stage, pid: build.pid, run_id: build.run_id, started_at, job });
            }
        }
        Ok(running)
    }

    /// Every stage's metrics as recorded by successful runs up to run `up_to` (all for
    /// `None`), oldest first. Read-only.
    pub fn recorded_metrics(&self, up_to: Option<i64>) -> Result<Vec<crate::state::MetricsRecord>, Error> {
        let Some(state) = State::open_reader(&self.spec.state_path)? else { return Ok(Vec::new()) };
        Ok(state.recorded_metrics(up_to)?)
    }

    /// Trims the run-cache: keeps every entry a stage's current record references, and what
    /// `policy` keeps besides (see [`crate::runcache::gc`]). Reads the state only.
    pub fn gc(&self, mut policy: crate::runcache::GcPolicy) -> Result<crate::runcache::GcReport, Error> {
        let records = match State::open_reader(&self.spec.state_path)? {
            Some(state) => state.load_records()?,
            None => Default::default(),
        };
        policy.referenced = records.values().filter_map(|r| r.fingerprint.as_ref()).map(crate::runcache::key).collect();
        let dir = self.spec.cache_dir();
        let io_error = |source| Error::Io { path: dir.display().to_string(), source };
        let store = crate::runcache::FsStore::open(&dir).map_err(io_error)?;
        crate::runcache::gc(&store, &policy).map_err(io_error)
    }

    /// Where the run-cache is and how many bytes it holds (0 when it does not exist yet).
    pub fn run_cache_size(&self) -> (std::path::PathBuf, u64) {
        use crate::runcache::Store;
        let dir = self.spec.cache_dir();
        let size =
            if dir.is_dir() { crate::runcache::FsStore::open(&dir).and_then(|s| s.size()).unwrap_or(0) } else { 0 };
        (dir, size)
    }

    pub fn history(&self, stage: Option<&str>, limit: usize) -> Result<Vec<crate::state::RunRow>, Error> {
        if let Some(stage) = stage {
            self.stage_index(stage)?;
        }
        let Some(state) = State::open_reader(&self.spec.state_path)? else { return Ok(Vec::new()) };
        let mut runs = state.history(stage, limit)?;
        if let Some(stage) = stage {
            // A finished build that covered the stage and has no row for it found it up to
            // date: those rows are not stored (a no-op on 10,000 stages would write 10,000).
            let idx = self.stage_index(stage)?;
            for run in &mut runs {
                let finished = matches!(run.outcome.as_str(), "success" | "failed");
                let covered = run.targets.is_empty() || {
                    let targets: Vec<StageIdx> = run.targets.iter().filter_map(|t| self.spec.stage_index(t)).collect();
                    self.dag.with_upstream(&targets)[idx]
                };
                if run.stages.is_empty() && finished && covered && run.trigger != "accept" {
                    run.stages.push(crate::state::StageRunRow {
                        run_id: run.run_id,
                        component: stage.to_string(),
                        attempt: 1,
                        status: "up_to_date".into(),
                        reason: "nothing it depends on changed".into(),
                        started_at: run.started_at.clone(),
                        duration_ms: None,
                        error: None,
                        metrics: None,
                    });
                }
            }
            runs.retain(|run| !run.stages.is_empty());
        }
        Ok(runs)
    }

    /// Creates or upgrades the state database; returns (version before, version after).
    pub fn migrate(&self) -> Result<(usize, usize), Error> {
        Ok(State::open_unmigrated(&self.spec.state_path)?.migrate()?)
    }

    /// Renames the state database (and its WAL files) to `<name>.reset-<unix time>`; only
    /// while holding the build lock.
    fn move_state_aside(&self) -> Result<Option<std::path::PathBuf>, Error> {
        let path = &self.spec.state_path;
        if !path.exists() {
            return Ok(None);
        }
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state.db");
        // Never over an earlier reset's file, even within the same second.
        let moved_to = (0..)
            .map(|n| {
                path.with_file_name(if n == 0 {
                    format!("{name}.reset-{stamp}")
                } else {
                    format!("{name}.reset-{stamp}-{n}")
                })
            })
            .find(|candidate| !candidate.exists())
            .expect("some name is free");
        let io = |source| Error::Io { path: path.display().to_string(), source };
        for suffix in ["-wal", "-shm"] {
            let side = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            if side.exists() {
                std::fs::rename(&side, format!("{}{suffix}", moved_to.display())).map_err(io)?;
            }
        }
        std::fs::rename(path, &moved_to).map_err(io)?;
        Ok(Some(moved_to))
    }

    /// Takes the build lock of the pipeline's directory (`.dagrun/lock`), and, for a state
    /// database kept elsewhere (`state = ...`), also the lock beside it (`<state>.lock`):
    /// two directories sharing one state must not sweep, or end, each other's stages.
    fn lock(
        &self,
        wait: bool,
        on_event: &mut dyn FnMut(&Event<'_>),
        stop: &dyn Fn() -> bool,
    ) -> Result<Vec<crate::state::BuildLock>, Error> {
        let dagrun_dir = self.spec.dagrun_dir();
        let mut paths = vec![dagrun_dir.join("lock")];
        if !self.spec.state_path.starts_with(&dagrun_dir) {
            paths.push(std::path::PathBuf::from(format!("{}.lock", self.spec.state_path.display())));
        }
        let mut locks = Vec::new();
        for path in &paths {
            locks.push(acquire_lock(path, wait, |holder| on_event(&Event::LockWaiting { path, holder }), stop)?);
        }
        Ok(locks)
    }

    /// The clock of commands that save the stat cache: the filesystem's own.
    fn writer_clock(&self) -> CacheClock {
        CacheClock::Filesystem(self.spec.root.join(&self.spec.own_dir).join("clock"))
    }

    /// Which stages declare each path, made on first use.
    fn declared(&self) -> &DeclaredPaths {
        self.declared.get_or_init(|| DeclaredPaths::of(&self.spec))
    }

    fn eval_context<'a>(
        &'a self,
        records: &'a std::collections::HashMap<String, StageRecord>,
        cache: &'a HashCache,
        force: bool,
    ) -> EvalContext<'a> {
        EvalContext { spec: &self.spec, dag: &self.dag, records, cache, registry: &self.registry, force }
    }

    fn stage_index(&self, name: &str) -> Result<StageIdx, Error> {
        self.spec.stage_index(name).ok_or_else(|| Error::UnknownStage {
            name: name.to_string(),
            suggestion: suggest(name, self.spec.stage_names()).map(str::to_string),
        })
    }

    /// The stages a command covers: `targets` and their upstream, or every stage.
    fn select(&self, targets: &[String]) -> Result<Vec<bool>, Error> {
        if targets.is_empty() {
            return Ok(vec![true; self.spec.stages.len()]);
        }
        let indices = self.stages_named(targets)?;
        Ok(self.dag.with_upstream(&indices))
    }

    /// The stages each name means: a stage; every instance of a template (`train` for
    /// `train@a`, `train@b`); or a pattern with `*` and `?` (`'train@*'`).
    fn stages_named(&self, names: &[String]) -> Result<Vec<StageIdx>, Error> {
        let mut indices = Vec::new();
        for name in names {
            if let Some(idx) = self.spec.stage_index(name) {
                indices.push(idx);
                continue;
            }
            let instance_prefix = format!("{name}@");
            let pattern =
                name.contains(['*', '?']).then(|| globset::Glob::new(name).map(|g| g.compile_matcher()).ok()).flatten();
            let matched: Vec<StageIdx> = (0..self.spec.stages.len())
                .filter(|&i| {
                    let stage = self.spec.stages[i].name.as_str();
                    stage.starts_with(&instance_prefix) || pattern.as_ref().is_some_and(|p| p.is_match(stage))
                })
                .collect();
            if matched.is_empty() {
                self.stage_index(name)?;
            }
            indices.extend(matched);
        }
        Ok(indices)
    }
}

/// Ends what the stages of a killed build left running, before anything runs (an output
/// such a process could still write is never trusted, and never raced by a new run), then
/// records them interrupted; returns the stages swept. Call only while holding the build lock.
fn end_unfinished(state: &mut State, spec: &Spec, on_event: &mut dyn FnMut(&Event<'_>)) -> Result<Vec<String>, Error> {
    if !state.anything_unfinished()? {
        return Ok(Vec::new());
    }
    let found = end_attempts(&state.unfinished_runs()?, state.unfinished_attempts()?, on_event)?;
    // A stage found running by its run's prefix may have no row yet (one that started less
    // than `START_ROW_DELAY` before its build died): the sweep records it interrupted too.
    // Only a stage of this pipeline: the name comes from a process's environment.
    let found: Vec<(RunId, String)> =
        found.into_iter().filter(|(_, stage)| spec.stage_index(stage).is_some()).collect();
    Ok(state.sweep_unfinished(&found)?)
}

/// Ends the local shell attempts of the unfinished `runs` (recorded or not), then what
/// else of `attempts` is left: older runs' attempts, and cluster jobs. Returns the stages
/// whose processes were found by their run's prefix, with the run.
fn end_attempts(
    runs: &[(RunId, String)],
    attempts: Vec<UnfinishedAttempt>,
    on_event: &mut dyn FnMut(&Event<'_>),
) -> Result<Vec<(RunId, String)>, Error> {
    let mut found = Vec::new();
    for (run, prefix) in runs {
        let ended = crate::executor::end_run_attempts(prefix).map_err(|source| Error::RunOrphans { source })?;
        for (stage, processes) in ended {
            on_event(&Event::OrphansEnded { stage: &stage, processes });
            found.push((*run, stage));
        }
    }
    let ended_by_prefix = |token: &str| runs.iter().any(|(_, prefix)| AttemptTokens::of_run(prefix, token));
    for unfinished in attempts.into_iter().filter(|a| a.on_slurm || !ended_by_prefix(&a.token)) {
        // For a Slurm attempt only an `sbatch` still running (it carries the token), which
        // could otherwise submit after the look for its job below.
        let ended = if unfinished.on_slurm {
            crate::executor::end_submitter(&unfinished.token)
        } else {
            end_attempt(&unfinished.token)
        };
        match ended {
            Ok(0) => {}
            Ok(processes) => on_event(&Event::OrphansEnded { stage: &unfinished.component, processes }),
            Err(source) => return Err(Error::Orphans { stage: unfinished.component, source }),
        }
        if unfinished.on_slurm {
            let (run, stage) = (unfinished.run, unfinished.component.as_str());
            let cancelled =
                crate::executor::slurm::cancel_orphan_jobs(run, stage, &unfinished.token, unfinished.job_id.as_deref())
                    .map_err(|reason| Error::OrphanJobs {
                        stage: stage.to_string(),
                        job: crate::executor::slurm::slurm_job_name(run, stage),
                        reason,
                    })?;
            if !cancelled.is_empty() {
                on_event(&Event::OrphanJobsCancelled { stage, jobs: &cancelled });
            }
        }
    }
    Ok(found)
}

fn report(stage: &str, reason: Option<DirtyReason>, fingerprint: Fingerprint, record: StageRecord) -> StageReport {
    StageReport {
        fingerprint,
        recorded_fingerprint: record.fingerprint,
        stage: stage.to_string(),
        dirty: reason.is_some(),
        reason: reason.map(Box::new),
        last_run_at: record.last_run_at,
        run_count: record.run_count,
        failure_count: record.failure_count,
        last_status: record.last_status,
        last_duration_ms: record.last_duration_ms,
        last_error: record.last_error,
    }
}
