//! Issue 13: a recorded success is always a true success. Stage processes that outlive
//! dagrun, retries, invalidations during a run, readers beside builds, the stat cache's
//! key, one state per pipeline file, and settings that used to be ignored.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};

use rustix::process::{Pid, Signal, kill_process};

use crate::sandbox::{Sandbox, needs_root, wait_until};

fn signal(child: &Child, signal: Signal) {
    kill_process(Pid::from_raw(child.id() as i32).unwrap(), signal).unwrap();
}

/// Live processes that carry an attempt's token in their environment.
fn token_carriers(token: &str) -> Vec<i32> {
    crate::sandbox::attempt_processes(|carried| carried == token)
}

/// Every process of every attempt of `stage` is dead: whatever carries its token, in its
/// process group or not.
fn assert_attempts_ended(sb: &Sandbox, stage: &str) {
    let tokens = sb.column(&format!("SELECT attempt_token FROM stage_runs WHERE component = '{stage}'"));
    assert!(!tokens.is_empty());
    for token in tokens {
        assert!(token_carriers(&token).is_empty(), "every process carrying {token} was ended");
    }
}

/// The output hashed and recorded is the one that stays, and the next build runs nothing.
fn assert_recorded_output_stays(sb: &Sandbox, path: &str) {
    let recorded = sb.column(&format!("SELECT hash FROM stage_outputs WHERE path = '{path}'"));
    let content = std::fs::read(sb.path(path)).unwrap();
    assert_eq!(recorded, [blake3::hash(&content).to_hex().to_string()], "what was hashed is what stays");
    let again = sb.build().success();
    assert!(again.stdout().contains("0 ran, 0 cut off, 1 up to date"), "{}", again.stdout());
}

fn running_rows(sb: &Sandbox) -> usize {
    if !sb.exists(".dagrun/state.db") {
        return 0;
    }
    let rows = std::panic::catch_unwind(|| sb.column("SELECT count(*) FROM stage_runs WHERE status = 'running'"));
    rows.ok().and_then(|r| r.first().and_then(|n| n.parse().ok())).unwrap_or(0)
}

/// Writes `first`, waits for the test's `go` file, then appends `second`: a stage caught
/// in the middle of writing its output, for as long as the test wants.
const TWO_STEPS: &str = r#"
[stages.s]
cmd = "echo first > out.txt; while [ ! -e go ]; do sleep 0.02; done; echo second >> out.txt"
outputs = ["out.txt"]
"#;

#[test]
fn sighup_stops_a_build_like_sigterm_and_records_the_stage_interrupted() {
    let sb = Sandbox::new().pipeline(TWO_STEPS);
    let child = sb.spawn(&["build"]);
    wait_until("the stage to write its first line", || sb.exists("out.txt"));
    signal(&child, Signal::HUP);
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(1), "a hung-up build records what happened and exits 1");
    assert_eq!(sb.column("SELECT status FROM stage_runs"), ["interrupted"]);
    assert_attempts_ended(&sb, "s");

    sb.write("go", "");
    sb.build().success();
    assert_eq!(sb.read("out.txt"), "first\nsecond\n");
}

/// Like TWO_STEPS, but the waiting is done by a background child of the stage's shell.
const ORPHANING: &str = r#"
[stages.s]
cmd = "echo first > out.txt; (while [ ! -e go ]; do sleep 0.02; done; echo second >> out.txt) & wait"
outputs = ["out.txt"]
"#;

#[test]
fn a_build_killed_with_sigkill_has_its_stage_ended_by_the_next_build_before_it_runs() {
    let sb = Sandbox::new().pipeline(ORPHANING);
    let mut child = sb.spawn(&["build"]);
    wait_until("the stage to write its first line", || sb.exists("out.txt"));
    wait_until("the attempt to be recorded", || running_rows(&sb) == 1);
    signal(&child, Signal::KILL);
    child.wait().unwrap();
    // Recorded with the attempt: the token its processes carry.
    let token = sb.column("SELECT attempt_token FROM stage_runs")[0].clone();
    assert!(!token_carriers(&token).is_empty(), "the stage outlives the killed build");

    // Were the old stage alive when `go` appears, it would append to the new run's output.
    let rebuild = sb.command(&["build"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_until("the rebuild to start the stage", || sb.column("SELECT count(*) FROM stage_runs") == ["2"]);
    assert!(token_carriers(&token).is_empty(), "the old stage was ended before the stage started again");
    sb.write("go", "");
    let out = rebuild.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("note: ended ") && stderr.contains("of stage `s` that a killed build left running"),
        "{stderr}"
    );
    assert_eq!(sb.read("out.txt"), "first\nsecond\n");
    assert_eq!(
        sb.column("SELECT status FROM stage_runs ORDER BY id"),
        ["interrupted", "success"],
        "the dead build's attempt is recorded as interrupted"
    );
    let again = sb.build().success();
    assert!(again.stdout().contains("0 ran, 0 cut off, 1 up to date"), "{}", again.stdout());
}

/// A process of a local attempt, as a build starts it: its run's prefix in its token.
fn fake_attempt(prefix: &str, stage: &str) -> Child {
    std::process::Command::new("sleep")
        .arg("303")
        .env("DAGRUN_ATTEMPT", format!("{prefix}-7"))
        .env("DAGRUN_STAGE", stage)
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_builds_attempt_started_before_its_row_was_recorded_is_ended_by_its_runs_prefix() {
    let sb = Sandbox::new().pipeline(TWO_STEPS).file("go", "");
    sb.build().success();
    // A build that died (SIGKILL) just after it started `s`, before the row said so: its run
    // is left `running`, with the prefix every token of its local attempts starts with.
    sb.db()
        .execute_batch(
            "INSERT INTO runs (trigger, started_at, pid, jobs, attempt_prefix)
             VALUES ('build', '2026-11-30T00:00:00Z', 1, 2, 'deadbeef00000001')",
        )
        .unwrap();
    let mut orphan = fake_attempt("deadbeef00000001", "s");
    // Another run's prefix (it finished), and a prefix that only begins the same way.
    let finished_prefix = sb.column("SELECT attempt_prefix FROM runs WHERE outcome = 'success'")[0].clone();
    let mut bystanders = [fake_attempt(&finished_prefix, "s"), fake_attempt("deadbeef000000012", "s")];
    wait_until("the processes to carry their tokens", || {
        token_carriers("deadbeef00000001-7").len() == 1 && token_carriers("deadbeef000000012-7").len() == 1
    });

    let rebuild = sb.dagrun(&["build"]).success();
    let mut ended = None;
    wait_until("the orphan to be ended", || {
        ended = orphan.try_wait().unwrap();
        ended.is_some()
    });
    assert_eq!(ended.unwrap().signal(), Some(9), "the orphan was killed");
    assert!(
        rebuild.stderr().contains("note: ended 1 process of stage `s` that a killed build left running"),
        "{}",
        rebuild.stderr()
    );
    for bystander in &mut bystanders {
        assert_eq!(bystander.try_wait().unwrap(), None, "a process of another run is left alone");
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }
    assert_eq!(
        sb.column("SELECT outcome FROM runs ORDER BY run_id"),
        ["success", "interrupted", "success"],
        "the dead run is swept once its processes are ended"
    );
    // The attempt had no row: the sweep records it interrupted in its run, and the stage is
    // dirty again, as one whose row said `running` would be (its outputs, stored by the first
    // build under the same fingerprint, come back from the run-cache).
    assert!(rebuild.stderr().contains("a previous build died while running s;"), "{}", rebuild.stderr());
    assert_eq!(sb.column("SELECT status || ' ' || attempt FROM stage_runs WHERE run_id = 2"), ["interrupted 1"]);
    assert_eq!(sb.column("SELECT status FROM stage_runs WHERE run_id = 3"), ["restored"]);
}

/// Builds a one-stage pipeline whose command exits 0 while a child it left behind keeps
/// appending to its output; checks the child was ended and the recorded output stays.
fn assert_a_lingering_child_is_ended_before_hashing(cmd: &str) {
    let sb = Sandbox::new().pipeline(&format!("[stages.s]\ncmd = \"{cmd}\"\noutputs = [\"out.txt\"]\n"));
    sb.build().success();
    assert_attempts_ended(&sb, "s");
    assert_recorded_output_stays(&sb, "out.txt");
}

#[test]
fn a_stage_whose_background_child_outlives_it_is_hashed_only_after_the_child_is_dead() {
    assert_a_lingering_child_is_ended_before_hashing(
        "echo good > out.txt; (while true; do echo late >> out.txt; sleep 0.01; done) & exit 0",
    );
}

#[test]
fn a_child_that_moves_to_a_process_group_of_its_own_is_ended_too() {
    // GNU `timeout` outside the foreground moves itself (and what it runs) to a new group.
    assert_a_lingering_child_is_ended_before_hashing(
        "echo good > out.txt; (timeout 60 sh -c 'while true; do echo late >> out.txt; sleep 0.01; done' | cat) & sleep 0.2; exit 0",
    );
}

#[test]
fn a_retry_never_records_lines_written_by_the_failed_attempts_children() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.s]
        cmd = """
        if [ -e tried ]; then echo good > out.txt; exit 0; fi
        touch tried
        (while true; do echo bad >> out.txt; sleep 0.01; done) &
        exit 1
        """
        outputs = ["out.txt"]
        retries = 1
        "#,
    );
    sb.build().success();
    assert_eq!(sb.read("out.txt"), "good\n");
    assert_attempts_ended(&sb, "s");
    assert_eq!(sb.column("SELECT status FROM stage_runs ORDER BY id"), ["failed", "success"]);
}

#[test]
fn an_invalidation_made_while_the_stage_runs_survives_its_success() {
    let sb = Sandbox::new().pipeline(TWO_STEPS);
    let child = sb.spawn(&["build"]);
    wait_until("the stage to start", || sb.exists("out.txt"));
    sb.dagrun(&["invalidate", "s"]).success();
    sb.write("go", "");
    assert!(child.wait_with_output().unwrap().status.success());
    let status = sb.dagrun(&["status"]).success();
    assert!(status.stdout().contains("invalidated"), "{}", status.stdout());
    let rebuild = sb.build().success();
    assert!(rebuild.stdout().contains("run      s  (invalidated)"), "{}", rebuild.stdout());
    let again = sb.build().success();
    assert!(again.stdout().contains("0 ran"), "{}", again.stdout());
}

#[test]
fn readers_never_write_the_state_database() {
    let sb = Sandbox::new()
        .pipeline(
            r#"
            [stages.s]
            cmd = "cat in.txt > out.txt"
            inputs = ["in.txt"]
            outputs = ["out.txt"]
            "#,
        )
        .file("in.txt", "x\n");
    sb.build().success();
    sb.touch("in.txt"); // a stat-cache miss: a reader hashes it, and must not save it
    let cache_before = sb.column("SELECT mtime_ns FROM file_hashes WHERE path = 'in.txt'");
    let rows_before = sb.column("SELECT count(*) FROM stage_runs");
    // Another process holds SQLite's write lock the whole time: a reader needs none.
    let db = sb.db();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    for args in [&["status"][..], &["why", "s"], &["history"], &["graph"], &["build", "-n"]] {
        sb.dagrun(args).success();
    }
    db.execute_batch("COMMIT").unwrap();
    assert_eq!(sb.column("SELECT mtime_ns FROM file_hashes WHERE path = 'in.txt'"), cache_before);
    assert_eq!(sb.column("SELECT count(*) FROM stage_runs"), rows_before);
}

/// An output is hashed just after its stage wrote it, so its stat-cache entry is racy (a
/// reader would read the file again at every look); a build that goes on past the racy
/// window (50 ms) reads it again at its end and saves the entry as trusted.
#[test]
fn a_build_saves_an_earlier_outputs_hash_as_trusted_once_its_racy_window_has_passed() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.first]
        cmd = "echo 1 > first.out"
        outputs = ["first.out"]
        [stages.later]
        cmd = "sleep 0.2; echo 2 > later.out"
        outputs = ["later.out"]
        after = ["first"]
        "#,
    );
    sb.build().success();
    let row = sb.column("SELECT cached_at_ns - max(mtime_ns, ctime_ns) FROM file_hashes WHERE path = 'first.out'");
    let margin: i64 = row[0].parse().unwrap();
    assert!(margin > 50_000_000, "hashed {margin} ns after its last change: still racy");
    assert!(sb.dagrun(&["status"]).success().stdout().contains("up to date"));
}

#[test]
fn a_reader_refuses_an_old_schema_instead_of_migrating_it() {
    let sb = Sandbox::new().pipeline(TWO_STEPS);
    std::fs::create_dir_all(sb.path(".dagrun")).unwrap();
    let db = rusqlite::Connection::open(sb.path(".dagrun/state.db")).unwrap();
    db.execute_batch(include_str!("../../migrations/0001_initial.sql")).unwrap();
    db.execute_batch("PRAGMA user_version = 1").unwrap();
    drop(db);
    let status = sb.dagrun(&["status"]).failure();
    assert!(status.stderr().contains("schema version 1, older than"), "{}", status.stderr());
    assert!(status.stderr().contains("dagrun migrate"), "{}", status.stderr());
    assert_eq!(sb.column("PRAGMA user_version"), ["1"], "a reader never migrates");
}

#[test]
fn a_build_waits_for_another_processs_sqlite_write_lock_and_says_so() {
    let sb = Sandbox::new().pipeline(TWO_STEPS).file("go", "");
    sb.build().success();
    let db = sb.db();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let refused = sb.dagrun(&["build", "-f", "--no-wait"]).failure();
    assert!(
        refused.stderr().contains("another process holds a write lock on the state database"),
        "{}",
        refused.stderr()
    );

    let mut child = sb.command(&["build", "-f"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("waiting: another process holds a write lock on"), "{line}");
    db.execute_batch("COMMIT").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(sb.column("SELECT status FROM stage_runs ORDER BY id DESC LIMIT 1"), ["success"]);
}

#[test]
fn damage_and_a_misplaced_dagrun_file_get_one_clear_message_each() {
    let sb = Sandbox::new().pipeline(TWO_STEPS).file("go", "");
    sb.build().success();
    // A value dagrun never writes (bytes that are not UTF-8) where it reads the state.
    sb.db().execute_batch("UPDATE orchestrator_state SET last_error = CAST(x'ff00fe' AS TEXT)").unwrap();
    for args in [&["status"][..], &["build"]] {
        let run = sb.dagrun(args).failure();
        assert!(
            run.stderr().contains("/.dagrun/state.db is damaged: run `dagrun build --reset-state`"),
            "{}",
            run.stderr()
        );
    }
    sb.dagrun(&["build", "--reset-state"]).success();

    let other = Sandbox::new().pipeline(TWO_STEPS).file(".dagrun", "not a directory");
    let run = other.build().failure();
    assert!(run.stderr().contains("/.dagrun is a file, but dagrun keeps its lock, state and logs"), "{}", run.stderr());
}

#[test]
fn a_same_size_edit_whose_mtime_is_put_back_reruns_the_stage() {
    let sb = Sandbox::new()
        .pipeline(
            r#"
            [stages.s]
            cmd = "cat in.txt > out.txt"
            inputs = ["in.txt"]
            outputs = ["out.txt"]
            "#,
        )
        .file("in.txt", "aaaa\n");
    // Age the file past the racy window (by the filesystem's own clock) so that the
    // stat cache trusts its entry: only then does the cache key matter.
    let probe = sb.path("probe");
    let ctime = |path: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).unwrap();
        meta.ctime() * 1_000_000_000 + meta.ctime_nsec()
    };
    let written = ctime(&sb.path("in.txt"));
    wait_until("the filesystem clock to pass the racy window", || {
        std::fs::write(&probe, "").unwrap();
        ctime(&probe) > written + 1_100_000_000
    });
    sb.build().success();
    let again = sb.build().success();
    assert!(again.stdout().contains("0 ran"), "{}", again.stdout());

    // `cp -p` of a same-size file: content changes, size and mtime do not.
    let mtime = std::fs::metadata(sb.path("in.txt")).unwrap().modified().unwrap();
    sb.write("other.txt", "bbbb\n");
    std::fs::File::options().write(true).open(sb.path("other.txt")).unwrap().set_modified(mtime).unwrap();
    let status = std::process::Command::new("cp").args(["-p", "other.txt", "in.txt"]).current_dir(sb.root()).status();
    assert!(status.unwrap().success());
    let rebuild = sb.build().success();
    assert!(rebuild.stdout().contains("1 ran"), "{}", rebuild.stdout());
    assert_eq!(sb.read("out.txt"), "bbbb\n");
}

#[test]
fn two_pipeline_files_in_one_directory_keep_separate_states() {
    let stage = |text: &str| {
        format!("[stages.s]\ncmd = \"echo {text} > {text}.out; echo {text} >> ran.log\"\noutputs = [\"{text}.out\"]\n")
    };
    let sb = Sandbox::new().pipeline(&stage("main")).file("b.toml", &stage("other"));
    sb.build().success();
    sb.dagrun(&["--file", "b.toml", "build"]).success();
    assert_eq!(sb.ran(), ["main", "other"]);
    let main = sb.build().success();
    assert!(main.stdout().contains("0 ran, 0 cut off, 1 up to date"), "{}", main.stdout());
    let other = sb.dagrun(&["--file", "b.toml", "build"]).success();
    assert!(other.stdout().contains("0 ran, 0 cut off, 1 up to date"), "{}", other.stdout());
    assert!(sb.exists(".dagrun/state.db"), "pipeline.toml keeps the documented path");
    assert!(sb.exists(".dagrun/pipelines/b.toml/state.db"));
}

#[test]
fn a_timeout_on_a_builtin_stage_stops_it_and_records_it_timed_out() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.w]
        fn = "debug.wait"
        params = { seconds = 60 }
        outputs = ["w.out"]
        timeout_sec = 1
        resources = { cpus = 2, mem_mb = 100 }
        "#,
    );
    let run = sb.build().failure();
    assert!(run.stdout().contains("timed out after 1s"), "{}", run.stdout());
    assert_eq!(sb.column("SELECT status FROM stage_runs"), ["timed_out"]);
    assert_eq!(sb.column("SELECT resources FROM stage_runs"), [r#"{"cpus":2,"mem_mb":100}"#]);
}

#[test]
fn a_third_stop_signal_ends_a_builtin_that_ignores_being_stopped() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.w]
        fn = "debug.wait"
        params = { seconds = 600, honour_cancel = false }
        outputs = ["w.out"]
        "#,
    );
    let mut child = sb.command(&["build"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_until("the built-in to start", || running_rows(&sb) == 1);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    signal(&child, Signal::INT);
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("stopping"), "{line}");
    // Three different signals, so that none merges with another pending one.
    signal(&child, Signal::TERM);
    signal(&child, Signal::HUP);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert_eq!(sb.column("SELECT status FROM stage_runs"), ["interrupted"]);
    let status = sb.dagrun(&["status"]).success();
    assert!(status.stdout().contains("last run was interrupted"), "{}", status.stdout());
}

#[test]
fn a_read_only_state_database_is_named_with_the_fix_and_readers_still_work() {
    let sb = Sandbox::new().pipeline(TWO_STEPS).file("go", "");
    sb.build().success();
    // Root writes through permissions; an immutable file it cannot write.
    let db = sb.path(".dagrun/state.db");
    let chattr = std::process::Command::new("chattr").arg("+i").arg(&db).output();
    let ready = match chattr {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("chattr +i failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(err) => Err(format!("chattr (e2fsprogs) is missing: {err}")),
    };
    if !needs_root("a_read_only_state_database_is_named_with_the_fix_and_readers_still_work", ready) {
        return;
    }
    let build = sb.dagrun(&["build", "-f"]);
    let status = sb.dagrun(&["status"]);
    std::process::Command::new("chattr").arg("-i").arg(&db).status().unwrap();
    let build = build.failure();
    assert!(build.stderr().contains("/.dagrun/state.db is read-only"), "{}", build.stderr());
    assert!(build.stderr().contains("give dagrun write access"), "{}", build.stderr());
    let status = status.success();
    assert!(status.stdout().contains("1 up to date"), "{}", status.stdout());
}

#[test]
fn a_tiny_open_file_limit_is_named_with_the_fix() {
    let sb = Sandbox::new().pipeline(TWO_STEPS).file("go", "");
    sb.build().success();
    let dagrun = env!("CARGO_BIN_EXE_dagrun");
    for limit in [5, 8] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" build -f"))
            .arg(dagrun)
            .current_dir(sb.root())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("the open-file limit is {limit}: raise it with `ulimit -n")), "{stderr}");
    }
}
