//! `dagrun build`: runs the pipeline and prints one line per stage event.

use std::io::Write;

use dagrun::{BuildOptions, CancelToken, DirtyReason, Engine, Error};

use super::output::Output;
use super::{EXIT_FAILED, EXIT_OK};

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Stages to build (with everything they depend on); all when none are given.
    #[arg(value_name = "STAGE")]
    stages: Vec<String>,
    /// How many stages may run at once (default: the pipeline's `jobs`, else the number of cores).
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// Show what would run and why, without running anything.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Run every selected stage, dirty or not.
    #[arg(short, long)]
    force: bool,
    /// Start no new stage after one fails (default: independent branches go on).
    #[arg(long)]
    fail_fast: bool,
    /// Fail at once if another build holds the lock, instead of waiting for it.
    #[arg(long)]
    no_wait: bool,
    /// Move the state database aside (renamed, not deleted) and start a new one; every
    /// stage runs once. For a corrupt or foreign state file.
    #[arg(long)]
    reset_state: bool,
    /// Neither restore stages from the run-cache nor store their outputs in it.
    #[arg(long)]
    no_cache: bool,
    /// Where stages run that do not name their own `executor`: `local`, or `slurm` (sbatch
    /// jobs over a shared filesystem). Default: the pipeline's `executor`, else local.
    #[arg(long, value_name = "EXECUTOR", value_parser = ["local", "slurm"])]
    executor: Option<String>,
    /// Print only failures and the summary.
    #[arg(short, long)]
    quiet: bool,
    /// Print one JSON object per event (stage started, finished, cut off, failed, summary).
    #[arg(long, conflicts_with = "quiet")]
    json: bool,
}

pub fn run(engine: &Engine, args: BuildArgs) -> Result<u8, Error> {
    if args.dry_run {
        return dry_run(engine, &args);
    }
    let cancel = CancelToken::new();
    register_interrupts(&cancel, engine.spec().state_path.clone());
    let opts = BuildOptions {
        targets: args.stages,
        jobs: args.jobs.map(|j| j as usize),
        force: args.force,
        fail_fast: args.fail_fast,
        wait_for_lock: !args.no_wait,
        trigger: "build".into(),
        reset_state: args.reset_state,
        cancel,
        no_cache: args.no_cache,
        executor: args.executor.as_deref().and_then(dagrun::spec::ExecutorKind::parse),
        since: None,
    };
    let width = engine.spec().stage_names().map(str::len).max().unwrap_or(0);
    let mut output = Output::choose(width, args.quiet, args.json);
    let summary = engine.build(&opts, &mut |event| output.event(event))?;
    Ok(if summary.succeeded() { EXIT_OK } else { EXIT_FAILED })
}

/// First SIGINT/SIGTERM/SIGHUP: stop the build cleanly (running stages get SIGTERM, then
/// SIGKILL after a grace period, and are recorded as interrupted). A second: kill them at
/// once. The build still records what happened and exits 1. A third ends the process (for
/// a built-in that ignores being stopped).
fn register_interrupts(cancel: &CancelToken, state_path: std::path::PathBuf) {
    super::signals::on_stop_signals(
        cancel,
        |cancel| {
            cancel.cancel();
            super::output::announce("stopping: running stages get SIGTERM (press Ctrl-C again to kill them now)");
        },
        super::signals::exit_now(state_path),
    );
}

fn dry_run(engine: &Engine, args: &BuildArgs) -> Result<u8, Error> {
    let reports = engine.status(&args.stages, args.force)?;
    let width = reports.iter().map(|r| r.stage.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let (mut would_run, mut cannot_run) = (0, 0);
    for report in &reports {
        match report.reason.as_deref() {
            // A missing input (literal or an empty glob): `build` would fail this stage
            // without running it, so the dry run says so and fails too.
            Some(reason @ DirtyReason::InputUnavailable { .. }) => {
                cannot_run += 1;
                let _ = writeln!(out, "cannot run  {:width$}  ({reason})", report.stage);
            }
            Some(reason) => {
                would_run += 1;
                let _ = writeln!(out, "would run  {:width$}  ({reason})", report.stage);
            }
            None => {}
        }
    }
    for (wave, stages) in waves(engine, &reports).iter().enumerate() {
        let _ = writeln!(out, "wave {}    {}", wave + 1, stages.join(", "));
    }
    let cannot = if cannot_run > 0 { format!(", {cannot_run} cannot run") } else { String::new() };
    let up_to_date = reports.len() - would_run - cannot_run;
    let _ = writeln!(out, "{would_run} would run{cannot}, {up_to_date} up to date (dry run: nothing was run)");
    Ok(if cannot_run > 0 { EXIT_FAILED } else { EXIT_OK })
}

/// The stages that would run, grouped in the order they could start: a stage is in the
/// wave after the latest of its upstream stages that would run too. Stages of one wave
/// can run in parallel (up to -j at once).
fn waves(engine: &Engine, reports: &[dagrun::StageReport]) -> Vec<Vec<String>> {
    let spec = engine.spec();
    let mut wave_of = vec![0usize; spec.stages.len()];
    let mut waves: Vec<Vec<String>> = Vec::new();
    for report in reports.iter().filter(|r| r.dirty) {
        let Some(idx) = spec.stage_index(&report.stage) else { continue };
        let wave = engine.dag().upstream(idx).map(|up| wave_of[up]).max().unwrap_or(0) + 1;
        wave_of[idx] = wave;
        if waves.len() < wave {
            waves.resize(wave, Vec::new());
        }
        waves[wave - 1].push(report.stage.clone());
    }
    waves
}
