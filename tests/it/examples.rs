//! The example pipelines a newcomer copies must work as shipped.

use crate::sandbox::Sandbox;

#[test]
fn the_quickstart_example_builds_and_then_has_nothing_to_do() {
    let sb = Sandbox::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart");
    sb.write("pipeline.toml", &std::fs::read_to_string(format!("{example}/pipeline.toml")).unwrap());
    sb.write("text/poem.txt", &std::fs::read_to_string(format!("{example}/text/poem.txt")).unwrap());
    let first = sb.build().success();
    assert!(first.stdout().contains("3 ran, 0 cut off, 0 up to date"), "{}", first.stdout());
    assert_eq!(sb.read("build/report.txt").lines().take(2).collect::<Vec<_>>(), ["Top words:", "      5 the"]);
    let second = sb.build().success();
    assert!(second.stdout().contains("0 ran, 0 cut off, 3 up to date"), "{}", second.stdout());
}
