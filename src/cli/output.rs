//! Rendering build events for where they go: a live display on a terminal, plain lines
//! when piped, only failures with `--quiet`, NDJSON with `--json`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use dagrun::Event;
use dagrun::event::BuildSummary;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::seconds;

/// A line for stdout or stderr.
pub enum Line {
    Out(String),
    Err(String),
}

pub enum Output {
    Plain { width: usize, quiet: bool },
    Json,
    Live(Live),
}

impl Output {
    /// Live on a terminal unless `quiet` or `json`; plain lines otherwise.
    pub fn choose(width: usize, quiet: bool, json: bool) -> Output {
        if json {
            Output::Json
        } else if !quiet && std::io::stdout().is_terminal() {
            Output::Live(Live::new(width))
        } else {
            Output::Plain { width, quiet }
        }
    }

    pub fn event(&mut self, event: &Event<'_>) {
        match self {
            Output::Json => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", event.to_json());
                let _ = out.flush();
            }
            Output::Plain { width, quiet } => {
                if *quiet && !is_essential(event) {
                    return;
                }
                for line in lines(event, *width) {
                    emit(line);
                }
            }
            Output::Live(live) => live.event(event),
        }
    }
}

fn emit(line: Line) {
    match line {
        Line::Out(text) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
        }
        Line::Err(text) => super::signals::note(&text),
    }
}

/// What `--quiet` still shows: problems and the summary.
fn is_essential(event: &Event<'_>) -> bool {
    matches!(
        event,
        Event::StageFailed { will_retry: false, .. }
            | Event::InputMoved { .. }
            | Event::LockWaiting { .. }
            | Event::SweptInterrupted { .. }
            | Event::OrphansEnded { .. }
            | Event::OrphanJobsCancelled { .. }
            | Event::StateBusy { .. }
            | Event::StateReset { .. }
            | Event::BuildFinished { .. }
    )
}

/// The plain-text lines of an event.
pub fn lines(event: &Event<'_>, width: usize) -> Vec<Line> {
    let one = |line| vec![line];
    match event {
        Event::LockWaiting { path, holder } => one(Line::Err(format!(
            "another build holds {} ({holder}); waiting (pass --no-wait to fail at once)",
            path.display()
        ))),
        Event::StateReset { moved_to } => {
            one(Line::Err(format!("moved the old state database to {}; starting a new one", moved_to.display())))
        }
        Event::SweptInterrupted { stages } => one(Line::Err(format!(
            "note: a previous build died while running {}; recorded as interrupted, will re-run",
            stages.join(", ")
        ))),
        Event::StateBusy { path } => one(Line::Err(format!(
            "waiting: another process holds a write lock on {} (an open SQL transaction?); the build goes on when it ends",
            path.display()
        ))),
        Event::OrphansEnded { stage, processes } => one(Line::Err(format!(
            "note: ended {processes} process{} of stage `{stage}` that a killed build left running; its outputs are not trusted and it will re-run",
            if *processes == 1 { "" } else { "es" }
        ))),
        Event::OrphanJobsCancelled { stage, jobs } => one(Line::Err(format!(
            "note: cancelled Slurm job {} of stage `{stage}` that a killed build left queued or running; it will re-run",
            jobs.join(", ")
        ))),
        Event::JobSubmitted { stage, job_id } => {
            one(Line::Out(format!("submit   {stage:width$}  (Slurm job {job_id})")))
        }
        Event::BuildStarted { .. } => Vec::new(),
        Event::StageStarted { stage, attempt: 1, reason } => {
            one(Line::Out(format!("run      {stage:width$}  ({reason})")))
        }
        Event::StageStarted { stage, attempt, .. } => {
            one(Line::Out(format!("retry    {stage:width$}  (attempt {attempt})")))
        }
        Event::StageSucceeded { stage, duration, output_changed, metrics } => {
            let note = if *output_changed { "" } else { "  (outputs unchanged)" };
            let shown: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {}", format_metric(*v))).collect();
            let metrics = if shown.is_empty() { String::new() } else { format!("  [{}]", shown.join(", ")) };
            one(Line::Out(format!("done     {stage:width$}  {}{note}{metrics}", seconds(*duration))))
        }
        Event::StageRestored { stage, reason, duration, output_changed } => {
            let note = if *output_changed { "" } else { "  (outputs unchanged)" };
            one(Line::Out(format!(
                "restored {stage:width$}  {}  from the run-cache ({reason}){note}",
                seconds(*duration)
            )))
        }
        Event::StageCutOff { stage } => {
            one(Line::Out(format!("cut off  {stage:width$}  (upstream outputs unchanged)")))
        }
        Event::StageFailed { stage, error, log_path, will_retry, .. } => {
            let log = log_path.map(|p| format!("; log: {p}")).unwrap_or_default();
            let retry = if *will_retry { "; retrying" } else { "" };
            one(Line::Out(format!("FAILED   {stage:width$}  {error}{log}{retry}")))
        }
        Event::StageBlocked { stage, upstream: Some(up) } => {
            one(Line::Out(format!("blocked  {stage:width$}  (upstream `{up}` failed)")))
        }
        Event::StageBlocked { stage, upstream: None } => {
            one(Line::Out(format!("skipped  {stage:width$}  (the build stopped first)")))
        }
        Event::RunCacheUnavailable { dir, error } => one(Line::Err(format!(
            "warning: the run-cache at {} cannot be used ({error}); building without it",
            dir.display()
        ))),
        Event::InputMoved { stage, path } => one(Line::Err(format!(
            "warning: `{path}` changed while `{stage}` ran; `{stage}` stays dirty and re-runs next build"
        ))),
        Event::BuildFinished { summary } => summary_lines(summary),
    }
}

/// A metric with four decimals, or in scientific notation when tiny or huge.
fn format_metric(value: f64) -> String {
    if value != 0.0 && (value.abs() >= 1e6 || value.abs() < 1e-3) {
        format!("{value:.3e}")
    } else {
        format!("{value:.4}")
    }
}

/// `3 ran`, or `1 ran, 2 restored` when the run-cache restored any: how every count line
/// (build summary, agent cycle, history) starts.
pub fn ran_text(c: &dagrun::state::RunCounts) -> String {
    if c.restored > 0 { format!("{} ran, {} restored", c.ran, c.restored) } else { format!("{} ran", c.ran) }
}

fn summary_lines(summary: &BuildSummary) -> Vec<Line> {
    let mut lines = Vec::new();
    for failure in &summary.failures {
        lines.push(Line::Err(format!("\nstage `{}` failed: {}", failure.stage, failure.error)));
        if let Some(log) = &failure.log_path {
            lines.push(Line::Err(format!("  log: {log}")));
        }
        for line in failure.log_tail.lines() {
            lines.push(Line::Err(format!("  | {line}")));
        }
    }
    let c = &summary.counts;
    let mut parts = vec![ran_text(c), format!("{} cut off", c.cut_off), format!("{} up to date", c.up_to_date)];
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
    lines.push(Line::Out(format!("{verdict}{} in {}", parts.join(", "), seconds(summary.elapsed))));
    lines
}

/// The live display on screen, if any: a message from another thread (a signal handler's)
/// goes above it instead of being drawn over by its next refresh.
static ON_SCREEN: std::sync::Mutex<Option<MultiProgress>> = std::sync::Mutex::new(None);

/// Writes `text` to stderr, above the live display when one is drawn.
pub fn announce(text: &str) {
    let display = ON_SCREEN.lock().ok().and_then(|d| d.clone());
    match display {
        Some(multi) => multi.suspend(|| super::signals::note(text)),
        None => super::signals::note(text),
    }
}

/// The live display: an overall bar, and a line per running stage with its elapsed time;
/// finished stages scroll above it as plain lines.
pub struct Live {
    multi: MultiProgress,
    overall: ProgressBar,
    running: HashMap<String, ProgressBar>,
    width: usize,
}

impl Live {
    fn new(width: usize) -> Live {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} stages done  {elapsed}").expect("valid template"),
        );
        if let Ok(mut on_screen) = ON_SCREEN.lock() {
            *on_screen = Some(multi.clone());
        }
        Live { multi, overall, running: HashMap::new(), width }
    }

    fn print(&self, line: Line) {
        match line {
            Line::Out(text) => {
                let _ = self.multi.println(text);
            }
            Line::Err(text) => self.multi.suspend(|| super::signals::note(&text)),
        }
    }

    fn stage_done(&mut self, stage: &str) {
        if let Some(bar) = self.running.remove(stage) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        self.overall.inc(1);
    }

    fn event(&mut self, event: &Event<'_>) {
        match event {
            Event::BuildStarted { to_check, .. } => {
                self.overall.set_length(*to_check as u64);
                // Redrawn on a timer too, so that the elapsed time moves while a long stage
                // runs; only from now, so that no frame shows a full bar of 0/0.
                self.overall.enable_steady_tick(Duration::from_millis(500));
            }
            Event::StageStarted { stage, attempt, .. } => {
                let bar = self.running.remove(*stage).unwrap_or_else(|| {
                    let bar = self.multi.insert_before(&self.overall, ProgressBar::new_spinner());
                    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                let width = self.width;
                bar.set_message(if *attempt > 1 {
                    format!("{stage:width$} (attempt {attempt})")
                } else {
                    format!("{stage:width$}")
                });
                self.running.insert(stage.to_string(), bar);
            }
            Event::StageSucceeded { stage, .. }
            | Event::StageRestored { stage, .. }
            | Event::StageCutOff { stage }
            | Event::StageBlocked { stage, .. } => self.stage_done(stage),
            Event::StageFailed { stage, will_retry: false, .. } => self.stage_done(stage),
            Event::BuildFinished { .. } => {
                if let Ok(mut on_screen) = ON_SCREEN.lock() {
                    *on_screen = None;
                }
                self.overall.finish_and_clear();
                let _ = self.multi.clear();
            }
            _ => {}
        }
        for line in lines(event, self.width) {
            self.print(line);
        }
    }
}

/// A table to print in aligned columns, two spaces apart, the header first; the last column
/// is not padded. Widths count characters, as `format!` pads. The cells are written one after
/// another into one buffer as they are added: `status` has 800,000 at 100,000 stages, and a
/// `String` each was most of the time its table took.
pub struct Table<const N: usize> {
    header: [&'static str; N],
    text: String,
    /// Where each cell ends in `text`, row after row.
    ends: Vec<usize>,
    widths: [usize; N],
}

impl<const N: usize> Table<N> {
    pub fn new(header: [&'static str; N]) -> Table<N> {
        Table { header, text: String::new(), ends: Vec::new(), widths: header.map(|h| h.chars().count()) }
    }

    /// Adds the next cell, left to right, row after row.
    pub fn cell(&mut self, value: impl std::fmt::Display) -> &mut Self {
        use std::fmt::Write as _;
        let start = self.text.len();
        let _ = write!(self.text, "{value}"); // writing to a String cannot fail
        let column = self.ends.len() % N;
        self.widths[column] = self.widths[column].max(self.text[start..].chars().count());
        self.ends.push(self.text.len());
        self
    }

    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut line = String::new();
        let mut write_row = |cells: &mut dyn Iterator<Item = &str>| {
            line.clear();
            for (i, (cell, w)) in cells.zip(self.widths).enumerate() {
                line.push_str(cell);
                if i < N - 1 {
                    line.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
                }
            }
            writeln!(out, "{}", line.trim_end())
        };
        write_row(&mut self.header.iter().copied())?;
        let mut start = 0;
        for row in self.ends.chunks(N) {
            let mut cells = row.iter().map(|&end| {
                let cell = &self.text[start..end];
                start = end;
                cell
            });
            write_row(&mut cells)?;
        }
        Ok(())
    }
}
