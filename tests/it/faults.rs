//! Faults: kill -9 at any moment, full disks, broken inputs, damaged state. The recorded
//! state must stay true and every failure must say what to do.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::sandbox::Sandbox;

/// Six stages in two chains; each writes its output at its very end, with known content.
const CHAINS: &str = r#"
[stages.a1]
cmd = "sleep 0.03; echo a1 > a1.out"
outputs = ["a1.out"]
[stages.a2]
cmd = "sleep 0.03; cat a1.out > a2.tmp; echo a2 >> a2.tmp; mv a2.tmp a2.out"
inputs = ["a1.out"]
outputs = ["a2.out"]
[stages.a3]
cmd = "sleep 0.03; cat a2.out > a3.tmp; echo a3 >> a3.tmp; mv a3.tmp a3.out"
inputs = ["a2.out"]
outputs = ["a3.out"]
[stages.b1]
cmd = "sleep 0.03; echo b1 > b1.out"
outputs = ["b1.out"]
[stages.b2]
cmd = "sleep 0.03; cat b1.out > b2.tmp; echo b2 >> b2.tmp; mv b2.tmp b2.out"
inputs = ["b1.out"]
outputs = ["b2.out"]
[stages.b3]
cmd = "sleep 0.03; cat b2.out > b3.tmp; echo b3 >> b3.tmp; mv b3.tmp b3.out"
inputs = ["b2.out"]
outputs = ["b3.out"]
"#;

fn expected_output(stage: &str) -> String {
    let chain = &stage[..1];
    let n: usize = stage[1..].parse().unwrap();
    (1..=n).map(|i| format!("{chain}{i}\n")).collect()
}

/// Waits for a child, killing it if it runs past `limit` (a hang is a failure, not a wait).
fn wait_or_kill(mut child: Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dagrun did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_9_at_any_moment_loses_nothing_recorded_and_the_next_build_completes() {
    // Kill points spread over the whole build (about 250 ms with -j 2), each on a fresh
    // pipeline, then a kill during a second, partial rebuild too.
    let delays_ms =
        [0, 2, 5, 8, 12, 16, 20, 25, 30, 35, 40, 50, 60, 70, 80, 95, 110, 125, 140, 160, 180, 200, 230, 260];
    for (i, &delay) in delays_ms.iter().enumerate() {
        let sb = Sandbox::new().pipeline(CHAINS);
        if i % 2 == 1 {
            // Odd kill points hit a rebuild of a finished pipeline, after an invalidate.
            sb.dagrun(&["build", "-j", "2"]).success();
            sb.dagrun(&["invalidate", "--downstream", "a1", "b1"]).success();
        }
        let child = sb.spawn(&["build", "-j", "2"]);
        std::thread::sleep(Duration::from_millis(delay));
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        // Stages the dead build started may still finish writing; let them.
        std::thread::sleep(Duration::from_millis(150));

        if sb.exists(".dagrun/state.db") {
            assert_eq!(sb.column("PRAGMA integrity_check"), ["ok"], "kill at {delay} ms");
        }
        // A kill before the schema's one migration transaction commits leaves an empty
        // database, which the next build migrates; otherwise check what was recorded.
        let migrated = sb.exists(".dagrun/state.db")
            && sb.column("SELECT count(*) FROM sqlite_master WHERE name = 'orchestrator_state'") == ["1"];
        if migrated {
            // Nothing is recorded as done that is not: every success has its output, intact.
            for stage in
                sb.column("SELECT component FROM orchestrator_state WHERE last_status = 'success' AND is_dirty = 0")
            {
                let out = format!("{stage}.out");
                assert!(sb.exists(&out), "kill at {delay} ms: {stage} recorded done without {out}");
                assert_eq!(sb.read(&out), expected_output(&stage), "kill at {delay} ms: {stage}");
            }
        }
        // The next build finishes the job; the one after has nothing to do.
        let status = wait_or_kill(
            sb.command(&["build", "-j", "2"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
            Duration::from_secs(30),
        );
        assert!(status.success(), "kill at {delay} ms: recovery build failed");
        for stage in ["a1", "a2", "a3", "b1", "b2", "b3"] {
            assert_eq!(sb.read(&format!("{stage}.out")), expected_output(stage), "kill at {delay} ms");
        }
        let last = sb.build().success();
        assert!(last.stdout().contains("0 ran, 0 cut off, 6 up to date"), "kill at {delay} ms: {}", last.stdout());
        assert_eq!(sb.column("SELECT count(*) FROM stage_runs WHERE status = 'running'"), ["0"]);
    }
}

#[test]
fn a_failed_run_keeps_the_last_good_fingerprint_and_outputs_recorded() {
    let sb = Sandbox::new()
        .pipeline(
            r#"
            [stages.gen]
            cmd = "grep -q good in.txt && cp in.txt out.txt"
            inputs = ["in.txt"]
            outputs = ["out.txt"]
            "#,
        )
        .file("in.txt", "good\n");
    sb.build().success();
    let before = sb.column("SELECT fingerprint || ' ' || output_hash || ' ' || last_run_at FROM orchestrator_state");
    let outputs_before = sb.column("SELECT hash FROM stage_outputs");
    sb.write("in.txt", "bad\n");
    sb.build().failure();
    assert_eq!(
        sb.column("SELECT fingerprint || ' ' || output_hash || ' ' || last_run_at FROM orchestrator_state"),
        before
    );
    assert_eq!(sb.column("SELECT hash FROM stage_outputs"), outputs_before);
    assert_eq!(sb.column("SELECT last_status || ':' || is_dirty FROM orchestrator_state"), ["failed:1"]);
    assert!(!sb.exists("out.txt"), "a failed stage's partial or stale output is removed");
}

#[test]
fn a_fifo_input_fails_its_stage_instead_of_hanging() {
    let sb = Sandbox::new().pipeline("[stages.read]\ncmd = \"true\"\ninputs = [\"pipe\"]\noutputs = [\"o\"]\n");
    assert!(Command::new("mkfifo").arg(sb.path("pipe")).status().unwrap().success());
    let child = sb.command(&["build"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let status = wait_or_kill(child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    assert!(sb.column("SELECT error FROM stage_runs")[0].contains("`pipe` is not a regular file or directory"));
}

#[test]
fn a_symlink_loop_in_an_input_directory_is_named() {
    let sb = Sandbox::new()
        .pipeline("[stages.read]\ncmd = \"true\"\ninputs = [\"data\"]\noutputs = [\"o\"]\n")
        .file("data/a.csv", "1\n");
    std::os::unix::fs::symlink("..", sb.path("data/loop")).unwrap();
    let run = sb.build().failure();
    assert!(run.stdout().contains("cannot walk directory `data`: a symbolic link loop at"), "{}", run.stdout());
}

#[test]
fn a_file_name_that_is_not_utf8_is_named_with_the_fix() {
    use std::os::unix::ffi::OsStrExt;
    let sb = Sandbox::new()
        .pipeline("[stages.read]\ncmd = \"true\"\ninputs = [\"data\"]\noutputs = [\"o\"]\n")
        .file("data/a.csv", "1\n");
    std::fs::write(sb.path("data").join(std::ffi::OsStr::from_bytes(b"bad-\xff.csv")), "x").unwrap();
    let run = sb.build().failure();
    assert!(run.stdout().contains("is not UTF-8; rename the file"), "{}", run.stdout());
}

#[test]
fn a_corrupted_state_database_is_reported_and_reset_state_moves_it_aside() {
    let sb = crate::sandbox::abc();
    sb.build().success();
    sb.dagrun(&["migrate"]).success(); // checkpoints nothing, but the file is complete
    // Overwrite everything after the 100-byte header with garbage.
    let path = sb.path(".dagrun/state.db");
    let _ = std::fs::remove_file(sb.path(".dagrun/state.db-wal"));
    let _ = std::fs::remove_file(sb.path(".dagrun/state.db-shm"));
    let mut bytes = std::fs::read(&path).unwrap();
    for (i, b) in bytes.iter_mut().enumerate().skip(100) {
        *b = (i * 7 % 251) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    let run = sb.build().failure();
    assert!(
        run.stderr().contains("is corrupted") && run.stderr().contains("dagrun build --reset-state"),
        "{}",
        run.stderr()
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the damaged file is left as it was");

    let reset = sb.dagrun(&["build", "--reset-state"]).success();
    assert!(reset.stderr().contains("moved the old state database to"), "{}", reset.stderr());
    assert!(reset.stdout().contains("3 ran"), "{}", reset.stdout());
    let kept: Vec<_> = std::fs::read_dir(sb.path(".dagrun"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("state.db.reset-"))
        .collect();
    assert_eq!(kept.len(), 1, "the old file is kept, renamed");
}

/// Mounts a small tmpfs for the test's lifetime; `None` where this process may not mount.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk { path: dir.to_path_buf() })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_fails_the_stage_clearly_and_corrupts_nothing() {
    let outer = Sandbox::new();
    let Some(disk) = SmallDisk::mount(&outer.path("disk"), "2m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root); the full-disk case is untested on this machine");
        return;
    };
    let dir = disk.path.clone();
    std::fs::write(
        dir.join("pipeline.toml"),
        r#"
        [stages.small]
        cmd = "echo ok > small.out"
        outputs = ["small.out"]
        [stages.big]
        cmd = "head -c ${params.bytes} /dev/zero > big.out"
        outputs = ["big.out"]
        after = ["small"]
        params = { bytes = 8000000 }
        "#,
    )
    .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_dagrun")).arg("-C").arg(&dir).arg("build").output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert_eq!(run.status.code(), Some(1), "{out}{err}");
    assert!(
        out.contains(
            "FAILED   big    exit status 1; the disk holding the pipeline directory is full (No space left on device)"
        ),
        "{out}{err}"
    );
    assert!(!dir.join("big.out").exists(), "the partial output is removed");
    let db = rusqlite::Connection::open(dir.join(".dagrun/state.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let statuses: Vec<String> = db
        .prepare("SELECT component || ':' || last_status FROM orchestrator_state ORDER BY component")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(statuses, ["big:failed", "small:success"]);
    drop(db);
    // With the stage fixed to fit, the build completes and `small` does not run again.
    let text = std::fs::read_to_string(dir.join("pipeline.toml")).unwrap().replace("bytes = 8000000", "bytes = 1000");
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_dagrun")).arg("-C").arg(&dir).arg("build").output().unwrap();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("1 ran, 0 cut off, 1 up to date"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
}

#[test]
fn paths_outside_the_pipeline_directory_need_an_explicit_opt_in() {
    let sb = Sandbox::new().file("shared/table.csv", "1,2\n");
    std::fs::create_dir_all(sb.path("project")).unwrap();
    let pipeline = "[stages.read]\ncmd = \"cp ../shared/table.csv copy.csv\"\ninputs = [\"../shared/table.csv\"]\noutputs = [\"copy.csv\"]\n";
    sb.write("project/pipeline.toml", pipeline);
    let refused = sb.dagrun(&["-C", "project", "build"]).usage_error();
    assert!(refused.stderr().contains("set `allow_outside_paths = true` in [pipeline]"), "{}", refused.stderr());
    sb.write("project/pipeline.toml", &format!("[pipeline]\nallow_outside_paths = true\n{pipeline}"));
    sb.dagrun(&["-C", "project", "build"]).success();
    assert_eq!(sb.read("project/copy.csv"), "1,2\n");
    sb.write("shared/table.csv", "3,4\n");
    sb.dagrun(&["-C", "project", "build"]).success();
    assert_eq!(sb.read("project/copy.csv"), "3,4\n", "a change outside is seen");
}
