//! Glob inputs (issue 13): `**` edges, empty globs, shell matching rules.

use crate::sandbox::Sandbox;

#[test]
fn a_double_star_glob_reaches_an_output_two_directories_deep() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.gen]
        cmd = "sleep 0.3; echo gen >> ran.log; mkdir -p data/a/b; echo ${params.v} > data/a/b/deep.csv"
        outputs = ["data/a/b/deep.csv"]
        params = { v = 1 }
        [stages.use]
        cmd = "echo use >> ran.log; cat ${inputs} > use.txt"
        inputs = ["data/**/*.csv"]
        outputs = ["use.txt"]
        "#,
    );
    sb.dagrun(&["build", "-j", "2"]).success();
    assert_eq!(sb.read("ran.log"), "gen\nuse\n", "`use` waited for `gen`");
    assert_eq!(sb.read("use.txt"), "1\n");
    sb.ran();
    sb.edit("pipeline.toml", |t| t.replace("v = 1", "v = 2"));
    sb.dagrun(&["build", "-j", "2"]).success();
    assert_eq!(sb.ran(), ["gen", "use"]);
    assert_eq!(sb.read("use.txt"), "2\n", "`use` follows the producer's change");
    sb.build().success();
    assert_eq!(sb.ran(), Vec::<String>::new());
}

/// `read` has nothing to read; `after` needs it; `other` is independent.
const EMPTY_GLOB: &str = r#"
[stages.read]
cmd = "echo read >> ran.log; cat ${inputs} > read.out"
inputs = ["in/*.csv"]
outputs = ["read.out"]
[stages.after]
cmd = "echo after >> ran.log; cat read.out > after.out"
inputs = ["read.out"]
outputs = ["after.out"]
[stages.other]
cmd = "echo other >> ran.log; echo > o.out"
outputs = ["o.out"]
"#;

#[test]
fn an_empty_glob_is_an_error_before_anything_runs_and_dry_run_agrees() {
    let sb = Sandbox::new().pipeline(EMPTY_GLOB).file("in/notes.txt", "not a csv\n");
    let dry = sb.dagrun(&["build", "-n"]).failure();
    assert!(
        dry.stdout().contains("cannot run  read   (input glob `in/*.csv` matches no file and no stage writes one;"),
        "{}",
        dry.stdout()
    );
    assert!(dry.stdout().contains("1 cannot run"), "{}", dry.stdout());
    assert_eq!(sb.ran(), Vec::<String>::new(), "a dry run runs nothing");

    let run = sb.build().failure();
    assert!(
        run.stdout()
            .contains("FAILED   read   cannot run: input glob `in/*.csv` matches no file and no stage writes one"),
        "{}",
        run.stdout()
    );
    assert!(run.stdout().contains("blocked  after  (upstream `read` failed)"), "{}", run.stdout());
    assert_eq!(sb.ran(), ["other"], "`read` never ran its command and `after` was blocked");

    sb.write("in/x.csv", "1\n");
    sb.dagrun(&["build", "-n"]).success();
    sb.build().success();
    assert_eq!(sb.ran(), ["after", "read"]);
}

#[test]
fn a_missing_literal_input_makes_a_dry_run_fail_as_the_build_does() {
    let sb = Sandbox::new().pipeline(&EMPTY_GLOB.replace("in/*.csv", "in/data.csv"));
    let dry = sb.dagrun(&["build", "-n"]).failure();
    assert!(
        dry.stdout().contains("cannot run  read   (input `in/data.csv` does not exist and no stage writes it)"),
        "{}",
        dry.stdout()
    );
    sb.build().failure();
    assert_eq!(sb.ran(), ["other"]);
}

#[test]
fn an_empty_glob_that_another_stage_writes_into_waits_for_that_stage() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.gen]
        cmd = "echo gen >> ran.log; mkdir -p raw/2024; echo 1 > raw/2024/a.csv"
        outputs = ["raw"]
        [stages.use]
        cmd = "echo use >> ran.log; cat ${inputs} > use.txt"
        inputs = ["raw/**/*.csv"]
        outputs = ["use.txt"]
        "#,
    );
    let dry = sb.dagrun(&["build", "-n"]).success();
    assert!(dry.stdout().contains("2 would run, 0 up to date"), "{}", dry.stdout());
    sb.build().success();
    assert_eq!(sb.ran(), ["gen", "use"]);
    assert_eq!(sb.read("use.txt"), "1\n");
}

#[test]
fn a_double_star_glob_skips_hidden_directories_and_dagruns_own_files() {
    let sb = Sandbox::new()
        .pipeline(
            r#"
            [stages.all]
            cmd = "echo all >> ran.log; cat ${inputs} > .seen"
            inputs = ["**/*.txt"]
            "#,
        )
        .file("a.txt", "a\n")
        .file("sub/deeper/b.txt", "b\n")
        .file(".hidden/c.txt", "c\n")
        .file("sub/.cache/d.txt", "d\n");
    sb.build().success();
    assert_eq!(sb.ran(), ["all"]);
    assert_eq!(sb.read(".seen"), "a\nb\n");
    sb.write(".hidden/c.txt", "changed\n");
    sb.write(".dagrun/e.txt", "e\n");
    let second = sb.build().success();
    assert_eq!(sb.ran(), Vec::<String>::new());
    assert!(second.stderr().is_empty(), "{}", second.stderr());
}

#[test]
fn an_invalid_glob_is_refused_with_its_place_in_the_file() {
    let sb = Sandbox::new().pipeline("[stages.a]\ncmd = \"true\"\ninputs = [\"data/[a.csv\"]\n");
    let err = sb.build().usage_error().stderr();
    assert!(err.contains("error: invalid glob `data/[a.csv`: "), "{err}");
    assert!(err.contains(" --> pipeline.toml:3:11\n"), "{err}");
}
