//! `dagrun metrics`: each stage's latest metrics, and `metrics diff`: what changed.

use std::collections::BTreeMap;
use std::io::Write;

use dagrun::metrics::{MetricChange, diff};
use dagrun::state::MetricsRecord;
use dagrun::{Engine, Error};

use super::{EXIT_OK, EXIT_USAGE};

#[derive(clap::Args, Debug)]
pub struct MetricsArgs {
    #[command(subcommand)]
    command: Option<MetricsCommand>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum MetricsCommand {
    /// What changed. No run: each stage's latest metrics against its previous ones. One
    /// run: the metrics as of that run against the latest. Two: as of the first against as
    /// of the second.
    Diff {
        #[arg(value_name = "RUN", num_args = 0..=2)]
        runs: Vec<i64>,
    },
}

/// Stage → metrics, from the latest record of each stage.
type Snapshot = BTreeMap<String, BTreeMap<String, f64>>;

/// The latest and the one before, per stage.
fn latest_two(records: Vec<MetricsRecord>) -> (Snapshot, Snapshot) {
    let (mut latest, mut previous) = (Snapshot::new(), Snapshot::new());
    for record in records {
        if let Some(old) = latest.insert(record.component.clone(), record.metrics) {
            previous.insert(record.component, old);
        }
    }
    (latest, previous)
}

pub fn run(engine: &Engine, args: MetricsArgs) -> Result<u8, Error> {
    let mut out = std::io::stdout().lock();
    match args.command {
        None => show(&mut out, &engine.recorded_metrics(None)?, args.json),
        Some(MetricsCommand::Diff { runs }) => {
            let (old, new) = match runs[..] {
                [] => {
                    let (latest, previous) = latest_two(engine.recorded_metrics(None)?);
                    (previous, latest)
                }
                [a] => (latest_two(engine.recorded_metrics(Some(a))?).0, latest_two(engine.recorded_metrics(None)?).0),
                [a, b] => {
                    (latest_two(engine.recorded_metrics(Some(a))?).0, latest_two(engine.recorded_metrics(Some(b))?).0)
                }
                _ => {
                    eprintln!("error: `metrics diff` takes at most two runs");
                    return Ok(EXIT_USAGE);
                }
            };
            show_diff(&mut out, &diff(&old, &new), args.json)
        }
    }
}

fn show(out: &mut impl Write, records: &[MetricsRecord], json: bool) -> Result<u8, Error> {
    // The latest record of each stage, with the run it came from.
    let mut latest: BTreeMap<&str, &MetricsRecord> = BTreeMap::new();
    for record in records {
        latest.insert(&record.component, record);
    }
    if json {
        let _ = serde_json::to_writer_pretty(&mut *out, &latest.values().collect::<Vec<_>>());
        let _ = writeln!(out);
        return Ok(EXIT_OK);
    }
    if latest.is_empty() {
        let _ = writeln!(out, "no metrics recorded yet (declare `metrics = [\"file.json\"]` on a stage)");
        return Ok(EXIT_OK);
    }
    let mut table = super::output::Table::new(["STAGE", "METRIC", "VALUE", "RUN"]);
    for r in latest.values() {
        for (k, v) in &r.metrics {
            table.cell(&r.component).cell(k).cell(v).cell(r.run_id);
        }
    }
    let _ = table.write(out);
    Ok(EXIT_OK)
}

fn show_diff(out: &mut impl Write, changes: &[MetricChange], json: bool) -> Result<u8, Error> {
    if json {
        let _ = serde_json::to_writer_pretty(&mut *out, changes);
        let _ = writeln!(out);
        return Ok(EXIT_OK);
    }
    if changes.is_empty() {
        let _ = writeln!(out, "no metric changed");
        return Ok(EXIT_OK);
    }
    let shown = |v: Option<f64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut table = super::output::Table::new(["STAGE", "METRIC", "OLD", "NEW", "CHANGE"]);
    for c in changes {
        let change = match (c.old, c.new) {
            (Some(a), Some(b)) => format!("{:+}", b - a),
            _ => "-".into(),
        };
        table.cell(&c.stage).cell(&c.metric).cell(shown(c.old)).cell(shown(c.new)).cell(change);
    }
    let _ = table.write(out);
    Ok(EXIT_OK)
}
