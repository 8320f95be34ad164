//! `dagrun build`: runs the pipeline and prints one line per stage event.

use std::io::Write;

use dagrun::event::BuildSummary;
use dagrun::{BuildOptions, CancelToken, Engine, Error, Event};

use super::{EXIT_FAILED, EXIT_OK, seconds};

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
}

pub fn run(engine: &Engine, args: BuildArgs) -> Result<u8, Error> {
    if args.dry_run {
        return dry_run(engine, &args);
    }
    let cancel = CancelToken::new();
    register_interrupts(&cancel);
    let opts = BuildOptions {
        targets: args.stages,
        jobs: args.jobs.map(|j| j as usize),
        force: args.force,
        fail_fast: args.fail_fast,
        wait_for_lock: !args.no_wait,
        trigger: "build".into(),
        reset_state: args.reset_state,
        cancel,
    };
    let width = engine.spec().stage_names().map(str::len).max().unwrap_or(0);
    let summary = engine.build(&opts, &mut |event| print_event(event, width))?;
    Ok(if summary.succeeded() { EXIT_OK } else { EXIT_FAILED })
}

/// First SIGINT/SIGTERM: stop the build cleanly (running stages get SIGTERM, then SIGKILL
/// after a grace period, and are recorded as interrupted). A second: kill them at once. The
/// build still records what happened and exits 1.
fn register_interrupts(cancel: &CancelToken) {
    let Ok(mut signals) =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
    else {
        return;
    };
    let cancel = cancel.clone();
    std::thread::spawn(move || {
        for (count, _) in signals.forever().enumerate() {
            if count == 0 {
                eprintln!("stopping: running stages get SIGTERM (press Ctrl-C again to kill them now)");
                cancel.cancel();
            } else {
                cancel.cancel_now();
            }
        }
    });
}

fn print_event(event: &Event<'_>, width: usize) {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let _ = match event {
        Event::LockWaiting { path, holder } => {
            writeln!(err, "another build holds {} ({holder}); waiting (pass --no-wait to fail at once)", path.display())
        }
        Event::StateReset { moved_to } => {
            writeln!(err, "moved the old state database to {}; starting a new one", moved_to.display())
        }
        Event::SweptInterrupted { stages } => {
            writeln!(
                err,
                "note: a previous build died while running {}; recorded as interrupted, will re-run",
                stages.join(", ")
            )
        }
        Event::BuildStarted { .. } => Ok(()),
        Event::StageStarted { stage, attempt: 1, reason } => writeln!(out, "run      {stage:width$}  ({reason})"),
        Event::StageStarted { stage, attempt, .. } => writeln!(out, "retry    {stage:width$}  (attempt {attempt})"),
        Event::StageSucceeded { stage, duration, output_changed, metrics } => {
            let note = if *output_changed { "" } else { "  (outputs unchanged)" };
            let shown: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {}", format_metric(*v))).collect();
            let metrics = if shown.is_empty() { String::new() } else { format!("  [{}]", shown.join(", ")) };
            writeln!(out, "done     {stage:width$}  {}{note}{metrics}", seconds(*duration))
        }
        Event::StageCutOff { stage } => writeln!(out, "cut off  {stage:width$}  (upstream outputs unchanged)"),
        Event::StageFailed { stage, error, log_path, will_retry, .. } => {
            let log = log_path.map(|p| format!("; log: {p}")).unwrap_or_default();
            let retry = if *will_retry { "; retrying" } else { "" };
            writeln!(out, "FAILED   {stage:width$}  {error}{log}{retry}")
        }
        Event::StageBlocked { stage, upstream: Some(up) } => {
            writeln!(out, "blocked  {stage:width$}  (upstream `{up}` failed)")
        }
        Event::StageBlocked { stage, upstream: None } => {
            writeln!(out, "skipped  {stage:width$}  (the build stopped first)")
        }
        Event::InputMoved { stage, path } => {
            writeln!(err, "warning: `{path}` changed while `{stage}` ran; `{stage}` stays dirty and re-runs next build")
        }
        Event::BuildFinished { summary } => print_summary(&mut out, &mut err, summary),
    };
}

/// A metric with four significant digits, without exponent for everyday magnitudes.
fn format_metric(value: f64) -> String {
    if value != 0.0 && (value.abs() >= 1e6 || value.abs() < 1e-3) {
        format!("{value:.3e}")
    } else {
        format!("{:.4}", value)
    }
}

fn print_summary(out: &mut impl Write, err: &mut impl Write, summary: &BuildSummary) -> std::io::Result<()> {
    for failure in &summary.failures {
        writeln!(err, "\nstage `{}` failed: {}", failure.stage, failure.error)?;
        if let Some(log) = &failure.log_path {
            writeln!(err, "  log: {log}")?;
        }
        for line in failure.log_tail.lines() {
            writeln!(err, "  | {line}")?;
        }
    }
    let c = &summary.counts;
    let mut parts =
        vec![format!("{} ran", c.ran), format!("{} cut off", c.cut_off), format!("{} up to date", c.up_to_date)];
    if c.failed > 0 {
        parts.push(format!("{} failed", c.failed));
    }
    if c.blocked > 0 {
        parts.push(format!("{} blocked", c.blocked));
    }
    let verdict = match (summary.interrupted, summary.succeeded()) {
        (true, _) => "build interrupted: ",
        (false, false) => "build failed: ",
        (false, true) => "",
    };
    writeln!(out, "{verdict}{} in {}", parts.join(", "), seconds(summary.elapsed))
}

fn dry_run(engine: &Engine, args: &BuildArgs) -> Result<u8, Error> {
    let reports = engine.status(&args.stages, args.force)?;
    let width = reports.iter().map(|r| r.stage.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let mut would_run = 0;
    for report in &reports {
        if let Some(reason) = &report.reason {
            would_run += 1;
            let _ = writeln!(out, "would run  {:width$}  ({reason})", report.stage);
        }
    }
    let _ = writeln!(out, "{would_run} would run, {} up to date (dry run: nothing was run)", reports.len() - would_run);
    Ok(EXIT_OK)
}
