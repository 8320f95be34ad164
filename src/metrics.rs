//! Metrics files: what a stage declares with `metrics = ["summary.json"]`, read after it
//! succeeds, flattened as DVC flattens them (`{"eval": {"auc": 0.9}}` is `eval.auc`), and
//! stored with the run beside the built-ins' own metrics.

use std::collections::BTreeMap;
use std::path::Path;

/// The numbers in a JSON, YAML or TOML metrics file, by dotted key (list items by index).
/// Strings and booleans are not metrics and are left out.
pub fn read_metrics_file(path: &Path) -> Result<BTreeMap<String, f64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read metrics file: {e}"))?;
    let kind = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let value: serde_json::Value = match kind.as_deref() {
        Some("json") => serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))?,
        Some("yaml" | "yml") => yaml_serde::from_str(&text).map_err(|e| format!("not valid YAML: {e}"))?,
        Some("toml") => toml::from_str(&text).map_err(|e| format!("not valid TOML: {e}"))?,
        _ => return Err("a metrics file must be .json, .yaml, .yml or .toml".into()),
    };
    let mut metrics = BTreeMap::new();
    flatten("", &value, &mut metrics);
    Ok(metrics)
}

fn flatten(prefix: &str, value: &serde_json::Value, into: &mut BTreeMap<String, f64>) {
    let key = |name: &str| if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
    match value {
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                into.insert(prefix.to_string(), x);
            }
        }
        serde_json::Value::Object(map) => {
            for (name, inner) in map {
                flatten(&key(name), inner, into);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                flatten(&key(&i.to_string()), inner, into);
            }
        }
        _ => {}
    }
}

/// One metric's change between two records of a stage.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricChange {
    pub stage: String,
    pub metric: String,
    pub old: Option<f64>,
    pub new: Option<f64>,
}

/// Every metric that differs between `old` and `new` (stage → metrics), added and removed
/// ones included, sorted by stage and metric.
pub fn diff(
    old: &BTreeMap<String, BTreeMap<String, f64>>,
    new: &BTreeMap<String, BTreeMap<String, f64>>,
) -> Vec<MetricChange> {
    let empty = BTreeMap::new();
    let stages: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut changes = Vec::new();
    for stage in stages {
        let (a, b) = (old.get(stage).unwrap_or(&empty), new.get(stage).unwrap_or(&empty));
        let metrics: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for metric in metrics {
            let (was, is) = (a.get(metric).copied(), b.get(metric).copied());
            if was.map(f64::to_bits) != is.map(f64::to_bits) {
                changes.push(MetricChange { stage: stage.clone(), metric: metric.clone(), old: was, new: is });
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_values_flatten_to_dotted_keys_and_only_numbers_count() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("m.json");
        std::fs::write(
            &json,
            r#"{"auc": 0.91, "eval": {"loss": 0.2, "per_class": [0.5, 0.7]}, "note": "x", "ok": true}"#,
        )
        .unwrap();
        let yaml = dir.path().join("m.yaml");
        std::fs::write(&yaml, "auc: 0.91\neval:\n  loss: 0.2\n  per_class: [0.5, 0.7]\nnote: x\n").unwrap();
        let toml = dir.path().join("m.toml");
        std::fs::write(&toml, "auc = 0.91\nnote = \"x\"\n[eval]\nloss = 0.2\nper_class = [0.5, 0.7]\n").unwrap();
        let expected: BTreeMap<String, f64> =
            [("auc", 0.91), ("eval.loss", 0.2), ("eval.per_class.0", 0.5), ("eval.per_class.1", 0.7)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        for file in [json, yaml, toml] {
            assert_eq!(read_metrics_file(&file).unwrap(), expected, "{}", file.display());
        }
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{").unwrap();
        assert!(read_metrics_file(&bad).unwrap_err().starts_with("not valid JSON"));
    }

    #[test]
    fn a_diff_lists_changed_added_and_removed_metrics() {
        let map = |pairs: &[(&str, &str, f64)]| {
            let mut m: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
            for (stage, metric, v) in pairs {
                m.entry(stage.to_string()).or_default().insert(metric.to_string(), *v);
            }
            m
        };
        let old = map(&[("train", "auc", 0.8), ("train", "loss", 0.3), ("eval", "f1", 0.5)]);
        let new = map(&[("train", "auc", 0.9), ("train", "loss", 0.3), ("train", "acc", 0.7)]);
        let changes: Vec<(String, String, Option<f64>, Option<f64>)> =
            diff(&old, &new).into_iter().map(|c| (c.stage, c.metric, c.old, c.new)).collect();
        assert_eq!(
            changes,
            [
                ("eval".into(), "f1".into(), Some(0.5), None),
                ("train".into(), "acc".into(), None, Some(0.7)),
                ("train".into(), "auc".into(), Some(0.8), Some(0.9)),
            ]
        );
    }
}
