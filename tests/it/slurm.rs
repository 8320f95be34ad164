//! Issue 19: stages on a real Slurm cluster (the single-node one of scripts/slurm-dev.sh,
//! which scripts/test.sh starts). The same outputs and state as a local build; failures and
//! time limits named with Slurm's state; Ctrl-C and a killed coordinator leave no job behind
//! and no stage run twice at once.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

use crate::sandbox::{Run, Sandbox, wait_until};

/// Whether the Slurm cluster answers. When it does not, the test fails with the fix, unless
/// `DAGRUN_SKIP_SLURM_TESTS=1` (set by scripts/test.sh where it cannot start one), which
/// skips it with a `SKIPPED` line.
#[track_caller]
fn needs_slurm(test: &str) -> bool {
    // A node that answers: idle, or busy with other tests' jobs (mixed, allocated,
    // completing); `*` marks one that does not respond.
    let answers = |state: &str| {
        !state.contains('*') && ["idle", "mixed", "allocated", "completing"].iter().any(|s| state.starts_with(s))
    };
    let up = Command::new("timeout")
        .args(["10", "sinfo", "-h", "-o", "%T"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).lines().any(answers));
    if up {
        return true;
    }
    if std::env::var_os("DAGRUN_SKIP_SLURM_TESTS").is_some_and(|v| v == "1") {
        let line = format!("SKIPPED {test} (no Slurm cluster: scripts/slurm-dev.sh could not start one here)\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        return false;
    }
    panic!(
        "{test} needs a Slurm cluster and `sinfo` finds none: run `scripts/slurm-dev.sh start` as root (scripts/test.sh does), or set DAGRUN_SKIP_SLURM_TESTS=1 to skip it"
    )
}

/// Twenty shell stages in four chains of five, fed by two sources, plus (with the market
/// stages compiled in) two built-ins, which run on the node as `dagrun run-stage`. The first
/// stage says `executor = "local"`: it runs here whatever the build says.
fn twenty_stages() -> String {
    let mut text = String::new();
    for chain in 0..4 {
        for step in 0..5 {
            let input =
                if step == 0 { format!("src{}.txt", chain % 2) } else { format!("out/c{chain}s{}.txt", step - 1) };
            if (chain, step) == (0, 0) {
                text.push_str("[stages.c0s0]\nexecutor = \"local\"\n");
            } else {
                text.push_str(&format!("[stages.c{chain}s{step}]\n"));
            }
            text.push_str(&format!(
                "cmd = \"echo c{chain}s{step} >> ran.log; cat ${{inputs}} > ${{outputs}}; echo ${{params.tag}} >> ${{outputs}}\"\n\
                 inputs = [\"{input}\"]\noutputs = [\"out/c{chain}s{step}.txt\"]\nparams = {{ tag = \"step {step} 'quoted' $(not run)\" }}\n\n"
            ));
        }
    }
    if cfg!(feature = "markets") {
        text.push_str(
            "[stages.markets]\nfn = \"markets.markets\"\noutputs = [\"data/markets.arrow\"]\nparams = { seed = 7, n_markets = 2 }\n\n\
             [stages.ticks]\nfn = \"markets.ticks\"\ninputs = [\"data/markets.arrow\"]\noutputs = [\"data/ticks.arrow\", \"data/ingest.json\"]\n\
             params = { seed = 7, ticks_per_market = 500 }\n",
        );
    }
    text
}

fn twenty_stage_sandbox() -> Sandbox {
    Sandbox::new().pipeline(&twenty_stages()).file("src0.txt", "zero\n").file("src1.txt", "one\n")
}

/// Every file under `out/` and `data/`, with its bytes.
fn outputs(sb: &Sandbox) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for dir in ["out", "data"] {
        let Ok(entries) = std::fs::read_dir(sb.path(dir)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            files.insert(path.strip_prefix(sb.root()).unwrap().display().to_string(), std::fs::read(&path).unwrap());
        }
    }
    files
}

/// What a clean build records of each stage, whichever executor ran it.
fn recorded_state(sb: &Sandbox) -> Vec<String> {
    sb.column(
        "SELECT component || ' ' || is_dirty || ' ' || run_count || ' ' || failure_count || ' ' || fingerprint
             || ' ' || output_hash || ' ' || last_status FROM orchestrator_state ORDER BY component",
    )
}

#[test]
fn a_build_on_slurm_writes_and_records_what_a_local_build_does_and_an_edit_reruns_the_same_stages() {
    if !needs_slurm("a_build_on_slurm_writes_and_records_what_a_local_build_does") {
        return;
    }
    let (local, cluster) = (twenty_stage_sandbox(), twenty_stage_sandbox());
    local.dagrun(&["build", "-j", "4"]).success();
    let run = cluster.dagrun(&["build", "-j", "8", "--executor", "slurm"]).success();
    assert!(run.stdout().contains("(Slurm job "), "{}", run.stdout());
    assert_eq!(local.ran().len(), 20);
    assert_eq!(cluster.ran().len(), 20);
    let written = outputs(&local);
    assert!(written.len() >= 20, "{written:?}");
    assert_eq!(outputs(&cluster), written, "the outputs are byte for byte a local build's");
    assert_eq!(recorded_state(&cluster), recorded_state(&local));
    let stages: usize = cluster.column("SELECT count(*) FROM orchestrator_state")[0].parse().unwrap();
    assert_eq!(
        cluster
            .column("SELECT count(*) FROM stage_runs WHERE executor = 'slurm' AND job_id > 0 AND status = 'success'"),
        [(stages - 1).to_string()],
        "every other stage ran as a Slurm job, its id recorded"
    );
    assert_eq!(cluster.column("SELECT component FROM stage_runs WHERE executor IS NULL"), ["c0s0"]);
    if cfg!(feature = "markets") {
        assert_eq!(
            cluster.column("SELECT metrics FROM stage_runs WHERE component = 'ticks'"),
            local.column("SELECT metrics FROM stage_runs WHERE component = 'ticks'"),
            "a built-in's metrics come back from the node"
        );
    }

    for sb in [&local, &cluster] {
        sb.write("src1.txt", "ONE\n");
    }
    local.dagrun(&["build", "-j", "4"]).success();
    cluster.dagrun(&["build", "-j", "8", "--executor", "slurm"]).success();
    let reran = local.ran();
    assert_eq!(reran.len(), 10, "the two chains reading src1.txt: {reran:?}");
    assert_eq!(cluster.ran(), reran, "Slurm re-runs exactly what a local build re-runs");
    assert_eq!(outputs(&cluster), outputs(&local));
    assert_eq!(recorded_state(&cluster), recorded_state(&local));
}

#[test]
fn a_failed_job_and_a_job_past_its_time_limit_are_reported_with_their_slurm_state() {
    if !needs_slurm("a_failed_job_and_a_job_past_its_time_limit_are_reported_with_their_slurm_state") {
        return;
    }
    let sb = Sandbox::new().pipeline(
        r#"
        [pipeline]
        executor = "slurm"

        [stages.fails]
        cmd = "echo about to fail; exit 3"
        outputs = ["never.txt"]

        [stages.slow]
        cmd = "sleep 600 > ${outputs}"
        outputs = ["slow.txt"]
        resources = { time_min = 1 }

        # dagrun's own timeout: measured from when the job starts running.
        [stages.timeout]
        cmd = "sleep 600 > ${outputs}"
        outputs = ["timeout.txt"]
        timeout_sec = 1
        "#,
    );
    let run = sb.dagrun(&["build", "-j", "3"]).failure();
    let error = |stage: &str| {
        sb.column(&format!(
            "SELECT last_status || ': ' || last_error FROM orchestrator_state WHERE component = '{stage}'"
        ))
        .remove(0)
    };
    let fails = error("fails");
    assert!(fails.starts_with("failed: Slurm job "), "{fails}");
    assert!(fails.contains(" ended FAILED, exit status 3"), "{fails}");
    assert!(fails.contains("about to fail"), "the log's tail, which Slurm wrote: {fails}");
    let slow = error("slow");
    assert!(slow.starts_with("timed_out: Slurm job "), "{slow}");
    assert!(slow.contains(" ended TIMEOUT") && slow.contains("(resources.time_min = 1)"), "{slow}");
    assert!(run.stdout().contains("ended TIMEOUT"), "{}", run.stdout());
    let timeout = error("timeout");
    assert!(timeout.starts_with("timed_out: timed out after 1s; its Slurm job "), "{timeout}");
    assert!(timeout.contains(" was cancelled"), "{timeout}");
    assert!(!sb.exists("slow.txt"), "a timed-out stage's partial output is removed");
}

/// A build started in the background with `--json`, its events read as they come.
struct LiveBuild {
    child: Child,
    events: Receiver<Value>,
}

impl LiveBuild {
    fn start(sb: &Sandbox, args: &[&str]) -> LiveBuild {
        let mut child = sb.command(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn dagrun");
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(event);
                }
            }
        });
        LiveBuild { child, events }
    }

    /// The next event of kind `kind`, skipping others; fails the test after 60 s.
    fn next(&self, kind: &str) -> Value {
        loop {
            let event =
                self.events.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no `{kind}` event"));
            if event["event"] == kind {
                return event;
            }
        }
    }

    fn signal(&self, signal: Signal) {
        kill_process(Pid::from_raw(self.child.id() as i32).unwrap(), signal).unwrap();
    }
}

/// Slurm's state of each job (an ended job stays listed for `MinJobAge`, 300 s by default).
fn slurm_states(ids: &[String]) -> BTreeMap<String, String> {
    let out = Command::new("squeue")
        .args(["-h", "--states=all", "-j", &ids.join(","), "-O", "JobID:30,State:30"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_once(char::is_whitespace))
        .map(|(id, state)| (id.to_string(), state.trim().to_string()))
        .collect()
}

/// The jobs `dagrun status --json` shows running, with their states.
fn jobs_in_status(sb: &Sandbox) -> BTreeMap<String, String> {
    let status: Value = serde_json::from_str(&sb.dagrun(&["status", "--json"]).success().stdout()).unwrap();
    status["running"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|stage| stage["job"].is_object())
        .map(|stage| (stage["job"]["id"].as_str().unwrap().to_string(), stage["job"]["state"].to_string()))
        .collect()
}

#[test]
fn ctrl_c_cancels_the_builds_queued_and_running_jobs() {
    if !needs_slurm("ctrl_c_cancels_the_builds_queued_and_running_jobs") {
        return;
    }
    // Six stages of two CPUs each on a four-CPU node: some run, the others wait in the queue.
    let mut text = String::from("[pipeline]\nexecutor = \"slurm\"\n");
    for i in 0..6 {
        text.push_str(&format!(
            "[stages.s{i}]\ncmd = \"sleep 600; echo done > ${{outputs}}\"\noutputs = [\"s{i}.txt\"]\nresources = {{ cpus = 2 }}\n"
        ));
    }
    let sb = Sandbox::new().pipeline(&text);
    let mut build = LiveBuild::start(&sb, &["build", "-j", "6", "--json"]);
    let ids: Vec<String> =
        (0..6).map(|_| build.next("job_submitted")["job_id"].as_str().unwrap().to_string()).collect();
    wait_until("a job running and `dagrun status` showing it", || {
        jobs_in_status(&sb).values().any(|state| state == "\"RUNNING\"")
    });
    assert_eq!(
        jobs_in_status(&sb).into_keys().collect::<std::collections::BTreeSet<_>>(),
        ids.iter().cloned().collect()
    );
    build.signal(Signal::INT);
    let status = build.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let states = slurm_states(&ids);
    assert_eq!(states.len(), 6, "{states:?}");
    assert!(states.values().all(|state| state == "CANCELLED"), "no job queued or running is left: {states:?}");
    assert_eq!(sb.column("SELECT DISTINCT status FROM stage_runs"), ["interrupted"]);
}

#[test]
fn a_killed_coordinators_job_is_cancelled_by_the_next_build_and_its_finished_work_kept() {
    if !needs_slurm("a_killed_coordinators_job_is_cancelled_by_the_next_build") {
        return;
    }
    let sb = Sandbox::new()
        .pipeline(
            r#"
            [pipeline]
            executor = "slurm"

            [stages.first]
            cmd = "echo first >> ran.log; cat src.txt > ${outputs}"
            inputs = ["src.txt"]
            outputs = ["first.txt"]

            [stages.side]
            cmd = "echo side >> ran.log; echo side > ${outputs}"
            outputs = ["side.txt"]

            # Runs until `go` exists, and notes any other copy of itself running meanwhile
            # (scancel sends SIGTERM: the lock goes with the copy that held it).
            [stages.slow]
            cmd = """
            mkdir running.lock || echo OVERLAP >> ran.log
            trap 'rmdir running.lock; exit 143' TERM
            echo slow >> ran.log
            while [ ! -e go ]; do sleep 0.1; done
            cat ${inputs} > ${outputs}
            rmdir running.lock
            """
            inputs = ["first.txt"]
            outputs = ["slow.txt"]
            "#,
        )
        .file("src.txt", "source\n");
    let build = LiveBuild::start(&sb, &["build", "-j", "3", "--json"]);
    let orphan = loop {
        let event = build.next("job_submitted");
        if event["stage"] == "slow" {
            break event["job_id"].as_str().unwrap().to_string();
        }
    };
    wait_until("the slow job running", || slurm_states(std::slice::from_ref(&orphan))[&orphan] == "RUNNING");
    // Slurm says RUNNING before the job's script has begun: wait for the script itself.
    wait_until("the slow job's script started", || {
        std::fs::read_to_string(sb.path("ran.log")).is_ok_and(|log| log.lines().any(|line| line == "slow"))
    });
    wait_until("side recorded", || {
        sb.column("SELECT count(*) FROM orchestrator_state WHERE last_status = 'success'") == ["2"]
    });
    build.signal(Signal::KILL);
    let mut build = build;
    build.child.wait().unwrap();
    assert_eq!(slurm_states(std::slice::from_ref(&orphan))[&orphan], "RUNNING", "kill -9 leaves the job running");

    let rebuild = LiveBuild::start(&sb, &["build", "-j", "3", "--json"]);
    let cancelled = rebuild.next("orphan_jobs_cancelled");
    assert_eq!(cancelled["stage"], "slow");
    assert_eq!(cancelled["jobs"], serde_json::json!([orphan]));
    assert_eq!(slurm_states(std::slice::from_ref(&orphan))[&orphan], "CANCELLED", "ended before anything runs");
    let resubmitted = rebuild.next("job_submitted");
    assert_eq!(resubmitted["stage"], "slow", "first and side are up to date: only slow runs again");
    assert_ne!(resubmitted["job_id"], orphan.as_str());
    wait_until("the new slow job running", || {
        let id = resubmitted["job_id"].as_str().unwrap().to_string();
        slurm_states(std::slice::from_ref(&id))[&id] == "RUNNING"
    });
    sb.write("go", "");
    let mut rebuild = rebuild;
    assert!(rebuild.child.wait().unwrap().success());
    let ran = sb.ran();
    assert_eq!(
        ran,
        ["first", "side", "slow", "slow"],
        "finished work kept, slow run once per build, never twice at once"
    );
    assert_eq!(sb.read("slow.txt"), "source\n");
    assert_eq!(
        sb.column("SELECT component || ' ' || run_count || ' ' || is_dirty FROM orchestrator_state ORDER BY component"),
        ["first 1 0", "side 1 0", "slow 2 0"],
        "run_count counts the cancelled run too"
    );
    assert_eq!(
        sb.column("SELECT status FROM stage_runs WHERE component = 'slow' ORDER BY id"),
        ["interrupted", "success"]
    );
}

#[test]
fn a_bad_executor_or_an_sbatch_option_dagrun_sets_is_refused_before_anything_runs() {
    let sb = Sandbox::new().pipeline(
        "[pipeline]\nexecutor = \"kubernetes\"\n\n[stages.a]\ncmd = \"true\"\noutputs = [\"a\"]\nslurm_args = [\"--qos=high\", \"--job-name=mine\", \"high\"]\n",
    );
    let run = sb.build().usage_error();
    let err = run.stderr();
    assert!(err.contains("unknown executor `kubernetes`") && err.contains("pipeline.toml:2:"), "{err}");
    assert!(err.contains("`slurm_args` may not set `--job-name`: dagrun sets it for every job"), "{err}");
    assert!(err.contains("`slurm_args` item `high` is not an sbatch option"), "{err}");
    assert_eq!(err.matches("error: `slurm_args`").count(), 2, "a plain option (`--qos=high`) is accepted: {err}");
    assert!(!sb.exists(".dagrun/state.db"));
}

#[test]
fn without_slurm_installed_a_slurm_build_fails_at_once_naming_what_is_missing() {
    let sb = Sandbox::new().pipeline("[stages.a]\ncmd = \"echo a >> ran.log\"\noutputs = [\"a\"]\n");
    let run =
        Run::new(&[], sb.command(&["build", "--executor", "slurm"]).env("PATH", "/nonexistent").output().unwrap());
    let err = run.failure().stderr();
    assert!(err.contains("`sbatch` is not installed here: the slurm executor needs Slurm's commands on PATH"), "{err}");
    assert!(sb.ran().is_empty());
    assert_eq!(sb.column("SELECT outcome FROM runs"), ["failed"]);
    // Nothing about the stage was recorded: it is still simply never built.
    assert_eq!(sb.column("SELECT count(*) FROM stage_runs"), ["0"]);
}

/// `sbatch --parsable ARGS`, its log discarded: the job id.
fn sbatch(args: &[&str]) -> String {
    let out = Command::new("sbatch").args(["--parsable", "--output=/dev/null"]).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_killed_builds_job_whose_id_was_never_recorded_is_found_by_its_name_and_comment() {
    if !needs_slurm("a_killed_builds_job_whose_id_was_never_recorded_is_found_by_its_name_and_comment") {
        return;
    }
    let sb = Sandbox::new().pipeline(
        "[pipeline]\nexecutor = \"slurm\"\n\n[stages.slow]\ncmd = \"echo slow >> ran.log; echo done > ${outputs}\"\noutputs = [\"slow.txt\"]\n",
    );
    sb.dagrun(&["migrate"]).success();
    // What a build killed after sbatch took its job, before the answer was recorded, leaves:
    // the attempt's row with its token, and no job id.
    sb.db()
        .execute_batch(
            "INSERT INTO runs (run_id, trigger, started_at, pid, jobs) VALUES (7, 'build', '2026-01-01T00:00:00Z', 999999, 1);
             INSERT INTO stage_runs (run_id, component, status, reason, started_at, log_path, attempt_token, executor)
             VALUES (7, 'slow', 'running', 'never succeeded', '2026-01-01T00:00:00Z', '', 'tok-left-behind', 'slurm');",
        )
        .unwrap();
    let left = sbatch(&["--job-name=dagrun-7-slow", "--comment=dagrun:tok-left-behind", "--wrap", "sleep 600"]);
    // Another pipeline's job of the same name: not this build's to cancel.
    let other = sbatch(&["--job-name=dagrun-7-slow", "--comment=dagrun:someone-else", "--wrap", "sleep 600"]);
    let build = LiveBuild::start(&sb, &["build", "--json"]);
    let cancelled = build.next("orphan_jobs_cancelled");
    assert_eq!(cancelled["jobs"], serde_json::json!([left]));
    let mut build = build;
    assert!(build.child.wait().unwrap().success());
    let states = slurm_states(&[left.clone(), other.clone()]);
    assert_eq!(states[&left], "CANCELLED");
    assert_ne!(states[&other], "CANCELLED", "a job with another comment is left alone");
    let _ = Command::new("scancel").arg(&other).status();
    assert_eq!(sb.ran(), ["slow"]);
    assert_eq!(sb.column("SELECT status FROM stage_runs ORDER BY id"), ["interrupted", "success"]);
}
