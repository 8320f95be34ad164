//! `dagrun serve`: every route over real HTTP, against the real binary and a real state
//! database; the security model; a terminal build seen from the dashboard.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};

use crate::sandbox::{Sandbox, wait_until};

/// A running `dagrun serve` on a port the system chose; stopped (SIGTERM) when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
}

impl Server {
    pub fn start(sb: &Sandbox, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = sb.command(&args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let addr = first
            .strip_prefix("serving http://")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("`dagrun serve` said {first:?}"))
            .to_string();
        Server { child, addr }
    }

    pub fn get(&self, path: &str) -> Reply {
        http(&self.addr, "GET", path, &[])
    }

    pub fn post(&self, path: &str) -> Reply {
        http(&self.addr, "POST", path, &[])
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        let reply = self.get(path);
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", reply.body))
    }
}

impl Server {
    /// Sends SIGTERM and returns at once; `wait` then gives the exit status.
    pub fn terminate(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }

    pub fn wait(mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        std::mem::forget(self); // already stopped
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A plain HTTP/1.1 request over a fresh connection (no client library: what is sent is
/// exactly what is written here).
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    http_with_body(addr, method, path, headers, "")
}

/// [`http`] with a request body.
pub fn http_with_body(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    // A bound, not a wait: a server that never answers fails the test instead of hanging it.
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let raw = read_response(&mut stream);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Reply { status, headers: head.to_string(), body }
}

/// Reads one response: the head, then `Content-Length` bytes, or chunks up to the last, or
/// (neither) until the server closes. Some servers keep the connection open after it.
fn read_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let complete = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let body = raw.len() - end - 4;
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|n| n.trim().parse::<usize>().ok());
                match length {
                    Some(length) => body >= length,
                    None if head.contains("transfer-encoding: chunked") => raw.ends_with(b"0\r\n\r\n"),
                    None => false,
                }
            }
            None => false,
        };
        if complete {
            return raw;
        }
        match stream.read(&mut buf) {
            Ok(0) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(err) => panic!("reading the response: {err}"),
        }
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

const THREE: &str = r#"
[stages.a]
cmd = "echo a-says-hello; echo a > a.out"
outputs = ["a.out"]
[stages.b]
cmd = "cat a.out > b.out"
inputs = ["a.out"]
outputs = ["b.out"]
[stages.c]
cmd = "cat b.out > c.out"
inputs = ["b.out"]
outputs = ["c.out"]
"#;

/// Waits until every stage is up to date with `runs` runs.
fn wait_for_every_stage(server: &Server, runs: i64) {
    wait_until("every stage up to date", || {
        let state = server.json("/api/state");
        state["running"].is_null()
            && state["stages"].as_array().unwrap().iter().all(|s| s["state"] == "up_to_date" && s["run_count"] == runs)
    });
}

#[test]
fn every_route_answers_with_its_status_and_shape() {
    let sb = Sandbox::new().pipeline(THREE);
    let server = Server::start(&sb, &[]);

    let state = server.json("/api/state");
    let stages: Vec<&str> = state["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["a", "b", "c"]);
    assert_eq!(state["stages"][0]["state"], "dirty");
    assert_eq!(state["stages"][0]["why"], "never succeeded");
    assert!(state["running"].is_null());

    let started = server.post("/api/run-once");
    assert_eq!(started.status, 202, "{}", started.body);
    let run_id = started.json()["run_id"].as_i64().expect("a run id");
    wait_for_every_stage(&server, 1);

    let runs = server.json("/api/runs");
    assert_eq!(runs[0]["run_id"], run_id);
    assert_eq!(runs[0]["trigger"], "dashboard");
    assert_eq!(runs[0]["outcome"], "success");
    let run = server.json(&format!("/api/runs/{run_id}"));
    assert_eq!(run["stages"].as_array().unwrap().len(), 3);
    let log = server.get(&format!("/api/runs/{run_id}/stages/a/log"));
    assert_eq!((log.status, log.body.as_str()), (200, "a-says-hello\n"));
    assert_eq!(server.get("/api/runs/999").status, 404);
    assert_eq!(server.get(&format!("/api/runs/{run_id}/stages/nope/log")).status, 404);
    let graph = server.json("/api/graph");
    assert_eq!(graph["stages"][2]["upstream"], serde_json::json!(["b"]));

    let invalidated = server.post("/api/invalidate/b");
    assert_eq!(invalidated.status, 200, "{}", invalidated.body);
    assert_eq!(server.json("/api/state")["stages"][1]["why"], "invalidated");
    assert_eq!(server.post("/api/invalidate/nope").status, 404);

    for (page, marker) in [
        ("/", "id=\"state\""),
        ("/runs", "id=\"runs\""),
        (&format!("/runs/{run_id}") as &str, "dagrun-gantt"),
        ("/graph", "dagrun-graph"),
        ("/artifacts", "<h1>Artifacts</h1>"),
        ("/static/dashboard.js", "/api/state"),
        ("/static/dashboard.css", "--running"),
    ] {
        let reply = server.get(page);
        assert_eq!(reply.status, 200, "GET {page}");
        assert!(reply.body.contains(marker), "GET {page} lacks {marker}: {}", reply.body);
    }
}

#[test]
fn a_cross_origin_request_may_not_change_anything() {
    let sb = Sandbox::new().pipeline(THREE);
    let server = Server::start(&sb, &[]);
    for path in ["/api/run-once", "/api/invalidate/a"] {
        let reply = http(&server.addr, "POST", path, &[("Origin", "http://evil.example")]);
        assert_eq!(reply.status, 403, "POST {path}");
        let reply = http(&server.addr, "POST", path, &[("Sec-Fetch-Site", "cross-site")]);
        assert_eq!(reply.status, 403, "POST {path}");
    }
    assert!(!sb.exists(".dagrun/state.db"), "nothing ran and nothing was written");
    // The page's own origin is welcome.
    let own = format!("http://{}", server.addr);
    let reply = http(&server.addr, "POST", "/api/run-once", &[("Origin", own.as_str())]);
    assert_eq!(reply.status, 202, "{}", reply.body);
    wait_for_every_stage(&server, 1);
}

/// `a` waits for the test's `go` file.
const WAITS: &str = r#"
[stages.a]
cmd = "while [ ! -e go ]; do sleep 0.02; done; echo a > a.out"
outputs = ["a.out"]
"#;

#[test]
fn a_second_run_while_one_runs_answers_409_with_the_running_id() {
    let sb = Sandbox::new().pipeline(WAITS);
    let server = Server::start(&sb, &[]);
    let first = server.post("/api/run-once");
    assert_eq!(first.status, 202, "{}", first.body);
    let run_id = first.json()["run_id"].clone();
    assert!(run_id.is_i64(), "the run was recorded: {run_id}");
    wait_until("the stage to show as running", || server.json("/api/state")["stages"][0]["state"] == "running");
    let second = server.post("/api/run-once");
    assert_eq!(second.status, 409, "{}", second.body);
    assert_eq!(second.json()["running"], run_id);
    sb.write("go", "");
    wait_for_every_stage(&server, 1);
}

#[test]
fn a_terminal_build_that_is_running_shows_as_running() {
    let sb = Sandbox::new().pipeline(WAITS);
    let server = Server::start(&sb, &[]);
    let mut build = sb.spawn(&["build"]);
    wait_until("the terminal build to start the stage", || {
        sb.exists(".dagrun/state.db")
            && std::panic::catch_unwind(|| sb.column("SELECT count(*) FROM stage_runs WHERE status = 'running'"))
                .is_ok_and(|n| n == ["1"])
    });
    let state = server.json("/api/state");
    assert_eq!(state["running"]["run_id"], 1);
    assert_eq!(state["running"]["trigger"], "build");
    assert_eq!(state["stages"][0]["state"], "running");
    let refused = server.post("/api/run-once");
    assert_eq!((refused.status, refused.json()["running"].as_i64()), (409, Some(1)));
    sb.write("go", "");
    assert!(build.wait().unwrap().success());
    wait_for_every_stage(&server, 1);
}

#[test]
fn with_a_token_every_request_must_carry_it() {
    let sb = Sandbox::new().pipeline(THREE);
    let server = Server::start(&sb, &["--token", "s3cret"]);
    assert_eq!(server.get("/api/state").status, 401);
    assert_eq!(server.get("/").status, 401);
    assert_eq!(http(&server.addr, "GET", "/api/state", &[("Authorization", "Bearer wrong")]).status, 401);
    assert_eq!(http(&server.addr, "GET", "/api/state", &[("Authorization", "Bearer s3cret")]).status, 200);
    // A browser opens the page once with the token; a cookie carries it after that.
    let first = server.get("/?token=s3cret");
    assert_eq!(first.status, 200);
    assert!(first.headers.contains("dagrun_token=s3cret; HttpOnly; SameSite=Strict"), "{}", first.headers);
    assert_eq!(http(&server.addr, "GET", "/api/state", &[("Cookie", "dagrun_token=s3cret")]).status, 200);
    assert_eq!(http(&server.addr, "POST", "/api/run-once", &[("Cookie", "dagrun_token=nope")]).status, 401);
}

#[test]
fn serving_beyond_loopback_needs_a_token() {
    let sb = Sandbox::new().pipeline(THREE);
    let refused = sb.dagrun(&["serve", "--addr", "0.0.0.0:0"]).usage_error();
    assert!(refused.stderr().contains("refusing to serve on 0.0.0.0:0 without a token"), "{}", refused.stderr());
    assert!(refused.stderr().contains("--token"), "{}", refused.stderr());
}

#[test]
fn with_an_interval_the_dashboard_runs_the_schedule_too() {
    let sb = Sandbox::new().pipeline(THREE);
    let server = Server::start(&sb, &["--interval-sec", "3600"]);
    wait_for_every_stage(&server, 1);
    let state = server.json("/api/state");
    assert_eq!(state["schedule"]["interval_sec"], 3600);
    assert!(state["schedule"]["next_due"].is_string(), "{state}");
    assert_eq!(server.json("/api/runs")[0]["trigger"], "agent-scheduled");
    let page = server.get("/");
    assert!(page.body.contains("next scheduled cycle at"), "{}", page.body);
}

/// `copy` waits for the test's `go` file, then copies its source.
const WAITS_THEN_COPIES: &str = r#"
[stages.copy]
cmd = "while [ ! -e go ]; do sleep 0.02; done; cat src.txt > copy.out"
inputs = ["src.txt"]
outputs = ["copy.out"]
"#;

#[test]
fn with_watch_the_dashboard_runs_a_cycle_at_start_and_on_every_change() {
    let sb = Sandbox::new().pipeline(WAITS_THEN_COPIES).file("src.txt", "1\n");
    let server = Server::start(&sb, &["--watch"]);
    // The first cycle is the dashboard's own build while it runs: Run Agent Once is refused.
    wait_until("the first cycle to run the stage", || server.json("/api/state")["stages"][0]["state"] == "running");
    let state = server.json("/api/state");
    assert_eq!(state["running"]["trigger"], "agent-watch", "{state}");
    assert_eq!(state["schedule"]["watch"], true, "{state}");
    let refused = server.post("/api/run-once");
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.json()["running"], state["running"]["run_id"]);
    let page = server.get("/");
    assert!(page.body.contains("(agent-watch) running since"), "{}", page.body);
    assert!(page.body.contains("watching inputs for changes"), "{}", page.body);
    sb.write("go", "");
    wait_for_every_stage(&server, 1);
    assert_eq!(sb.read("copy.out"), "1\n");

    sb.write("src.txt", "2\n");
    wait_for_every_stage(&server, 2);
    assert_eq!(sb.read("copy.out"), "2\n");
    assert_eq!(sb.column("SELECT trigger FROM runs ORDER BY run_id"), ["agent-watch", "agent-watch"]);
    assert_eq!(sb.column("SELECT component FROM stage_runs WHERE run_id = 2"), ["copy"]);

    server.terminate();
    let status = server.wait();
    assert!(status.success(), "the watcher stops with the dashboard: {status:?}");
}

#[test]
fn sigterm_stops_the_dashboard_and_lets_its_running_build_finish() {
    let sb = Sandbox::new().pipeline(WAITS);
    let server = Server::start(&sb, &[]);
    assert_eq!(server.post("/api/run-once").status, 202);
    wait_until("the stage to run", || server.json("/api/state")["stages"][0]["state"] == "running");
    server.terminate();
    // The server stops answering, but the build drains: its running stage finishes.
    wait_until("the server to stop answering", || std::net::TcpStream::connect(&server.addr).is_err());
    sb.write("go", "");
    let status = server.wait();
    assert!(status.success(), "{status:?}");
    assert_eq!(sb.column("SELECT status FROM stage_runs"), ["success"]);
    assert_eq!(sb.read("a.out"), "a\n");
}

#[test]
fn a_page_reached_under_another_name_is_refused_without_a_token() {
    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 is
    // "same origin" with itself, so the Host it sends must be refused.
    let sb = Sandbox::new().pipeline(THREE);
    let server = Server::start(&sb, &[]);
    let rebound = [("Host", "evil.example:8501"), ("Origin", "http://evil.example:8501")];
    assert_eq!(http(&server.addr, "GET", "/api/state", &rebound).status, 421);
    assert_eq!(http(&server.addr, "POST", "/api/run-once", &rebound).status, 421);
    assert_eq!(http(&server.addr, "GET", "/api/state", &[("Host", "localhost:8501")]).status, 200);
    assert!(!sb.exists(".dagrun/state.db"), "nothing ran");
    let page = server.get("/");
    assert!(page.headers.contains("frame-ancestors 'none'"), "{}", page.headers);
}

#[test]
fn only_declared_outputs_are_served_and_never_through_a_link_out_of_them() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "TOP-SECRET-CONTENT").unwrap();
    let script = format!(
        "mkdir -p site\n\
         printf '# R\\n\\n[run](javascript:alert(1)) [ok](https://example.org) ![c](c.svg)\\n' > site/r.md\n\
         echo '<svg xmlns=\"http://www.w3.org/2000/svg\"/>' > site/c.svg\n\
         ln -s {} site/out\n",
        outside.path().display()
    );
    let pipeline = "[stages.report]\ncmd = \"sh mk.sh\"\ninputs = [\"mk.sh\"]\noutputs = [\"site\"]\n";
    let sb = Sandbox::new().pipeline(pipeline).file("mk.sh", &script).file("notes.txt", "not an output");
    sb.build().success();
    let server = Server::start(&sb, &[]);
    let chart = server.get("/artifacts/file/site/c.svg");
    assert_eq!(chart.status, 200, "{}", chart.body);
    assert!(chart.headers.contains("image/svg+xml") && chart.headers.contains("sandbox"), "{}", chart.headers);
    for path in ["notes.txt", "pipeline.toml", ".dagrun/state.db", "site/../notes.txt", "site/out/secret.txt"] {
        let reply = server.get(&format!("/artifacts/file/{path}"));
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
        assert!(!reply.body.contains("TOP-SECRET-CONTENT"));
    }
    let page = server.get("/artifacts");
    assert!(page.body.contains("/artifacts/file/site/c.svg"), "{}", page.body);
    assert!(page.body.contains("href=\"https://example.org\""), "{}", page.body);
    assert!(!page.body.contains("javascript:"), "{}", page.body);
}
