//! `dagrun agent`: run the pipeline once, on a schedule, or on input changes; one line per cycle.

use std::time::Duration;

use dagrun::agent::{AgentEvent, AgentOptions, Schedule, run_agent};
use dagrun::{CancelToken, Error};

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, registry, seconds};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One cycle, then exit (with 1 if a stage failed).
    Once,
    /// A cycle every --interval-sec seconds until SIGINT/SIGTERM.
    Scheduled,
    /// A cycle now and whenever a source input or the pipeline file changes.
    Watch,
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// One cycle (the default), cycles on a schedule, or cycles on changes. Giving
    /// --interval-sec alone means scheduled.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Seconds from the start of one cycle to the start of the next (scheduled mode; 3600 by
    /// default).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    interval_sec: Option<u64>,
    /// Shorthand for --mode watch.
    #[arg(long)]
    watch: bool,
    /// Stages run at once (default: the pipeline's `jobs`, else the number of cores).
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// On SIGINT/SIGTERM, seconds to let running stages finish before killing them.
    #[arg(long, value_name = "N", default_value_t = 30)]
    grace_sec: u64,
}

pub fn run(file: std::path::PathBuf, args: AgentArgs) -> Result<u8, Error> {
    // With no mode, one cycle, unless an interval asks for a schedule.
    let mode = args.mode.unwrap_or(if args.interval_sec.is_some() { Mode::Scheduled } else { Mode::Once });
    let schedule = match (args.watch, mode) {
        (true, _) | (false, Mode::Watch) => Schedule::Watch { settle: dagrun::agent::WATCH_SETTLE },
        (false, Mode::Once) => Schedule::Once,
        (false, Mode::Scheduled) => Schedule::Every(Duration::from_secs(args.interval_sec.unwrap_or(3600))),
    };
    let cancel = CancelToken::new();
    stop_on_signals(&cancel, Duration::from_secs(args.grace_sec), &file);
    let opts = AgentOptions { file, schedule, jobs: args.jobs.map(|j| j as usize), cancel };
    let mut exit = EXIT_OK;
    run_agent(&opts, &registry(), &mut |event| {
        if let Some(code) = print_event(event, schedule) {
            exit = exit.max(code);
        }
    })?;
    // Stopped by a signal (any mode), or a schedule that only ends that way: exit 0.
    if schedule != Schedule::Once || opts.cancel.is_stopping() {
        eprintln!("{} agent stopped", now());
        return Ok(EXIT_OK);
    }
    Ok(exit)
}

/// First SIGINT/SIGTERM/SIGHUP: start no new stage, let running ones finish for up to
/// `grace`, then terminate them. A second: kill them at once. A third: end the process.
fn stop_on_signals(cancel: &CancelToken, grace: Duration, file: &std::path::Path) {
    let state_path = dagrun::Engine::load(file, registry()).map(|engine| engine.spec().state_path.clone());
    let exit_now = super::signals::exit_now(state_path.unwrap_or_default());
    super::signals::on_stop_signals(
        cancel,
        move |cancel| {
            cancel.drain();
            super::signals::note(&format!(
                "{} stopping: no new stages; running ones get {}s to finish",
                now(),
                grace.as_secs()
            ));
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(grace);
                cancel.cancel();
            });
        },
        exit_now,
    );
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Prints one line per cycle (and per problem); returns an exit code for `--mode once`.
fn print_event(event: &AgentEvent<'_>, schedule: Schedule) -> Option<u8> {
    match event {
        AgentEvent::CycleFinished { cycle, summary } => {
            let c = &summary.counts;
            let mut line = format!(
                "{} cycle {cycle} (run {}): {}, {} cut off, {} up to date",
                now(),
                summary.run_id.unwrap_or_default(),
                super::output::ran_text(c),
                c.cut_off,
                c.up_to_date
            );
            if c.failed > 0 || c.blocked > 0 {
                let failed: Vec<&str> = summary.failures.iter().map(|f| f.stage.as_str()).collect();
                line.push_str(&format!(", {} failed ({}), {} blocked", c.failed, failed.join(", "), c.blocked));
            }
            if summary.interrupted {
                line.push_str(", interrupted");
            }
            println!("{line} in {}", seconds(summary.elapsed));
            Some(if summary.succeeded() { EXIT_OK } else { EXIT_FAILED })
        }
        AgentEvent::CycleFailed { cycle, error } => {
            println!("{} cycle {cycle} could not run: {}", now(), first_line(&error.to_string()));
            Some(EXIT_FAILED)
        }
        AgentEvent::PipelineInvalid { error, keeping_last_good } => {
            let next = match (schedule, keeping_last_good) {
                (Schedule::Once, _) => "no cycle ran",
                (_, true) => "keeping the last good pipeline",
                (_, false) => "waiting for a valid one",
            };
            eprintln!("{} the pipeline file is invalid; {next}:\n{error}", now());
            Some(if schedule == Schedule::Once { EXIT_USAGE } else { EXIT_OK })
        }
        AgentEvent::WatchFailed { error } => {
            eprintln!("{} {error}; watching the rest", now());
            None
        }
        AgentEvent::PipelineReloaded => {
            println!("{} pipeline file changed; reloaded", now());
            None
        }
        AgentEvent::Build(dagrun::Event::LockWaiting { holder, .. }) => {
            eprintln!("{} another build holds the lock ({holder}); waiting", now());
            None
        }
        AgentEvent::CycleStarted { .. } | AgentEvent::Build(_) | AgentEvent::Idle { .. } => None,
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}
