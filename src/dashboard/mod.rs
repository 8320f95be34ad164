//! `dagrun serve`: the web dashboard, a third way to run the pipeline (beside `build` and `agent`).
//!
//! One process, no network beyond its own socket: every page, script and style is in the
//! binary. The server reads the state database read-only (as `status` does) and never
//! makes a build fail; a build it starts ("Run Agent Once", or the schedule) is an ordinary
//! `Engine::build`, so it takes the same lock as `dagrun build`.
//!
//! Security model: loopback by default; any other address needs a token, which every
//! request must then carry (`Authorization: Bearer T`, or the cookie a `?token=T` visit
//! sets); a state-changing request from another origin is refused (403).

mod api;
mod pages;
mod runner;
mod svg;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::builtin::Registry;
use crate::cancel::CancelToken;
use crate::engine::Engine;
use crate::error::Error;

pub(crate) use runner::OwnBuilds;

/// How to serve.
pub struct ServeOptions {
    /// The pipeline file.
    pub file: PathBuf,
    pub registry: Registry,
    pub addr: SocketAddr,
    /// Required (and then required of every request) when `addr` is not loopback.
    pub token: Option<String>,
    /// Also run a cycle every this long, as `dagrun agent --mode scheduled` does.
    pub interval: Option<Duration>,
    /// Also run a cycle at start and whenever a source input or the pipeline file changes,
    /// as `dagrun agent --watch` does.
    pub watch: bool,
    /// Drain it to stop: the server stops answering, a running build finishes its running
    /// stages and starts no new one; cancel it to kill them.
    pub cancel: CancelToken,
}

/// Why the dashboard would not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to serve on {addr} without a token: anyone who can reach it could run the pipeline; pass --token T (or set DAGRUN_TOKEN), or serve on 127.0.0.1"
    )]
    TokenRequired { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the dashboard's runtime failed: {0}")]
    Runtime(std::io::Error),
}

/// What the handlers share.
pub(crate) struct App {
    file: PathBuf,
    registry: Registry,
    /// The pipeline as last loaded, with the file's modification time then.
    engine: Mutex<Option<(SystemTime, Arc<Engine>)>>,
    token: Option<String>,
    pub(crate) builds: OwnBuilds,
    interval: Option<Duration>,
    watch: bool,
}

impl App {
    /// The pipeline, loaded again when its file changed; an invalid file keeps the last good
    /// one (as the agent does), or is the error when there is none.
    pub(crate) fn engine(&self) -> Result<Arc<Engine>, String> {
        let modified = std::fs::metadata(&self.file).and_then(|m| m.modified()).ok();
        let mut cached = self.engine.lock().expect("engine cache poisoned");
        if let (Some((at, engine)), Some(now)) = (cached.as_ref(), modified)
            && *at == now
        {
            return Ok(engine.clone());
        }
        match Engine::load(&self.file, self.registry.clone()) {
            Ok(engine) => {
                let engine = Arc::new(engine);
                *cached = Some((modified.unwrap_or(SystemTime::UNIX_EPOCH), engine.clone()));
                Ok(engine)
            }
            Err(error) => match cached.as_ref() {
                Some((_, last_good)) => Ok(last_good.clone()),
                None => Err(error.to_string()),
            },
        }
    }
}

/// Serves until `opts.cancel` is drained or cancelled; `on_ready` gets the bound address
/// (with the port the system chose for port 0). Blocks.
pub fn serve(opts: ServeOptions, on_ready: impl FnOnce(SocketAddr)) -> Result<(), Error> {
    let token = opts.token.filter(|token| !token.is_empty());
    if !opts.addr.ip().is_loopback() && token.is_none() {
        return Err(Error::Serve(ServeError::TokenRequired { addr: opts.addr }));
    }
    let listener = std::net::TcpListener::bind(opts.addr)
        .map_err(|source| Error::Serve(ServeError::Bind { addr: opts.addr, source }))?;
    let bound = listener.local_addr().map_err(|e| Error::Serve(ServeError::Runtime(e)))?;
    listener.set_nonblocking(true).map_err(|e| Error::Serve(ServeError::Runtime(e)))?;
    let app = Arc::new(App {
        file: opts.file,
        registry: opts.registry,
        engine: Mutex::new(None),
        token,
        builds: OwnBuilds::new(opts.cancel.clone()),
        interval: opts.interval,
        watch: opts.watch,
    });
    if let Err(error) = app.engine() {
        return Err(Error::Serve(ServeError::Runtime(std::io::Error::other(error))));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::Serve(ServeError::Runtime(e)))?;
    // Started once nothing but the server itself can fail.
    if let Some(interval) = app.interval {
        runner::schedule(app.clone(), interval);
    }
    if app.watch {
        runner::watch(app.clone(), crate::agent::WATCH_SETTLE);
    }
    let cancel = opts.cancel;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        on_ready(bound);
        axum::serve(listener, router(app.clone())).with_graceful_shutdown(stopped(cancel.clone())).await
    });
    // The server has stopped answering (asked to, or failed): a build it started drains (or
    // is cancelled), and the watcher stops.
    if served.is_err() {
        cancel.drain();
    }
    app.builds.wait();
    served.map_err(|e| Error::Serve(ServeError::Runtime(e)))
}

/// Resolves once the dashboard is asked to stop.
async fn stopped(cancel: CancelToken) {
    while !cancel.is_stopping() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::agent))
        .route("/runs", get(pages::runs))
        .route("/runs/{id}", get(pages::run))
        .route("/graph", get(pages::graph))
        .route("/artifacts", get(pages::artifacts))
        .route("/artifacts/file/{*path}", get(pages::artifact_file))
        .route("/static/dashboard.js", get(pages::script))
        .route("/static/dashboard.css", get(pages::style))
        .route("/api/state", get(api::state))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{id}", get(api::run))
        .route("/api/runs/{id}/stages/{stage}/log", get(api::log))
        .route("/api/graph", get(api::graph))
        .route("/api/run-once", post(api::run_once))
        .route("/api/invalidate/{stage}", post(api::invalidate))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Every request: the token, when the server has one; a state-changing request: the same
/// origin as the server.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let mut set_cookie = None;
    match &app.token {
        // Without a token only this machine may ask, under a name of this machine: a page
        // whose own name was made to resolve to 127.0.0.1 (DNS rebinding) is refused.
        None if !names_loopback(request.headers()) => {
            return (StatusCode::MISDIRECTED_REQUEST, "this dashboard answers only to 127.0.0.1, localhost or [::1]\n")
                .into_response();
        }
        None => {}
        Some(token) => {
            let given = bearer(request.headers()).or_else(|| cookie(request.headers()));
            let in_query = query_token(request.uri().query());
            match (given, in_query) {
                (Some(given), _) if same(&given, token) => {}
                (_, Some(given)) if same(&given, token) => set_cookie = Some(token.clone()),
                _ => {
                    return (StatusCode::UNAUTHORIZED, "a token is required: send `Authorization: Bearer T`\n")
                        .into_response();
                }
            }
        }
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) && is_cross_origin(request.headers()) {
        return (StatusCode::FORBIDDEN, "cross-origin requests may not change anything\n").into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // Pages load only their own script and style, are never framed (no clickjacking of
    // Run Agent Once), and send no Referer (a `?token=` in the address stays here).
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static(
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'",
            ),
        );
    }
    headers.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    if let Some(token) = set_cookie
        && let Ok(value) = format!("dagrun_token={token}; HttpOnly; SameSite=Strict; Path=/").parse()
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Compares a token in time that does not depend on where it differs.
fn same(given: &str, token: &str) -> bool {
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Whether the request names this machine's loopback (`127.0.0.1`, `localhost`, `[::1]`).
fn names_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    cookies.split(';').find_map(|c| c.trim().strip_prefix("dagrun_token=")).map(str::to_string)
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| pair.strip_prefix("token=")).map(str::to_string)
}

/// A browser names the page a request comes from in `Origin` (and `Sec-Fetch-Site`); a
/// request from another site must not run or invalidate anything. Scripts (curl) send
/// neither and are let through: they are not a browser tricked into acting.
fn is_cross_origin(headers: &HeaderMap) -> bool {
    if headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("cross-site") {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin != format!("http://{host}") && origin != format!("https://{host}")
}
