//! The run-cache: outputs kept by content and restored, never run twice for a fingerprint
//! seen before, never restored damaged, shared safely between checkouts.

use std::path::Path;

use dagrun::runcache::{FsStore, Store};

use crate::sandbox::{Run, Sandbox};

/// A model trained into a directory, with a param to switch, and a report reading it.
const PIPELINE: &str = r#"
[stages.train]
cmd = "echo train >> ran.log && mkdir -p model && echo lr=${params.lr} > model/weights.txt && printf 'x%.0s' $(seq 1 5000) > model/big.bin && cp tool.sh model/tool.sh"
inputs = ["tool.sh"]
outputs = ["model"]
params = { lr = 0.1 }

[stages.report]
cmd = "echo report >> ran.log && cat model/weights.txt > report.txt"
inputs = ["model"]
outputs = ["report.txt"]
"#;

fn project() -> Sandbox {
    let sb = Sandbox::new().pipeline(PIPELINE).file("tool.sh", "#!/bin/sh\necho tool\n");
    make_executable(&sb.path("tool.sh"));
    sb
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Every file under a directory, by path, with its bytes and whether it is executable.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>, bool)> {
    use std::os::unix::fs::PermissionsExt;
    let mut files: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let exec = e.metadata().unwrap().permissions().mode() & 0o111 != 0;
            (rel, std::fs::read(e.path()).unwrap(), exec)
        })
        .collect();
    files.sort();
    files
}

/// The project's run-cache entries (key and text) as a build finds them, read through the
/// store itself: they are packed many to a file.
fn cache_entries(sb: &Sandbox) -> Vec<(String, String)> {
    let store = FsStore::open(&sb.path(".dagrun/cache")).unwrap();
    let mut entries: Vec<_> = store
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| {
            let text = String::from_utf8(store.get_entry(&e.key).unwrap()).unwrap();
            (e.key, text)
        })
        .collect();
    entries.sort();
    entries
}

/// Stores `text` as the entry of `key`, newer than any before, as another writer could.
fn write_entries(sb: &Sandbox, entries: &[(String, String)]) {
    let store = FsStore::open(&sb.path(".dagrun/cache")).unwrap();
    for (key, text) in entries {
        store.put_entry(key, text.as_bytes()).unwrap();
    }
}

fn switch_lr(sb: &Sandbox, from: &str, to: &str) {
    sb.edit("pipeline.toml", |p| p.replace(&format!("lr = {from}"), &format!("lr = {to}")));
}

#[test]
fn a_param_switched_away_and_back_is_restored_byte_for_byte_without_running() {
    let sb = project();
    sb.build().success();
    assert_eq!(sb.ran(), ["report", "train"]);
    let original = tree(&sb.path("model"));
    assert!(original.iter().any(|(path, _, exec)| path == "tool.sh" && *exec), "{original:?}");

    switch_lr(&sb, "0.1", "0.2");
    sb.build().success();
    assert_eq!(sb.ran(), ["report", "train"]);
    assert_eq!(sb.read("report.txt"), "lr=0.2\n");

    switch_lr(&sb, "0.2", "0.1");
    let run = sb.dagrun(&["build", "--json"]).success();
    assert!(sb.ran().is_empty(), "no command ran: {}", run.stdout());
    assert_eq!(tree(&sb.path("model")), original, "the directory is back, bytes and modes");
    assert_eq!(sb.read("report.txt"), "lr=0.1\n");
    let events: Vec<serde_json::Value> = run.stdout().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let restored: Vec<&str> =
        events.iter().filter(|e| e["event"] == "stage_restored").map(|e| e["stage"].as_str().unwrap()).collect();
    assert_eq!(restored, ["train", "report"]);
    let summary = events.last().unwrap();
    assert_eq!(summary["counts"]["restored"], 2, "{summary}");
    assert_eq!(summary["counts"]["ran"], 0, "{summary}");

    // Recorded as restores, not runs.
    assert_eq!(
        sb.column("SELECT status FROM stage_runs WHERE run_id = 3 ORDER BY component"),
        ["restored", "restored"]
    );
    assert_eq!(sb.column("SELECT run_count || ' ' || restore_count || ' ' || last_status FROM orchestrator_state WHERE component = 'train'"), ["2 1 restored"]);
    assert_eq!(sb.column("SELECT stages_ran || ' ' || stages_restored FROM runs WHERE run_id = 3"), ["0 2"]);
    let status = sb.dagrun(&["status"]).success().stdout();
    assert!(status.lines().any(|l| l.starts_with("train") && l.contains("restored")), "{status}");
    let history = sb.dagrun(&["history"]).success().stdout();
    assert!(history.contains("restored     train"), "{history}");
    // And it is up to date as if it had run.
    let again = sb.build().success();
    assert!(again.stdout().contains("0 ran, 0 cut off, 2 up to date"), "{}", again.stdout());

    // An edit of a restored file is the workspace's own: the cache keeps its copy.
    sb.write("model/weights.txt", "tampered\n");
    sb.build().success();
    assert_eq!(sb.read("model/weights.txt"), "lr=0.1\n");
}

#[test]
fn a_stage_with_cache_false_always_runs_and_no_cache_neither_restores_nor_stores() {
    let sb = project();
    sb.edit("pipeline.toml", |p| p.replace("params = { lr = 0.1 }", "params = { lr = 0.1 }\ncache = false"));
    sb.build().success();
    switch_lr(&sb, "0.1", "0.2");
    sb.build().success();
    sb.ran();
    switch_lr(&sb, "0.2", "0.1");
    sb.build().success();
    // train runs; report reads what it read before, and is restored.
    assert_eq!(sb.ran(), ["train"]);
    assert_eq!(sb.column("SELECT status FROM stage_runs WHERE run_id = 3 ORDER BY component"), ["restored", "success"]);

    let sb = project();
    sb.dagrun(&["build", "--no-cache"]).success();
    switch_lr(&sb, "0.1", "0.2");
    sb.build().success();
    sb.ran();
    switch_lr(&sb, "0.2", "0.1");
    sb.build().success();
    assert_eq!(sb.ran(), ["report", "train"], "nothing was stored by the --no-cache build");
}

#[test]
fn a_second_checkout_sharing_the_cache_runs_nothing_and_ends_in_the_same_state() {
    let shared = tempfile::tempdir().unwrap();
    let pipeline = format!("[pipeline]\ncache_dir = \"{}\"\n{PIPELINE}", shared.path().display());
    let first = project();
    first.write("pipeline.toml", &pipeline);
    first.build().success();
    assert_eq!(first.ran(), ["report", "train"]);

    // The second checkout points at the cache by the environment variable instead.
    let second = project();
    let run = Run::new(&["build"], second.command(&["build"]).env("DAGRUN_CACHE_DIR", shared.path()).output().unwrap());
    let run = run.success();
    assert!(second.ran().is_empty(), "{}", run.stdout());
    assert!(run.stdout().contains("0 ran, 2 restored"), "{}", run.stdout());
    assert_eq!(tree(&second.path("model")), tree(&first.path("model")));
    assert_eq!(second.read("report.txt"), first.read("report.txt"));
    let state = "SELECT component, fingerprint, output_hash FROM orchestrator_state ORDER BY component";
    let rows = |sb: &Sandbox| -> Vec<String> {
        let db = sb.db();
        let mut stmt = db.prepare(state).unwrap();
        stmt.query_map([], |r| {
            Ok(format!("{} {} {}", r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    assert_eq!(rows(&second), rows(&first), "same fingerprints and output hashes");
}

#[test]
fn damaged_objects_and_entries_are_never_restored() {
    let sb = project();
    sb.build().success();
    switch_lr(&sb, "0.1", "0.2");
    sb.build().success();
    sb.ran();
    // Every stored object damaged (same size, other bytes)...
    for entry in walkdir::WalkDir::new(sb.path(".dagrun/cache/objects")) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let path = entry.path();
            let len = std::fs::metadata(path).unwrap().len() as usize;
            make_executable(path); // objects are read-only
            std::fs::write(path, vec![b'#'; len]).unwrap();
        }
    }
    // ...and every small file kept in an entry rather than as an object (weights.txt,
    // report.txt) given other bytes under the same id, in entries whose own bytes are whole.
    let mut inline_damaged = 0;
    let damaged: Vec<(String, String)> = cache_entries(&sb)
        .into_iter()
        .map(|(key, text)| {
            inline_damaged += text.matches("\"text\": \"lr=0.1").count();
            (key, text.replace("\"text\": \"lr=0.1", "\"text\": \"lr=0.9"))
        })
        .collect();
    write_entries(&sb, &damaged);
    assert_eq!(inline_damaged, 2, "weights.txt and report.txt are kept in their entries");
    switch_lr(&sb, "0.2", "0.1");
    let run = sb.build().success();
    assert_eq!(sb.ran(), ["report", "train"], "{}", run.stdout());
    assert_eq!(sb.read("model/weights.txt"), "lr=0.1\n");
    assert_eq!(sb.read("report.txt"), "lr=0.1\n");
    let log = sb.read(".dagrun/logs/3/train.log");
    assert!(log.contains("not restored"), "{log}");

    // ...and every entry not JSON: a miss, never a failed build.
    let not_json: Vec<(String, String)> =
        cache_entries(&sb).into_iter().map(|(key, _)| (key, "{ not json".into())).collect();
    write_entries(&sb, &not_json);
    switch_lr(&sb, "0.1", "0.2");
    sb.build().success();
    assert_eq!(sb.ran(), ["report", "train"]);
    assert_eq!(sb.read("report.txt"), "lr=0.2\n");
    // The successes stored new entries under their fingerprints, found before the others.
    let entries = cache_entries(&sb);
    for stage in ["report", "train"] {
        let fingerprint =
            &sb.column(&format!("SELECT fingerprint FROM orchestrator_state WHERE component = '{stage}'"))[0];
        let (_, entry) = entries.iter().find(|(key, _)| key == fingerprint).unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(entry).is_ok(), "{stage}: {entry}");
    }

    // ...and every byte of the files holding the entries damaged: misses, never a failed build.
    for entry in std::fs::read_dir(sb.path(".dagrun/cache/packs")).unwrap() {
        let path = entry.unwrap().path();
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        std::fs::write(&path, vec![b'#'; len]).unwrap();
    }
    assert!(cache_entries(&sb).is_empty());
    switch_lr(&sb, "0.2", "0.1");
    sb.build().success();
    assert_eq!(sb.ran(), ["report", "train"]);
    assert_eq!(sb.read("report.txt"), "lr=0.1\n");
}

#[test]
fn concurrent_builds_filling_one_cache_leave_nothing_corrupt() {
    let shared = tempfile::tempdir().unwrap();
    let pipeline = format!("[pipeline]\ncache_dir = \"{}\"\n{PIPELINE}", shared.path().display());
    let checkouts: Vec<Sandbox> = (0..3).map(|_| project()).collect();
    for sb in &checkouts {
        sb.write("pipeline.toml", &pipeline);
    }
    // Two builds at once write the same entries and objects.
    let mut children: Vec<_> = checkouts[..2].iter().map(|sb| sb.spawn(&["build", "-j", "2"])).collect();
    for child in &mut children {
        assert!(child.wait().unwrap().success());
    }
    // Every object's bytes hash to its name, and no temporary file is left.
    for entry in walkdir::WalkDir::new(shared.path().join("objects")) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let name = format!(
                "{}{}",
                entry.path().parent().unwrap().file_name().unwrap().to_string_lossy(),
                entry.file_name().to_string_lossy()
            );
            assert_eq!(blake3::hash(&std::fs::read(entry.path()).unwrap()).to_hex().as_str(), name);
        }
    }
    assert_eq!(std::fs::read_dir(shared.path().join("tmp")).unwrap().count(), 0);
    // Each build's entries went to its own log, sealed into a pack when it ended (a build
    // that started after the other ended restored everything and wrote nothing).
    let packs: Vec<String> = std::fs::read_dir(shared.path().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let sealed = (1..=2).contains(&packs.len()) && packs.iter().all(|name| name.ends_with(".pack"));
    assert!(sealed, "{packs:?}");
    // A third checkout restores everything from it, right.
    let run = checkouts[2].build().success();
    assert!(run.stdout().contains("0 ran, 2 restored"), "{}", run.stdout());
    assert_eq!(tree(&checkouts[2].path("model")), tree(&checkouts[0].path("model")));
}

#[test]
fn gc_keeps_what_the_records_reference_and_frees_the_rest() {
    let sb = project();
    sb.build().success();
    for (from, to) in [("0.1", "0.2"), ("0.2", "0.3")] {
        switch_lr(&sb, from, to);
        sb.build().success();
    }
    sb.ran();
    let entries = || cache_entries(&sb).len();
    assert_eq!(entries(), 6);
    let dry = sb.dagrun(&["gc", "--dry-run"]).success().stdout();
    assert!(dry.contains("would remove 4 entries"), "{dry}");
    assert_eq!(entries(), 6, "a dry run removes nothing");
    let keep = sb.dagrun(&["gc", "--keep-last", "1"]).success().stdout();
    assert!(keep.contains("removed 2 entries"), "{keep}");
    assert_eq!(entries(), 4);
    let all = sb.dagrun(&["gc"]).success().stdout();
    assert!(all.contains("removed 2 entries"), "{all}");
    assert_eq!(entries(), 2);
    // What is kept still restores: the current outputs, deleted, come back without a run.
    std::fs::remove_dir_all(sb.path("model")).unwrap();
    sb.build().success();
    assert!(sb.ran().is_empty());
    assert_eq!(sb.read("model/weights.txt"), "lr=0.3\n");
    // And what was freed runs again.
    switch_lr(&sb, "0.3", "0.1");
    sb.build().success();
    assert_eq!(sb.ran(), ["report", "train"]);
    let status: serde_json::Value = serde_json::from_str(&sb.dagrun(&["status", "--json"]).success().stdout()).unwrap();
    assert!(status["run_cache"]["size_bytes"].as_u64().unwrap() > 2000, "{status}");
}

#[test]
fn a_cache_dir_inside_an_output_is_refused_before_anything_runs() {
    let sb = project();
    sb.edit("pipeline.toml", |p| format!("[pipeline]\ncache_dir = \"model/cache\"\n{p}"));
    let run = sb.build().usage_error();
    assert!(run.stderr().contains("`cache_dir` is inside output `model` of stage `train`"), "{}", run.stderr());
    assert!(sb.ran().is_empty());
}

#[test]
fn a_cache_dir_from_the_environment_inside_an_output_is_not_used() {
    let sb = project();
    let run = Run::new(&["build"], sb.command(&["build"]).env("DAGRUN_CACHE_DIR", "model/cache").output().unwrap());
    let run = run.success();
    assert!(run.stderr().contains("the run-cache at"), "{}", run.stderr());
    assert!(run.stderr().contains("inside output `model`"), "{}", run.stderr());
    assert!(!sb.exists("model/cache"), "nothing was stored there");
    assert_eq!(sb.ran(), ["report", "train"]);
}

/// A restore writes what a clean build writes, down to each file's permission bits; a
/// directory output holding an empty directory (which a restore could not bring back, and
/// the outputs' hash would not miss) is not stored at all: the stage runs.
#[test]
fn a_restore_keeps_permissions_and_never_drops_an_empty_directory() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new().pipeline(
        r#"
[stages.secret]
cmd = "echo secret >> ran.log && echo ${params.lr} > key.txt && chmod 600 key.txt"
outputs = ["key.txt"]
params = { lr = 0.1 }

[stages.tree]
cmd = "echo tree >> ran.log && mkdir -p out/empty && echo ${params.lr} > out/file.txt"
outputs = ["out"]
params = { lr = 0.1 }
"#,
    );
    sb.build().success();
    assert_eq!(sb.ran(), ["secret", "tree"]);
    switch_lr(&sb, "0.1", "0.2");
    sb.build().success();
    assert_eq!(sb.ran(), ["secret", "tree"]);
    switch_lr(&sb, "0.2", "0.1");
    let back = sb.build().success();
    assert_eq!(sb.ran(), ["tree"], "secret is restored; tree, with its empty directory, runs: {}", back.stdout());
    let mode = std::fs::metadata(sb.path("key.txt")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "restored with the mode the stage gave it");
    assert!(sb.path("out/empty").is_dir());
}

#[test]
fn a_killed_build_s_stored_outputs_serve_the_next_build_and_gc_packs_them() {
    // `first` is stored before `hang` starts; the build is killed while `hang` waits.
    let sb = Sandbox::new().pipeline(
        r#"
[stages.first]
cmd = "echo first >> ran.log && echo one > first.out"
outputs = ["first.out"]

[stages.hang]
cmd = "echo hang >> ran.log && if [ ! -e hung ]; then touch hung && sleep 120; fi && echo two > hang.out"
outputs = ["hang.out"]
after = ["first"]
"#,
    );
    let mut child = sb.spawn(&["build", "-j", "1"]);
    crate::sandbox::wait_until("`hang` to start", || sb.exists("hung"));
    child.kill().unwrap();
    child.wait().unwrap();
    let packs = sb.path(".dagrun/cache/packs");
    let names = || -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(&packs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    let unsealed = names();
    assert!(unsealed.len() == 1 && unsealed[0].ends_with(".log"), "the killed build's log, never sealed: {unsealed:?}");
    sb.remove("first.out");
    let run = sb.build().success();
    assert!(run.stdout().contains("1 ran, 1 restored"), "{}", run.stdout());
    assert_eq!(sb.ran(), ["first", "hang", "hang"], "`first` came back from the killed build's log");
    assert_eq!(sb.read("first.out"), "one\n");
    // `gc` folds a dead build's log into its pack once it is a minute old.
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let log = packs.join(&unsealed[0]);
    std::fs::File::options().write(true).open(&log).unwrap().set_modified(an_hour_ago).unwrap();
    sb.dagrun(&["gc"]).success();
    let after = names();
    assert!(after.len() == 1 && after[0].ends_with(".pack"), "one pack holds everything: {after:?}");
    sb.remove("first.out");
    sb.remove("hang.out");
    let run = sb.build().success();
    assert!(run.stdout().contains("0 ran, 2 restored"), "{}", run.stdout());
}
