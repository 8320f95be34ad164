//! A bad pipeline file is refused before anything runs: exit 2, file:line:column, and a fix.

use crate::sandbox::Sandbox;

fn refused(pipeline: &str) -> String {
    let sb = Sandbox::new().pipeline(pipeline);
    let run = sb.build().usage_error();
    assert!(!sb.exists(".dagrun/state.db"), "nothing is recorded for a bad pipeline");
    assert!(run.stdout().is_empty(), "nothing ran: {}", run.stdout());
    run.stderr()
}

#[test]
fn an_unknown_key_is_named_with_its_position_and_the_nearest_known_key() {
    let err = refused("[stages.a]\ncmdd = \"true\"\n");
    assert_eq!(
        err,
        "error: unknown key `cmdd`\n --> pipeline.toml:2:1\n  |\n2 | cmdd = \"true\"\n  | ^^^^\n  = help: did you mean `cmd`?\n"
    );
}

#[test]
fn a_syntax_error_points_at_the_line() {
    let err = refused("[stages.a]\ncmd = \"unterminated\n");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("--> pipeline.toml:2:"), "{err}");
}

#[test]
fn a_cycle_is_reported_as_its_closing_path() {
    let err = refused(
        r#"
        [stages.features]
        cmd = "true"
        after = ["model"]
        [stages.model]
        cmd = "true"
        after = ["features"]
        "#,
    );
    assert!(err.starts_with("error: dependency cycle: features -> model -> features\n"), "{err}");
}

#[test]
fn two_stages_writing_one_output_are_refused() {
    let err = refused(
        r#"
        [stages.a]
        cmd = "true"
        outputs = ["data/x.csv"]
        [stages.b]
        cmd = "true"
        outputs = ["./data/x.csv"]
        "#,
    );
    assert!(err.contains("error: stages `a` and `b` both write `data/x.csv`"), "{err}");
    assert!(err.contains("pipeline.toml:7:20"), "{err}");
}

#[test]
fn an_unknown_after_suggests_the_nearest_stage() {
    let err = refused(
        r#"
[stages.features]
cmd = "true"
[stages.model]
cmd = "true"
after = ["featurs"]
"#,
    );
    assert!(err.contains("error: unknown stage `featurs` in `after`\n --> pipeline.toml:6:10"), "{err}");
    assert!(err.contains("help: did you mean `features`?"), "{err}");
}

#[test]
fn an_output_that_is_also_its_own_input_is_refused() {
    let err = refused(
        r#"
        [stages.a]
        cmd = "true"
        inputs = ["data"]
        outputs = ["data/out.csv"]
        "#,
    );
    assert!(err.contains("error: stage `a` reads `data`, which is its own output `data/out.csv`"), "{err}");
}

#[test]
fn a_path_outside_the_pipeline_directory_is_refused() {
    let err = refused(
        r#"
        [stages.a]
        cmd = "true"
        inputs = ["../secret.txt"]
        outputs = ["/etc/out"]
        "#,
    );
    assert!(err.contains("error: input path `../secret.txt` is outside the pipeline directory"), "{err}");
    assert!(err.contains("error: output path `/etc/out` is outside the pipeline directory"), "{err}");
}

#[test]
fn cmd_and_fn_together_or_neither_are_refused() {
    let err = refused("[stages.both]\ncmd = \"true\"\nfn = \"markets.x\"\n[stages.none]\ninputs = []\n");
    assert!(err.contains("error: stage `both` has both `cmd` and `fn`"), "{err}");
    assert!(err.contains("error: stage `none` has neither `cmd` nor `fn`"), "{err}");
}

#[test]
fn an_unknown_builtin_is_refused() {
    let err = refused("[stages.a]\nfn = \"markets.nope\"\n");
    assert!(err.contains("error: unknown built-in stage `markets.nope`"), "{err}");
}

#[test]
fn a_command_naming_a_missing_param_is_refused() {
    let err = refused("[stages.a]\ncmd = \"echo ${params.windw}\"\nparams = { window = 3 }\n");
    assert!(err.contains("error: `${params.windw}` names no param of stage `a`\n --> pipeline.toml:2:13"), "{err}");
    assert!(err.contains("did you mean `${params.window}`?"), "{err}");
}

#[test]
fn an_invalid_stage_name_is_refused() {
    let err = refused("[stages.\"no spaces\"]\ncmd = \"true\"\n");
    assert!(err.contains("error: invalid stage name `no spaces`"), "{err}");
}

#[test]
fn an_unknown_target_stage_is_a_usage_error() {
    let sb = Sandbox::new().pipeline("[stages.model]\ncmd = \"true\"\n");
    let run = sb.dagrun(&["build", "modle"]).usage_error();
    assert_eq!(run.stderr(), "error: unknown stage `modle`; did you mean `model`?\n");
}

#[test]
fn a_missing_pipeline_file_names_the_file_and_the_ways_out() {
    let sb = Sandbox::new();
    let run = sb.build().usage_error();
    assert_eq!(
        run.stderr(),
        "error: no pipeline file at pipeline.toml\n  = help: run `dagrun init` to write a starter one here, or point at yours with `-C DIR` or `--file PATH`\n"
    );
}

#[test]
fn init_writes_a_starter_that_builds_and_never_overwrites_a_pipeline() {
    let sb = Sandbox::new();
    let run = sb.dagrun(&["init"]).success();
    assert!(run.stdout().contains("wrote pipeline.toml and data/input.txt"), "{}", run.stdout());
    let first = sb.build().success();
    assert!(first.stdout().contains("2 ran, 0 cut off, 0 up to date"), "{}", first.stdout());
    assert_eq!(sb.read("build/summary.txt"), "apple\nbanana\ncherry\n");
    sb.edit("pipeline.toml", |t| t.replace("lines = 3", "lines = 2"));
    let second = sb.build().success();
    assert!(second.stdout().contains("run      summarise  (param `lines` changed: 3 -> 2)"), "{}", second.stdout());

    sb.write("pipeline.toml", "# mine\n");
    let refused = sb.dagrun(&["init"]).usage_error();
    assert!(refused.stderr().contains("pipeline.toml already exists") && refused.stderr().contains("--force"));
    assert_eq!(sb.read("pipeline.toml"), "# mine\n", "left as it was");
    sb.dagrun(&["init", "--force"]).success();
    assert!(sb.read("pipeline.toml").starts_with("# A dagrun pipeline."));
}

#[test]
fn an_output_nested_in_another_is_refused_even_with_a_sibling_between() {
    // `data.csv` sorts between `data` and `data/part.csv`.
    let err = refused(
        r#"
        [stages.a]
        cmd = "true"
        outputs = ["data"]
        [stages.b]
        cmd = "true"
        outputs = ["data.csv"]
        [stages.c]
        cmd = "true"
        outputs = ["data/part.csv"]
        "#,
    );
    assert!(err.contains("error: output `data/part.csv` of stage `c` is inside output `data` of stage `a`"), "{err}");
}

#[test]
fn retries_and_timeouts_beyond_their_limits_are_refused() {
    let err = refused("[stages.a]\ncmd = \"true\"\nretries = 4294967295\ntimeout_sec = 9223372036854775807\n");
    assert!(err.contains("error: `retries` must be at most 10"), "{err}");
    assert!(err.contains("error: `timeout_sec` must be between 1 and 604800 (a week)"), "{err}");
}

#[test]
fn an_output_holding_the_state_database_is_refused() {
    let err = refused("[pipeline]\nstate = \"build/state.db\"\n[stages.a]\ncmd = \"true\"\noutputs = [\"build\"]\n");
    assert!(err.contains("error: output `build` of stage `a` holds the state database `build/state.db`"), "{err}");
}

#[test]
fn a_missing_param_is_pointed_at_even_after_escapes_and_wide_characters() {
    let err = refused("[stages.a]\ncmd = \"printf '\\\\n\\tü' ${params.nope}\"\n");
    assert!(err.contains(" --> pipeline.toml:2:24\n"), "{err}");
    assert!(err.contains(" ^^^^^^^^^^^^^^\n"), "the caret covers `${{params.nope}}`: {err}");
}

#[test]
fn a_glob_reaching_into_the_stages_own_output_directory_is_refused() {
    let err = refused("[stages.a]\ncmd = \"true\"\ninputs = [\"out/*.txt\"]\noutputs = [\"out\"]\n");
    assert!(err.contains("error: stage `a` reads `out/*.txt`, which is its own output `out`"), "{err}");
}
