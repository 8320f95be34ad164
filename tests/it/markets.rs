//! The market pipeline (the main job) through the real binary: end to end, deterministic,
//! early cutoff, real CSV exports, and malformed ones.

use crate::sandbox::Sandbox;

const STAGES: [&str; 8] = ["backtest", "baseline", "features", "inference", "markets", "model", "publish", "ticks"];

/// The repository's own pipeline.toml, scaled down for a debug binary.
fn small_market_pipeline() -> Sandbox {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipeline.toml")).unwrap();
    let text =
        text.replace("n_markets = 12", "n_markets = 3").replace("ticks_per_market = 20000", "ticks_per_market = 3000");
    assert!(text.contains("n_markets = 3") && text.contains("ticks_per_market = 3000"), "pipeline.toml params moved");
    Sandbox::new().pipeline(&text)
}

pub fn completed(sb: &Sandbox) -> Vec<String> {
    sb.column("SELECT component FROM orchestrator_state WHERE last_status = 'success' ORDER BY component")
}

#[test]
fn the_market_pipeline_runs_end_to_end_and_a_second_build_runs_nothing() {
    let sb = small_market_pipeline();
    let run = sb.dagrun(&["build", "-j", "2"]).success();
    assert!(run.stdout().contains("8 ran, 0 cut off, 0 up to date"), "{}", run.stdout());
    assert_eq!(completed(&sb), STAGES);
    let report: serde_json::Value = serde_json::from_str(&sb.read("artifacts/report.json")).unwrap();
    assert_eq!(report["model"]["markets"], 3);
    assert_eq!(report["model"]["ticks"], 9000);
    for period in ["in_sample", "validation", "test"] {
        for key in ["accuracy", "log_loss", "auc"] {
            assert!(report["model"][period][key].as_f64().unwrap().is_finite(), "{period} {key}");
        }
    }
    for key in ["pnl", "gross_pnl", "sharpe", "max_drawdown", "hit_rate", "turnover", "exposure"] {
        assert!(report["strategy"]["test"][key].as_f64().unwrap().is_finite(), "model strategy {key}");
        assert!(report["strategy"]["benchmark"][key].as_f64().unwrap().is_finite(), "benchmark {key}");
        assert!(report["baseline"]["test"][key].as_f64().unwrap().is_finite(), "baseline {key}");
    }
    let md = sb.read("artifacts/report.md");
    for section in ["## Model", "| test |", "| model |", "| momentum baseline |", "| long every market, equal weight |"]
    {
        assert!(md.contains(section), "report.md lacks {section}:\n{md}");
    }
    report_holds_the_numbers_of_report_json(&md, &report);
    let png = std::fs::read(sb.path("artifacts/equity.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
    let (width, height) =
        (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert_eq!((width, height), (1000, 560));
    let svg = sb.read("artifacts/equity.svg");
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline") && svg.contains("momentum baseline"),
        "{}",
        &svg[..200]
    );

    let auc = sb.column("SELECT json_extract(metrics, '$.auc') FROM stage_runs WHERE component = 'model'");
    assert_eq!(auc, [report["model"]["test"]["auc"].as_f64().unwrap().to_string()], "the model's metrics are in SQL");
    assert!(run.stdout().contains("done     model") && run.stdout().contains("[accuracy "), "{}", run.stdout());

    let again = sb.build().success();
    assert!(again.stdout().contains("0 ran, 0 cut off, 8 up to date"), "{}", again.stdout());
}

/// Every section of report.md is there, with the numbers report.json holds.
fn report_holds_the_numbers_of_report_json(md: &str, report: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    assert!(md.contains("**Synthetic data**, generated from seed 42"), "{md}");
    for period in ["in_sample", "validation", "test"] {
        let s = &report["model"][period];
        let row = format!(
            "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} |",
            period.replace('_', "-"),
            s["rows"],
            f(&s["accuracy"]),
            f(&s["log_loss"]),
            f(&s["auc"]),
            f(&s["base_rate"])
        );
        assert!(md.contains(&row), "report.md lacks {row}:\n{md}");
    }
    for c in report["model"]["coefficients"].as_array().unwrap() {
        let row =
            format!("| {} | {:+.4} | {:+.4} |", c["feature"].as_str().unwrap(), f(&c["coef"]), f(&c["down_coef"]));
        assert!(md.contains(&row), "report.md lacks {row}");
    }
    let threshold = f(&report["strategy"]["threshold"]);
    assert!(md.contains(&format!("Model threshold: {threshold} (tuned on the validation period by net PnL).")), "{md}");
    assert!(md.contains(&format!("| {threshold} (chosen) |")), "the sensitivity table marks the choice");
    // Every cell of the three strategies' rows, as report.json holds them.
    let pct = |v: &serde_json::Value| format!("{:+.2}%", f(v) * 100.0);
    let share = |v: &serde_json::Value, places: usize| format!("{:.*}%", places, f(v) * 100.0);
    let holding = |h: f64| if h < 1.0 { format!("{:.0} min", h * 60.0) } else { format!("{h:.1} h") };
    for (name, b) in [
        ("model", &report["strategy"]["test"]),
        ("momentum baseline", &report["baseline"]["test"]),
        ("long every market, equal weight", &report["strategy"]["benchmark"]),
    ] {
        let row = format!(
            "| {name} | {} | {} | {} | {} | {} | {:.2} [{:.2}, {:.2}] | {} | {} | {} | {} | {} |",
            pct(&b["pnl"]),
            pct(&b["gross_pnl"]),
            share(&b["costs"]["fees"], 2),
            share(&b["costs"]["slippage"], 2),
            share(&b["costs"]["spread"], 2),
            f(&b["sharpe"]),
            f(&b["sharpe_ci95"][0]),
            f(&b["sharpe_ci95"][1]),
            share(&b["max_drawdown"], 2),
            share(&b["hit_rate"], 1),
            share(&b["exposure"], 1),
            holding(f(&b["avg_holding_hours"])),
            b["trades"]
        );
        assert!(md.contains(&row), "report.md lacks the {name} row {row}:\n{md}");
    }
    let sensitivity = report["strategy"]["sensitivity"].as_array().unwrap();
    assert!(sensitivity.len() >= 3, "a threshold grid, not one point");
    for r in sensitivity {
        let t = f(&r["threshold"]);
        let mark = if t == threshold { " (chosen)" } else { "" };
        let row = format!(
            "| {t}{mark} | {} | {} | {} | {} |",
            pct(&r["pnl_no_costs"]),
            pct(&r["pnl"]),
            pct(&r["pnl_double_costs"]),
            r["trades"]
        );
        assert!(md.contains(&row), "report.md lacks the sensitivity row {row}");
    }
    for m in report["strategy"]["per_market"].as_array().unwrap() {
        let row = format!(
            "| {} | {:.4} | {:+.2}% | {} |",
            m["market"].as_str().unwrap(),
            f(&m["auc"]),
            f(&m["pnl"]) * 100.0,
            m["trades"]
        );
        assert!(md.contains(&row), "report.md lacks {row}");
    }
    let deciles = report["model"]["calibration"].as_array().unwrap();
    assert_eq!(deciles.len(), 10);
    let first = &deciles[0];
    assert!(md.contains(&format!(
        "| 1 | {} | {:.4} | {:.4} |",
        first["rows"],
        f(&first["mean_predicted"]),
        f(&first["observed_up"])
    )));
    let c = &report["model"]["confusion"];
    assert!(md.contains(&format!("| predicted up | {} | {} |", c["predicted_up_was_up"], c["predicted_up_was_not"])));
    for section in [
        "### Coefficients",
        "### Calibration",
        "### Confusion matrix",
        "### Sensitivity",
        "## Per market",
        "equity.png",
        "- **execution delay:**",
        "- **fills:**",
    ] {
        assert!(md.contains(section), "report.md lacks {section}");
    }
}

#[test]
fn the_model_path_and_the_baseline_run_side_by_side() {
    let sb = small_market_pipeline();
    sb.dagrun(&["build", "-j", "2"]).success();
    let db = sb.db();
    let span = |stage: &str| -> (String, String) {
        db.query_row("SELECT started_at, finished_at FROM stage_runs WHERE component = ?1", [stage], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
    };
    let (baseline, model) = (span("baseline"), span("model"));
    assert!(baseline.0 < model.1 && model.0 < baseline.1, "baseline {baseline:?} and model {model:?} overlap");
}

#[test]
fn the_same_seed_gives_byte_identical_data() {
    // One thread against several: nothing may depend on how work was split.
    let (one, two) = (small_market_pipeline(), small_market_pipeline());
    let build = |sb: &Sandbox, threads: &str| {
        let out = sb.command(&["build", "-j", threads]).env("RAYON_NUM_THREADS", threads).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    };
    build(&one, "1");
    build(&two, "3");
    for file in [
        "markets.arrow",
        "ticks.arrow",
        "features.arrow",
        "model.json",
        "metrics.json",
        "predictions.arrow",
        "backtest.json",
        "equity.arrow",
        "baseline.json",
        "baseline_equity.arrow",
        "ingest.json",
    ] {
        let path = format!("data/{file}");
        assert_eq!(std::fs::read(one.path(&path)).unwrap(), std::fs::read(two.path(&path)).unwrap(), "{file} differs");
    }
    for file in ["report.json", "report.md", "equity.svg", "equity.png"] {
        let path = format!("artifacts/{file}");
        assert_eq!(std::fs::read(one.path(&path)).unwrap(), std::fs::read(two.path(&path)).unwrap(), "{file} differs");
    }
}

#[test]
fn invalidating_features_reruns_it_and_cuts_off_everything_downstream() {
    let sb = small_market_pipeline();
    sb.build().success();
    sb.dagrun(&["invalidate", "features"]).success();
    let run = sb.build().success();
    let out = run.stdout();
    assert!(out.contains("run      features   (invalidated)"), "{out}");
    assert!(out.contains("done     features") && out.contains("(outputs unchanged)"), "{out}");
    assert!(out.contains("cut off  model") && out.contains("cut off  publish"), "{out}");
    assert!(out.contains("1 ran, 5 cut off, 2 up to date"), "everything downstream of features is cut off: {out}");
}

#[test]
fn a_new_seed_reruns_from_ticks_down() {
    let sb = small_market_pipeline();
    sb.build().success();
    sb.edit("pipeline.toml", |t| {
        t.replacen("params = { seed = 42, ticks_per_market", "params = { seed = 43, ticks_per_market", 1)
    });
    let run = sb.build().success();
    assert!(run.stdout().contains("run      ticks      (param `seed` changed: 42 -> 43)"), "{}", run.stdout());
    assert!(run.stdout().contains("7 ran, 0 cut off, 1 up to date"), "{}", run.stdout());
}

pub const CSV_PIPELINE: &str = r#"
[stages.markets]
fn = "markets.markets"
inputs = ["exports/markets.csv"]
outputs = ["data/markets.arrow"]
params = { source = "exports/markets.csv" }

[stages.ticks]
fn = "markets.ticks"
inputs = ["data/markets.arrow", "exports/ticks.csv"]
outputs = ["data/ticks.arrow"]
params = { source = "exports/ticks.csv" }

[stages.features]
fn = "markets.features"
inputs = ["data/ticks.arrow"]
outputs = ["data/features.arrow"]

[stages.model]
fn = "markets.model"
inputs = ["data/features.arrow", "data/ticks.arrow"]
outputs = ["data/model.json", "data/metrics.json"]
"#;

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn a_real_csv_export_is_ingested() {
    let sb = Sandbox::new()
        .pipeline(CSV_PIPELINE)
        .file("exports/markets.csv", &fixture("markets.csv"))
        .file("exports/ticks.csv", &fixture("ticks.csv"));
    sb.build().success();
    let metrics: serde_json::Value = serde_json::from_str(&sb.read("data/metrics.json")).unwrap();
    assert_eq!(metrics["markets"], 3);
    assert_eq!(metrics["ticks"], 1200);
    assert!(sb.read(".dagrun/logs/1/ticks.log").contains("1200 ticks over 3 markets"));
}

#[test]
fn a_malformed_csv_names_the_line_and_column_and_records_no_success() {
    let ticks = fixture("ticks.csv");
    // Line 6 of the file (the header is line 1) gets a price of `abc`.
    let mut lines: Vec<String> = ticks.lines().map(str::to_string).collect();
    let mut fields: Vec<&str> = lines[5].split(',').collect();
    fields[2] = "abc";
    lines[5] = fields.join(",");
    let sb = Sandbox::new()
        .pipeline(CSV_PIPELINE)
        .file("exports/markets.csv", &fixture("markets.csv"))
        .file("exports/ticks.csv", &(lines.join("\n") + "\n"));
    let run = sb.build().failure();
    assert!(
        run.stdout().contains("exports/ticks.csv line 6, column `price`: `abc` is not a number"),
        "{}",
        run.stdout()
    );
    assert_eq!(completed(&sb), ["markets"]);
    assert_eq!(sb.column("SELECT last_status FROM orchestrator_state WHERE component = 'ticks'"), ["failed"]);
    assert!(!sb.exists("data/ticks.arrow"), "no partial output is left behind");
}

#[test]
fn a_csv_missing_a_column_says_which() {
    let markets = fixture("markets.csv").replace("fee_bps", "fees");
    let sb = Sandbox::new()
        .pipeline(CSV_PIPELINE)
        .file("exports/markets.csv", &markets)
        .file("exports/ticks.csv", &fixture("ticks.csv"));
    let run = sb.dagrun(&["build", "markets"]).failure();
    assert!(run.stdout().contains("exports/markets.csv: missing column `fee_bps`"), "{}", run.stdout());
}

/// Writes the CSV fixtures as Parquet, with the types pyarrow would give them: a UTC
/// millisecond timestamp, integer volumes, float32 tick sizes.
pub fn write_parquet_fixtures(sb: &Sandbox, price_as_text: bool) {
    write_parquet_fixtures_compressed(sb, price_as_text, parquet::basic::Compression::SNAPPY, Some("UTC"));
}

/// `zone` is the `ts` column's time zone; `None` writes wall-clock times with no zone.
pub fn write_parquet_fixtures_compressed(
    sb: &Sandbox,
    price_as_text: bool,
    compression: parquet::basic::Compression,
    zone: Option<&str>,
) {
    use std::sync::Arc;

    use arrow_array::{
        ArrayRef, Float32Array, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    };
    use parquet::arrow::ArrowWriter;

    let write = |name: &str, columns: Vec<(&str, ArrayRef)>| {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        std::fs::create_dir_all(sb.path("exports")).unwrap();
        let file = std::fs::File::create(sb.path(&format!("exports/{name}"))).unwrap();
        let props = parquet::file::properties::WriterProperties::builder().set_compression(compression).build();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    };
    let rows = |csv: &str| -> Vec<Vec<String>> {
        csv.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect()
    };
    let ms = |t: &str| {
        humantime::parse_rfc3339(t).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
    };

    let markets = rows(&fixture("markets.csv"));
    let text = |rows: &[Vec<String>], i: usize| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r[i].clone())))
    };
    let float = |rows: &[Vec<String>], i: usize| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r[i].parse::<f64>().unwrap())))
    };
    write(
        "markets.parquet",
        vec![
            ("market_id", text(&markets, 0)),
            ("venue", text(&markets, 1)),
            ("instrument", text(&markets, 2)),
            ("category", text(&markets, 3)),
            ("listed_at", Arc::new(Int64Array::from_iter_values(markets.iter().map(|r| ms(&r[4]))))),
            (
                "tick_size",
                Arc::new(Float32Array::from_iter_values(markets.iter().map(|r| r[5].parse::<f32>().unwrap()))),
            ),
            ("fee_bps", float(&markets, 6)),
        ],
    );
    let ticks = rows(&fixture("ticks.csv"));
    let price: ArrayRef = if price_as_text { text(&ticks, 2) } else { float(&ticks, 2) };
    write(
        "ticks.parquet",
        vec![
            ("market_id", text(&ticks, 0)),
            (
                "ts",
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(ticks.iter().map(|r| ms(&r[1])))
                        .with_timezone_opt(zone),
                ),
            ),
            ("price", price),
            ("volume", Arc::new(Int64Array::from_iter_values(ticks.iter().map(|r| r[3].parse::<i64>().unwrap())))),
            ("bid", float(&ticks, 4)),
            ("ask", float(&ticks, 5)),
        ],
    );
}

pub fn parquet_pipeline() -> String {
    CSV_PIPELINE.replace("markets.csv", "markets.parquet").replace("ticks.csv", "ticks.parquet")
}

#[test]
fn a_parquet_export_is_ingested_like_the_csv_one() {
    let csv = Sandbox::new()
        .pipeline(CSV_PIPELINE)
        .file("exports/markets.csv", &fixture("markets.csv"))
        .file("exports/ticks.csv", &fixture("ticks.csv"));
    csv.dagrun(&["build", "ticks"]).success();
    let parquet = Sandbox::new().pipeline(&parquet_pipeline());
    write_parquet_fixtures(&parquet, false);
    parquet.build().success();
    let metrics: serde_json::Value = serde_json::from_str(&parquet.read("data/metrics.json")).unwrap();
    assert_eq!(metrics["ticks"], 1200);
    // The same ticks table, byte for byte, whichever format the export came in.
    assert_eq!(
        std::fs::read(parquet.path("data/ticks.arrow")).unwrap(),
        std::fs::read(csv.path("data/ticks.arrow")).unwrap()
    );
}

#[test]
fn a_parquet_column_of_the_wrong_type_is_named() {
    let sb = Sandbox::new().pipeline(&parquet_pipeline());
    write_parquet_fixtures(&sb, true);
    let run = sb.build().failure();
    assert!(
        run.stdout().contains("exports/ticks.parquet row 1, column `price`: the column is Utf8, expected a number"),
        "{}",
        run.stdout()
    );
}

/// The boundary ARCHITECTURE.md promises, checked so that it cannot rot: the market stages
/// use nothing of the engine but the built-in API, and the engine (the CLI aside, which
/// registers them) never names the market stages.
#[test]
fn the_market_stages_use_only_the_builtin_api_and_the_engine_never_names_them() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rust_files = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .map(|e| e.unwrap().into_path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect()
    };
    let markets = rust_files(&src.join("markets"));
    assert!(markets.len() >= 5, "found the market sources: {markets:?}");
    for file in &markets {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                assert!(
                    rest.starts_with("builtin") || rest.starts_with("markets"),
                    "{}:{}: the market stages may use only `crate::builtin`: {line}",
                    file.display(),
                    n + 1
                );
            }
        }
    }
    for file in rust_files(&src) {
        if file.starts_with(src.join("markets")) || file.starts_with(src.join("cli")) || file.ends_with("lib.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("markets::"), "{} names the market stages; only the CLI registers them", file.display());
    }
}
