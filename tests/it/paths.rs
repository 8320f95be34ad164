//! Paths that would make dagrun destroy or hang on files that are not a stage's: refused with
//! exit 2 before anything runs (or, for a link a stage made, when the stage would run), and
//! the file they point at is left as it was.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::sandbox::Sandbox;

/// A directory outside the sandbox holding `victim.txt`, and that directory resolved.
fn outside_victim() -> (tempfile::TempDir, std::path::PathBuf) {
    let outside = tempfile::Builder::new().prefix("dagrun-victim-").tempdir().unwrap();
    std::fs::write(outside.path().join("victim.txt"), "precious\n").unwrap();
    let real = std::fs::canonicalize(outside.path()).unwrap();
    (outside, real)
}

fn assert_victim_intact(dir: &Path) {
    assert_eq!(std::fs::read_to_string(dir.join("victim.txt")).unwrap(), "precious\n", "the victim was touched");
}

const THROUGH_LINK: &str = r#"
[stages.clean]
cmd = "echo clean >> ran.log; echo mine > link/victim.txt"
outputs = ["link/victim.txt"]
"#;

#[test]
fn an_output_through_a_link_to_outside_is_refused_even_when_outside_paths_are_allowed() {
    let (outside, real) = outside_victim();
    let sb = Sandbox::new().pipeline(THROUGH_LINK);
    std::os::unix::fs::symlink(outside.path(), sb.path("link")).unwrap();
    let allowed = format!("[pipeline]\nallow_outside_paths = true\n{THROUGH_LINK}");
    for (pipeline, line) in [(THROUGH_LINK.to_string(), 4), (allowed, 6)] {
        sb.write("pipeline.toml", &pipeline);
        let err = sb.build().usage_error().stderr();
        let expected = format!(
            "error: output `link/victim.txt` of stage `clean` resolves to `{}`, outside the pipeline directory, through a symbolic link",
            real.join("victim.txt").display()
        );
        assert!(err.contains(&expected), "{err}");
        assert!(err.contains(&format!("pipeline.toml:{line}:12")), "the span points at the output: {err}");
        assert!(err.contains("= help: outputs are deleted before their stage runs; replace the link"), "{err}");
        assert_victim_intact(outside.path());
        assert!(sb.ran().is_empty(), "nothing ran");
    }
}

#[test]
fn an_input_through_a_link_to_outside_needs_allow_outside_paths() {
    let (outside, real) = outside_victim();
    let pipeline =
        "[stages.read]\ncmd = \"cp data/victim.txt copy.txt\"\ninputs = [\"data/*.txt\"]\noutputs = [\"copy.txt\"]\n";
    let sb = Sandbox::new().pipeline(pipeline);
    std::os::unix::fs::symlink(outside.path(), sb.path("data")).unwrap();
    let err = sb.build().usage_error().stderr();
    let expected = format!(
        "error: input `data/*.txt` of stage `read` resolves to `{}`, outside the pipeline directory, through a symbolic link",
        real.display()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("set `allow_outside_paths = true` in [pipeline]"), "{err}");
    sb.write("pipeline.toml", &format!("[pipeline]\nallow_outside_paths = true\n{pipeline}"));
    sb.build().success();
    assert_eq!(sb.read("copy.txt"), "precious\n");
    assert_victim_intact(outside.path());
}

#[test]
fn the_pipeline_file_cannot_be_an_output_whatever_its_name() {
    let text = "[stages.a]\ncmd = \"echo a >> ran.log; echo > jobs.toml\"\noutputs = [\"jobs.toml\"]\n";
    let sb = Sandbox::new().file("jobs.toml", text);
    let err = sb.dagrun(&["--file", "jobs.toml", "build"]).usage_error().stderr();
    assert!(err.contains("error: output `jobs.toml` of stage `a` is the pipeline file `jobs.toml`"), "{err}");
    assert!(err.contains("write the stage's output elsewhere"), "{err}");
    assert_eq!(sb.read("jobs.toml"), text);
    assert!(sb.ran().is_empty());
}

#[test]
fn an_output_directory_holding_the_pipeline_file_is_refused() {
    // pipeline.toml is a link into `conf/`, which a stage declares as its output.
    let text = "[stages.a]\ncmd = \"echo a >> ran.log; mkdir conf\"\noutputs = [\"conf\"]\n";
    let sb = Sandbox::new().file("conf/real.toml", text);
    std::os::unix::fs::symlink("conf/real.toml", sb.path("pipeline.toml")).unwrap();
    let err = sb.build().usage_error().stderr();
    assert!(err.contains("error: output `conf` of stage `a` holds the pipeline file `pipeline.toml`"), "{err}");
    assert_eq!(sb.read("conf/real.toml"), text);
    assert!(sb.ran().is_empty());
}

#[test]
fn a_state_database_at_the_pipeline_file_is_refused_so_reset_state_cannot_move_it() {
    let text = "[pipeline]\nstate = \"./pipeline.toml\"\n[stages.a]\ncmd = \"echo > a.out\"\noutputs = [\"a.out\"]\n";
    let sb = Sandbox::new().pipeline(text);
    let err = sb.dagrun(&["build", "--reset-state"]).usage_error().stderr();
    assert!(err.contains("error: `state` is the pipeline file `pipeline.toml`"), "{err}");
    assert!(err.contains("pipeline.toml:2:9"), "the span points at `state`: {err}");
    assert!(err.contains("give the state database its own file"), "{err}");
    assert_eq!(sb.read("pipeline.toml"), text);
    let names: Vec<String> =
        std::fs::read_dir(sb.root()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["pipeline.toml"], "nothing was moved aside or created");
}

#[test]
fn an_output_holding_a_state_database_outside_the_directory_is_refused() {
    let outside = tempfile::Builder::new().prefix("dagrun-state-").tempdir().unwrap();
    let dir = outside.path().display().to_string();
    let head = format!("[pipeline]\nallow_outside_paths = true\nstate = \"{dir}/state.db\"\n");
    let sb = Sandbox::new().pipeline(&format!("{head}[stages.a]\ncmd = \"echo > a.out\"\noutputs = [\"a.out\"]\n"));
    sb.build().success();
    let state = std::fs::read(outside.path().join("state.db")).unwrap();

    sb.write("pipeline.toml", &format!("{head}[stages.a]\ncmd = \"mkdir -p {dir}\"\noutputs = [\"{dir}\"]\n"));
    let err = sb.build().usage_error().stderr();
    let expected = format!("error: output `{dir}` of stage `a` holds the state database `{dir}/state.db`");
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("keep `state` out of every output"), "{err}");
    assert_eq!(std::fs::read(outside.path().join("state.db")).unwrap(), state, "the state database is intact");
}

#[test]
fn a_device_as_the_pipeline_file_is_refused_without_writing_beside_it() {
    let sb = Sandbox::new();
    let err = sb.dagrun(&["--file", "/dev/null", "build"]).usage_error().stderr();
    assert_eq!(err, "error: `--file /dev/null` is not a regular file but a device; give the path of a pipeline file\n");
    assert!(!Path::new("/dev/.dagrun").exists(), "nothing was written beside it");
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
}

#[test]
fn an_endless_device_as_the_pipeline_file_is_refused_at_once() {
    let sb = Sandbox::new();
    // A bound on a hang, not a timing assertion: reading /dev/zero would never end.
    let run = sb.dagrun_within(&["--file", "/dev/zero", "build"], Duration::from_secs(10));
    let err = run.usage_error().stderr();
    assert!(err.contains("`--file /dev/zero` is not a regular file but a device"), "{err}");
}

#[test]
fn a_fifo_as_the_pipeline_file_is_refused_without_opening_it() {
    let sb = Sandbox::new();
    assert!(Command::new("mkfifo").arg(sb.path("pipe.toml")).status().unwrap().success());
    // Opening a FIFO blocks until a writer comes: a hang here fails the test after 10 s.
    let run = sb.dagrun_within(&["--file", "pipe.toml", "build"], Duration::from_secs(10));
    let err = run.usage_error().stderr();
    assert!(
        err.contains("`--file pipe.toml` is not a regular file but a FIFO; give the path of a pipeline file"),
        "{err}"
    );
    assert!(std::fs::metadata(sb.path("pipe.toml")).unwrap().file_type().is_fifo(), "the FIFO is left as it was");
}

#[test]
fn a_pipeline_file_larger_than_16_mib_is_refused_with_its_size() {
    let sb = Sandbox::new();
    std::fs::File::create(sb.path("huge.toml")).unwrap().set_len(17 << 20).unwrap(); // sparse
    let err = sb.dagrun(&["--file", "huge.toml", "build"]).usage_error().stderr();
    assert!(err.contains("`--file huge.toml` is 17825792 bytes, more than the 16 MiB a pipeline file may be"), "{err}");
}

#[test]
fn a_link_an_earlier_stage_made_cannot_make_a_later_stage_delete_outside() {
    // On a fresh tree `link` does not exist when the pipeline loads; `mk` makes it.
    let (outside, real) = outside_victim();
    let sb = Sandbox::new().pipeline(&format!(
        r#"
        [stages.mk]
        cmd = "echo mk >> ran.log; ln -s '{}' link; echo > mk.out"
        outputs = ["mk.out"]
        [stages.write]
        cmd = "echo write >> ran.log; echo mine > link/victim.txt"
        outputs = ["link/victim.txt"]
        after = ["mk"]
        "#,
        outside.path().display()
    ));
    let out = sb.build().failure().stdout();
    let expected = format!(
        "refusing to delete output `link/victim.txt`: it resolves to {}, outside the pipeline directory, through a symbolic link; replace the link with a directory",
        real.join("victim.txt").display()
    );
    assert!(out.contains(&expected), "{out}");
    assert_eq!(sb.ran(), ["mk"], "`write` did not run");
    assert_victim_intact(outside.path());
    // With the link in place, the next load refuses the pipeline before anything runs.
    let err = sb.build().usage_error().stderr();
    assert!(err.contains("output `link/victim.txt` of stage `write` resolves to"), "{err}");
    assert_victim_intact(outside.path());
}
