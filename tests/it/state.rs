//! The state database as users see it: plain SQL, one build at a time, crashes swept.

use std::time::{Duration, Instant};

use crate::sandbox::{Sandbox, abc, wait_until};

#[test]
fn the_seed_query_works_on_the_state_database() {
    let sb = abc();
    sb.build().success();
    sb.write("src.txt", "again\n");
    sb.build().success();
    let db = sb.db();
    let mut stmt = db
        .prepare("SELECT component, last_run_at, is_dirty, run_count, failure_count FROM orchestrator_state ORDER BY component")
        .unwrap();
    let rows: Vec<(String, String, i64, i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows.iter().map(|r| (r.0.as_str(), r.2, r.3, r.4)).collect::<Vec<_>>(),
        [("a", 0, 2, 0), ("b", 0, 2, 0), ("c", 0, 2, 0)]
    );
    for row in &rows {
        assert!(row.1.starts_with("20") && row.1.ends_with('Z'), "RFC 3339 UTC: {}", row.1);
    }
    assert_eq!(
        sb.column("SELECT trigger || ':' || outcome || ':' || stages_ran FROM runs ORDER BY run_id"),
        ["build:success:3", "build:success:3"]
    );
    assert_eq!(sb.column("SELECT count(*) FROM stage_runs WHERE status = 'success'"), ["6"]);
    assert_eq!(
        sb.column("SELECT reason FROM stage_runs WHERE run_id = 2 AND component = 'a'")[0].split(" (").next().unwrap(),
        "input `src.txt` changed"
    );
    assert_eq!(sb.column("SELECT path FROM stage_outputs ORDER BY path"), ["a.out", "b.out", "c.out"]);
    assert_eq!(sb.column("PRAGMA journal_mode"), ["wal"]);
}

#[test]
fn migrate_creates_the_schema_and_reports_the_version() {
    let sb = abc();
    let first = sb.dagrun(&["migrate"]).success();
    assert!(first.stdout().contains("from schema version 0 to 7"), "{}", first.stdout());
    let again = sb.dagrun(&["migrate"]).success();
    assert!(again.stdout().contains("is at schema version 7"), "{}", again.stdout());
    assert_eq!(sb.column("PRAGMA user_version"), ["7"]);
}

#[test]
fn a_version_1_database_is_upgraded_in_place_keeping_its_rows() {
    let sb = abc();
    std::fs::create_dir_all(sb.path(".dagrun")).unwrap();
    let db = rusqlite::Connection::open(sb.path(".dagrun/state.db")).unwrap();
    db.execute_batch(include_str!("../../migrations/0001_initial.sql")).unwrap();
    db.execute_batch("PRAGMA user_version = 1; INSERT INTO orchestrator_state (component, run_count) VALUES ('a', 7);")
        .unwrap();
    drop(db);
    let run = sb.dagrun(&["migrate"]).success();
    assert!(run.stdout().contains("from schema version 1 to 7"), "{}", run.stdout());
    assert_eq!(sb.column("SELECT run_count FROM orchestrator_state WHERE component = 'a'"), ["7"]);
    assert_eq!(sb.column("SELECT count(*) FROM pragma_table_info('stage_runs') WHERE name = 'metrics'"), ["1"]);
    assert_eq!(sb.column("SELECT count(*) FROM pragma_table_info('stage_runs') WHERE name = 'attempt_token'"), ["1"]);
    assert_eq!(sb.column("SELECT restore_count FROM orchestrator_state WHERE component = 'a'"), ["0"]);
    assert_eq!(sb.column("SELECT count(*) FROM state_token"), ["1"]);
}

#[test]
fn a_foreign_database_is_never_written_over() {
    let sb = abc();
    std::fs::create_dir_all(sb.path(".dagrun")).unwrap();
    let db = rusqlite::Connection::open(sb.path(".dagrun/state.db")).unwrap();
    db.execute_batch("CREATE TABLE precious (x); INSERT INTO precious VALUES (42);").unwrap();
    drop(db);
    let run = sb.build().failure();
    assert!(run.stderr().contains("is not a dagrun state database"), "{}", run.stderr());
    assert_eq!(sb.column("SELECT x FROM precious"), ["42"]);
    assert_eq!(sb.ran(), Vec::<String>::new());
}

#[test]
fn a_file_that_is_not_a_database_is_reported_not_replaced() {
    let sb = abc();
    sb.write(".dagrun/state.db", "these are my notes, not a database, and long enough to have a header");
    let run = sb.build().failure();
    assert!(run.stderr().contains("is not an SQLite database"), "{}", run.stderr());
    assert!(sb.read(".dagrun/state.db").starts_with("these are my notes"));
}

const SLOW: &str = r#"
[stages.slow]
cmd = "touch started; sleep 2; echo done > slow.out; echo slow >> ran.log"
outputs = ["slow.out"]
"#;

/// A local stage starts before its `stage_runs` row is recorded (its processes carry the
/// run's attempt prefix; the row is written once it has run for a tenth of a second, or with
/// its end): waits for the row too.
fn wait_until_recorded_running(sb: &Sandbox) {
    wait_until("the attempt to be recorded", || {
        sb.column("SELECT count(*) FROM stage_runs WHERE status = 'running'") == ["1"]
    });
}

fn wait_for(sb: &Sandbox, rel: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sb.exists(rel) {
        assert!(Instant::now() < deadline, "{rel} never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_build_with_no_wait_fails_naming_the_holder() {
    let sb = Sandbox::new().pipeline(SLOW);
    let mut first = sb.spawn(&["build"]);
    wait_for(&sb, "started");
    let second = sb.dagrun(&["build", "--no-wait"]).failure();
    let pid = first.id();
    assert!(
        second.stderr().contains(&format!("error: another build holds {}", sb.path(".dagrun/lock").display()))
            && second.stderr().contains(&format!("(pid {pid}, since ")),
        "{}",
        second.stderr()
    );
    assert!(first.wait().unwrap().success());
    assert_eq!(sb.ran(), ["slow"]);
}

#[test]
fn a_second_build_waits_for_the_first_and_then_finds_nothing_to_do() {
    let sb = Sandbox::new().pipeline(SLOW);
    let mut first = sb.spawn(&["build"]);
    wait_for(&sb, "started");
    let second = sb.build().success();
    assert!(second.stderr().contains("waiting (pass --no-wait to fail at once)"), "{}", second.stderr());
    assert!(second.stdout().contains("0 ran, 0 cut off, 1 up to date"), "{}", second.stdout());
    assert!(first.wait().unwrap().success());
    assert_eq!(sb.ran(), ["slow"]);
}

#[test]
fn status_reads_while_a_build_runs() {
    let sb = Sandbox::new().pipeline(SLOW);
    let mut build = sb.spawn(&["build"]);
    wait_for(&sb, "started");
    wait_until_recorded_running(&sb);
    let status = sb.dagrun(&["status"]).success();
    assert!(status.stdout().contains("slow   running"), "the build's stage shows as running: {}", status.stdout());
    assert_eq!(sb.column("SELECT status FROM stage_runs"), ["running"]);
    assert!(build.wait().unwrap().success());
}

#[test]
fn a_killed_build_leaves_its_running_stage_interrupted_and_it_reruns() {
    let sb = Sandbox::new().pipeline(SLOW);
    let mut build = sb.spawn(&["build"]);
    wait_for(&sb, "started");
    // The build dies with the attempt's row recorded (see the prefix test in trust.rs for
    // one that dies before).
    wait_until_recorded_running(&sb);
    build.kill().unwrap(); // SIGKILL: no cleanup at all
    build.wait().unwrap();
    assert_eq!(sb.column("PRAGMA integrity_check"), ["ok"]);
    let next = sb.build().success();
    assert!(next.stderr().contains("a previous build died while running slow"), "{}", next.stderr());
    assert!(next.stdout().contains("run      slow  (last run was interrupted)"), "{}", next.stdout());
    assert_eq!(sb.column("SELECT status FROM stage_runs ORDER BY id"), ["interrupted", "success"]);
    assert_eq!(sb.column("SELECT outcome FROM runs ORDER BY run_id"), ["interrupted", "success"]);
    assert_eq!(sb.column("SELECT failure_count FROM orchestrator_state"), ["1"]);
}

#[test]
fn ctrl_c_kills_running_stages_and_records_them_interrupted() {
    let sb = Sandbox::new().pipeline(SLOW);
    let mut build = sb.spawn(&["build"]);
    wait_for(&sb, "started");
    let pid = rustix::process::Pid::from_raw(build.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = build.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert_eq!(sb.column("SELECT status FROM stage_runs"), ["interrupted"]);
    assert_eq!(sb.column("SELECT outcome FROM runs"), ["interrupted"]);
    assert!(!sb.exists("slow.out"));
}

#[test]
fn status_shows_a_stage_another_build_is_running() {
    let sb = Sandbox::new()
        .pipeline("[stages.slow]\ncmd = \"touch started; if [ -e hold ]; then sleep 30; fi; echo > out\"\noutputs = [\"out\"]\n")
        .file("hold", "");
    let mut build = sb.spawn(&["build"]);
    wait_until("the stage to start", || sb.exists("started"));
    wait_until_recorded_running(&sb);
    let status = sb.dagrun(&["status"]).success();
    let row = status.stdout().lines().find(|l| l.starts_with("slow")).unwrap().to_string();
    assert!(
        row.contains("running") && row.contains(&format!("by pid {} (run 1) since ", build.id())),
        "{}",
        status.stdout()
    );
    assert!(status.stdout().starts_with("STAGE  STATE    LAST SUCCESS  LAST RESULT  RUNS"), "{}", status.stdout());

    // Killed: its row stays `running` until the next build, but nothing runs it now.
    build.kill().unwrap();
    build.wait().unwrap();
    let after = sb.dagrun(&["status"]).success();
    let row = after.stdout().lines().find(|l| l.starts_with("slow")).unwrap().to_string();
    assert!(row.contains("dirty") && !row.contains("running"), "{}", after.stdout());
    // The next build ends the killed build's stage before it runs it again.
    sb.remove("hold");
    let rebuilt = sb.build().success();
    assert!(rebuilt.stdout().contains("1 ran"), "{}", rebuilt.stdout());
}

#[test]
fn a_long_stage_is_recorded_running_and_every_row_ends_whole() {
    // `quick` ends long before its row would be written on its own: its row is written whole
    // with its end. `long` runs until told to stop (or 30 s, should the test fail first): its
    // row says `running` while it does.
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.quick]
        cmd = "echo q > q.txt"
        outputs = ["q.txt"]

        [stages.long]
        cmd = "touch started; n=0; while [ ! -e go ] && [ $n -lt 3000 ]; do sleep 0.01; n=$((n + 1)); done; cat q.txt > l.txt"
        inputs = ["q.txt"]
        outputs = ["l.txt"]
        "#,
    );
    let build = sb.spawn(&["build"]);
    wait_until("`long` to start", || sb.exists("started"));
    wait_until("`long` to be recorded running", || {
        sb.column("SELECT component FROM stage_runs WHERE status = 'running'") == ["long"]
    });
    assert_eq!(sb.column("SELECT status FROM stage_runs WHERE component = 'quick'"), ["success"]);
    let status = sb.dagrun(&["status"]).success();
    assert!(status.stdout().lines().any(|l| l.starts_with("long") && l.contains("running")), "{}", status.stdout());
    sb.write("go", "");
    assert!(build.wait_with_output().unwrap().status.success());
    // Each row, whichever way it was written, holds the whole attempt: its reason, its start
    // before its end, and the token its processes carried, made of its run's prefix.
    let rows = sb.column(
        "SELECT component || ' ' || status || ' ' || attempt || ' ' || reason || ' '
                || (finished_at >= started_at) || ' '
                || (attempt_token LIKE (SELECT attempt_prefix FROM runs WHERE run_id = stage_runs.run_id) || '-%')
         FROM stage_runs ORDER BY id",
    );
    assert_eq!(rows, ["quick success 1 never succeeded 1 1", "long success 1 never succeeded 1 1"]);
}

/// What `status --json` says with the snapshot (checked to be current, so that it is what
/// is read), and with the tables alone.
fn status_by_snapshot_and_by_tables(sb: &crate::sandbox::Sandbox) -> (String, String) {
    let snapshot = std::fs::read(sb.path(".dagrun/state.db.snapshot")).expect("a build leaves a snapshot");
    let header = b"dagrun state snapshot 2\n".len();
    let token = i64::from_le_bytes(snapshot[header..header + 8].try_into().unwrap());
    assert_eq!(sb.column("SELECT token FROM state_token"), [token.to_string()], "the snapshot is current");
    let by_snapshot = sb.dagrun(&["status", "--json"]).success().stdout();
    std::fs::remove_file(sb.path(".dagrun/state.db.snapshot")).expect("a build leaves a snapshot");
    let by_tables = sb.dagrun(&["status", "--json"]).success().stdout();
    (by_snapshot, by_tables)
}

/// A build writes the snapshot from what it loaded plus the records it wrote itself, unless
/// someone else wrote meanwhile: either way the snapshot says what the tables say.
#[test]
fn a_builds_snapshot_holds_what_its_tables_hold_whoever_wrote_meanwhile() {
    let sb = abc();
    sb.build().success();
    assert_eq!(sb.ran(), ["a", "b", "c"]);
    sb.write("src.txt", "changed\n");
    sb.build().success();
    assert_eq!(sb.ran(), ["a", "b", "c"]);
    let (by_snapshot, by_tables) = status_by_snapshot_and_by_tables(&sb);
    assert_eq!(by_snapshot, by_tables);

    // `dagrun invalidate a` lands while the build runs `b` (its param changed), which waits
    // for it: the build writes b's and c's records, never a's.
    sb.edit("pipeline.toml", |p| {
        p.replace("cmd = \"echo b", "cmd = \"touch started; while [ ! -e go ]; do sleep 0.05; done; echo b")
            .replace("window = 20", "window = 21")
    });
    let mut build = sb.spawn(&["build"]);
    // Whatever happens below, the stage is let go, so the build ends.
    struct LetGo<'a>(&'a crate::sandbox::Sandbox);
    impl Drop for LetGo<'_> {
        fn drop(&mut self) {
            self.0.write("go", "");
        }
    }
    let go = LetGo(&sb);
    wait_until("stage b to start", || sb.exists("started"));
    sb.dagrun(&["invalidate", "a"]).success();
    drop(go);
    assert!(build.wait().unwrap().success());
    assert_eq!(sb.ran(), ["b", "c"]);
    let (by_snapshot, by_tables) = status_by_snapshot_and_by_tables(&sb);
    assert_eq!(by_snapshot, by_tables);
    let status: serde_json::Value = serde_json::from_str(&by_tables).unwrap();
    let a = status["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "a").unwrap().clone();
    assert_eq!(a["dirty"], true, "{a}");
}

/// The snapshot of the state beside the database (a no-op build's fast path) is believed
/// only while the database has not changed since it was written, whoever changed it.
#[test]
fn the_state_snapshot_is_never_believed_over_the_database() {
    let sb = abc();
    sb.build().success();
    assert_eq!(sb.ran(), ["a", "b", "c"]);
    let snapshot = sb.path(".dagrun/state.db.snapshot");
    let written = std::fs::read(&snapshot).expect("a build leaves a snapshot of the state");
    assert!(written.starts_with(b"dagrun state snapshot 2\n"));
    sb.build().success();
    assert!(sb.ran().is_empty(), "the snapshot gives the same plan as the tables");

    // Plain SQL marks b dirty: the snapshot says otherwise, and must lose.
    sb.db().execute("UPDATE orchestrator_state SET is_dirty = 1 WHERE component = 'b'", []).unwrap();
    let status = sb.dagrun(&["status"]).success();
    assert!(status.stdout().lines().any(|l| l.starts_with("b ") && l.contains("dirty")), "{}", status.stdout());
    sb.build().success();
    assert_eq!(sb.ran(), ["b"], "b ran; c's input came back identical and was cut off");

    // An old snapshot put back after the state moved on: b is invalidated, and the old
    // snapshot (which recorded it clean) is put back in place of the new one.
    let clean = std::fs::read(&snapshot).unwrap();
    sb.dagrun(&["invalidate", "b"]).success();
    std::fs::write(&snapshot, &clean).unwrap();
    sb.build().success();
    assert_eq!(sb.ran(), ["b"]);

    // A damaged or torn snapshot is ignored, and the next build writes a whole one.
    let mut damaged = std::fs::read(&snapshot).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    std::fs::write(&snapshot, &damaged).unwrap();
    sb.dagrun(&["invalidate", "a"]).success();
    sb.build().success();
    assert_eq!(sb.ran(), ["a"]);
    std::fs::write(&snapshot, &damaged[..damaged.len() / 2]).unwrap();
    sb.build().success();
    assert!(sb.ran().is_empty());
    let rewritten = std::fs::read(&snapshot).unwrap();
    assert!(
        rewritten.starts_with(b"dagrun state snapshot 2\n") && rewritten.len() > damaged.len() / 2,
        "the no-op build rewrote it whole"
    );
}

/// A no-op build opens no run-cache: it is made when a stage may run. (The stat cache's
/// clock, read only before a file is hashed, is tested where it is kept: a build within
/// 50 ms of a write re-hashes that file, so a test here would have to wait.)
#[test]
fn a_no_op_build_makes_no_run_cache() {
    let sb = abc();
    sb.build().success();
    assert_eq!(sb.ran(), ["a", "b", "c"]);
    std::fs::remove_dir_all(sb.path(".dagrun/cache")).unwrap();
    sb.build().success();
    assert!(sb.ran().is_empty());
    assert!(!sb.exists(".dagrun/cache"));
    sb.edit("src.txt", |t| t.replace("hello", "world"));
    sb.build().success();
    assert_eq!(sb.ran(), ["a", "b", "c"]);
    assert!(sb.exists(".dagrun/cache"), "a build that runs stages stores them");
}

/// A build killed before its first stage leaves a `running` run and no stage row; the next
/// build still marks that run interrupted (the sweep is skipped only when nothing is running).
#[test]
fn a_run_left_running_without_stages_is_swept() {
    let sb = abc();
    sb.build().success();
    sb.db()
        .execute(
            "INSERT INTO runs (trigger, started_at, pid, jobs) VALUES ('build', '2026-01-01T00:00:00.000Z', 1, 1)",
            [],
        )
        .unwrap();
    sb.build().success();
    assert_eq!(sb.column("SELECT outcome FROM runs ORDER BY run_id"), ["success", "interrupted", "success"]);
}
