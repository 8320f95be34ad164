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
