//! A DVC project run as it is, with DVC itself as the oracle: on the same project,
//! `dvc repro` and `dagrun build` write byte-identical outputs and re-run the same stages
//! after the same edit. DVC comes from the venv `scripts/test.sh` installs
//! (`target/test-venv`), or `DAGRUN_TEST_DVC`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sandbox::Sandbox;

const DVC_YAML: &str = r#"
vars:
  - report: report.txt
stages:
  prepare:
    foreach: ${datasets}
    do:
      cmd: sh src/prepare.sh data/${item}.csv prepared/${item}.txt ${prepare.scale}
      deps:
        - src/prepare.sh
        - data/${item}.csv
      params:
        - prepare.scale
      outs:
        - prepared/${item}.txt
  train:
    cmd:
      - mkdir -p model
      - cat prepared/a.txt prepared/b.txt | awk -v lr=${train.lr} '{ s += $1 } END { print s * lr }' > model/weights.txt
      - echo ${train.decay} > model/decay.txt
      - echo train >> ran.log
    deps:
      - prepared/a.txt
      - prepared/b.txt
    params:
      - train.lr
    outs:
      - model
  evaluate:
    matrix:
      split: [a, b]
    cmd: >-
      mkdir -p eval &&
      awk -v w="$(cat model/weights.txt)" '{ e += ($1 - w) ^ 2 } END { printf "{\"mse\": %.4f}\n", e / NR }'
      prepared/${item.split}.txt > eval/${item.split}.json &&
      echo evaluate@${item.split} >> ran.log
    deps:
      - model
      - prepared/${item.split}.txt
    metrics:
      - eval/${item.split}.json:
          cache: false
  report:
    wdir: eval
    cmd: cat a.json b.json > ../${report} && echo report >> ../ran.log
    deps:
      - a.json
      - b.json
    params:
      - ../params.yaml:
          - report_title
    outs:
      - ../${report}
"#;

const PARAMS: &str = "prepare:\n  scale: 10\ntrain:\n  lr: 0.5\n  epochs: 3\n  decay: 1.0e-5\nreport_title: Errors\nunused: 1\ndatasets: [a, b]\n";

const PREPARE: &str = r#"# prepare.sh IN OUT SCALE: each value of IN (after its header) times SCALE
mkdir -p "$(dirname "$2")"
awk -v s="$3" 'NR > 1 { print $1 * s }' "$1" > "$2"
echo "prepare@$(basename "$1" .csv)" >> ran.log
"#;

/// The dvc executable, or a panic that says how to get it: this test never passes without it.
fn dvc() -> PathBuf {
    let path = std::env::var_os("DAGRUN_TEST_DVC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/dvc"));
    if !path.is_file() {
        panic!(
            "this test needs DVC at {}: run ./scripts/test.sh, which installs it in a venv, or set DAGRUN_TEST_DVC",
            path.display()
        );
    }
    path
}

/// One project, twice: a DVC repository and a dagrun sandbox.
struct Twins {
    dvc: tempfile::TempDir,
    dagrun: Sandbox,
}

impl Twins {
    fn new() -> Twins {
        let twins =
            Twins { dvc: tempfile::Builder::new().prefix("dagrun-dvc-").tempdir().unwrap(), dagrun: Sandbox::new() };
        let files = [
            ("dvc.yaml", DVC_YAML),
            ("params.yaml", PARAMS),
            ("src/prepare.sh", PREPARE),
            ("data/a.csv", "x\n1\n2\n3\n"),
            ("data/b.csv", "x\n4\n5\n"),
        ];
        for (rel, content) in files {
            twins.write(rel, content);
        }
        twins.run_dvc(&["init", "--no-scm", "-q"]);
        twins
    }

    fn write(&self, rel: &str, content: &str) {
        let path = self.dvc.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self.dagrun.write(rel, content);
    }

    fn edit(&self, rel: &str, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.dvc.path().join(rel)).unwrap();
        assert!(text.contains(from), "{rel} has no {from:?}");
        self.write(rel, &text.replace(from, to));
    }

    fn run_dvc(&self, args: &[&str]) -> String {
        let out = Command::new(dvc())
            .args(args)
            .current_dir(self.dvc.path())
            .env("DVC_NO_ANALYTICS", "1")
            .env("SHELL", "/bin/sh") // DVC runs commands with $SHELL; dagrun with sh.
            .output()
            .expect("run dvc");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "dvc {args:?} failed:\n{text}");
        text
    }

    /// Both tools bring the project up to date; the stages each ran, sorted.
    fn build_both(&self) -> (Vec<String>, Vec<String>) {
        self.run_dvc(&["repro"]);
        let dvc_ran = ran(&self.dvc.path().join("ran.log"));
        self.dagrun.build().success();
        (dvc_ran, self.dagrun.ran())
    }
}

fn ran(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    let mut names: Vec<String> = text.lines().map(str::to_string).collect();
    names.sort();
    names
}

/// Every file of a project that a stage wrote or a user wrote, by path: neither tool's
/// own files (`.dvc/`, `dvc.lock`, `.dvcignore`, `.dagrun/`) nor the log of runs.
fn project_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if [".dvc", "dvc.lock", ".dvcignore", ".dagrun", "ran.log"].contains(&rel.as_str()) {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

#[test]
fn dvc_and_dagrun_write_the_same_outputs_and_rerun_the_same_stages() {
    let twins = Twins::new();
    let (dvc_ran, dagrun_ran) = twins.build_both();
    assert_eq!(dvc_ran, ["evaluate@a", "evaluate@b", "prepare@a", "prepare@b", "report", "train"]);
    assert_eq!(dagrun_ran, dvc_ran);
    let outputs = project_files(twins.dvc.path());
    assert!(outputs.contains_key("report.txt") && outputs.contains_key("model/weights.txt"), "{:?}", outputs.keys());
    assert_eq!(project_files(twins.dagrun.root()), outputs, "the outputs differ from DVC's");

    // Nothing changed: neither runs anything.
    assert_eq!(twins.build_both(), (vec![], vec![]));

    // A params key no stage declares: a no-op for both.
    twins.edit("params.yaml", "unused: 1", "unused: 2");
    assert_eq!(twins.build_both(), (vec![], vec![]));

    // A declared key: the stage and what its new output reaches.
    twins.edit("params.yaml", "lr: 0.5", "lr: 0.25");
    let (dvc_ran, dagrun_ran) = twins.build_both();
    assert_eq!(dvc_ran, ["evaluate@a", "evaluate@b", "report", "train"]);
    assert_eq!(dagrun_ran, dvc_ran);

    // A value the command uses but `params` does not list: DVC tracks it, and so does dagrun
    // (as a param of the stage). Floats reach the command as Python writes them (`2e-05`).
    twins.edit("params.yaml", "decay: 1.0e-5", "decay: 2.0e-5");
    let (dvc_ran, dagrun_ran) = twins.build_both();
    assert_eq!(dvc_ran, ["evaluate@a", "evaluate@b", "train"]);
    assert_eq!(dagrun_ran, dvc_ran);
    assert_eq!(twins.dagrun.read("model/decay.txt"), "2e-05\n");

    // A data edit that leaves the prepared file the same (the header): both cut off there.
    twins.edit("data/a.csv", "x\n", "value\n");
    let (dvc_ran, dagrun_ran) = twins.build_both();
    assert_eq!(dvc_ran, ["prepare@a"]);
    assert_eq!(dagrun_ran, dvc_ran);

    // A data edit that changes one dataset: its branch and the shared stages.
    twins.edit("data/b.csv", "5\n", "6\n");
    let (dvc_ran, dagrun_ran) = twins.build_both();
    assert_eq!(dvc_ran, ["evaluate@a", "evaluate@b", "prepare@b", "report", "train"]);
    assert_eq!(dagrun_ran, dvc_ran);

    // A key of another params file (`report_title`, declared with a path relative to wdir).
    twins.edit("params.yaml", "report_title: Errors", "report_title: Squared errors");
    let (dvc_ran, dagrun_ran) = twins.build_both();
    assert_eq!(dvc_ran, ["report"]);
    assert_eq!(dagrun_ran, dvc_ran);

    assert_eq!(project_files(twins.dagrun.root()), project_files(twins.dvc.path()), "the outputs differ from DVC's");
}

#[test]
fn a_dvc_project_runs_without_a_pipeline_toml_and_import_prints_one_that_builds_the_same() {
    let sb = Sandbox::new()
        .file("dvc.yaml", DVC_YAML)
        .file("params.yaml", PARAMS)
        .file("src/prepare.sh", PREPARE)
        .file("data/a.csv", "x\n1\n")
        .file("data/b.csv", "x\n2\n");
    // No pipeline.toml: `dagrun status` reads dvc.yaml.
    let status = sb.dagrun(&["status"]).success();
    assert!(status.stdout().contains("prepare@a") && status.stdout().contains("evaluate@b"), "{}", status.stdout());

    let imported = sb.dagrun(&["import", "dvc.yaml"]).success().stdout();
    assert!(imported.contains("foreach = \"${datasets}\""), "{imported}");
    assert!(imported.contains("[stages.evaluate.matrix]"), "{imported}");
    assert!(imported.contains("params = [\"prepare.scale\"]"), "{imported}");
    sb.write("pipeline.toml", &imported);
    sb.build().success();
    assert_eq!(sb.ran(), ["evaluate@a", "evaluate@b", "prepare@a", "prepare@b", "report", "train"]);
    // weights = (10 + 20) * 0.5 = 15; each split is 5 away from it.
    assert_eq!(sb.read("report.txt"), "{\"mse\": 25.0000}\n{\"mse\": 25.0000}\n");
    // The metrics files are read as metrics.
    let metrics = sb.dagrun(&["metrics"]).success().stdout();
    assert!(metrics.contains("evaluate@a") && metrics.contains("mse"), "{metrics}");
}

#[test]
fn what_dagrun_cannot_honour_in_a_dvc_yaml_is_refused_by_name() {
    let yaml = "stages:\n  train:\n    cmd: python train.py\n    frozen: true\n    outs:\n      - ckpt:\n          persist: true\n    checkpoints: 3\n";
    let sb = Sandbox::new().file("dvc.yaml", yaml);
    let run = sb.dagrun(&["build"]).usage_error();
    let err = run.stderr();
    assert!(err.contains("stage `train`: `frozen` is not supported"), "{err}");
    assert!(err.contains("`persist: true` on `ckpt` is not supported"), "{err}");
    assert!(err.contains("stage `train`: key `checkpoints` is not supported"), "{err}");
    assert!(err.contains("--> dvc.yaml"), "{err}");
    assert!(!sb.exists(".dagrun/pipelines/dvc.yaml/state.db"), "nothing is recorded for a refused file");
}

#[test]
fn matrix_axes_from_params_and_params_keys_named_like_dagruns_own_references() {
    // `inputs` and `item` are keys of this params.yaml: DVC loads it as vars, where dagrun
    // leaves them out (no `${...}` could reach them); `${inputs.x}` stays dagrun's own.
    let yaml = "stages:\n  fit:\n    matrix:\n      model: ${models}\n      seed: [1, 2]\n    cmd: echo ${item.model} ${item.seed} ${lr} > fits/${item.model}-${item.seed}.txt\n    outs:\n      - fits/${item.model}-${item.seed}.txt\n";
    let params = "models: [tree, linear]\nlr: 0.5\ninputs: [a]\nitem: 3\n";
    let sb = Sandbox::new().file("dvc.yaml", yaml).file("params.yaml", params);
    sb.build().success();
    assert_eq!(sb.read("fits/linear-2.txt"), "linear 2 0.5\n");
    assert!(
        sb.exists(".dagrun/pipelines/dvc.yaml/state.db") && !sb.exists(".dagrun/state.db"),
        "a dvc.yaml keeps its own state"
    );
    let status = sb.dagrun(&["status"]).success().stdout();
    for stage in ["fit@linear-1", "fit@linear-2", "fit@tree-1", "fit@tree-2"] {
        assert!(status.contains(stage), "{status}");
    }
}
