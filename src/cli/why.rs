//! `dagrun why STAGE`: the precise reason a stage is or is not dirty, old -> new.

use std::io::Write;

use dagrun::planner::Change;
use dagrun::{DirtyReason, Engine, Error, StageReport};

use super::{EXIT_OK, Spaced};

#[derive(clap::Args, Debug)]
pub struct WhyArgs {
    #[arg(value_name = "STAGE")]
    stage: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(engine: &Engine, args: WhyArgs) -> Result<u8, Error> {
    let why = engine.why(&args.stage)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = serde_json::to_writer_pretty(&mut out, &why);
        let _ = writeln!(out);
        return Ok(EXIT_OK);
    }
    let stage = &why.stage;
    let _ = match stage.reason.as_deref() {
        None => writeln!(
            out,
            "`{}` is up to date: its fingerprint {} matches its last success at {}",
            stage.stage,
            stage.fingerprint.short(),
            Spaced(stage.last_run_at.as_deref().unwrap_or("?"))
        ),
        Some(DirtyReason::UpstreamDirty { stage: up }) => {
            let _ = writeln!(
                out,
                "`{}` may run: upstream `{up}` is dirty, and `{}` runs only if its outputs change",
                stage.stage, stage.stage
            );
            let mut path: Vec<&str> = why.chain.iter().rev().map(|r| r.stage.as_str()).collect();
            path.push(&stage.stage);
            let cause = why.chain.last().and_then(|root| root.reason.as_deref()).map(cause).unwrap_or_default();
            let _ = writeln!(out, "  {cause} -> {}", path.join(" -> "));
            for report in &why.chain {
                let _ = write_reasons(&mut out, report, "  ");
            }
            Ok(())
        }
        Some(_) => write_reasons(&mut out, stage, ""),
    };
    Ok(EXIT_OK)
}

/// The root cause in a few words, for the head of the chain.
fn cause(reason: &DirtyReason) -> String {
    match reason {
        DirtyReason::Changed { changes } => match changes.first() {
            Some(Change::InputChanged { path, .. } | Change::InputAdded { path } | Change::InputRemoved { path }) => {
                format!("{path} changed")
            }
            Some(Change::Param { key, .. }) => format!("param `{key}` changed"),
            Some(other) => other.to_string(),
            None => "fingerprint changed".into(),
        },
        other => other.to_string(),
    }
}

fn write_reasons(out: &mut impl Write, report: &StageReport, indent: &str) -> std::io::Result<()> {
    let Some(reason) = report.reason.as_deref() else { return Ok(()) };
    match reason {
        DirtyReason::Changed { changes } if !changes.is_empty() => {
            writeln!(out, "{indent}`{}` will run because:", report.stage)?;
            for change in changes {
                writeln!(out, "{indent}  {}", detail(change))?;
            }
            Ok(())
        }
        DirtyReason::LastRunFailed { .. } => {
            let error = report.last_error.as_deref().and_then(|e| e.lines().next()).unwrap_or("");
            // The reason already says how it ended: "last run was interrupted: its process
            // group was killed", not "…interrupted: interrupted; its process group…".
            let error =
                error.strip_prefix("interrupted; ").or_else(|| error.strip_prefix("timed out ")).unwrap_or(error);
            writeln!(out, "{indent}`{}` will run: {reason}: {error}", report.stage)
        }
        other => writeln!(out, "{indent}`{}` will run: {other}", report.stage),
    }
}

fn detail(change: &Change) -> String {
    match change {
        Change::InputChanged { path, old, new } => format!("input `{path}` changed: {old} -> {new}"),
        Change::Param { key, old, new } => {
            let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
            format!("param `{key}` changed: {} -> {}", shown(old), shown(new))
        }
        Change::Command { old, new } => format!("command changed:\n      was: {old}\n      now: {new}"),
        Change::Upstream { stage, old, new } => format!("upstream `{stage}` output changed: {old} -> {new}"),
        Change::Env { name } => format!("env `{name}` changed (values are not shown)"),
        other => other.to_string(),
    }
}
