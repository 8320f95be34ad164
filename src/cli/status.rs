//! `dagrun status`: the orchestrator_state table with live dirtiness and its reason.

use std::borrow::Cow;
use std::io::Write;

use dagrun::{Engine, Error, RunningStage, StageReport};

use super::{EXIT_OK, Spaced, seconds};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Only these stages and what they depend on.
    #[arg(value_name = "STAGE")]
    stages: Vec<String>,
    /// Print JSON instead of a table: `{"stages": [...], "running": [...], "run_cache": {"dir", "size_bytes"}}`.
    #[arg(long)]
    json: bool,
}

pub fn run(engine: &Engine, args: StatusArgs) -> Result<u8, Error> {
    let reports = engine.status(&args.stages, false)?;
    // What another process is building now is shown as running, not as dirty.
    let running = engine.running_elsewhere()?;
    // Buffered: stdout alone is flushed at every line, a write call each (1.5 million for
    // the JSON of 100,000 stages).
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    if args.json {
        let (dir, size) = engine.run_cache_size();
        let status = StatusJson {
            stages: &reports,
            running: &running,
            run_cache: RunCacheJson { dir: dir.display().to_string(), size_bytes: size },
        };
        let _ = serde_json::to_writer_pretty(&mut out, &status);
        let _ = writeln!(out);
    } else {
        let _ = write_table(&mut out, &reports, &running);
    }
    let _ = out.flush();
    Ok(EXIT_OK)
}

/// `status --json`: the stages' reports, serialised in place, and the run-cache's size.
#[derive(serde::Serialize)]
struct StatusJson<'a> {
    stages: &'a [StageReport],
    /// Stages another process's build is running now, with their Slurm jobs.
    running: &'a [RunningStage],
    run_cache: RunCacheJson,
}

#[derive(serde::Serialize)]
struct RunCacheJson {
    dir: String,
    size_bytes: u64,
}

fn write_table(out: &mut impl Write, reports: &[StageReport], running: &[RunningStage]) -> std::io::Result<()> {
    let mut table =
        super::output::Table::new(["STAGE", "STATE", "LAST SUCCESS", "LAST RESULT", "RUNS", "FAILS", "TOOK", "WHY"]);
    for r in reports {
        let now = running.iter().find(|s| s.stage == r.stage);
        table.cell(&r.stage).cell(match now {
            Some(_) => "running",
            None if r.dirty => "dirty",
            None => "up to date",
        });
        match &r.last_run_at {
            Some(t) => table.cell(Spaced(t)),
            None => table.cell("never"),
        };
        match r.last_status {
            Some(s) => table.cell(without_underscores(s.as_str())),
            None => table.cell("-"),
        };
        table.cell(r.run_count).cell(r.failure_count);
        match r.last_duration_ms {
            Some(ms) => table.cell(seconds(std::time::Duration::from_millis(ms as u64))),
            None => table.cell("-"),
        };
        match now {
            Some(s) => {
                let job = s.job.as_ref().map(|job| format!("; {job}")).unwrap_or_default();
                table.cell(format_args!("by pid {} (run {}) since {}{job}", s.pid, s.run_id, Spaced(&s.started_at)))
            }
            None => match &r.reason {
                Some(reason) if r.dirty => table.cell(reason),
                _ => table.cell(""),
            },
        };
    }
    table.write(out)?;
    let dirty = reports.iter().filter(|r| r.dirty).count();
    let stages = if reports.len() == 1 { "stage" } else { "stages" };
    writeln!(out, "\n{} {stages}: {} up to date, {dirty} dirty", reports.len(), reports.len() - dirty)
}

/// A status as the table shows it: `cut_off` as `cut off`.
fn without_underscores(status: &str) -> Cow<'_, str> {
    if status.contains('_') { status.replace('_', " ").into() } else { status.into() }
}
