//! The pages: server-rendered HTML, with one small script for the live Agent page. Every
//! asset is in the binary; nothing loads from elsewhere.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::App;
use super::api::{ApiError, blocking, engine, find_run, internal, state_view};
use super::svg::{Bar, GraphNode, NodeState, gantt_svg, graph_svg};

const STYLE: &str = include_str!("dashboard.css");
const SCRIPT: &str = include_str!("dashboard.js");

/// HTML-escapes text for an element or a quoted attribute.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: the navigation, then `body`.
fn page(title: &str, current: &str, body: &str) -> Html<String> {
    let link = |href: &str, label: &str| {
        let class = if label == current { " class=\"current\"" } else { "" };
        format!("<a href=\"{href}\"{class}>{label}</a>")
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · dagrun</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"stylesheet\" href=\"/static/dashboard.css\"></head><body>\
         <nav><span class=\"brand\">dagrun</span>{}{}{}{}</nav><main>{body}</main>\
         <script src=\"/static/dashboard.js\"></script></body></html>",
        link("/", "Agent"),
        link("/runs", "Runs"),
        link("/graph", "Graph"),
        link("/artifacts", "Artifacts"),
        title = escape(title),
    ))
}

/// `GET /`: the state table, live, with Run Agent Once and Invalidate.
pub(crate) async fn agent(State(app): State<Arc<App>>) -> Result<Html<String>, ApiError> {
    let view = blocking(move || state_view(&app)).await?;
    let rows: String = view.stages.iter().map(stage_row).collect();
    let body = format!(
        "<h1>Agent <small>{pipeline}</small></h1>\
         <p class=\"controls\"><button id=\"run-once\" type=\"button\">Run Agent Once</button> \
         <span id=\"activity\">{activity}</span></p>\
         <table id=\"state\"><thead><tr><th>component</th><th>state</th><th>why</th><th>last run</th>\
         <th>runs</th><th>failures</th><th>last duration</th><th></th></tr></thead><tbody>{rows}</tbody></table>",
        pipeline = escape(&view.pipeline),
        activity = escape(&activity(&view)),
    );
    Ok(page("Agent", "Agent", &body))
}

/// One row of the state table; `dashboard.js` renders the same from `/api/state`.
fn stage_row(stage: &super::api::StageView) -> String {
    format!(
        "<tr data-stage=\"{name}\" class=\"state-{state}\"><td>{name}</td><td class=\"state\">{label}</td>\
         <td class=\"why\">{why}</td><td>{last}</td><td class=\"runs\">{runs}</td><td class=\"failures\">{fails}</td>\
         <td>{took}</td><td><button class=\"invalidate\" data-stage=\"{name}\" type=\"button\">Invalidate</button></td></tr>",
        name = escape(&stage.report.stage),
        state = stage.state,
        label = stage.state.replace('_', " "),
        // A stage running on Slurm shows its job instead of why it was dirty.
        why = escape(&stage.job.as_ref().map(ToString::to_string).or_else(|| stage.why.clone()).unwrap_or_default()),
        last = escape(stage.report.last_run_at.as_deref().unwrap_or("never")),
        runs = stage.report.run_count,
        fails = stage.report.failure_count,
        took = stage.report.last_duration_ms.map(|ms| format!("{:.2}s", ms as f64 / 1000.0)).unwrap_or_default(),
    )
}

/// "run 12 (dashboard) running since ..." or "idle", when the schedule runs next, and
/// whether it watches.
fn activity(view: &super::api::StateView) -> String {
    let mut text = match &view.running {
        Some(run) => match run.run_id {
            Some(id) => format!("run {id} ({}) running since {}", run.trigger, run.started_at),
            None => format!("a {} build is {}", run.trigger, run.started_at),
        },
        None => "idle".to_string(),
    };
    if let Some(next) = view.schedule.as_ref().and_then(|s| s["next_due"].as_str()) {
        text.push_str(&format!("; next scheduled cycle at {next}"));
    }
    let field = |name: &str| view.schedule.as_ref().and_then(|s| s[name].as_str());
    if let Some(error) = field("watch_error") {
        text.push_str(&format!("; not watching: {error}"));
    } else if let Some(warning) = field("watch_warning") {
        text.push_str(&format!("; watching only some inputs: {warning}"));
    } else if view.schedule.as_ref().is_some_and(|s| s["watch"] == true) {
        text.push_str("; watching inputs for changes");
    }
    text
}

/// `GET /runs`: the history of runs.
pub(crate) async fn runs(State(app): State<Arc<App>>) -> Result<Html<String>, ApiError> {
    let runs = blocking(move || engine(&app)?.history(None, 100).map_err(internal)).await?;
    let rows: String = runs
        .iter()
        .map(|run| {
            format!(
                "<tr class=\"outcome-{outcome}\"><td><a href=\"/runs/{id}\">{id}</a></td><td>{trigger}</td><td>{started}</td>\
                 <td>{took}</td><td>{outcome}</td><td>{ran}</td><td>{restored}</td><td>{cut}</td><td>{up}</td><td>{failed}</td></tr>",
                id = run.run_id,
                trigger = escape(&run.trigger),
                started = escape(&run.started_at),
                took = run.duration_ms.map(|ms| format!("{:.2}s", ms as f64 / 1000.0)).unwrap_or_default(),
                outcome = escape(&run.outcome),
                ran = run.counts.ran,
                restored = run.counts.restored,
                cut = run.counts.cut_off,
                up = run.counts.up_to_date,
                failed = run.counts.failed,
            )
        })
        .collect();
    let body = format!(
        "<h1>Runs</h1><table id=\"runs\"><thead><tr><th>run</th><th>trigger</th><th>started</th><th>took</th>\
         <th>outcome</th><th>ran</th><th>restored</th><th>cut off</th><th>up to date</th><th>failed</th></tr></thead><tbody>{rows}</tbody></table>"
    );
    Ok(page("Runs", "Runs", &body))
}

/// `GET /runs/{id}`: one run's timeline, and each stage's reason, metrics and log.
pub(crate) async fn run(State(app): State<Arc<App>>, Path(run_id): Path<i64>) -> Result<Html<String>, ApiError> {
    let run = blocking(move || find_run(&*engine(&app)?, run_id)).await?;
    let now_ms = millis(std::time::SystemTime::now());
    let bars: Vec<Bar> = run
        .stages
        .iter()
        .filter(|stage| !matches!(stage.status.as_str(), "cut_off" | "blocked" | "skipped"))
        .filter_map(|stage| {
            let start_ms = humantime::parse_rfc3339(&stage.started_at).ok().map(millis)?;
            Some(Bar {
                stage: stage.component.clone(),
                start_ms,
                end_ms: stage.duration_ms.map(|ms| start_ms + ms),
                status: stage.status.clone(),
            })
        })
        .collect();
    let rows: String = run
        .stages
        .iter()
        .map(|stage| {
            let metrics = stage.metrics.as_ref().map(metrics_text).unwrap_or_default();
            format!(
                "<tr class=\"status-{status}\"><td>{name}</td><td>{attempt}</td><td>{status}</td><td>{reason}</td>\
                 <td>{took}</td><td><code>{metrics}</code></td>\
                 <td><a href=\"/api/runs/{run_id}/stages/{name}/log\">log</a></td></tr>",
                name = escape(&stage.component),
                attempt = stage.attempt,
                status = escape(&stage.status),
                reason = escape(&stage.reason),
                took = stage.duration_ms.map(|ms| format!("{:.2}s", ms as f64 / 1000.0)).unwrap_or_default(),
                metrics = escape(&metrics),
            )
        })
        .collect();
    let body = format!(
        "<h1>Run {run_id} <small>{trigger}, {outcome}</small></h1><div class=\"timeline\">{gantt}</div>\
         <table id=\"stages\"><thead><tr><th>stage</th><th>attempt</th><th>status</th><th>why</th><th>took</th>\
         <th>metrics</th><th></th></tr></thead><tbody>{rows}</tbody></table>",
        trigger = escape(&run.trigger),
        outcome = escape(&run.outcome),
        gantt = gantt_svg(&bars, now_ms),
    );
    Ok(page(&format!("Run {run_id}"), "Runs", &body))
}

/// `{"auc": 0.5886...}` as `auc 0.5886`, one per metric.
fn metrics_text(metrics: &serde_json::Value) -> String {
    let Some(metrics) = metrics.as_object() else { return metrics.to_string() };
    let shown: Vec<String> = metrics
        .iter()
        .map(|(name, value)| match value.as_f64() {
            Some(number) => format!("{name} {number:.4}"),
            None => format!("{name} {value}"),
        })
        .collect();
    shown.join(", ")
}

fn millis(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `GET /graph`: the DAG, each stage coloured by its state.
pub(crate) async fn graph(State(app): State<Arc<App>>) -> Result<Html<String>, ApiError> {
    let svg = blocking(move || {
        let engine = engine(&app)?;
        let view = state_view(&app)?;
        let spec = engine.spec();
        let nodes: Vec<GraphNode> = (0..spec.stages.len())
            .map(|idx| GraphNode {
                name: spec.stages[idx].name.to_string(),
                state: node_state(view.stages.iter().find(|s| s.report.stage == spec.stages[idx].name.as_str())),
                upstream: engine.dag().upstream(idx).collect(),
            })
            .collect();
        Ok(graph_svg(&nodes, engine.dag().topo_order()))
    })
    .await?;
    Ok(page("Graph", "Graph", &format!("<h1>Graph</h1><div class=\"graph\">{svg}</div>")))
}

fn node_state(stage: Option<&super::api::StageView>) -> NodeState {
    match stage {
        Some(stage) if stage.state == "running" => NodeState::Running,
        Some(stage) if stage.state == "failed" => NodeState::Failed,
        Some(stage) if stage.state == "up_to_date" => NodeState::UpToDate,
        Some(stage) if stage.report.run_count == 0 && stage.report.last_run_at.is_none() => NodeState::NeverRun,
        Some(_) => NodeState::Dirty,
        None => NodeState::NeverRun,
    }
}

/// `GET /artifacts`: the reports the pipeline writes (declared outputs ending in `.md`),
/// rendered, with their images.
pub(crate) async fn artifacts(State(app): State<Arc<App>>) -> Result<Html<String>, ApiError> {
    let body = blocking(move || {
        let engine = engine(&app)?;
        let spec = engine.spec();
        let mut body = String::from("<h1>Artifacts</h1>");
        let mut shown = 0;
        for report in reports(spec) {
            let Ok(markdown) = std::fs::read_to_string(spec.root.join(&report)) else { continue };
            shown += 1;
            let dir = report.rsplit_once('/').map_or("", |(dir, _)| dir);
            body.push_str(&format!(
                "<article class=\"report\"><p class=\"source\">{}</p>{}</article>",
                escape(&report),
                render_markdown(&markdown, dir)
            ));
        }
        if shown == 0 {
            body.push_str("<p>No report yet: no stage declares an output ending in <code>.md</code> that exists.</p>");
        }
        Ok(body)
    })
    .await?;
    Ok(page("Artifacts", "Artifacts", &body))
}

/// The Markdown files among the declared outputs: those named so, and those inside output
/// directories (a few levels down, at most 20), in a stable order.
fn reports(spec: &crate::spec::Spec) -> Vec<String> {
    let mut found = Vec::new();
    for output in spec.stages.iter().flat_map(|stage| stage.outputs.iter()) {
        if output.as_str().ends_with(".md") {
            found.push(output.to_string());
            continue;
        }
        let dir = output.to_path(&spec.root);
        if !dir.is_dir() {
            continue;
        }
        let walk = walkdir::WalkDir::new(&dir).max_depth(3).sort_by_file_name().into_iter().flatten();
        for entry in walk.filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "md")) {
            if let Some(inner) = entry.path().strip_prefix(&dir).ok().and_then(|p| p.to_str()) {
                found.push(format!("{output}/{inner}"));
            }
        }
    }
    found.truncate(20);
    found
}

/// Markdown to HTML (tables on; raw HTML in the file is shown as text, not run), with
/// relative links pointed at `/artifacts/file/DIR/...`.
fn render_markdown(markdown: &str, dir: &str) -> String {
    use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};
    let relative = |url: &str| !url.contains(':') && !url.starts_with('/') && !url.starts_with('#');
    // A report is a stage's output: only plain web links leave it as they are (never a
    // `javascript:` one, which would run on this page).
    let safe = |url: &str| ["http://", "https://", "mailto:", "#"].iter().any(|scheme| url.starts_with(scheme));
    let locate = |url: CowStr<'_>| -> CowStr<'static> {
        if relative(&url) {
            let path = if dir.is_empty() { url.to_string() } else { format!("{dir}/{url}") };
            CowStr::from(format!("/artifacts/file/{path}"))
        } else if safe(&url) {
            CowStr::from(url.into_string())
        } else {
            CowStr::from("#")
        }
    };
    let events = Parser::new_ext(markdown, Options::ENABLE_TABLES).map(|event| match event {
        Event::Start(Tag::Image { link_type, dest_url, title, id }) => {
            Event::Start(Tag::Image { link_type, dest_url: locate(dest_url), title, id })
        }
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
            Event::Start(Tag::Link { link_type, dest_url: locate(dest_url), title, id })
        }
        Event::Html(html) | Event::InlineHtml(html) => Event::Text(html),
        other => other,
    });
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

/// `GET /artifacts/file/{path}`: a file a stage declares as an output (or inside an output
/// directory), and nothing else.
pub(crate) async fn artifact_file(State(app): State<Arc<App>>, Path(path): Path<String>) -> Result<Response, ApiError> {
    blocking(move || {
        let engine = engine(&app)?;
        let spec = engine.spec();
        let not_found = || ApiError(StatusCode::NOT_FOUND, format!("`{path}` is not an output of this pipeline"));
        let rel = crate::spec::normalize(&spec.root, &path).map_err(|_| not_found())?;
        let output = spec.stages.iter().flat_map(|stage| stage.outputs.iter()).find(|output| rel.is_within(output));
        let Some(output) = output else { return Err(not_found()) };
        // Links a stage left inside its output may point anywhere: serve what the path
        // really is only if that is still inside the output, inside the pipeline directory.
        let real = std::fs::canonicalize(rel.to_path(&spec.root)).map_err(|_| not_found())?;
        let real_output = std::fs::canonicalize(output.to_path(&spec.root)).map_err(|_| not_found())?;
        let real_root = std::fs::canonicalize(&spec.root).map_err(|_| not_found())?;
        if !real.starts_with(&real_output) || !real_output.starts_with(&real_root) {
            return Err(not_found());
        }
        let bytes = std::fs::read(&real).map_err(|_| not_found())?;
        // A stage wrote it: it may hold a script. Sandboxed, it can never run as this origin.
        let headers = [
            (header::CONTENT_TYPE, content_type(rel.as_str())),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ];
        Ok((headers, bytes).into_response())
    })
    .await
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("html") | Some("htm") => "text/plain; charset=utf-8", // shown, never run
        _ => "text/plain; charset=utf-8",
    }
}

pub(crate) async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT)
}

pub(crate) async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}
