//! Params files: a stage names the keys it uses, and is fingerprinted on them only.

use crate::sandbox::Sandbox;

const PIPELINE: &str = r#"
[stages.train]
cmd = "echo lr=${params.train.lr} epochs=${params.train.epochs} > ${outputs}"
outputs = ["model.txt"]
params = ["train.lr", "train.epochs"]

[stages.report]
cmd = "echo ${params.title} > ${outputs}"
outputs = ["report.txt"]
params = [{ "report.toml" = ["title"] }]
"#;

const PARAMS: &str = "train:\n  lr: 0.1\n  epochs: 3\nprepare:\n  split: 0.2\n";

#[test]
fn a_stage_runs_again_only_when_a_key_it_names_changes() {
    let sb = Sandbox::new()
        .pipeline(PIPELINE)
        .file("params.yaml", PARAMS)
        .file("report.toml", "title = \"Q4\"\nother = 1\n");
    sb.build().success();
    assert_eq!(sb.read("model.txt"), "lr=0.1 epochs=3\n");
    assert_eq!(sb.read("report.txt"), "Q4\n");

    // Another key of the same files: nothing runs.
    sb.edit("params.yaml", |t| t.replace("split: 0.2", "split: 0.3"));
    sb.edit("report.toml", |t| t.replace("other = 1", "other = 2"));
    let run = sb.build().success();
    assert!(run.stdout().contains("0 ran, 0 cut off, 2 up to date"), "{}", run.stdout());

    // A key it names: it runs, and says which key changed.
    sb.edit("params.yaml", |t| t.replace("lr: 0.1", "lr: 0.2"));
    let why = sb.dagrun(&["why", "train"]).success();
    assert!(why.stdout().contains("param `train.lr` changed: 0.1 -> 0.2"), "{}", why.stdout());
    let run = sb.build().success();
    assert!(run.stdout().contains("1 ran, 0 cut off, 1 up to date"), "{}", run.stdout());
    assert_eq!(sb.read("model.txt"), "lr=0.2 epochs=3\n");
}

#[test]
fn a_missing_params_file_or_key_is_named() {
    let sb = Sandbox::new().pipeline(PIPELINE).file("report.toml", "title = \"Q4\"\n");
    let run = sb.build().usage_error();
    assert!(run.stderr().contains("params file `params.yaml` cannot be read"), "{}", run.stderr());
    sb.write("params.yaml", "train:\n  lr: 0.1\n");
    let run = sb.build().usage_error();
    assert!(run.stderr().contains("params file `params.yaml` has no key `train.epochs`"), "{}", run.stderr());
}

#[test]
fn params_of_the_wrong_shape_say_what_they_may_be() {
    let sb = Sandbox::new().pipeline("[stages.a]\ncmd = \"true\"\nparams = 3\n");
    let run = sb.build().usage_error();
    assert!(run.stderr().contains("`params` must be a table or a list of params-file keys"), "{}", run.stderr());
}
