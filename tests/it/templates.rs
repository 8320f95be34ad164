//! Stage templates: `foreach` over a list or a table and `matrix` over axes, named as DVC
//! names them, ordinary stages everywhere after expansion.

use crate::sandbox::Sandbox;

const PIPELINE: &str = r#"
[stages.prepare]
foreach = ["a", "b"]
cmd = "echo prepared ${item} > ${outputs}"
outputs = ["data/${item}.txt"]

[stages.train]
foreach = { small = { lr = 0.1 }, large = { lr = 0.01 } }
cmd = "echo ${key} lr=${item.lr} > ${outputs}"
outputs = ["models/${key}.txt"]

[stages.evaluate]
matrix = { data = ["a", "b"], model = ["small", "large"] }
cmd = "cat ${inputs} > ${outputs}"
inputs = ["data/${item.data}.txt", "models/${item.model}.txt"]
outputs = ["eval/${item.data}-${item.model}.txt"]
params = { threshold = "${item.model}" }
"#;

#[test]
fn templates_expand_to_named_stages_that_build_and_invalidate_as_one() {
    let sb = Sandbox::new().pipeline(PIPELINE);
    let run = sb.build().success();
    assert!(run.stdout().contains("8 ran, 0 cut off, 0 up to date"), "{}", run.stdout());
    assert_eq!(
        sb.column("SELECT component FROM orchestrator_state ORDER BY component"),
        [
            "evaluate@a-large",
            "evaluate@a-small",
            "evaluate@b-large",
            "evaluate@b-small",
            "prepare@a",
            "prepare@b",
            "train@large",
            "train@small"
        ]
    );
    assert_eq!(sb.read("models/small.txt"), "small lr=0.1\n");
    assert_eq!(sb.read("eval/b-large.txt"), "prepared b\nlarge lr=0.01\n");

    // `invalidate train` means every instance; a pattern picks some.
    let invalidated = sb.dagrun(&["invalidate", "train"]).success();
    assert!(
        invalidated.stdout().contains("train@large") && invalidated.stdout().contains("train@small"),
        "{}",
        invalidated.stdout()
    );
    let rebuilt = sb.build().success();
    assert!(rebuilt.stdout().contains("2 ran, 4 cut off, 2 up to date"), "{}", rebuilt.stdout());
    sb.dagrun(&["invalidate", "evaluate@a-*"]).success();
    let rebuilt = sb.build().success();
    assert!(rebuilt.stdout().contains("2 ran, 0 cut off, 6 up to date"), "{}", rebuilt.stdout());
}

#[test]
fn an_item_in_a_command_is_a_value_never_shell() {
    let sb = Sandbox::new().pipeline(
        "[stages.say]\nforeach = { x = \"$(touch pwned)\" }\ncmd = \"echo ${item} > ${outputs}\"\noutputs = [\"said/${key}.txt\"]\n",
    );
    sb.build().success();
    assert_eq!(sb.read("said/x.txt"), "$(touch pwned)\n");
    assert!(!sb.exists("pwned"), "an item ran as shell");
}

#[test]
fn a_reference_the_item_lacks_is_an_error_at_the_template() {
    let sb =
        Sandbox::new().pipeline("[stages.t]\nforeach = [\"a\"]\ncmd = \"true\"\noutputs = [\"${item.nope}.txt\"]\n");
    let run = sb.build().usage_error();
    assert!(run.stderr().contains("`${item.nope}` names nothing in item `a`"), "{}", run.stderr());
    assert!(run.stderr().contains("pipeline.toml:4:"), "the error points at the template: {}", run.stderr());
}

#[test]
fn a_file_template_makes_a_stage_per_matching_file_named_by_its_wildcards() {
    let pipeline = r#"
[stages.count]
foreach_file = "text/{name}.txt"
cmd = "wc -w < ${item} > ${outputs} && echo ${name} >> ran.log"
outputs = ["counts/${name}.txt"]

[stages.total]
cmd = "cat ${inputs} > ${outputs}"
inputs = ["counts/*.txt"]
outputs = ["total.txt"]
"#;
    let sb = Sandbox::new().pipeline(pipeline).file("text/a.txt", "one two\n").file("text/b.txt", "three\n");
    sb.build().success();
    assert_eq!(sb.ran(), ["a", "b"]);
    assert_eq!(sb.read("counts/a.txt").trim(), "2");
    assert_eq!(
        sb.column("SELECT component FROM orchestrator_state ORDER BY component"),
        ["count@a", "count@b", "total"]
    );

    // A new file is a new stage; the others stay up to date.
    sb.write("text/c.txt", "four five six\n");
    let run = sb.build().success();
    assert_eq!(sb.ran(), ["c"]);
    assert!(run.stdout().contains("2 ran, 0 cut off, 2 up to date"), "{}", run.stdout());
    assert_eq!(sb.read("total.txt").split_whitespace().collect::<Vec<_>>(), ["2", "1", "3"]);

    // Editing one file runs its stage only; `invalidate count` means every instance.
    sb.write("text/b.txt", "three and more\n");
    sb.build().success();
    assert_eq!(sb.ran(), ["b"]);
    sb.dagrun(&["invalidate", "count"]).success();
    sb.build().success();
    assert_eq!(sb.ran(), ["a", "b", "c"]);
}

#[test]
fn a_file_template_pattern_without_a_wildcard_is_refused_at_its_line() {
    let sb = Sandbox::new().pipeline("[stages.count]\nforeach_file = \"text/*.txt\"\ncmd = \"true\"\n");
    let run = sb.build().usage_error();
    assert!(run.stderr().contains("use `{name}` wildcards, not glob characters"), "{}", run.stderr());
    assert!(run.stderr().contains("pipeline.toml:2:"), "{}", run.stderr());
}

const VARS: &str = r#"
vars = ["config.yaml", { out = "models" }]

[stages.train]
cmd = "echo ${model.name} depth=${model.depth} > ${outputs} && echo train >> ran.log"
outputs = ["${out}/${model.name}.txt"]

[stages.evaluate]
foreach = "${splits}"
cmd = "echo ${item} > ${outputs} && echo evaluate@${item} >> ran.log"
outputs = ["eval/${item}.txt"]
"#;

#[test]
fn vars_fill_paths_and_commands_and_only_the_values_used_count() {
    let config = "model:\n  name: tree\n  depth: 3\n  unused: 1\nsplits: [test, val]\n";
    let sb = Sandbox::new().pipeline(VARS).file("config.yaml", config);
    sb.build().success();
    assert_eq!(sb.read("models/tree.txt"), "tree depth=3\n");
    assert_eq!(sb.ran(), ["evaluate@test", "evaluate@val", "train"]);

    // A var no stage uses changes nothing.
    sb.edit("config.yaml", |c| c.replace("unused: 1", "unused: 2"));
    sb.build().success();
    assert!(sb.ran().is_empty());

    // A var the command uses is a param: `why` names it with old and new values.
    sb.edit("config.yaml", |c| c.replace("depth: 3", "depth: 4"));
    let why = sb.dagrun(&["why", "train"]).success();
    assert!(why.stdout().contains("param `model.depth` changed: 3 -> 4"), "{}", why.stdout());
    sb.build().success();
    assert_eq!(sb.ran(), ["train"]);
    assert_eq!(sb.read("models/tree.txt"), "tree depth=4\n");
}

#[test]
fn a_var_given_two_values_or_a_reserved_name_is_refused() {
    let sb = Sandbox::new().pipeline("vars = [\"a.yaml\", { x = { y = 2 } }]\n").file("a.yaml", "x:\n  y: 1\n");
    let run = sb.build().usage_error();
    assert!(run.stderr().contains("var `x.y` is given two different values"), "{}", run.stderr());
    let sb = Sandbox::new().pipeline("[vars]\nitem = 1\n");
    let run = sb.build().usage_error();
    assert!(run.stderr().contains("a var may not be named `item`"), "{}", run.stderr());
}

#[test]
fn after_a_template_name_waits_for_every_instance() {
    let pipeline = r#"
[stages.fetch]
foreach = ["a", "b", "c"]
cmd = "echo ${item} >> fetched.log"

[stages.merge]
cmd = "sort fetched.log > ${outputs}"
outputs = ["merged.txt"]
after = ["fetch"]
"#;
    let sb = Sandbox::new().pipeline(pipeline);
    sb.build().success();
    assert_eq!(sb.read("merged.txt"), "a\nb\nc\n");
    let graph = sb.dagrun(&["graph", "--format", "text"]).success().stdout();
    for instance in ["fetch@a", "fetch@b", "fetch@c"] {
        assert!(graph.contains(instance), "{graph}");
    }
    let order = sb.column("SELECT component FROM stage_runs ORDER BY finished_at, id");
    assert_eq!(order.last().map(String::as_str), Some("merge"), "{order:?}");
}
