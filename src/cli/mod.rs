//! The command line: clap types, turned into library calls; all printing happens here.

mod agent;
mod build;
#[cfg(debug_assertions)]
mod debug_stages;
mod gc;
mod graph;
mod history;
mod init;
mod metrics;
mod output;
#[cfg(feature = "dashboard")]
mod serve;
mod signals;
mod status;
mod why;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dagrun::{Engine, Error, Registry};

/// Exit codes: 0 success, 1 a stage failed (or the build could not finish), 2 bad usage
/// or a bad pipeline file.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "dagrun",
    version,
    about = "Incremental pipelines: content-fingerprinted stages, parallel builds, state in SQLite"
)]
pub struct Cli {
    /// Run as if started in DIR.
    #[arg(short = 'C', long = "directory", value_name = "DIR", global = true)]
    directory: Option<PathBuf>,
    /// The pipeline file (default: pipeline.toml).
    #[arg(long, value_name = "PATH", global = true)]
    file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run every stage whose inputs changed, and what depends on them.
    Build(build::BuildArgs),
    /// Show every stage: up to date or dirty, and why.
    Status(status::StatusArgs),
    /// Mark stages dirty so that the next build re-runs them.
    Invalidate(InvalidateArgs),
    /// Create or upgrade the state database.
    Migrate,
    /// Run the pipeline once, every N seconds, or whenever an input changes.
    Agent(agent::AgentArgs),
    /// Runs newest first: trigger, outcome, and what happened to each stage and why.
    History(history::HistoryArgs),
    /// Why a stage is dirty (which input, param, command or upstream changed) or not.
    Why(why::WhyArgs),
    /// The DAG as Graphviz dot, Mermaid or text, stages marked by state.
    Graph(graph::GraphArgs),
    /// Record stages as up to date with their current inputs and outputs, without running them.
    Accept(AcceptArgs),
    /// The web dashboard: the state table live, Run Agent Once, runs, the graph, the report.
    #[cfg(feature = "dashboard")]
    Serve(serve::ServeArgs),
    /// Write a commented starter pipeline file (pipeline.toml, or --file), ready to build.
    Init(init::InitArgs),
    /// Each stage's latest metrics (from `metrics` files and built-ins); `diff` for changes.
    Metrics(metrics::MetricsArgs),
    /// Print the pipeline.toml equivalent to a DVC pipeline file (dvc.yaml).
    Import(ImportArgs),
    /// Trim the run-cache, keeping what every stage's current record references.
    Gc(gc::GcArgs),
    /// Run a built-in stage from a job file: what a Slurm job runs on its node.
    #[command(hide = true)]
    RunStage(RunStageArgs),
}

#[derive(clap::Args, Debug)]
struct RunStageArgs {
    /// The job file dagrun wrote when it submitted the stage.
    #[arg(value_name = "JOB_FILE")]
    job_file: PathBuf,
}

#[derive(clap::Args, Debug)]
struct ImportArgs {
    /// The DVC pipeline file to translate.
    #[arg(value_name = "DVC_YAML")]
    dvc_file: PathBuf,
}

#[derive(clap::Args, Debug)]
struct AcceptArgs {
    /// Stages to accept; their outputs must exist.
    #[arg(required = true, value_name = "STAGE")]
    stages: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct InvalidateArgs {
    /// Stages to mark dirty.
    #[arg(required = true, value_name = "STAGE")]
    stages: Vec<String>,
    /// Also mark every stage downstream of them.
    #[arg(long)]
    downstream: bool,
}

/// Parses the command line, runs it, and returns the process exit code.
pub fn run() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            let text = err.to_string();
            let mut stderr = std::io::stderr().lock();
            if text.starts_with("error:") {
                let _ = write!(stderr, "{text}");
            } else {
                let _ = writeln!(stderr, "error: {text}");
            }
            if err.is_usage() { EXIT_USAGE } else { EXIT_FAILED }
        }
    }
}

fn dispatch(cli: Cli) -> Result<u8, Error> {
    if let Command::RunStage(args) = &cli.command {
        return Ok(run_stage(&args.job_file));
    }
    let file = pipeline_file(&cli);
    if let Command::Init(args) = &cli.command {
        return init::run(&file, args);
    }
    if let Command::Import(args) = &cli.command {
        let dvc_file = cli.directory.clone().unwrap_or_default().join(&args.dvc_file);
        print!("{}", dagrun::spec::import_dvc(&dvc_file)?);
        return Ok(EXIT_OK);
    }
    if !file.exists() {
        eprintln!(
            "error: no pipeline file at {}\n  = help: run `dagrun init` to write a starter one here, or point at yours with `-C DIR` or `--file PATH`",
            file.display()
        );
        return Ok(EXIT_USAGE);
    }
    if let Command::Agent(args) = cli.command {
        // The agent loads (and reloads) the pipeline itself.
        return agent::run(file, args);
    }
    #[cfg(feature = "dashboard")]
    if let Command::Serve(args) = cli.command {
        // So does the dashboard.
        return serve::run(file, args);
    }
    let engine = Engine::load(&file, registry())?;
    let state_path = engine.spec().state_path.clone();
    let result = run_command(&engine, cli.command).map_err(|e| e.at_state(&state_path));
    // The process ends next, and its memory goes back to the system whole: freeing a large
    // pipeline's spec and state one allocation at a time took 30 ms at 100,000 stages. (The
    // engine holds only memory: no connection, lock or file.)
    std::mem::forget(engine);
    result
}

fn run_command(engine: &Engine, command: Command) -> Result<u8, Error> {
    match command {
        Command::Build(args) => build::run(engine, args),
        Command::Status(args) => status::run(engine, args),
        Command::Invalidate(args) => {
            let names = engine.invalidate(&args.stages, args.downstream)?;
            println!(
                "invalidated {}; the next build re-runs {}",
                names.join(", "),
                if names.len() == 1 { "it" } else { "them" }
            );
            Ok(EXIT_OK)
        }
        Command::History(args) => history::run(engine, args),
        Command::Why(args) => why::run(engine, args),
        Command::Graph(args) => graph::run(engine, args),
        Command::Metrics(args) => metrics::run(engine, args),
        Command::Gc(args) => gc::run(engine, args),
        Command::Accept(args) => {
            let accepted = engine.accept(&args.stages, &mut |_| {})?;
            println!("accepted {} as up to date with their current inputs and outputs", accepted.join(", "));
            Ok(EXIT_OK)
        }
        Command::Agent(_) | Command::Init(_) | Command::Import(_) | Command::RunStage(_) => {
            unreachable!("handled before the pipeline is loaded")
        }
        #[cfg(feature = "dashboard")]
        Command::Serve(_) => unreachable!("handled before the pipeline is loaded"),
        Command::Migrate => {
            let (from, to) = engine.migrate()?;
            if from == to {
                println!("state database {} is at schema version {to}", engine.spec().state_path.display());
            } else {
                println!("migrated {} from schema version {from} to {to}", engine.spec().state_path.display());
            }
            Ok(EXIT_OK)
        }
    }
}

/// `--file`, or `pipeline.toml`; a DVC project without one runs its `dvc.yaml` as it is.
fn pipeline_file(cli: &Cli) -> PathBuf {
    let dir = cli.directory.clone().unwrap_or_default();
    if let Some(file) = &cli.file {
        return dir.join(file);
    }
    let default = dir.join("pipeline.toml");
    let dvc = dir.join("dvc.yaml");
    if !default.exists() && dvc.is_file() && !matches!(cli.command, Command::Init(_)) { dvc } else { default }
}

/// `dagrun run-stage JOB_FILE`, on a cluster node. SIGTERM (scancel, a time limit) raises the
/// built-in's cancel flag, as Ctrl-C does locally.
fn run_stage(job_file: &std::path::Path) -> u8 {
    let cancel = dagrun::CancelToken::new();
    signals::on_stop_signals(&cancel, |cancel| cancel.cancel(), || std::process::exit(i32::from(EXIT_FAILED)));
    match dagrun::executor::slurm::node::run_stage_job(job_file, &registry(), cancel.flag()) {
        Ok(()) => EXIT_OK,
        Err(message) => {
            eprintln!("error: {message}");
            EXIT_FAILED
        }
    }
}

/// The built-in stages this binary offers.
fn registry() -> Registry {
    #[allow(unused_mut)]
    let mut registry = Registry::new();
    #[cfg(feature = "markets")]
    dagrun::markets::register(&mut registry);
    #[cfg(debug_assertions)]
    debug_stages::register(&mut registry);
    registry
}

/// A stored time as the CLI shows it: `2026-12-01 20:19:43`, not `2026-12-01T20:19:43`
/// (written in place, no `String` made: `status` shows 100,000).
struct Spaced<'a>(&'a str);

impl std::fmt::Display for Spaced<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, part) in self.0.split('T').enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(part)?;
        }
        Ok(())
    }
}

/// Seconds for humans: `0.012s`, `1.20s`, `75.0s`.
fn seconds(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s < 0.1 {
        format!("{s:.3}s")
    } else if s < 10.0 {
        format!("{s:.2}s")
    } else {
        format!("{s:.1}s")
    }
}
