//! Fuzzing the pipeline.toml parser and validator with proptest: for any input, parsing
//! either succeeds (and the graph builds or reports a cycle) or returns a typed error that
//! renders; it never panics. `DAGRUN_FUZZ_CASES=N` runs N cases per property (default 2000).

use std::path::Path;

use dagrun::graph::Dag;
use dagrun::spec::parse_spec;
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    let cases = std::env::var("DAGRUN_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Parses as the binary would, with two built-ins known; panics only on a dagrun bug.
fn check(text: String) {
    match parse_spec(Path::new("pipeline.toml"), Path::new("/work/p"), text, &["markets.ticks", "markets.model"]) {
        Ok(spec) => match Dag::build(&spec) {
            Ok(dag) => assert_eq!(dag.topo_order().len(), spec.stages.len()),
            Err(cycle) => assert!(cycle.path.len() >= 2 && cycle.path.first() == cycle.path.last(), "{cycle}"),
        },
        Err(err) => {
            assert!(!err.diagnostics.is_empty());
            let shown = err.to_string();
            assert!(shown.starts_with("error: ") && shown.contains("pipeline.toml"), "{shown}");
        }
    }
}

fn value() -> impl Strategy<Value = String> {
    let word = "[a-z_./*?\\[\\]${}'\";-]{0,12}";
    let leaf = prop_oneof![
        word.prop_map(|s| format!("{s:?}")),
        Just("\"../escape\"".to_string()),
        Just("\"/abs/path\"".to_string()),
        Just("\".dagrun/state.db\"".to_string()),
        Just("\"echo ${params.x} ${inputs} ${outputs}\"".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() { format!("{f:?}") } else { "nan".to_string() }),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(", "))),
            proptest::collection::vec(("[a-z]{1,4}", inner), 0..3).prop_map(|kv| format!(
                "{{ {} }}",
                kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ")
            )),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("cmd"),
        Just("fn"),
        Just("inputs"),
        Just("outputs"),
        Just("after"),
        Just("params"),
        Just("env"),
        Just("retries"),
        Just("timeout_sec"),
        Just("resources"),
        Just("cmdd"),
        Just("input"),
    ]
    .prop_map(str::to_string)
}

fn stage_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a"),
        Just("b"),
        Just("c"),
        Just("features"),
        Just("\"with space\""),
        Just("\".hidden\""),
        Just("\"\"")
    ]
    .prop_map(str::to_string)
}

/// Pipeline files made of plausible parts: known and unknown keys, hostile values.
fn pipeline_file() -> impl Strategy<Value = String> {
    let stage = (stage_name(), proptest::collection::vec((key(), value()), 0..6));
    let header = proptest::option::of(proptest::collection::vec(
        (prop_oneof![Just("name"), Just("state"), Just("jobs"), Just("allow_outside_paths"), Just("jbos")], value()),
        0..3,
    ));
    (header, proptest::collection::vec(stage, 0..5)).prop_map(|(header, stages)| {
        let mut text = String::new();
        if let Some(entries) = header {
            text.push_str("[pipeline]\n");
            for (k, v) in entries {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        for (name, entries) in stages {
            text.push_str(&format!("[stages.{name}]\n"));
            for (k, v) in entries {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn any_text_is_parsed_or_refused_without_panicking(text in "[ -~\\n\\tü]{0,300}") {
        check(text);
    }

    #[test]
    fn any_pipeline_shaped_file_is_validated_or_refused_without_panicking(text in pipeline_file()) {
        check(text);
    }
}
