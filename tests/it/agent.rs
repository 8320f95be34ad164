//! `dagrun agent`: once, scheduled, watch; surviving failures and broken pipeline files;
//! stopping cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sandbox::{Sandbox, wait_until};

/// Finished runs so far; none while the agent has not yet created (and migrated) its state.
fn runs(sb: &Sandbox) -> usize {
    if !sb.exists(".dagrun/state.db") {
        return 0;
    }
    let db = sb.db();
    db.query_row("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL", [], |r| r.get::<_, i64>(0))
        .map_or(0, |n| n as usize)
}

/// A running `dagrun agent`, its output collected as it comes so a test can wait for a line.
struct Agent {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: [JoinHandle<()>; 2],
}

impl Agent {
    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

fn agent(sb: &Sandbox, args: &[&str]) -> Agent {
    let mut all = vec!["agent"];
    all.extend_from_slice(args);
    let mut child = sb.command(&all).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (stdout, out_reader) = collect(child.stdout.take().unwrap());
    let (stderr, err_reader) = collect(child.stderr.take().unwrap());
    Agent { child, stdout, stderr, readers: [out_reader, err_reader] }
}

/// Appends each line read from `pipe` to a shared string, until the pipe closes.
fn collect(pipe: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    (text, reader)
}

fn terminate(agent: &Agent) {
    let pid = rustix::process::Pid::from_raw(agent.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

fn finish(mut agent: Agent) -> (i32, String, String) {
    let status = agent.child.wait().unwrap();
    for reader in agent.readers {
        reader.join().unwrap();
    }
    (status.code().unwrap_or(-1), agent.stdout.lock().unwrap().clone(), agent.stderr.lock().unwrap().clone())
}

/// `tick` copies `src.txt`; it sleeps 30 s (after saying so) while `slow` exists.
const TICK: &str = r#"
[stages.tick]
cmd = "echo tick >> ran.log; if [ -e slow ]; then touch slow-started; sleep 30; fi; cp src.txt tick.out"
inputs = ["src.txt"]
outputs = ["tick.out"]
"#;

#[test]
fn once_runs_one_recorded_cycle_and_exits_with_its_outcome() {
    let sb = Sandbox::new().pipeline(TICK).file("src.txt", "1\n");
    let (code, out, _) = finish(agent(&sb, &["--mode", "once"]));
    assert_eq!(code, 0);
    assert!(out.contains("cycle 1 (run 1): 1 ran, 0 cut off, 0 up to date in"), "{out}");
    assert_eq!(sb.column("SELECT trigger || ':' || outcome FROM runs"), ["agent-once:success"]);

    sb.write("pipeline.toml", &TICK.replace("cp src.txt", "false && cp src.txt"));
    let (code, out, _) = finish(agent(&sb, &["--mode", "once"]));
    assert_eq!(code, 1, "a failed stage makes `--mode once` exit 1: {out}");
    assert!(out.contains("1 failed (tick)"), "{out}");
}

#[test]
fn the_scheduled_agent_runs_cycles_and_stops_on_sigterm_interrupting_a_running_stage() {
    let sb = Sandbox::new().pipeline(TICK).file("src.txt", "1\n");
    let child = agent(&sb, &["--mode", "scheduled", "--interval-sec", "1", "--grace-sec", "1"]);
    wait_until("three cycles", || runs(&sb) >= 3);
    assert_eq!(sb.ran(), ["tick"], "later cycles found nothing to do");

    sb.write("slow", "");
    sb.write("src.txt", "2\n");
    wait_until("the slow stage to start", || sb.exists("slow-started"));
    let stopping = Instant::now();
    terminate(&child);
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}{err}");
    assert!(stopping.elapsed() < Duration::from_secs(15), "the grace period was honoured, not the 30 s stage");
    assert!(
        err.contains("stopping: no new stages; running ones get 1s to finish") && err.contains("agent stopped"),
        "{err}"
    );
    assert!(out.lines().filter(|l| l.contains(" cycle ")).count() >= 4, "{out}");
    assert_eq!(
        sb.column("SELECT status FROM stage_runs WHERE component = 'tick' ORDER BY id DESC LIMIT 1"),
        ["interrupted"]
    );
    assert_eq!(sb.column("SELECT DISTINCT trigger FROM runs"), ["agent-scheduled"]);

    sb.remove("slow");
    let next = sb.build().success();
    assert!(next.stdout().contains("run      tick  (last run was interrupted)"), "{}", next.stdout());
    assert_eq!(sb.read("tick.out"), "2\n");
}

#[test]
fn the_agent_survives_a_failing_cycle_and_an_invalid_pipeline_file() {
    let sb = Sandbox::new()
        .pipeline(
            r#"
            [stages.check]
            cmd = "test ! -e broken && cp src.txt check.out"
            inputs = ["src.txt"]
            outputs = ["check.out"]
            "#,
        )
        .file("src.txt", "1\n")
        .file("broken", "");
    let child = agent(&sb, &["--interval-sec", "1"]);
    wait_until("a failed cycle", || runs(&sb) >= 1);
    let good = sb.read("pipeline.toml");
    sb.write("pipeline.toml", "[stages.check\ncmd = ");
    let before = runs(&sb);
    wait_until("two cycles on the last good pipeline", || runs(&sb) >= before + 2);
    sb.remove("broken");
    sb.write("pipeline.toml", &format!("# fixed\n{good}"));
    wait_until("a successful cycle", || sb.column("SELECT count(*) FROM runs WHERE outcome = 'success'")[0] != "0");
    terminate(&child);
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 failed (check)"), "{out}");
    assert!(
        err.contains("the pipeline file is invalid; keeping the last good pipeline:") && err.contains("--> "),
        "{err}"
    );
    assert!(out.contains("pipeline file changed; reloaded"), "{out}");
    assert_eq!(sb.read("check.out"), "1\n");
}

#[test]
fn watch_runs_a_cycle_when_a_source_input_changes() {
    let sb = Sandbox::new().pipeline(TICK).file("src.txt", "1\n");
    let child = agent(&sb, &["--watch"]);
    wait_until("the first cycle's line", || child.stdout().contains(" cycle 1 (run 1): 1 ran"));
    // As editors save: a new file renamed over the old one.
    sb.write("src.txt.swp", "changed\n");
    std::fs::rename(sb.path("src.txt.swp"), sb.path("src.txt")).unwrap();
    wait_until("a cycle after the change", || child.stdout().contains(" cycle 2 (run 2): 1 ran"));
    assert_eq!(sb.read("tick.out"), "changed\n");
    // Its own outputs do not trigger more cycles. That is an absence: nothing marks it, so it
    // is watched for 1.5 s after cycle 2 ended (150 settle periods of 10 ms).
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < quiet_until {
        assert!(!child.stdout().contains(" cycle 3 "), "its own outputs started a cycle: {}", child.stdout());
        std::thread::sleep(Duration::from_millis(20));
    }
    // And it was still watching: a real change is the next cycle, and tick runs in it.
    sb.write("src.txt", "third\n");
    wait_until("a cycle after the second change", || child.stdout().contains(" cycle 3 "));
    assert!(child.stdout().contains(" cycle 3 (run 3): 1 ran"), "the next cycle is the change's: {}", child.stdout());
    assert_eq!(sb.read("tick.out"), "third\n");
    assert_eq!(runs(&sb), 3);
    terminate(&child);
    let (code, _, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sb.column("SELECT DISTINCT trigger FROM runs"), ["agent-watch"]);
}

/// A burst of changes ends sooner once every file written has been closed; a file whose
/// writer keeps it open ends it all the same, after the usual quiet.
#[test]
fn watch_runs_a_cycle_for_a_file_its_writer_keeps_open() {
    use std::io::Write;
    let sb = Sandbox::new().pipeline(TICK).file("src.txt", "1\n");
    let child = agent(&sb, &["--watch"]);
    wait_until("the first cycle's line", || child.stdout().contains(" cycle 1 (run 1): 1 ran"));
    // Appended in one write: the file is never seen half written.
    let mut held = std::fs::OpenOptions::new().append(true).open(sb.path("src.txt")).unwrap();
    held.write_all(b"held open\n").unwrap();
    wait_until("a cycle while the file is still open", || child.stdout().contains(" cycle 2 (run 2): 1 ran"));
    assert_eq!(sb.read("tick.out"), "1\nheld open\n");
    drop(held);
    terminate(&child);
    let (code, _, err) = finish(child);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn an_agent_waiting_for_another_builds_lock_still_stops_on_sigterm() {
    let sb = Sandbox::new().pipeline(TICK).file("src.txt", "1\n").file("slow", "");
    let mut holder = sb.spawn(&["build"]);
    wait_until("the other build to start its stage", || sb.exists("slow-started"));
    let child = agent(&sb, &["--interval-sec", "1"]);
    wait_until("the agent to report the held lock", || child.stderr().contains("another build holds the lock"));
    let stopping = Instant::now();
    terminate(&child);
    let (code, _, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert!(stopping.elapsed() < Duration::from_secs(5), "it stopped waiting at once, not after the 30 s build");
    assert!(err.contains("another build holds the lock"), "{err}");
    // Stopped by SIGTERM, which ends its stage too: SIGKILL would leave the stage's `sleep 30`
    // running after the test.
    let pid = rustix::process::Pid::from_raw(holder.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(!holder.wait().unwrap().success(), "the interrupted build fails");
    for prefix in sb.column("SELECT attempt_prefix FROM runs") {
        let left = crate::sandbox::run_processes(&prefix);
        assert!(left.is_empty(), "no process of the build's stage is left: {left:?}");
    }
}

#[test]
fn watch_retries_a_pipeline_file_that_was_invalid_at_start() {
    let sb = Sandbox::new().pipeline("[stages.tick\n").file("src.txt", "1\n");
    let child = agent(&sb, &["--watch"]);
    wait_until("the agent to report the invalid file", || {
        child.stderr().contains("the pipeline file is invalid; waiting for a valid one")
    });
    assert_eq!(runs(&sb), 0);
    sb.write("pipeline.toml", TICK);
    wait_until("a cycle once the file is fixed", || runs(&sb) >= 1);
    terminate(&child);
    let (code, _, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("the pipeline file is invalid; waiting for a valid one"), "{err}");
}

#[test]
fn with_no_mode_the_agent_runs_one_cycle_and_exits() {
    let sb = crate::sandbox::abc();
    let (code, out, _) = finish(agent(&sb, &[]));
    assert_eq!(code, 0);
    assert!(out.contains("cycle 1 (run 1): 3 ran, 0 cut off, 0 up to date"), "{out}");
    assert!(!out.contains("cycle 2"), "{out}");
}

#[test]
fn watch_follows_params_files_and_the_files_a_template_lists() {
    let pipeline = r#"
[stages.train]
cmd = "echo lr=${params.train.lr} > ${outputs}"
params = ["train.lr"]
outputs = ["model.txt"]

[stages.count]
foreach_file = "text/{name}.txt"
cmd = "wc -c < ${item} > ${outputs}"
outputs = ["counts/${name}.txt"]
"#;
    let sb = Sandbox::new().pipeline(pipeline).file("params.yaml", "train:\n  lr: 0.1\n").file("text/a.txt", "a\n");
    let child = agent(&sb, &["--watch"]);
    wait_until("the first cycle's line", || child.stdout().contains(" cycle 1 (run 1): 2 ran"));
    // A params file is no input of any stage, but its keys are params: an edit is a cycle,
    // and the cycle builds with the new value, never the one loaded at start.
    sb.write("params.yaml", "train:\n  lr: 0.2\n");
    wait_until("a cycle after the params edit", || child.stdout().contains(" cycle 2 (run 2): 1 ran"));
    assert_eq!(sb.read("model.txt"), "lr=0.2\n");
    // A new file where a template lists its files is a new stage, built in the next cycle.
    sb.write("text/b.txt", "bb\n");
    wait_until("a cycle after the new file", || child.stdout().contains(" cycle 3 (run 3): 1 ran"));
    assert_eq!(sb.read("counts/b.txt").trim(), "3");
    terminate(&child);
    let (code, _, err) = finish(child);
    assert_eq!(code, 0, "{err}");
}

/// Two chains, each in a directory of its own: `a -> b` reads `in/a.txt`, `c` reads `in/c.txt`.
const TWO_CHAINS: &str = r#"
[stages.a]
cmd = "echo a >> ran.log; cp in/a.txt out/a.txt"
inputs = ["in/a.txt"]
outputs = ["out/a.txt"]

[stages.b]
cmd = "echo b >> ran.log; cp out/a.txt out/b.txt"
inputs = ["out/a.txt"]
outputs = ["out/b.txt"]

[stages.c]
cmd = "echo c >> ran.log; cp in/c.txt out/c.txt"
inputs = ["in/c.txt"]
outputs = ["out/c.txt"]
"#;

/// Waits for cycle `n`'s line, and returns it.
fn cycle_line(child: &Agent, n: usize) -> String {
    let prefix = format!(" cycle {n} (run {n}): ");
    wait_until(&format!("cycle {n}"), || child.stdout().contains(&prefix));
    child.stdout().lines().find(|l| l.contains(&prefix)).unwrap().to_string()
}

/// A watch cycle plans only what changed since the agent's own last build. What else can
/// make a stage dirty must still be seen: an output edited by hand (it starts no cycle, but
/// the next cycle looks at it), and the state changed by someone else (`dagrun invalidate`).
#[test]
fn a_watch_cycle_sees_an_output_edited_by_hand_and_an_invalidation_made_meanwhile() {
    let sb = Sandbox::new().pipeline(TWO_CHAINS).file("in/a.txt", "a\n").file("in/c.txt", "c\n");
    let child = agent(&sb, &["--watch"]);
    assert!(cycle_line(&child, 1).contains("3 ran"));
    // The first cycle made `out/`: the next one watches it, and plans everything.
    sb.write("in/c.txt", "c1\n");
    assert!(cycle_line(&child, 2).contains("1 ran"));
    assert_eq!(sb.ran(), ["a", "b", "c", "c"]);

    // By hand: an output of `a` (which `b` reads) changes. No cycle starts for it.
    sb.write("out/a.txt", "edited by hand\n");
    // An unrelated source changes: the cycle it starts must also put `a` right, before `b`
    // could read the edited file. `a` comes back from the run-cache (its fingerprint ran
    // before), `c` runs, and `b`, whose upstream's outputs are as recorded again, is cut off.
    sb.write("in/c.txt", "c2\n");
    let line = cycle_line(&child, 3);
    assert!(line.contains("1 ran, 1 restored, 1 cut off"), "a restored, c ran, b cut off: {line}");
    assert_eq!(sb.ran(), ["c"]);
    assert_eq!(sb.read("out/a.txt"), "a\n");
    assert_eq!(sb.read("out/b.txt"), "a\n");

    // Someone else's write to the state: the next cycle's plan is a full one.
    sb.dagrun(&["invalidate", "b"]).success();
    sb.write("in/c.txt", "c3\n");
    cycle_line(&child, 4);
    assert_eq!(sb.ran(), ["b", "c"]);
    terminate(&child);
    let (code, _, err) = finish(child);
    assert_eq!(code, 0, "{err}");
}

/// What a watch cycle must not miss when it plans only what changed: a directory output
/// (deleted and made again by its stage's run) edited by hand afterwards, an input outside
/// the pipeline directory, and an input whose directory is a symbolic link re-pointed.
#[test]
fn a_watch_cycle_sees_a_remade_output_directory_an_outside_input_and_a_repointed_link() {
    let sb = Sandbox::new();
    let shared = std::path::PathBuf::from(format!("{}-shared", sb.root().display()));
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("x.txt"), "x1\n").unwrap();
    let shared_name = shared.file_name().unwrap().to_str().unwrap().to_string();
    let sb = sb
        .pipeline(&format!(
            r#"
            [pipeline]
            allow_outside_paths = true

            [stages.dir]
            cmd = "echo dir >> ran.log; cp in/d.txt out_d/copy.txt"
            inputs = ["in/d.txt"]
            outputs = ["out_d/"]

            [stages.outside]
            cmd = "echo outside >> ran.log; cp ../{shared_name}/x.txt outside.txt"
            inputs = ["../{shared_name}/x.txt"]
            outputs = ["outside.txt"]

            [stages.linked]
            cmd = "echo linked >> ran.log; cp data/raw/x.csv linked.txt"
            inputs = ["data/raw/x.csv"]
            outputs = ["linked.txt"]

            [stages.other]
            cmd = "echo other >> ran.log; cp in/o.txt other.txt"
            inputs = ["in/o.txt"]
            outputs = ["other.txt"]
            "#
        ))
        .file("in/d.txt", "d1\n")
        .file("in/o.txt", "o1\n")
        .file("v1/raw/x.csv", "v1\n")
        .file("v2/raw/x.csv", "v2\n");
    std::os::unix::fs::symlink("v1", sb.path("data")).unwrap();
    let child = agent(&sb, &["--watch"]);
    assert!(cycle_line(&child, 1).contains("4 ran"));
    sb.write("in/o.txt", "o2\n");
    cycle_line(&child, 2);
    sb.ran();

    // `dir` runs again: dagrun deletes `out_d/` before the run and the stage makes it anew.
    sb.write("in/d.txt", "d2\n");
    cycle_line(&child, 3);
    sb.write("in/o.txt", "o3\n");
    cycle_line(&child, 4);
    assert_eq!(sb.ran(), ["dir", "other"]);
    // By hand, in the new directory; then an unrelated change starts a cycle.
    sb.write("out_d/copy.txt", "edited by hand\n");
    sb.write("in/o.txt", "o4\n");
    cycle_line(&child, 5);
    assert_eq!(sb.read("out_d/copy.txt"), "d2\n", "the hand-edited output is put right");

    // (Putting it right made `out_d/` anew: the next cycle watches it, and plans everything.)
    sb.write("in/o.txt", "o5\n");
    cycle_line(&child, 6);

    // The input outside the pipeline directory.
    std::fs::write(shared.join("x.txt"), "x2\n").unwrap();
    cycle_line(&child, 7);
    assert_eq!(sb.read("outside.txt"), "x2\n");

    // The link re-pointed: `data/raw/x.csv` is another file now.
    std::fs::remove_file(sb.path("data")).unwrap();
    std::os::unix::fs::symlink("v2", sb.path("data")).unwrap();
    sb.write("in/o.txt", "o6\n");
    let line = cycle_line(&child, 8);
    assert_eq!(sb.read("linked.txt"), "v2\n", "{line}");
    terminate(&child);
    let (code, _, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&shared);
}
