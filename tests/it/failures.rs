//! Failing stages: isolation, records, timeouts, retries, and stages that lie.

use crate::sandbox::Sandbox;

/// Waits until no process's command line matches `pattern`; on timeout, names those left.
/// Each test matches a command of its own (`sleep 301`, `sleep 302`): tests run at once.
fn wait_until_gone(pattern: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = processes_matching(pattern);
        if left.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "after 30 s, processes matching `{pattern}` are left:\n{left}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The processes whose command line contains `pattern` (`pgrep -af`). Panics when pgrep is
/// missing: a check for surviving processes that cannot run must not pass.
fn processes_matching(pattern: &str) -> String {
    let out = std::process::Command::new("pgrep").args(["-a", "-f", pattern]).output().unwrap_or_else(|e| {
        panic!("cannot run pgrep ({e}): install procps (`apt-get install procps`, as scripts/test.sh does)")
    });
    // pgrep exits 0 with matches, 1 without; anything else is its own failure.
    assert!(matches!(out.status.code(), Some(0 | 1)), "pgrep failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `bad` fails; `after_bad` depends on it; `good` and `after_good` are independent.
const BRANCHES: &str = r#"
[stages.bad]
cmd = "echo bad >> ran.log; echo 'something broke' >&2; exit 3"
outputs = ["bad.out"]

[stages.after_bad]
cmd = "echo after_bad >> ran.log; cat bad.out > after_bad.out"
inputs = ["bad.out"]
outputs = ["after_bad.out"]

[stages.good]
cmd = "sleep 0.2; echo good >> ran.log; echo ok > good.out"
outputs = ["good.out"]

[stages.after_good]
cmd = "echo after_good >> ran.log; cat good.out > after_good.out"
inputs = ["good.out"]
outputs = ["after_good.out"]
"#;

#[test]
fn a_failed_stage_blocks_only_its_downstream_and_the_build_exits_1() {
    let sb = Sandbox::new().pipeline(BRANCHES);
    let run = sb.build().failure();
    assert_eq!(sb.ran(), ["after_good", "bad", "good"]);
    let out = run.stdout();
    assert!(out.contains("FAILED   bad         exit status 3; log: .dagrun/logs/1/bad.log"), "{out}");
    assert!(out.contains("blocked  after_bad   (upstream `bad` failed)"), "{out}");
    assert!(out.contains("build failed: 2 ran, 0 cut off, 0 up to date, 1 failed, 1 blocked in"), "{out}");
    assert!(run.stderr().contains("stage `bad` failed: exit status 3"), "{}", run.stderr());
    assert!(run.stderr().contains("  | something broke"), "the log tail is shown: {}", run.stderr());
    assert_eq!(sb.read(".dagrun/logs/1/bad.log"), "something broke\n");

    let failures = sb.column(
        "SELECT component || ':' || failure_count || ':' || last_status FROM orchestrator_state ORDER BY component",
    );
    assert_eq!(failures, ["after_good:0:success", "bad:1:failed", "good:0:success"]);
    assert_eq!(sb.column("SELECT outcome FROM runs"), ["failed"]);

    // The failure is remembered: the next build retries `bad` and nothing else.
    sb.build().failure();
    assert_eq!(sb.ran(), ["bad"]);
    assert_eq!(sb.column("SELECT failure_count FROM orchestrator_state WHERE component = 'bad'"), ["2"]);
}

#[test]
fn fail_fast_starts_no_new_stage_after_a_failure() {
    let sb = Sandbox::new().pipeline(BRANCHES);
    let run = sb.dagrun(&["build", "-j", "1", "--fail-fast"]).failure();
    // With one job, `bad` (first by name) fails before `good` could start.
    assert_eq!(sb.ran(), ["bad"]);
    assert!(run.stdout().contains("skipped  good"), "{}", run.stdout());
}

#[test]
fn a_stage_that_exits_0_without_writing_its_output_has_failed() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.liar]
        cmd = "echo liar >> ran.log"
        outputs = ["promised.txt"]
        "#,
    );
    let run = sb.build().failure();
    assert!(
        run.stdout().contains("the stage exited 0 but did not write its output `promised.txt`"),
        "{}",
        run.stdout()
    );
    assert_eq!(sb.column("SELECT last_status FROM orchestrator_state"), ["failed"]);
    assert_eq!(
        sb.column("SELECT fingerprint FROM orchestrator_state"),
        ["NULL"],
        "no fingerprint is recorded for a failure"
    );
}

#[test]
fn an_old_output_cannot_pass_for_a_new_one() {
    // The stage wrote its output once; now it fails to. The stale file must not count.
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.gen]
        cmd = "test -e skip || echo v1 > out.txt"
        inputs = ["in.txt"]
        outputs = ["out.txt"]
        "#,
    );
    sb.write("in.txt", "1");
    sb.build().success();
    sb.write("in.txt", "2");
    sb.write("skip", "");
    sb.build().failure();
    assert!(!sb.exists("out.txt"), "outputs are cleared before a stage runs");
}

#[test]
fn a_missing_source_input_fails_that_stage_with_the_path_and_the_rest_runs() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.reader]
        cmd = "cat nowhere.csv > r.out"
        inputs = ["nowhere.csv"]
        outputs = ["r.out"]
        [stages.other]
        cmd = "echo other >> ran.log; echo > o.out"
        outputs = ["o.out"]
        "#,
    );
    let run = sb.build().failure();
    assert!(
        run.stdout().contains("FAILED   reader  cannot run: input `nowhere.csv` does not exist and no stage writes it"),
        "{}",
        run.stdout()
    );
    assert_eq!(sb.ran(), ["other"]);
}

#[test]
fn a_log_is_made_only_for_a_stage_that_prints_and_keeps_its_lines_in_order() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.quiet]
        cmd = "echo q > q.out"
        outputs = ["q.out"]
        [stages.chatty]
        cmd = "echo one; echo two >&2; sleep 301 & echo three; echo four >&2; echo c > c.out"
        outputs = ["c.out"]
        [stages.quiet_failure]
        cmd = "exit 4"
        "#,
    );
    let run = sb.build().failure();
    // A background child holding the output's pipe open neither holds up the stage nor
    // outlives it.
    assert_eq!(sb.read(".dagrun/logs/1/chatty.log"), "one\ntwo\nthree\nfour\n");
    assert!(!sb.exists(".dagrun/logs/1/quiet.log"), "a stage that printed nothing has no log");
    assert!(!sb.exists(".dagrun/logs/1/quiet_failure.log"));
    assert!(run.stdout().contains("FAILED   quiet_failure  exit status 4\n"), "no log to point to: {}", run.stdout());
    assert!(!run.stderr().contains("log:"), "{}", run.stderr());
    wait_until_gone("sleep 301");
    assert_eq!(sb.column("SELECT log_path FROM stage_runs WHERE component = 'quiet'"), [".dagrun/logs/1/quiet.log"]);
}

#[test]
fn a_timeout_kills_the_whole_process_group_and_is_recorded() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.slow]
        cmd = "(sleep 302; echo orphan > orphan.txt) & sleep 302"
        outputs = ["slow.out"]
        timeout_sec = 1
        "#,
    );
    let run = sb.build().failure();
    assert!(run.stdout().contains("timed out after 1s; its process group was killed"), "{}", run.stdout());
    assert_eq!(sb.column("SELECT last_status FROM orchestrator_state"), ["timed_out"]);
    assert_eq!(sb.column("SELECT status FROM stage_runs"), ["timed_out"]);
    // The group is SIGKILLed as the stage ends; the kernel takes a moment to finish them off.
    // A survivor would sleep for 302 s, well past the wait's 30 s deadline: the subshell,
    // its `sleep` and the leader's `sleep` all match.
    wait_until_gone("sleep 302");
    assert!(!sb.exists("orphan.txt"));
}

#[test]
fn retries_record_every_attempt_and_a_later_success_wins() {
    // Fails on the first attempt only: the counter file says which attempt this is.
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.flaky]
        cmd = "echo x >> attempts; test $(wc -l < attempts) -ge 2 && echo ok > out"
        outputs = ["out"]
        retries = 2
        "#,
    );
    let run = sb.build().success();
    assert!(run.stdout().contains("retry    flaky  (attempt 2)"), "{}", run.stdout());
    assert_eq!(sb.column("SELECT attempt || ':' || status FROM stage_runs ORDER BY id"), ["1:failed", "2:success"]);
    assert_eq!(
        sb.column("SELECT run_count || ':' || failure_count || ':' || last_status FROM orchestrator_state"),
        ["2:1:success"]
    );
}

#[test]
fn an_input_that_changes_while_its_stage_runs_keeps_the_stage_dirty() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.reader]
        cmd = "echo reader >> ran.log; cat in.txt > out.txt; echo more >> in.txt"
        inputs = ["in.txt"]
        outputs = ["out.txt"]
        "#,
    );
    sb.write("in.txt", "start\n");
    let run = sb.build().success();
    assert!(
        run.stderr().contains("warning: `in.txt` changed while `reader` ran; `reader` stays dirty"),
        "{}",
        run.stderr()
    );
    assert_eq!(sb.column("SELECT is_dirty FROM orchestrator_state"), ["1"]);
    sb.ran();
    sb.build().success();
    assert_eq!(sb.ran(), ["reader"]);
}

#[test]
fn a_timed_out_stage_leaves_no_process_behind_even_one_ignoring_sigterm() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.stubborn]
        cmd = "sh -c 'trap \"\" TERM; sleep 971; echo late > late.txt' ; true"
        outputs = ["late.txt"]
        timeout_sec = 1
        "#,
    );
    sb.build().failure();
    // A survivor would sleep for 971 s, well past the wait's 30 s deadline.
    wait_until_gone("sleep 971");
    assert_eq!(sb.column("SELECT status FROM stage_runs"), ["timed_out"]);
}

#[test]
fn no_retry_starts_after_fail_fast_has_stopped_the_build() {
    // `flaky` fails at once and waits 0.5 s before retrying; `broken` fails at 0.2 s.
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.broken]
        cmd = "sleep 0.2; exit 1"
        outputs = ["broken.out"]
        [stages.flaky]
        cmd = "echo attempt >> ran.log; exit 1"
        outputs = ["flaky.out"]
        retries = 3
        "#,
    );
    sb.dagrun(&["build", "-j", "2", "--fail-fast"]).failure();
    assert_eq!(sb.ran(), ["attempt"], "only the first attempt ran");
    assert_eq!(
        sb.column("SELECT component || ':' || status FROM stage_runs ORDER BY component, id"),
        ["broken:failed", "flaky:failed"]
    );
    assert_eq!(sb.column("SELECT stages_failed FROM runs"), ["2"]);
}

#[test]
fn every_attempt_row_holds_its_whole_end_whether_it_ended_before_its_row_was_written_or_after() {
    // A quick attempt ends before its `running` row is due and is written whole with its end;
    // one that sleeps is usually written `running` first and then ended (which one a stage
    // takes depends on the machine's load; `state::records`' unit test takes both for sure).
    // The row must agree with the stage's record either way.
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.quick_ok]
        cmd = "echo a > a.txt"
        outputs = ["a.txt"]

        [stages.quick_fail]
        cmd = "exit 3"

        [stages.slow_ok]
        cmd = "sleep 0.4; echo b > b.txt"
        outputs = ["b.txt"]

        [stages.slow_fail]
        cmd = "sleep 0.4; exit 4"
        "#,
    );
    sb.build().failure();
    let row = |component: &str| {
        sb.column(&format!(
            "SELECT s.status || ' | ' || (s.finished_at >= s.started_at) || ' | ' || (s.duration_ms = o.last_duration_ms)
                 || ' | ' || coalesce(s.finished_at = o.last_run_at, 'no last run')
                 || ' | ' || coalesce(s.fingerprint = o.fingerprint, s.fingerprint, 'no fingerprint')
                 || ' | ' || coalesce(s.output_hash = o.output_hash, s.output_hash, 'no output hash')
                 || ' | ' || coalesce(s.error, 'no error')
             FROM stage_runs s JOIN orchestrator_state o USING (component) WHERE component = '{component}'"
        ))
    };
    assert_eq!(row("quick_ok"), ["success | 1 | 1 | 1 | 1 | 1 | no error"]);
    assert_eq!(row("slow_ok"), ["success | 1 | 1 | 1 | 1 | 1 | no error"]);
    let failed = |component: &str, code: u8| {
        let row = row(component);
        let prefix = "failed | 1 | 1 | no last run | no fingerprint | no output hash | ";
        assert!(
            row.len() == 1 && row[0].starts_with(prefix) && row[0].contains(&format!("exit status {code}")),
            "{component}: {row:?}"
        );
    };
    failed("quick_fail", 3);
    failed("slow_fail", 4);
}
