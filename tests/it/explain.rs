//! Explaining decisions: `why`, `history`, `graph`, `build -n` waves, `--json` events, `accept`.

use crate::sandbox::{Sandbox, abc};

#[test]
fn why_names_the_changed_file_with_old_and_new_hashes() {
    let sb = abc();
    sb.build().success();
    let old = sb.column("SELECT substr(json_extract(fingerprint_inputs, '$.inputs.\"src.txt\"'), 1, 12) FROM orchestrator_state WHERE component = 'a'")[0].clone();
    sb.write("src.txt", "new content\n");
    let new = blake3::hash(b"new content\n").to_hex()[..12].to_string();
    let why = sb.dagrun(&["why", "a"]).success();
    assert_eq!(why.stdout(), format!("`a` will run because:\n  input `src.txt` changed: {old} -> {new}\n"));
}

#[test]
fn why_names_a_changed_param_with_old_and_new_values() {
    let sb = abc();
    sb.build().success();
    sb.edit("pipeline.toml", |t| t.replace("window = 20", "window = 30"));
    let why = sb.dagrun(&["why", "b"]).success();
    assert_eq!(why.stdout(), "`b` will run because:\n  param `window` changed: 20 -> 30\n");
}

#[test]
fn why_follows_a_dirty_upstream_back_to_the_change() {
    let sb = abc();
    sb.build().success();
    sb.write("src.txt", "changed\n");
    let why = sb.dagrun(&["why", "c"]).success();
    let out = why.stdout();
    assert!(out.starts_with("`c` may run: upstream `b` is dirty, and `c` runs only if its outputs change\n  src.txt changed -> a -> b -> c\n"), "{out}");
    assert!(out.contains("  `a` will run because:\n    input `src.txt` changed: "), "{out}");
    let json: serde_json::Value = serde_json::from_str(&sb.dagrun(&["why", "c", "--json"]).success().stdout()).unwrap();
    assert_eq!(json["stage"]["reason"]["kind"], "upstream_dirty");
    assert_eq!(json["chain"][1]["stage"], "a");
}

#[test]
fn why_names_a_changed_upstream_output_after_a_partial_build() {
    let sb = abc();
    sb.build().success();
    sb.write("src.txt", "changed\n");
    sb.dagrun(&["build", "a"]).success();
    let out = sb.dagrun(&["why", "b"]).success().stdout();
    assert!(out.starts_with("`b` will run because:\n  upstream `a` output changed: "), "{out}");
}

#[test]
fn why_says_when_a_stage_is_up_to_date() {
    let sb = abc();
    sb.build().success();
    let out = sb.dagrun(&["why", "b"]).success().stdout();
    assert!(
        out.starts_with("`b` is up to date: its fingerprint ") && out.contains(" matches its last success at 20"),
        "{out}"
    );
}

#[test]
fn history_lists_what_each_run_did_with_each_stage() {
    let sb = abc();
    sb.build().success();
    sb.dagrun(&["invalidate", "a"]).success();
    sb.build().success();
    let out = sb.dagrun(&["history"]).success().stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("run 2  build  20")
            && lines[0].ends_with("success: 1 ran, 2 cut off, 0 up to date, 0 failed, 0 blocked"),
        "{out}"
    );
    assert!(lines[1].starts_with("  ran          a") && lines[1].ends_with("invalidated"), "{out}");
    assert!(lines[2].starts_with("  cut off      b") && lines[2].ends_with("upstream outputs unchanged"), "{out}");
    assert!(lines[4].starts_with("run 1  build"), "{out}");

    let only_a = sb.dagrun(&["history", "a", "--limit", "5", "--json"]).success();
    let runs: serde_json::Value = serde_json::from_str(&only_a.stdout()).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    assert_eq!(runs[0]["stages"][0]["reason"], "invalidated");
    assert_eq!(runs[1]["stages"][0]["reason"], "never succeeded");

    // A later no-op build: `c` was up to date in it.
    sb.build().success();
    let only_c = sb.dagrun(&["history", "c"]).success().stdout();
    let lines: Vec<&str> = only_c.lines().collect();
    assert!(lines[0].starts_with("run 3  build"), "{only_c}");
    assert!(
        lines[1].starts_with("  up to date   c") && lines[1].ends_with("nothing it depends on changed"),
        "{only_c}"
    );
    assert!(lines[3].starts_with("  cut off      c"), "{only_c}");
    assert!(lines[5].starts_with("  ran          c"), "{only_c}");
}

#[test]
fn history_shows_failures_and_blocked_stages() {
    let sb = Sandbox::new().pipeline(
        "[stages.bad]\ncmd = \"echo boom >&2; exit 2\"\noutputs = [\"x\"]\n[stages.after]\ncmd = \"true\"\ninputs = [\"x\"]\noutputs = [\"y\"]\n",
    );
    sb.build().failure();
    let out = sb.dagrun(&["history"]).success().stdout();
    assert!(out.contains("failed: 0 ran, 0 cut off, 0 up to date, 1 failed, 1 blocked"), "{out}");
    assert!(out.contains("  failed       bad") && out.contains("exit status 2"), "{out}");
    assert!(out.contains("  blocked      after") && out.contains("upstream `bad` failed"), "{out}");
}

#[test]
fn graph_dot_parses_with_graphviz_and_has_an_edge_per_dependency() {
    let sb = crate::sandbox::Sandbox::new().pipeline(
        r#"
        [stages.a]
        cmd = "echo > a"
        outputs = ["a"]
        [stages.b]
        cmd = "echo > b"
        inputs = ["a"]
        outputs = ["b"]
        [stages.c]
        cmd = "echo > c"
        inputs = ["a", "b"]
        outputs = ["c"]
        [stages.d]
        cmd = "echo > d"
        after = ["c"]
        "#,
    );
    sb.dagrun(&["build", "b"]).success();
    let dot = sb.dagrun(&["graph", "--format", "dot"]).success().stdout();
    let graphviz = std::process::Command::new("dot")
        .arg("-Tjson")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let mut graphviz = graphviz.expect("graphviz's `dot` is needed: ./scripts/test.sh installs it");
    std::io::Write::write_all(graphviz.stdin.as_mut().unwrap(), dot.as_bytes()).unwrap();
    let out = graphviz.wait_with_output().unwrap();
    assert!(out.status.success(), "dot rejected:\n{dot}\n{}", String::from_utf8_lossy(&out.stderr));
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = parsed["objects"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    let mut edges: Vec<String> = parsed["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!("{}->{}", names[e["tail"].as_u64().unwrap() as usize], names[e["head"].as_u64().unwrap() as usize])
        })
        .collect();
    edges.sort();
    assert_eq!(edges, ["a->b", "a->c", "b->c", "c->d"]);
    assert!(dot.contains("\"a\" [fillcolor=\"#c8e6c9\"") && dot.contains("\"c\" [fillcolor=\"#eeeeee\""), "{dot}");

    let text = sb.dagrun(&["graph"]).success().stdout();
    assert_eq!(text, "a  [up-to-date]\nb  [up-to-date]  <- a\nc  [never-run]  <- a, b\nd  [never-run]  <- c\n");
    let mermaid = sb.dagrun(&["graph", "--format", "mermaid"]).success().stdout();
    assert!(mermaid.starts_with("graph LR\n  s0[\"a\"]:::up_to_date\n"), "{mermaid}");
    assert!(mermaid.contains("  s0 --> s1\n") && mermaid.contains("  s2 --> s3\n"), "{mermaid}");
}

#[test]
fn a_dry_run_shows_the_parallel_waves() {
    let sb = abc();
    let out = sb.dagrun(&["build", "-n"]).success().stdout();
    assert!(out.contains("wave 1    a\nwave 2    b\nwave 3    c\n"), "{out}");
}

#[test]
fn json_events_parse_and_end_with_the_summary() {
    let sb = abc();
    let run = sb.dagrun(&["build", "--json"]).success();
    let events: Vec<serde_json::Value> = run.stdout().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "build_started",
            "stage_started",
            "stage_finished",
            "stage_started",
            "stage_finished",
            "stage_started",
            "stage_finished",
            "summary"
        ]
    );
    let summary = events.last().unwrap();
    assert_eq!(summary["counts"]["ran"], 3);
    assert_eq!(summary["succeeded"], true);
    assert_eq!(events[1]["reason"]["kind"], "never_succeeded");
}

#[test]
fn quiet_prints_only_the_summary_when_all_goes_well() {
    let sb = abc();
    let run = sb.dagrun(&["build", "--quiet"]).success();
    assert!(run.stdout().starts_with("3 ran, 0 cut off, 0 up to date in "), "{}", run.stdout());
    assert_eq!(run.stdout().lines().count(), 1);
}

#[test]
fn accept_records_existing_outputs_as_up_to_date_without_running() {
    let sb = abc();
    // Outputs made by hand (or by an earlier tool): accept them instead of recomputing.
    sb.write("a.out", "hello\n");
    sb.write("b.out", "hello\n20\n");
    sb.write("c.out", "hello\n20\n");
    let out = sb.dagrun(&["accept", "c", "a", "b"]).success().stdout();
    assert_eq!(out, "accepted a, b, c as up to date with their current inputs and outputs\n");
    assert_eq!(sb.ran(), Vec::<String>::new());
    let build = sb.build().success();
    assert!(build.stdout().contains("0 ran, 0 cut off, 3 up to date"), "{}", build.stdout());
    assert_eq!(
        sb.column("SELECT run_count || ':' || last_status FROM orchestrator_state ORDER BY component"),
        ["0:success", "0:success", "0:success"]
    );
    assert_eq!(sb.column("SELECT DISTINCT status FROM stage_runs"), ["accepted"]);

    sb.write("src.txt", "changed\n");
    let dirty_upstream = sb.dagrun(&["accept", "b"]).failure();
    assert!(
        dirty_upstream.stderr().contains("cannot accept `b`: its upstream `a` is dirty (input `src.txt` changed"),
        "{}",
        dirty_upstream.stderr()
    );

    sb.write("src.txt", "hello\n");
    sb.remove("c.out");
    let refused = sb.dagrun(&["accept", "c"]).failure();
    assert_eq!(refused.stderr(), "error: cannot accept `c`: output `c.out` does not exist; build it instead\n");
}
