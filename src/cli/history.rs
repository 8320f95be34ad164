//! `dagrun history`: runs newest first, and what each did with each stage.

use std::io::Write;

use dagrun::state::RunRow;
use dagrun::{Engine, Error};

use super::{EXIT_OK, Spaced, seconds};

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    /// Only runs in which this stage ran or was considered, and only its rows.
    #[arg(value_name = "STAGE")]
    stage: Option<String>,
    /// How many runs to show.
    #[arg(long, value_name = "N", default_value_t = 10)]
    limit: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(engine: &Engine, args: HistoryArgs) -> Result<u8, Error> {
    let runs = engine.history(args.stage.as_deref(), args.limit)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = serde_json::to_writer_pretty(&mut out, &runs);
        let _ = writeln!(out);
    } else if runs.is_empty() {
        let _ = writeln!(out, "no runs recorded yet");
    } else {
        let width = runs.iter().flat_map(|r| r.stages.iter().map(|s| s.component.len())).max().unwrap_or(0);
        for run in &runs {
            let _ = write_run(&mut out, run, width);
        }
    }
    Ok(EXIT_OK)
}

fn ms(value: Option<i64>) -> String {
    value.map(|ms| seconds(std::time::Duration::from_millis(ms.max(0) as u64))).unwrap_or_else(|| "-".into())
}

fn write_run(out: &mut impl Write, run: &RunRow, width: usize) -> std::io::Result<()> {
    let c = &run.counts;
    writeln!(
        out,
        "run {}  {}  {}  {}  {}: {}, {} cut off, {} up to date, {} failed, {} blocked",
        run.run_id,
        run.trigger,
        Spaced(&run.started_at),
        ms(run.duration_ms),
        run.outcome,
        super::output::ran_text(c),
        c.cut_off,
        c.up_to_date,
        c.failed,
        c.blocked
    )?;
    for stage in &run.stages {
        let word = match stage.status.as_str() {
            "success" => "ran",
            "cut_off" => "cut off",
            "up_to_date" => "up to date",
            "timed_out" => "timed out",
            other => other,
        };
        let retry = if stage.attempt > 1 { format!(" (attempt {})", stage.attempt) } else { String::new() };
        let detail = match (&stage.error, stage.status.as_str()) {
            (Some(error), _) => error.lines().next().unwrap_or("").to_string(),
            (None, _) => stage.reason.clone(),
        };
        let took = if matches!(stage.status.as_str(), "cut_off" | "blocked" | "skipped" | "up_to_date") {
            String::new()
        } else {
            ms(stage.duration_ms)
        };
        writeln!(out, "  {word:<11}  {:<width$}  {took:>7}  {detail}{retry}", stage.component)?;
    }
    Ok(())
}
