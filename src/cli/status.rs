//! `dagrun status`: the orchestrator_state table with live dirtiness and its reason.

use std::borrow::Cow;
use std::io::Write;

use dagrun::{Engine, Error, RunningStage, StageReport};

use super::{EXIT_OK, seconds};

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
    let header = ["STAGE", "STATE", "LAST SUCCESS", "LAST RESULT", "RUNS", "FAILS", "TOOK", "WHY"];
    // Borrowed where the text is already there: 100,000 rows of eight cells.
    let rows: Vec<[Cow<'_, str>; 8]> = reports
        .iter()
        .map(|r| {
            let now = running.iter().find(|s| s.stage == r.stage);
            let (state, why): (&str, Cow<'_, str>) = match now {
                Some(s) => {
                    let job = s.job.as_ref().map(|job| format!("; {job}")).unwrap_or_default();
                    let since = s.started_at.replace('T', " ");
                    ("running", format!("by pid {} (run {}) since {since}{job}", s.pid, s.run_id).into())
                }
                None if r.dirty => ("dirty", r.reason.as_ref().map(ToString::to_string).unwrap_or_default().into()),
                None => ("up to date", "".into()),
            };
            [
                r.stage.as_str().into(),
                state.into(),
                r.last_run_at.as_deref().map_or("never".into(), |t| t.replace('T', " ").into()),
                r.last_status.map_or("-".into(), |s| without_underscores(s.as_str())),
                r.run_count.to_string().into(),
                r.failure_count.to_string().into(),
                r.last_duration_ms.map_or("-".into(), |ms| seconds(std::time::Duration::from_millis(ms as u64)).into()),
                why,
            ]
        })
        .collect();
    super::output::write_table(out, header, &rows)?;
    let dirty = reports.iter().filter(|r| r.dirty).count();
    let stages = if reports.len() == 1 { "stage" } else { "stages" };
    writeln!(out, "\n{} {stages}: {} up to date, {dirty} dirty", reports.len(), reports.len() - dirty)
}

/// A status as the table shows it: `cut_off` as `cut off`.
fn without_underscores(status: &str) -> Cow<'_, str> {
    if status.contains('_') { status.replace('_', " ").into() } else { status.into() }
}
