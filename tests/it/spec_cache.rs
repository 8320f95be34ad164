//! The validated-spec cache (`.dagrun/spec.cache`): a load skips parsing only when nothing
//! the spec was made from changed, checks symbolic links every time, and survives damage.

use crate::sandbox::{Sandbox, abc};

#[test]
fn builds_write_the_spec_cache_and_readers_do_not() {
    let sb = abc();
    sb.dagrun(&["status"]).success();
    assert!(!sb.exists(".dagrun/spec.cache"), "a reader writes nothing");
    sb.build().success();
    assert!(sb.exists(".dagrun/spec.cache"));
}

#[test]
fn a_damaged_spec_cache_is_a_miss() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    sb.write(".dagrun/spec.cache", "not a spec");
    sb.edit("src.txt", |t| t.replace("hello", "world"));
    let run = sb.build().success();
    assert_eq!(sb.ran(), ["a", "b", "c"], "{}", run.stdout());
    assert!(sb.read("c.out").contains("world"));
}

#[test]
fn an_edit_of_anything_the_spec_was_read_from_is_seen_after_a_cached_load() {
    let pipeline = r#"
vars = ["config.yaml"]
[stages.count]
foreach_file = "text/{name}.txt"
cmd = "echo ${greeting} > ${outputs}"
outputs = ["out/${name}.txt"]
"#;
    let sb = Sandbox::new().pipeline(pipeline).file("config.yaml", "greeting: hi\n").file("text/a.txt", "");
    sb.build().success();
    sb.build().success(); // from the cache now
    sb.write("config.yaml", "greeting: hello\n");
    sb.write("text/b.txt", "");
    sb.build().success();
    assert_eq!(sb.read("out/a.txt"), "hello\n");
    assert_eq!(sb.read("out/b.txt"), "hello\n");
}

#[test]
fn a_symbolic_link_made_after_the_spec_was_cached_is_still_refused() {
    let outside = tempfile::tempdir().unwrap();
    let sb = Sandbox::new().pipeline("[stages.a]\ncmd = \"echo a > out/a.txt\"\noutputs = [\"out/a.txt\"]\n");
    sb.build().success();
    sb.build().success();
    std::fs::remove_dir_all(sb.path("out")).unwrap();
    std::os::unix::fs::symlink(outside.path(), sb.path("out")).unwrap();
    std::fs::write(outside.path().join("a.txt"), "precious\n").unwrap();
    let err = sb.build().usage_error().stderr();
    assert!(err.contains("out/a.txt"), "{err}");
    assert!(err.contains("pipeline.toml:"), "the error points at where the output is written: {err}");
    assert_eq!(std::fs::read_to_string(outside.path().join("a.txt")).unwrap(), "precious\n");
}

#[test]
fn a_params_yaml_added_to_a_dvc_project_is_seen_after_a_cached_load() {
    // No params.yaml: `${word}` names no var, and is the shell's (empty).
    let yaml = "stages:\n  greet:\n    cmd: echo ${word} > out.txt\n    outs:\n      - out.txt\n";
    let sb = Sandbox::new().file("dvc.yaml", yaml);
    sb.build().success();
    assert_eq!(sb.read("out.txt"), "\n");
    // The same dvc.yaml, and now a params.yaml, which DVC loads into the vars: the cached
    // translation must not be used.
    sb.write("params.yaml", "word: hello\n");
    sb.build().success();
    assert_eq!(sb.read("out.txt"), "hello\n");
}

/// An entry whose body was damaged into another valid spec (here, another output path) is
/// never believed: its checksum covers every byte after the key.
#[test]
fn a_spec_cache_entry_damaged_into_another_spec_is_a_miss() {
    let sb = abc();
    sb.build().success();
    sb.ran();
    let entry = std::fs::read(sb.path(".dagrun/spec.cache")).unwrap();
    let (real, other) = (b"cat src.txt > a.out".as_slice(), b"cat src.txt > x.out".as_slice());
    let at = entry.windows(real.len()).position(|w| w == real).expect("the command is in the entry");
    let damaged = [&entry[..at], other, &entry[at + real.len()..]].concat();
    std::fs::write(sb.path(".dagrun/spec.cache"), damaged).unwrap();
    sb.edit("src.txt", |t| t.replace("hello", "world"));
    let run = sb.build().success();
    assert_eq!(sb.ran(), ["a", "b", "c"], "{}", run.stdout());
    assert!(sb.read("a.out").contains("world"));
    assert!(!sb.exists("x.out"), "the damaged entry's command never ran");
}
