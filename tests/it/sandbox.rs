//! A temp directory with a pipeline in it, and the real `dagrun` binary run against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox { dir: tempfile::Builder::new().prefix("dagrun-it-").tempdir().expect("temp dir") }
    }

    pub fn pipeline(self, text: &str) -> Sandbox {
        self.write("pipeline.toml", text);
        self
    }

    pub fn file(self, rel: &str, content: &str) -> Sandbox {
        self.write(rel, content);
        self
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, content).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    pub fn edit(&self, rel: &str, change: impl FnOnce(String) -> String) {
        let text = change(self.read(rel));
        self.write(rel, &text);
    }

    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path(rel)).unwrap();
    }

    /// Moves a file's mtime forward without changing its content.
    pub fn touch(&self, rel: &str) {
        let file = std::fs::File::options().write(true).open(self.path(rel)).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dagrun"));
        cmd.args(args).current_dir(self.root()).env_remove("DAGRUN_TEST_FLAG");
        cmd
    }

    /// Starts `dagrun` in the background, its output discarded.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn dagrun")
    }

    pub fn dagrun(&self, args: &[&str]) -> Run {
        Run::new(args, self.command(args).output().expect("run dagrun"))
    }

    pub fn build(&self) -> Run {
        self.dagrun(&["build"])
    }

    /// Runs `dagrun` like [`Sandbox::dagrun`], but kills it and fails the test if it runs
    /// past `limit`: for a run that must end promptly rather than hang.
    #[track_caller]
    pub fn dagrun_within(&self, args: &[&str], limit: Duration) -> Run {
        let mut child = self
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn dagrun");
        let deadline = Instant::now() + limit;
        while child.try_wait().expect("wait for dagrun").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`dagrun {}` did not finish within {limit:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Run::new(args, child.wait_with_output().expect("collect dagrun's output"))
    }

    /// The stages that appended their name to `ran.log` since the last call, sorted
    /// (parallel stages finish in any order); the log is emptied.
    pub fn ran(&self) -> Vec<String> {
        let path = self.path("ran.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        let mut names: Vec<String> = text.lines().map(str::to_string).collect();
        names.sort();
        names
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path(".dagrun/state.db")).expect("open state db")
    }

    /// One column of a query, as text.
    pub fn column(&self, sql: &str) -> Vec<String> {
        let db = self.db();
        let mut stmt = db.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get::<_, rusqlite::types::Value>(0))
            .unwrap()
            .map(|v| match v.unwrap() {
                rusqlite::types::Value::Null => "NULL".to_string(),
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Real(f) => f.to_string(),
                rusqlite::types::Value::Text(t) => t,
                rusqlite::types::Value::Blob(_) => "<blob>".to_string(),
            })
            .collect()
    }
}

/// A finished `dagrun` process whose exit code no one has checked yet. Its output can be read
/// only through `success()`, `failure()`, `usage_error()` or `code(n)`, and dropping it
/// unchecked is a warning (an error under clippy `-D warnings`): no test forgets the exit code.
#[must_use = "check the exit code with `.success()`, `.failure()`, `.usage_error()` or `.code(n)`"]
pub struct Run {
    args: String,
    output: Output,
}

impl Run {
    pub fn new(args: &[&str], output: Output) -> Run {
        Run { args: args.join(" "), output }
    }

    #[track_caller]
    pub fn code(self, expected: i32) -> CheckedRun {
        let checked = CheckedRun { output: self.output };
        assert_eq!(
            checked.output.status.code(),
            Some(expected),
            "`dagrun {}` exited {:?}, expected {expected}\n--- stdout\n{}--- stderr\n{}",
            self.args,
            checked.output.status.code(),
            checked.stdout(),
            checked.stderr()
        );
        checked
    }

    #[track_caller]
    pub fn success(self) -> CheckedRun {
        self.code(0)
    }

    /// A stage failed: exit 1.
    #[track_caller]
    pub fn failure(self) -> CheckedRun {
        self.code(1)
    }

    /// Bad usage or a bad pipeline file: exit 2.
    #[track_caller]
    pub fn usage_error(self) -> CheckedRun {
        self.code(2)
    }
}

/// A finished `dagrun` process with the exit code the test expected: its output, to assert on.
pub struct CheckedRun {
    output: Output,
}

impl CheckedRun {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

/// For a test that needs root (a mount, an immutable file): `Err(why)` fails the test with
/// the fix, unless `DAGRUN_SKIP_ROOT_TESTS=1`, which skips it with a `SKIPPED` line.
/// Returns whether the test goes on.
#[track_caller]
pub fn needs_root(test: &str, ready: Result<(), String>) -> bool {
    match ready {
        Ok(()) => true,
        Err(why) if std::env::var_os("DAGRUN_SKIP_ROOT_TESTS").is_some_and(|v| v == "1") => {
            // Straight to stderr: the test harness captures `eprintln!` of a passing test.
            let line = format!("SKIPPED {test} ({why})\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            false
        }
        Err(why) => panic!(
            "{test} cannot run here ({why}): run the tests as root on a local filesystem (as scripts/test.sh does on CI), or set DAGRUN_SKIP_ROOT_TESTS=1 to skip it"
        ),
    }
}

/// Live (not zombie) processes whose attempt token (`DAGRUN_ATTEMPT`) `matches`.
pub fn attempt_processes(matches: impl Fn(&str) -> bool) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap() {
        let Some(pid) = entry.unwrap().file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
        let token = environ.split(|&b| b == 0).find_map(|var| var.strip_prefix(b"DAGRUN_ATTEMPT="));
        if !zombie && token.is_some_and(|token| matches(&String::from_utf8_lossy(token))) {
            found.push(pid);
        }
    }
    found
}

/// Live processes of the local shell attempts of the run with attempt `prefix`: their
/// tokens are the prefix, a dash and a number (`AttemptTokens`).
pub fn run_processes(prefix: &str) -> Vec<i32> {
    let start = format!("{prefix}-");
    attempt_processes(|token| token.starts_with(&start))
}

/// Polls `done` until it holds, failing the test (naming `what`) after 30 s: for waiting on
/// a file, a database row or a line of output instead of sleeping and hoping.
#[track_caller]
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out after 30 s waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `a -> b -> c`: `a` reads `src.txt`; each stage appends its name to `ran.log`.
pub const ABC: &str = r#"
[stages.a]
cmd = "echo a >> ran.log; cat src.txt > a.out"
inputs = ["src.txt"]
outputs = ["a.out"]

[stages.b]
cmd = "echo b >> ran.log; cat a.out > b.out; echo ${params.window} >> b.out"
inputs = ["a.out"]
outputs = ["b.out"]
params = { window = 20 }

[stages.c]
cmd = "echo c >> ran.log; cat b.out > c.out"
inputs = ["b.out"]
outputs = ["c.out"]
"#;

pub fn abc() -> Sandbox {
    Sandbox::new().pipeline(ABC).file("src.txt", "hello\n")
}
