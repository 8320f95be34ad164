//! Faults: kill -9 at any moment, full disks, broken inputs, damaged state. The recorded
//! state must stay true and every failure must say what to do.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::sandbox::{Sandbox, needs_root};

/// Six stages in two chains. Each writes its output in three steps, the middle one from a
/// background child, so that a kill can land between any two of them.
const CHAINS: &str = r#"
[stages.a1]
cmd = "echo a1 > a1.out; sleep 0.02; (sleep 0.02; echo a1: >> a1.out) & wait; echo a1. >> a1.out"
outputs = ["a1.out"]
[stages.a2]
cmd = "cat a1.out > a2.out; sleep 0.02; (sleep 0.02; echo a2: >> a2.out) & wait; echo a2. >> a2.out"
inputs = ["a1.out"]
outputs = ["a2.out"]
[stages.a3]
cmd = "cat a2.out > a3.out; sleep 0.02; (sleep 0.02; echo a3: >> a3.out) & wait; echo a3. >> a3.out"
inputs = ["a2.out"]
outputs = ["a3.out"]
[stages.b1]
cmd = "echo b1 > b1.out; sleep 0.02; (sleep 0.02; echo b1: >> b1.out) & wait; echo b1. >> b1.out"
outputs = ["b1.out"]
[stages.b2]
cmd = "cat b1.out > b2.out; sleep 0.02; (sleep 0.02; echo b2: >> b2.out) & wait; echo b2. >> b2.out"
inputs = ["b1.out"]
outputs = ["b2.out"]
[stages.b3]
cmd = "cat b2.out > b3.out; sleep 0.02; (sleep 0.02; echo b3: >> b3.out) & wait; echo b3. >> b3.out"
inputs = ["b2.out"]
outputs = ["b3.out"]
"#;

const STAGES: [&str; 6] = ["a1", "a2", "a3", "b1", "b2", "b3"];

/// What a clean build writes for `stage`.
fn expected_output(stage: &str) -> String {
    let chain = &stage[..1];
    let n: usize = stage[1..].parse().unwrap();
    let mut text = format!("{chain}1\n");
    // Each stage copies its upstream's output, then adds its own two steps.
    for i in 1..=n {
        text.push_str(&format!("{chain}{i}:\n{chain}{i}.\n"));
    }
    text
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

/// A fixed-seed generator (an LCG): kill points that differ between trials and not
/// between runs of the test.
fn random(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        seed >> 33
    }
}

/// The stages `status` calls up to date.
fn up_to_date(sb: &Sandbox) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(&sb.dagrun(&["status", "--json"]).success().stdout()).unwrap();
    json["stages"]
        .as_array()
        .expect("status --json has an array of stages")
        .iter()
        .filter(|report| report["dirty"] == false)
        .map(|report| report["stage"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_build_killed_at_any_moment_never_leaves_a_wrong_output_recorded_as_up_to_date() {
    // Kill points from a fixed-seed generator over the whole build (about 200 ms with
    // -j 2), by SIGKILL (stages outlive dagrun: their background children keep writing)
    // or SIGHUP (a closed terminal), each followed at once by a rebuild.
    let mut next = random(0x5eed_d46a_7275);
    let trials = 24;
    let mut landed_while_running = 0;
    for trial in 0..trials {
        let delay = Duration::from_millis(next() % 220);
        let (signal, name) = if trial % 2 == 0 { (Signal::KILL, "SIGKILL") } else { (Signal::HUP, "SIGHUP") };
        let what = format!("trial {trial}: {name} after {delay:?}");
        let sb = Sandbox::new().pipeline(CHAINS);
        if trial % 3 == 2 {
            // Some kills hit a rebuild of a finished pipeline, after an invalidate.
            sb.dagrun(&["build", "-j", "2"]).success();
            sb.dagrun(&["invalidate", "--downstream", "a1", "b1"]).success();
        }
        let mut child = sb.spawn(&["build", "-j", "2"]);
        std::thread::sleep(delay); // a random moment, not a wait for anything
        kill_process(Pid::from_raw(child.id() as i32).unwrap(), signal).unwrap();
        wait_or_kill_ref(&mut child, Duration::from_secs(30));
        let cut_short = stage_rows_cut_short(&sb) > 0 || stage_processes_outlive(&sb);

        // Rebuild at once, while the dead build's stages may still be running.
        let notes_file = std::fs::File::create(sb.path("rebuild.err")).unwrap();
        let rebuild = sb.command(&["build", "-j", "2"]).stdout(Stdio::null()).stderr(notes_file).spawn().unwrap();
        assert!(wait_or_kill(rebuild, Duration::from_secs(30)).success(), "{what}: the rebuild failed");
        let notes = sb.read("rebuild.err");
        // A stage was running when the build died if the build recorded its attempt cut
        // short, or if its processes outlived it (a stage that started less than a tenth
        // of a second before a SIGKILL has no row yet), seen here or by the rebuild.
        if cut_short || notes.contains("that a killed build left running") {
            landed_while_running += 1;
        }
        for stage in up_to_date(&sb) {
            assert_eq!(sb.read(&format!("{stage}.out")), expected_output(&stage), "{what}: {stage} is up to date");
        }
        // A repair build, then one that has nothing left to do.
        sb.dagrun(&["build", "-j", "2"]).success();
        for stage in STAGES {
            assert_eq!(sb.read(&format!("{stage}.out")), expected_output(stage), "{what}");
        }
        let last = sb.build().success();
        assert!(last.stdout().contains("0 ran, 0 cut off, 6 up to date"), "{what}: {}", last.stdout());
        assert_eq!(sb.column("SELECT count(*) FROM stage_runs WHERE status = 'running'"), ["0"], "{what}");
        assert_eq!(sb.column("PRAGMA integrity_check"), ["ok"], "{what}");
    }
    println!("{landed_while_running} of {trials} kills landed while a stage was running");
    // The kills must have hit running stages, or the loop proves nothing.
    assert!(
        landed_while_running * 3 >= trials,
        "only {landed_while_running} of {trials} kills landed while a stage was running"
    );
}

fn wait_or_kill_ref(child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the killed build did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether processes of a killed build's stages are still running: they carry its run's
/// attempt prefix.
fn stage_processes_outlive(sb: &Sandbox) -> bool {
    if !has_table(sb, "runs") {
        return false;
    }
    let prefixes = sb.column("SELECT attempt_prefix FROM runs WHERE outcome = 'running'");
    prefixes.iter().any(|prefix| !crate::sandbox::run_processes(prefix).is_empty())
}

/// Whether the killed build got as far as making the state database and its table `name`.
fn has_table(sb: &Sandbox, name: &str) -> bool {
    sb.exists(".dagrun/state.db")
        && sb.column(&format!("SELECT count(*) FROM sqlite_master WHERE name = '{name}'")) == ["1"]
}

/// Attempts the killed build left unfinished: `running` (SIGKILL: it died with them) or
/// `interrupted` (SIGHUP: it stopped them and said so).
fn stage_rows_cut_short(sb: &Sandbox) -> usize {
    if !has_table(sb, "stage_runs") {
        return 0;
    }
    sb.column("SELECT count(*) FROM stage_runs WHERE status IN ('running', 'interrupted')")[0].parse().unwrap()
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
    assert!(run.stderr().contains("is damaged: run `dagrun build --reset-state`"), "{}", run.stderr());
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the damaged file is left as it was");

    let reset = sb.dagrun(&["build", "--reset-state"]).success();
    assert!(reset.stderr().contains("moved the old state database to"), "{}", reset.stderr());
    // A new state knows nothing: every stage runs, or is restored from the run-cache,
    // which outlives the state and checks every byte it gives back.
    assert!(reset.stdout().contains("0 ran, 3 restored"), "{}", reset.stdout());
    let kept: Vec<_> = std::fs::read_dir(sb.path(".dagrun"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("state.db.reset-") && !name.ends_with("-wal") && !name.ends_with("-shm"))
        .collect();
    assert_eq!(kept.len(), 1, "the old file is kept, renamed (with its WAL files, if any)");
}

/// Mounts a small tmpfs for the test's lifetime.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    /// The mounted disk, or why it could not be mounted.
    fn mount(dir: &std::path::Path, size: &str) -> Result<SmallDisk, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("mounting a tmpfs needs root, and this test runs as another user".to_string());
        }
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(SmallDisk { path: dir.to_path_buf() })
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
    let mounted = SmallDisk::mount(&outer.path("disk"), "2m");
    let why = mounted.as_ref().err().map(|why| format!("cannot mount a 2 MiB tmpfs: {why}"));
    if !needs_root("a_full_disk_fails_the_stage_clearly_and_corrupts_nothing", why.map_or(Ok(()), Err)) {
        return;
    }
    let disk = mounted.expect("checked above");
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

/// Three stages writing directories of 1 MB files, so that restoring them from the
/// run-cache takes long enough for a kill to land in the middle.
fn big_outputs(version: u32) -> String {
    let mut text = String::new();
    for stage in ["x", "y", "z"] {
        text.push_str(&format!(
            "[stages.{stage}]\ncmd = \"mkdir -p {stage} && for i in 1 2 3 4 5 6 7 8 9 10; do yes {stage}-${{params.v}}-$i | head -c 1000000 > {stage}/f$i; done\"\noutputs = [\"{stage}\"]\nparams = {{ v = {version} }}\n\n"
        ));
    }
    text
}

/// What a clean build of `version` writes in stage `stage`'s directory, file by file.
fn big_output_is_right(sb: &Sandbox, stage: &str, version: u32) -> bool {
    (1..=10).all(|i| {
        let line = format!("{stage}-{version}-{i}\n");
        let expected: Vec<u8> = line.bytes().cycle().take(1_000_000).collect();
        std::fs::read(sb.path(&format!("{stage}/f{i}"))).ok() == Some(expected)
    }) && std::fs::read_dir(sb.path(stage)).map(|d| d.count()).ok() == Some(10)
}

#[test]
fn a_build_killed_while_it_restores_from_the_run_cache_never_records_a_wrong_output() {
    let mut next = random(0x7e57_0e5e_ed00);
    let trials = 8;
    let mut landed = 0;
    for trial in 0..trials {
        let sb = Sandbox::new().pipeline(&big_outputs(1));
        sb.dagrun(&["build", "-j", "2"]).success();
        sb.write("pipeline.toml", &big_outputs(2));
        sb.dagrun(&["build", "-j", "2"]).success();
        // Back to version 1: every stage is restored, and the build is killed meanwhile.
        sb.write("pipeline.toml", &big_outputs(1));
        let delay = Duration::from_millis(next() % 60);
        let what = format!("trial {trial}: SIGKILL after {delay:?}");
        let mut child = sb.spawn(&["build", "-j", "2"]);
        std::thread::sleep(delay); // a random moment, not a wait for anything
        kill_process(Pid::from_raw(child.id() as i32).unwrap(), Signal::KILL).unwrap();
        wait_or_kill_ref(&mut child, Duration::from_secs(30));
        // Landed in a restore: a stage directory is there but not whole (files missing, or a
        // file still being copied under its temporary name).
        let partial = ["x", "y", "z"].iter().any(|stage| {
            std::fs::read_dir(sb.path(stage)).is_ok_and(|dir| {
                let names: Vec<String> = dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
                names.len() != 10 || names.iter().any(|n| n.contains(".tmp-"))
            })
        });
        if partial {
            landed += 1;
        }
        for stage in up_to_date(&sb) {
            assert!(big_output_is_right(&sb, &stage, 1), "{what}: {stage} is recorded up to date");
        }
        // The next build finishes the job, restoring or running what is left.
        sb.dagrun(&["build", "-j", "2"]).success();
        for stage in ["x", "y", "z"] {
            assert!(big_output_is_right(&sb, stage, 1), "{what}: {stage} after the repair build");
        }
        assert_eq!(up_to_date(&sb).len(), 3, "{what}");
    }
    println!("{landed} of {trials} kills landed in the middle of a restore");
    // The kills must have cut restores short, or the loop proves nothing.
    assert!(landed * 4 >= trials, "only {landed} of {trials} kills landed in the middle of a restore");
}
