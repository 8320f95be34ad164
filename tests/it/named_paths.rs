//! Named inputs and outputs (`${inputs.model}`, `${outputs.report}`), and directory outputs
//! written `dir/`, created before their stage runs.

use crate::sandbox::Sandbox;

const PIPELINE: &str = r#"
[stages.report]
cmd = "sh ${inputs.script} ${inputs.words} > ${outputs.summary} && echo plot > ${outputs.plots}/a.txt && echo report >> ran.log"
inputs = { script = "count.sh", words = "text/*.txt" }
outputs = { summary = "summary.txt", plots = "plots/" }
"#;

const COUNT: &str = "for f in \"$@\"; do printf '%s ' \"$f\"; wc -w < \"$f\"; done\n";

#[test]
fn named_paths_stand_for_their_own_files_and_a_directory_output_exists_when_the_stage_starts() {
    let sb = Sandbox::new()
        .pipeline(PIPELINE)
        .file("count.sh", COUNT)
        .file("text/a.txt", "one two\n")
        .file("text/b.txt", "three\n");
    sb.build().success();
    // The script is run, never given to itself: `${inputs.words}` is the glob's matches only.
    assert_eq!(sb.read("summary.txt"), "text/a.txt 2\ntext/b.txt 1\n");
    assert_eq!(sb.read("plots/a.txt"), "plot\n");
    assert_eq!(sb.read("count.sh"), COUNT);
    assert_eq!(sb.ran(), ["report"]);
    sb.build().success();
    assert!(sb.ran().is_empty());
}

#[test]
fn swapping_two_names_reruns_the_stage_and_why_says_so() {
    let pipeline = "[stages.pair]\ncmd = \"cat ${inputs.first} ${inputs.second} > ${outputs}\"\ninputs = { first = \"a\", second = \"b\" }\noutputs = [\"out\"]\n";
    let sb = Sandbox::new().pipeline(pipeline).file("a", "A\n").file("b", "B\n");
    sb.build().success();
    assert_eq!(sb.read("out"), "A\nB\n");
    sb.edit("pipeline.toml", |p| p.replace("first = \"a\", second = \"b\"", "first = \"b\", second = \"a\""));
    let why = sb.dagrun(&["why", "pair"]).success();
    assert!(why.stdout().contains("names of inputs or outputs changed"), "{}", why.stdout());
    sb.build().success();
    assert_eq!(sb.read("out"), "B\nA\n");
}

#[test]
fn a_name_the_stage_lacks_is_an_error_that_suggests_the_nearest() {
    let pipeline = "[stages.train]\ncmd = \"python ${inputs.scrpt} > ${outputs.model}\"\ninputs = { script = \"train.py\" }\noutputs = [\"model.bin\"]\n";
    let sb = Sandbox::new().pipeline(pipeline).file("train.py", "");
    let run = sb.build().usage_error();
    let err = run.stderr();
    assert!(err.contains("`${inputs.scrpt}` names no input of the stage"), "{err}");
    assert!(err.contains("did you mean `${inputs.script}`?"), "{err}");
    assert!(err.contains("`${outputs.model}` names no output of the stage"), "{err}");
    assert!(err.contains("outputs = { model = \"path\" }"), "{err}");
    assert!(!sb.exists("model.bin"));
}
