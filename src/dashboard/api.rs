//! The JSON API under `/api/`: what the pages show, for scripts too.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::App;
use super::runner::{LiveRun, Started, live_run, own_run};
use crate::engine::{ClusterJob, Engine, StageReport};
use crate::planner::DirtyReason;
use crate::state::StageStatus;

/// An error answer: a status and `{"error": "..."}`.
pub(crate) struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

pub(crate) fn internal(error: impl ToString) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

/// The pipeline, or a 500 naming why it cannot be loaded.
pub(crate) fn engine(app: &App) -> Result<Arc<Engine>, ApiError> {
    app.engine().map_err(internal)
}

/// Runs blocking work (SQLite, hashing) off the server's thread.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(internal)?
}

/// A stage as the Agent page shows it: what `status --json` says of it, and its state.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct StageView {
    #[serde(flatten)]
    pub report: StageReport,
    /// `up_to_date`, `dirty`, `running`, `failed` or `interrupted`.
    pub state: &'static str,
    /// Why it is dirty, in words.
    pub why: Option<String>,
    /// The Slurm job running it now.
    pub job: Option<ClusterJob>,
}

/// Everything the Agent page shows.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct StateView {
    pub pipeline: String,
    /// The build running now (the dashboard's, a terminal's or an agent's).
    pub running: Option<LiveRun>,
    /// The schedule, when the dashboard runs one: seconds between cycles, next cycle due,
    /// whether it watches for changes, and why it stopped watching or watches only some
    /// inputs.
    pub schedule: Option<Value>,
    pub stages: Vec<StageView>,
}

/// The state table, live: each stage's state, why, and its counters.
pub(crate) fn state_view(app: &App) -> Result<StateView, ApiError> {
    let engine = engine(app)?;
    let reports = engine.status(&[], false).map_err(internal)?;
    let running = own_run(app, &engine).or_else(|| live_run(&engine));
    let running_stages: HashMap<String, Option<ClusterJob>> = match running.as_ref().and_then(|run| run.run_id) {
        Some(run_id) => crate::state::State::open_reader(&engine.spec().state_path)
            .ok()
            .flatten()
            .and_then(|state| crate::engine::running_attempts_with_jobs(&state, run_id).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(stage, _, job)| (stage, job))
            .collect(),
        None => HashMap::new(),
    };
    let stages = reports.into_iter().map(|report| stage_view(report, &running_stages)).collect();
    let schedule = (app.interval.is_some() || app.watch).then(|| {
        let watch = app.builds.watch_state();
        json!({
            "interval_sec": app.interval.map(|interval| interval.as_secs()),
            "next_due": app.builds.next_due().map(|at| humantime::format_rfc3339_seconds(at).to_string()),
            "watch": app.watch,
            "watch_error": watch.stopped,
            "watch_warning": watch.partial,
        })
    });
    Ok(StateView { pipeline: engine.spec().name.clone(), running, schedule, stages })
}

fn stage_view(report: StageReport, running: &HashMap<String, Option<ClusterJob>>) -> StageView {
    let job = running.get(&report.stage).cloned().flatten();
    let state = match report.reason.as_deref() {
        _ if running.contains_key(&report.stage) => "running",
        Some(DirtyReason::LastRunFailed { status: StageStatus::Interrupted }) => "interrupted",
        Some(DirtyReason::LastRunFailed { .. }) => "failed",
        _ if report.dirty => "dirty",
        _ => "up_to_date",
    };
    StageView { state, why: report.reason.as_ref().map(ToString::to_string), job, report }
}

/// `GET /api/state`
pub(crate) async fn state(State(app): State<Arc<App>>) -> Result<Json<StateView>, ApiError> {
    blocking(move || state_view(&app)).await.map(Json)
}

#[derive(serde::Deserialize)]
pub(crate) struct Limit {
    limit: Option<usize>,
}

/// `GET /api/runs?limit=N`: newest first.
pub(crate) async fn runs(State(app): State<Arc<App>>, Query(query): Query<Limit>) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let runs = blocking(move || engine(&app)?.history(None, limit).map_err(internal)).await?;
    Ok(Json(runs).into_response())
}

/// One run with its stages, or 404.
pub(crate) fn find_run(engine: &Engine, run_id: i64) -> Result<crate::state::RunRow, ApiError> {
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no run {run_id}"));
    let state = crate::state::State::open_reader(&engine.spec().state_path).map_err(internal)?.ok_or_else(not_found)?;
    state.run(run_id).map_err(internal)?.ok_or_else(not_found)
}

/// `GET /api/runs/{id}`
pub(crate) async fn run(State(app): State<Arc<App>>, Path(run_id): Path<i64>) -> Result<Response, ApiError> {
    let run = blocking(move || find_run(&*engine(&app)?, run_id)).await?;
    Ok(Json(run).into_response())
}

/// At most this much of a log is sent: its end, where the error is.
const LOG_LIMIT: u64 = 1 << 20;

/// `GET /api/runs/{id}/stages/{stage}/log`: the log of the stage's latest attempt in the run,
/// as text (its last MiB).
pub(crate) async fn log(
    State(app): State<Arc<App>>,
    Path((run_id, stage)): Path<(i64, String)>,
) -> Result<Response, ApiError> {
    let text = blocking(move || {
        let engine = engine(&app)?;
        let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no log of stage `{stage}` in run {run_id}"));
        let state =
            crate::state::State::open_reader(&engine.spec().state_path).map_err(internal)?.ok_or_else(not_found)?;
        let rel = state.log_path(run_id, &stage).map_err(internal)?.ok_or_else(not_found)?;
        // The path comes from dagrun's own rows; still, never read outside its directory.
        if !rel.starts_with(".dagrun/") || rel.split('/').any(|part| part == "..") {
            return Err(not_found());
        }
        read_tail(&engine.spec().root.join(&rel)).map_err(|_| not_found())
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// A recorded log that is not there is a stage that printed nothing (see `executor/log.rs`).
fn read_tail(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        opened => opened?,
    };
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(LOG_LIMIT)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `GET /api/graph`: each stage with its state and the stages it depends on.
pub(crate) async fn graph(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let graph = blocking(move || {
        let engine = engine(&app)?;
        let view = state_view(&app)?;
        let states: std::collections::HashMap<&str, &str> =
            view.stages.iter().map(|s| (s.report.stage.as_str(), s.state)).collect();
        let spec = engine.spec();
        let nodes: Vec<Value> = engine
            .dag()
            .topo_order()
            .iter()
            .map(|&idx| {
                let name = spec.stages[idx].name.as_str();
                let upstream: Vec<&str> = engine.dag().upstream(idx).map(|up| spec.stages[up].name.as_str()).collect();
                json!({ "stage": name, "state": states.get(name), "upstream": upstream })
            })
            .collect();
        Ok(json!({ "stages": nodes }))
    })
    .await?;
    Ok(Json(graph).into_response())
}

/// `POST /api/run-once`: starts a cycle as `dagrun agent --mode once` does; 202 with its
/// run id, or 409 with the id of the build already running.
pub(crate) async fn run_once(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let started = blocking(move || Ok(app.builds.start(&app, "dashboard"))).await?;
    Ok(match started {
        Started::Run(run_id) => (StatusCode::ACCEPTED, Json(json!({ "run_id": run_id }))).into_response(),
        Started::Busy(running) => {
            (StatusCode::CONFLICT, Json(json!({ "error": "a build is already running", "running": running })))
                .into_response()
        }
        Started::Failed(error) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
    })
}

/// `POST /api/invalidate/{stage}`: marks it dirty, as `dagrun invalidate` does.
pub(crate) async fn invalidate(State(app): State<Arc<App>>, Path(stage): Path<String>) -> Result<Response, ApiError> {
    let names = blocking(move || {
        let engine = engine(&app)?;
        engine.invalidate(std::slice::from_ref(&stage), false).map_err(|error| match error {
            crate::Error::UnknownStage { .. } => ApiError(StatusCode::NOT_FOUND, error.to_string()),
            other => internal(other),
        })
    })
    .await?;
    Ok(Json(json!({ "invalidated": names })).into_response())
}
