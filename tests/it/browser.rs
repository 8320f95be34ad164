//! The dashboard end to end in real headless Chromium, driven over WebDriver (chromedriver's
//! HTTP and JSON, spoken here without a client library): open the Agent page, click Run
//! Agent Once on the market pipeline, wait for every stage to be done, then open Runs, a
//! run's timeline, Graph and Artifacts, saving a screenshot of each.
//!
//! The screenshots go to `target/tmp/dashboard/`; with `DAGRUN_SCREENSHOTS_DIR=docs` they are
//! written there too (the README's pictures come from this test).

use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::dashboard::{Server, http_with_body};
use crate::sandbox::{Sandbox, wait_until};

/// WebDriver's name for an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    addr: String,
}

impl Driver {
    fn start() -> Driver {
        for tool in ["chromedriver", "chromium"] {
            let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().unwrap();
            assert!(
                found.status.success(),
                "`{tool}` is missing: scripts/test.sh installs it (apt-get install chromium chromium-driver)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Driver { child, addr: format!("127.0.0.1:{port}") };
        wait_until("chromedriver to be ready", || {
            std::net::TcpStream::connect(&driver.addr).is_ok() && driver.call("GET", "/status", None)["ready"] == true
        });
        driver
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let reply = http_with_body(&self.addr, method, path, &[("Content-Type", "application/json")], &body);
        let parsed: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        assert!(reply.status < 400, "{method} {path}: {} {}", reply.status, reply.body);
        parsed["value"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session with a fresh profile; closed when dropped.
struct Browser<'a> {
    driver: &'a Driver,
    session: String,
    _profile: tempfile::TempDir,
}

impl<'a> Browser<'a> {
    fn open(driver: &'a Driver) -> Browser<'a> {
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--no-first-run".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
        }}});
        let created = driver.call("POST", "/session", Some(capabilities));
        let session = created["sessionId"].as_str().expect("a session id").to_string();
        Browser { driver, session, _profile: profile }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn click(&self, css: &str) {
        let element = self.call("POST", "/element", Some(json!({ "using": "css selector", "value": css })));
        let id = element[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}"));
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn script(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    fn screenshot(&self, name: &str) -> Vec<u8> {
        let png = base64_decode(self.call("GET", "/screenshot", None).as_str().expect("a PNG in base64"));
        assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
        let mut dirs = vec![std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard")];
        dirs.extend(std::env::var_os("DAGRUN_SCREENSHOTS_DIR").map(std::path::PathBuf::from));
        for dir in dirs {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        }
        png
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = http_with_body(&self.driver.addr, "DELETE", &format!("/session/{}", self.session), &[], "");
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    sextets
        .chunks(4)
        .flat_map(|chunk| {
            let bits = chunk.iter().fold(0u32, |acc, &s| (acc << 6) | u32::from(s)) << (6 * (4 - chunk.len()));
            let bytes = [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8];
            bytes.into_iter().take(chunk.len().saturating_sub(1))
        })
        .collect()
}

/// Each row of the Agent page's table: (stage, state, runs), as the browser shows it.
const TABLE: &str = "return Array.from(document.querySelectorAll('#state tbody tr')).map(r => \
    [r.dataset.stage, r.querySelector('.state').textContent, r.querySelector('.runs').textContent]);";

#[test]
fn the_dashboard_runs_the_market_pipeline_from_a_click_in_a_real_browser() {
    // The repository's pipeline on a smaller market (as tests/it/markets.rs runs it).
    let pipeline = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipeline.toml")).unwrap();
    let small = pipeline
        .replace("n_markets = 12", "n_markets = 3")
        .replace("ticks_per_market = 20000", "ticks_per_market = 3000");
    assert!(small.contains("n_markets = 3") && small.contains("ticks_per_market = 3000"), "pipeline.toml params moved");
    let sb = Sandbox::new().pipeline(&small);
    let server = Server::start(&sb, &[]);
    let driver = Driver::start();
    let browser = Browser::open(&driver);
    let base = format!("http://{}", server.addr);

    browser.goto(&format!("{base}/"));
    let rows = browser.script(TABLE);
    assert_eq!(rows.as_array().unwrap().len(), 8, "{rows}");
    assert!(rows.as_array().unwrap().iter().all(|r| r[1] == "dirty"), "{rows}");
    browser.click("#run-once");
    let mut rows = Value::Null;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !rows.as_array().is_some_and(|rows| rows.iter().all(|r| r[1] == "up to date" && r[2] == "1")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the page never showed every stage done once: {rows}; the server says {}",
            server.json("/api/state")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        rows = browser.script(TABLE);
    }
    browser.screenshot("agent");

    browser.goto(&format!("{base}/runs"));
    let runs = browser.script("return document.querySelectorAll('#runs tbody tr').length;");
    assert_eq!(runs, 1);
    browser.click("#runs tbody a");
    let bars = browser.script("return document.querySelectorAll('.dagrun-gantt rect.bar').length;");
    assert_eq!(bars, 8, "one bar per stage in the run's timeline");
    browser.screenshot("run-timeline");

    browser.goto(&format!("{base}/graph"));
    let nodes = browser.script("return document.querySelectorAll('.dagrun-graph .node.state-up-to-date').length;");
    assert_eq!(nodes, 8);
    browser.screenshot("graph");

    browser.goto(&format!("{base}/artifacts"));
    let chart = browser.script("const i = document.querySelector('article.report img'); return i && i.naturalWidth;");
    assert!(chart.as_u64().is_some_and(|w| w > 0), "the equity chart loads: {chart}");
    browser.screenshot("artifacts");
}
