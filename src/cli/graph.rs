//! `dagrun graph`: the DAG as Graphviz dot, Mermaid or text, each stage marked by its state.

use std::io::Write;

use dagrun::{Engine, Error, StageReport};

use super::EXIT_OK;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    Dot,
    Mermaid,
    Text,
}

#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// A stage's state as one word, for colours and labels.
fn state(report: &StageReport) -> &'static str {
    use dagrun::state::StageStatus;
    match (report.reason.as_deref(), report.last_status) {
        (None, _) => "up-to-date",
        (Some(_), Some(StageStatus::Failed | StageStatus::TimedOut | StageStatus::Interrupted)) => "failed",
        (Some(_), None) => "never-run",
        (Some(_), _) => "dirty",
    }
}

fn colour(state: &str) -> &'static str {
    match state {
        "up-to-date" => "#c8e6c9",
        "failed" => "#ffcdd2",
        "never-run" => "#eeeeee",
        _ => "#ffe0b2",
    }
}

pub fn run(engine: &Engine, args: GraphArgs) -> Result<u8, Error> {
    let reports = engine.status(&[], false)?;
    let spec = engine.spec();
    let edges: Vec<(&str, &str)> = reports
        .iter()
        .filter_map(|r| spec.stage_index(&r.stage))
        .flat_map(|idx| {
            engine.dag().upstream(idx).map(move |up| (spec.stages[up].name.as_str(), spec.stages[idx].name.as_str()))
        })
        .collect();
    let mut out = std::io::stdout().lock();
    let _ = match args.format {
        Format::Dot => write_dot(&mut out, &spec.name, &reports, &edges),
        Format::Mermaid => write_mermaid(&mut out, &reports, &edges),
        Format::Text => write_text(&mut out, engine, &reports),
    };
    Ok(EXIT_OK)
}

fn write_dot(out: &mut impl Write, name: &str, reports: &[StageReport], edges: &[(&str, &str)]) -> std::io::Result<()> {
    writeln!(out, "digraph {name:?} {{")?;
    writeln!(out, "  rankdir=LR;")?;
    writeln!(out, "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];")?;
    for report in reports {
        let state = state(report);
        let why = report.reason.as_ref().map(ToString::to_string).unwrap_or_else(|| "up to date".into());
        writeln!(
            out,
            "  {:?} [fillcolor={:?}, label={:?}, tooltip={why:?}];",
            report.stage,
            colour(state),
            format!("{}\n{state}", report.stage)
        )?;
    }
    for (from, to) in edges {
        writeln!(out, "  {from:?} -> {to:?};")?;
    }
    writeln!(out, "}}")
}

fn write_mermaid(out: &mut impl Write, reports: &[StageReport], edges: &[(&str, &str)]) -> std::io::Result<()> {
    // Ids `s0`, `s1`, ...: stage names may collide once sanitised, or be Mermaid keywords.
    let id = |stage: &str| reports.iter().position(|r| r.stage == stage).map_or_else(String::new, |i| format!("s{i}"));
    writeln!(out, "graph LR")?;
    for report in reports {
        writeln!(out, "  {}[\"{}\"]:::{}", id(&report.stage), report.stage, state(report).replace('-', "_"))?;
    }
    for (from, to) in edges {
        writeln!(out, "  {} --> {}", id(from), id(to))?;
    }
    for state in ["up-to-date", "dirty", "failed", "never-run"] {
        writeln!(out, "  classDef {} fill:{}", state.replace('-', "_"), colour(state))?;
    }
    Ok(())
}

fn write_text(out: &mut impl Write, engine: &Engine, reports: &[StageReport]) -> std::io::Result<()> {
    let spec = engine.spec();
    let width = reports.iter().map(|r| r.stage.len()).max().unwrap_or(0);
    for report in reports {
        let Some(idx) = spec.stage_index(&report.stage) else { continue };
        let mut upstream: Vec<&str> = engine.dag().upstream(idx).map(|up| spec.stages[up].name.as_str()).collect();
        upstream.sort_unstable();
        let from = if upstream.is_empty() { String::new() } else { format!("  <- {}", upstream.join(", ")) };
        writeln!(out, "{:width$}  [{}]{from}", report.stage, state(report))?;
    }
    Ok(())
}
