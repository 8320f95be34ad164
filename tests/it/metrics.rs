//! Metrics files on any stage, `dagrun metrics` and `dagrun metrics diff`.

use crate::sandbox::Sandbox;

/// `train` writes JSON, `evaluate` YAML; both numbers come from `params`.
const PIPELINE: &str = r#"
[stages.train]
cmd = "echo '{\"auc\": ${params.auc}, \"loss\": {\"train\": 0.25}, \"note\": \"x\"}' > ${outputs}"
outputs = ["train.json"]
metrics = ["train.json"]
params = { auc = 0.75 }

[stages.evaluate]
cmd = "printf 'f1: 0.5\nper_class: [0.25, 0.75]\n' > eval.yaml; cat ${inputs} > copy.json"
inputs = ["train.json"]
outputs = ["eval.yaml", "copy.json"]
metrics = ["eval.yaml"]
"#;

#[test]
fn metrics_files_of_shell_stages_are_recorded_flattened_and_diffed() {
    let sb = Sandbox::new().pipeline(PIPELINE);
    let run = sb.build().success();
    assert!(
        run.stdout().contains("done     train") && run.stdout().contains("[auc 0.7500, loss.train 0.2500]"),
        "{}",
        run.stdout()
    );
    assert_eq!(
        sb.column("SELECT metrics FROM stage_runs WHERE component = 'evaluate'"),
        [r#"{"f1":0.5,"per_class.0":0.25,"per_class.1":0.75}"#]
    );
    let shown = sb.dagrun(&["metrics"]).success();
    assert_eq!(
        shown.stdout(),
        "STAGE     METRIC       VALUE  RUN\n\
         evaluate  f1           0.5    1\n\
         evaluate  per_class.0  0.25   1\n\
         evaluate  per_class.1  0.75   1\n\
         train     auc          0.75   1\n\
         train     loss.train   0.25   1\n"
    );
    // With one record per stage there is nothing before: every metric is new.
    let first = sb.dagrun(&["metrics", "diff"]).success();
    assert!(first.stdout().contains("train     auc          -    0.75  -"), "{}", first.stdout());

    sb.edit("pipeline.toml", |t| t.replace("auc = 0.75", "auc = 0.875"));
    sb.build().success();
    let changed = sb.dagrun(&["metrics", "diff"]).success();
    assert_eq!(changed.stdout(), "STAGE  METRIC  OLD   NEW    CHANGE\ntrain  auc     0.75  0.875  +0.125\n");
    assert_eq!(sb.dagrun(&["metrics", "diff", "1", "2"]).success().stdout(), changed.stdout());
    let json: serde_json::Value =
        serde_json::from_str(&sb.dagrun(&["metrics", "diff", "1", "--json"]).success().stdout()).unwrap();
    assert_eq!(json, serde_json::json!([{"stage": "train", "metric": "auc", "old": 0.75, "new": 0.875}]));
}

#[test]
fn a_metrics_file_must_be_an_output_and_readable() {
    let sb = Sandbox::new()
        .pipeline("[stages.a]\ncmd = \"echo 1 > out.txt\"\noutputs = [\"out.txt\"]\nmetrics = [\"m.json\"]\n");
    let run = sb.build().usage_error();
    assert!(run.stderr().contains("metrics file `m.json` is not among the stage's outputs"), "{}", run.stderr());

    let sb = Sandbox::new()
        .pipeline("[stages.a]\ncmd = \"echo '{' > m.json\"\noutputs = [\"m.json\"]\nmetrics = [\"m.json\"]\n");
    let run = sb.build().failure();
    assert!(run.stdout().contains("metrics file `m.json`: not valid JSON"), "{}", run.stdout());
    assert_eq!(sb.column("SELECT last_status FROM orchestrator_state WHERE component = 'a'"), ["failed"]);
}
