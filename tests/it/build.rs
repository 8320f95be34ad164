//! Which stages run, and which do not: DESIGN.md's dirty rules, early cutoff, targets.

use crate::sandbox::{Sandbox, abc};

#[test]
fn a_first_build_runs_every_stage_and_a_second_runs_nothing() {
    let sb = abc();
    let first = sb.build().success();
    assert_eq!(sb.ran(), ["a", "b", "c"]);
    assert!(first.stdout().contains("run      a  (never succeeded)"), "{}", first.stdout());
    assert!(first.stdout().contains("3 ran, 0 cut off, 0 up to date in"), "{}", first.stdout());
    let second = sb.build().success();
    assert_eq!(sb.ran(), Vec::<String>::new());
    assert!(second.stdout().contains("0 ran, 0 cut off, 3 up to date in"), "{}", second.stdout());
}

#[test]
fn touching_an_input_without_changing_it_reruns_nothing() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    sb.touch("src.txt");
    sb.touch("a.out");
    sb.build().success();
    assert_eq!(sb.ran(), Vec::<String>::new());
}

#[test]
fn editing_a_source_input_reruns_its_stage_and_everything_downstream() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    sb.write("src.txt", "changed\n");
    let run = sb.build().success();
    assert_eq!(sb.ran(), ["a", "b", "c"]);
    assert!(run.stdout().contains("(input `src.txt` changed ("), "{}", run.stdout());
    assert!(run.stdout().contains("run      b  (upstream `a` output changed)"), "{}", run.stdout());
}

#[test]
fn an_edit_within_the_same_second_and_size_is_still_seen() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    // Same length, written immediately: size and (coarse) mtime may match the cached ones.
    sb.write("src.txt", "HELLO\n");
    sb.build().success();
    assert_eq!(sb.ran(), ["a", "b", "c"]);
}

#[test]
fn a_rerun_with_identical_output_leaves_downstream_cut_off() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    // A new command for `a` that writes the same bytes.
    sb.edit("pipeline.toml", |t| t.replace("cat src.txt > a.out", "cat < src.txt > a.out"));
    let run = sb.build().success();
    assert_eq!(sb.ran(), ["a"]);
    assert!(run.stdout().contains("run      a  (command changed)"), "{}", run.stdout());
    assert!(run.stdout().contains("cut off  b"), "{}", run.stdout());
    assert!(run.stdout().contains("1 ran, 2 cut off, 0 up to date"), "{}", run.stdout());
}

#[test]
fn changing_a_param_reruns_that_stage_and_downstream() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    sb.edit("pipeline.toml", |t| t.replace("window = 20", "window = 30"));
    let run = sb.build().success();
    assert_eq!(sb.ran(), ["b", "c"]);
    assert!(run.stdout().contains("param `window` changed: 20 -> 30"), "{}", run.stdout());
    assert_eq!(sb.read("b.out"), "hello\n30\n");
}

#[test]
fn changing_a_command_reruns_exactly_the_affected_stages() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    sb.edit("pipeline.toml", |t| t.replace("cat b.out > c.out", "cat b.out b.out > c.out"));
    sb.build().success();
    assert_eq!(sb.ran(), ["c"]);
}

#[test]
fn changing_a_declared_env_value_reruns_that_stage_only() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.seeded]
        cmd = "echo seeded >> ran.log; echo $SEED > seeded.out"
        outputs = ["seeded.out"]
        env = ["SEED"]
        [stages.other]
        cmd = "echo other >> ran.log; echo $SEED > other.out"
        outputs = ["other.out"]
        "#,
    );
    let build = |seed: &str| sb.command(&["build"]).env("SEED", seed).output().unwrap();
    assert!(build("1").status.success());
    assert_eq!(sb.ran(), ["other", "seeded"]);
    assert!(build("1").status.success());
    assert_eq!(sb.ran(), Vec::<String>::new());
    assert!(build("2").status.success());
    assert_eq!(sb.ran(), ["seeded"], "an undeclared variable is not part of the fingerprint");
}

#[test]
fn a_deleted_output_is_restored_by_its_producer_only() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    let b_out = sb.read("b.out");
    // From the run-cache: the fingerprint has run before.
    sb.remove("b.out");
    let run = sb.build().success();
    assert!(sb.ran().is_empty(), "restored, not run");
    assert!(run.stdout().contains("restored b  "), "{}", run.stdout());
    assert!(run.stdout().contains("(output `b.out` is missing)"), "{}", run.stdout());
    assert!(run.stdout().contains("cut off  c"), "{}", run.stdout());
    assert_eq!(sb.read("b.out"), b_out);
    // Without it: run.
    sb.remove("b.out");
    let run = sb.dagrun(&["build", "--no-cache"]).success();
    assert_eq!(sb.ran(), ["b"]);
    assert!(run.stdout().contains("run      b  (output `b.out` is missing)"), "{}", run.stdout());
    assert!(run.stdout().contains("cut off  c"), "{}", run.stdout());
}

#[test]
fn an_edited_output_reruns_its_producer_which_restores_it() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    sb.write("a.out", "tampered\n");
    let run = sb.dagrun(&["build", "--no-cache"]).success();
    assert_eq!(sb.ran(), ["a"]);
    assert!(run.stdout().contains("(output `a.out` was modified)"), "{}", run.stdout());
    assert_eq!(sb.read("a.out"), "hello\n");
}

#[test]
fn invalidate_reruns_the_stage_and_cuts_off_identical_downstream() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    sb.dagrun(&["invalidate", "b"]).success();
    assert_eq!(sb.column("SELECT is_dirty FROM orchestrator_state ORDER BY component"), ["0", "1", "0"]);
    let run = sb.build().success();
    assert_eq!(sb.ran(), ["b"]);
    assert!(run.stdout().contains("run      b  (invalidated)"), "{}", run.stdout());
    assert_eq!(sb.column("SELECT is_dirty FROM orchestrator_state ORDER BY component"), ["0", "0", "0"]);
}

#[test]
fn invalidate_downstream_reruns_everything_after_the_stage() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    let out = sb.dagrun(&["invalidate", "--downstream", "a"]).success();
    assert!(out.stdout().contains("invalidated a, b, c"), "{}", out.stdout());
    sb.build().success();
    assert_eq!(sb.ran(), ["a", "b", "c"]);
}

#[test]
fn building_a_target_builds_it_and_its_upstream_only() {
    let sb = abc();
    sb.dagrun(&["build", "b"]).success();
    assert_eq!(sb.ran(), ["a", "b"]);
    assert!(!sb.exists("c.out"));
    sb.build().success();
    assert_eq!(sb.ran(), ["c"]);
}

#[test]
fn force_reruns_every_selected_stage() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    sb.dagrun(&["build", "--force", "b"]).success();
    assert_eq!(sb.ran(), ["a", "b"]);
}

#[test]
fn a_stage_whose_last_run_failed_reruns_even_with_the_same_fingerprint() {
    // The stage fails while `flag` exists; `flag` is not a declared input.
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.flaky]
        cmd = "echo flaky >> ran.log; test ! -e flag && echo ok > out"
        outputs = ["out"]
        "#,
    );
    sb.write("flag", "");
    sb.build().failure();
    assert_eq!(sb.ran(), ["flaky"]);
    sb.remove("flag");
    let run = sb.build().success();
    assert_eq!(sb.ran(), ["flaky"]);
    assert!(run.stdout().contains("(last run failed)"), "{}", run.stdout());
}

#[test]
fn adding_a_file_to_an_input_directory_or_glob_reruns_the_reader() {
    let sb = Sandbox::new()
        .pipeline(
            r#"
            [stages.dir]
            cmd = "echo dir >> ran.log; ls data > dir.out"
            inputs = ["data"]
            outputs = ["dir.out"]
            [stages.glob]
            cmd = "echo glob >> ran.log; cat ${inputs} > glob.out"
            inputs = ["data/*.csv"]
            outputs = ["glob.out"]
            "#,
        )
        .file("data/a.csv", "1\n")
        .file("data/b.txt", "x\n");
    sb.build().success();
    assert_eq!(sb.ran(), ["dir", "glob"]);
    sb.write("data/c.txt", "y\n");
    sb.build().success();
    assert_eq!(sb.ran(), ["dir"], "a .txt file is not in the *.csv glob");
    sb.write("data/z.csv", "2\n");
    sb.build().success();
    assert_eq!(sb.ran(), ["dir", "glob"]);
    assert_eq!(sb.read("glob.out"), "1\n2\n");
}

#[test]
fn a_hostile_param_reaches_the_command_as_one_quoted_word() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.echo]
        cmd = "printf '%s\n' ${params.msg} > out.txt"
        outputs = ["out.txt"]
        params = { msg = "'; touch pwned; echo '" }
        "#,
    );
    sb.build().success();
    assert_eq!(sb.read("out.txt"), "'; touch pwned; echo '\n");
    assert!(!sb.exists("pwned"));
}

#[test]
fn status_names_each_dirty_stage_and_why() {
    let sb = abc();
    let fresh = sb.dagrun(&["status"]).success();
    assert!(fresh.stdout().contains("never succeeded"), "{}", fresh.stdout());
    assert!(!sb.exists(".dagrun/state.db"), "status creates no state");
    sb.build().success();
    sb.write("src.txt", "new\n");
    let status = sb.dagrun(&["status"]).success();
    let stdout = status.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("STAGE  STATE"), "{}", status.stdout());
    assert!(
        lines[1].starts_with("a      dirty") && lines[1].contains("input `src.txt` changed"),
        "{}",
        status.stdout()
    );
    assert!(lines[2].starts_with("b      dirty") && lines[2].ends_with("upstream `a` is dirty"), "{}", status.stdout());
    assert!(status.stdout().contains("3 stages: 0 up to date, 3 dirty"), "{}", status.stdout());
    assert_eq!(sb.ran(), ["a", "b", "c"], "status runs nothing");

    let json = sb.dagrun(&["status", "--json"]).success();
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    assert!(parsed["run_cache"]["size_bytes"].as_u64().unwrap() > 0, "{parsed}");
    let parsed = &parsed["stages"];
    assert_eq!(parsed[0]["stage"], "a");
    assert_eq!(parsed[0]["dirty"], true);
    assert_eq!(parsed[0]["reason"]["kind"], "changed");
    assert_eq!(parsed[0]["reason"]["changes"][0]["path"], "src.txt");
    assert_eq!(parsed[0]["run_count"], 1);
}

#[test]
fn a_dry_run_lists_what_would_run_and_runs_nothing() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    sb.edit("pipeline.toml", |t| t.replace("window = 20", "window = 21"));
    let run = sb.dagrun(&["build", "-n"]).success();
    assert_eq!(
        run.stdout(),
        "would run  b  (param `window` changed: 20 -> 21)\nwould run  c  (upstream `b` is dirty)\nwave 1    b\nwave 2    c\n2 would run, 1 up to date (dry run: nothing was run)\n"
    );
    assert_eq!(sb.ran(), Vec::<String>::new());
}

#[test]
fn changing_which_upstream_file_a_stage_reads_reruns_it() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.up]
        cmd = "echo A > a.csv; echo B > b.csv"
        outputs = ["a.csv", "b.csv"]
        [stages.down]
        cmd = "echo down >> ran.log; cat ${inputs} > down.txt"
        inputs = ["a.csv"]
        outputs = ["down.txt"]
        "#,
    );
    sb.build().success();
    sb.ran();
    sb.edit("pipeline.toml", |t| t.replace(r#"inputs = ["a.csv"]"#, r#"inputs = ["b.csv"]"#));
    let run = sb.build().success();
    assert_eq!(sb.ran(), ["down"]);
    assert!(run.stdout().contains("declared inputs changed"), "{}", run.stdout());
    assert_eq!(sb.read("down.txt"), "B\n");
}

#[test]
fn reordering_inputs_reruns_the_stage() {
    let sb = Sandbox::new()
        .pipeline(
            r#"
            [stages.join]
            cmd = "echo join >> ran.log; cat ${inputs} > joined.txt"
            inputs = ["x.txt", "y.txt"]
            outputs = ["joined.txt"]
            "#,
        )
        .file("x.txt", "x\n")
        .file("y.txt", "y\n");
    sb.build().success();
    sb.ran();
    sb.edit("pipeline.toml", |t| t.replace(r#"["x.txt", "y.txt"]"#, r#"["y.txt", "x.txt"]"#));
    sb.build().success();
    assert_eq!(sb.ran(), ["join"]);
    assert_eq!(sb.read("joined.txt"), "y\nx\n");
}

#[test]
fn a_glob_inside_another_stages_output_directory_waits_for_it_and_follows_it() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.gen]
        cmd = "sleep 0.3; mkdir -p raw; echo ${params.v} > raw/a.csv"
        outputs = ["raw"]
        params = { v = 1 }
        [stages.use]
        cmd = "echo use >> ran.log; cat ${inputs} > use.txt"
        inputs = ["raw/*.csv"]
        outputs = ["use.txt"]
        "#,
    );
    sb.dagrun(&["build", "-j", "2"]).success();
    assert_eq!(sb.read("use.txt"), "1\n", "`use` waited for `gen`");
    sb.ran();
    sb.edit("pipeline.toml", |t| t.replace("v = 1", "v = 2"));
    sb.build().success();
    assert_eq!(sb.ran(), ["use"]);
    assert_eq!(sb.read("use.txt"), "2\n");
}

#[test]
fn a_star_glob_never_reads_dagruns_own_files() {
    let sb = Sandbox::new()
        .pipeline(
            r#"
            [stages.all]
            cmd = "echo all >> ran.log; cat *.txt > out/all.log"
            inputs = ["*.txt"]
            outputs = ["out/all.log"]
            "#,
        )
        .file("a.txt", "a\n");
    sb.build().success();
    sb.ran();
    let second = sb.build().success();
    assert_eq!(sb.ran(), Vec::<String>::new());
    assert!(second.stderr().is_empty(), "{}", second.stderr());
}

#[test]
fn an_always_run_stage_runs_at_every_build_and_early_cutoff_spares_its_downstream() {
    let pipeline = r#"
[stages.poll]
cmd = "echo poll >> ran.log && echo same > ${outputs}"
outputs = ["polled.txt"]
always_run = true

[stages.use]
cmd = "echo use >> ran.log && cat ${inputs} > ${outputs}"
inputs = ["polled.txt"]
outputs = ["used.txt"]
"#;
    let sb = Sandbox::new().pipeline(pipeline);
    sb.build().success();
    assert_eq!(sb.ran(), ["poll", "use"]);
    let status = sb.dagrun(&["status"]).success().stdout();
    assert!(status.contains("always runs (`always_run = true`)"), "{status}");
    let run = sb.build().success();
    assert_eq!(sb.ran(), ["poll"]);
    assert!(run.stdout().contains("1 ran, 1 cut off"), "{}", run.stdout());
}
