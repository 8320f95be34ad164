//! The market pipeline on real-looking exports: time units and offsets, every Parquet codec,
//! other CSV separators, bad quotes, repeated times, a market with nothing to predict, and
//! tuning that never looks at the test period.

use crate::markets::{CSV_PIPELINE, fixture, parquet_pipeline, write_parquet_fixtures_compressed};
use crate::sandbox::Sandbox;

/// The CSV pipeline (markets, ticks, features, model) on the fixtures, `ticks` transformed.
fn csv_sandbox(ticks: &str) -> Sandbox {
    Sandbox::new()
        .pipeline(CSV_PIPELINE)
        .file("exports/markets.csv", &fixture("markets.csv"))
        .file("exports/ticks.csv", ticks)
}

/// The fixture ticks with each row's `ts` field rewritten.
fn with_times(change: impl Fn(&str) -> String) -> String {
    let text = fixture("ticks.csv");
    let mut lines = text.lines();
    let mut out = format!("{}\n", lines.next().unwrap());
    for line in lines {
        let mut fields: Vec<String> = line.split(',').map(str::to_string).collect();
        fields[1] = change(&fields[1]);
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// The export as a decimal-comma locale writes it: `;` between fields, `,` in numbers.
fn decimal_commas(csv: &str) -> String {
    csv.lines()
        .map(|line| {
            let fields: Vec<String> = line
                .split(',')
                .enumerate()
                .map(|(i, f)| if i >= 2 { f.replace('.', ",") } else { f.to_string() })
                .collect();
            fields.join(";") + "\n"
        })
        .collect()
}

fn ms(rfc3339: &str) -> i64 {
    humantime::parse_rfc3339(rfc3339).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Gives the `ticks` stage reading `source` the param `timezone = "UTC"`.
fn say_times_are_utc(sb: &Sandbox, source: &str) {
    sb.edit("pipeline.toml", |t| {
        t.replace(
            &format!(r#"params = {{ source = "{source}" }}"#),
            &format!(r#"params = {{ source = "{source}", timezone = "UTC" }}"#),
        )
    });
}

fn ticks_table(sb: &Sandbox) -> Vec<u8> {
    sb.dagrun(&["build", "ticks"]).success();
    std::fs::read(sb.path("data/ticks.arrow")).unwrap()
}

fn ticks_metric(sb: &Sandbox, key: &str) -> String {
    sb.column(&format!("SELECT json_extract(metrics, '$.{key}') FROM stage_runs WHERE component = 'ticks'")).concat()
}

#[test]
fn integer_times_in_any_unit_and_times_with_offsets_give_the_same_ticks() {
    let reference = ticks_table(&csv_sandbox(&fixture("ticks.csv")));
    type Rewrite = Box<dyn Fn(&str) -> String>;
    let cases: [(&str, Rewrite); 5] = [
        ("seconds", Box::new(|t| (ms(t) / 1000).to_string())),
        ("milliseconds", Box::new(|t| ms(t).to_string())),
        // Finer digits than a millisecond are dropped, not rounded.
        ("microseconds", Box::new(|t| (ms(t) * 1000 + 999).to_string())),
        ("nanoseconds", Box::new(|t| (ms(t) * 1_000_000 + 999_999).to_string())),
        (
            "offset",
            Box::new(|t| {
                humantime::format_rfc3339(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis((ms(t) - 5 * 3_600_000) as u64),
                )
                .to_string()
                .replace('Z', "-05:00")
            }),
        ),
    ];
    for (name, change) in cases {
        let sb = csv_sandbox(&with_times(change));
        assert_eq!(ticks_table(&sb), reference, "times in {name}");
        if name == "microseconds" {
            assert!(sb.read(".dagrun/logs/1/ticks.log").contains("integer times read as microseconds since 1970"));
        }
    }
}

#[test]
fn implausible_mixed_and_naive_times_are_refused_by_name() {
    // Seconds times ten: the year 2531 as seconds, 1970 as milliseconds.
    let sb = csv_sandbox(&with_times(|t| (ms(t) / 100).to_string()));
    let run = sb.dagrun(&["build", "ticks"]).failure();
    assert!(
        run.stdout().contains("exports/ticks.csv line 2, column `ts`: `17724799200` is not a time between 1971 and 2100 in seconds, milliseconds, microseconds or nanoseconds since 1970"),
        "{}",
        run.stdout()
    );

    let first = std::cell::Cell::new(true);
    let mixed = with_times(|t| {
        let ms = ms(t);
        if first.replace(false) { ms.to_string() } else { (ms / 1000).to_string() }
    });
    let run = csv_sandbox(&mixed).dagrun(&["build", "ticks"]).failure();
    assert!(
        run.stdout().contains("line 3, column `ts`: `")
            && run.stdout().contains("reads as seconds since 1970, but this column's first time was in milliseconds"),
        "{}",
        run.stdout()
    );

    let naive = with_times(|t| t.replace('T', " ").replace('Z', ""));
    let sb = csv_sandbox(&naive);
    let run = sb.dagrun(&["build", "ticks"]).failure();
    assert!(
        run.stdout().contains("line 2, column `ts`: `2026-03-02 19:32:00` has no UTC offset")
            && run.stdout().contains("set param `timezone = \"UTC\"`"),
        "{}",
        run.stdout()
    );
    say_times_are_utc(&sb, "exports/ticks.csv");
    assert_eq!(
        ticks_table(&sb),
        ticks_table(&csv_sandbox(&fixture("ticks.csv"))),
        "naive times read in the zone given"
    );
}

#[test]
fn parquet_in_every_codec_and_csv_with_other_separators_give_the_same_ticks() {
    use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};

    let reference = ticks_table(&csv_sandbox(&fixture("ticks.csv")));
    for compression in [
        Compression::ZSTD(ZstdLevel::default()),
        Compression::LZ4_RAW,
        Compression::GZIP(GzipLevel::default()),
        Compression::BROTLI(BrotliLevel::default()),
        Compression::UNCOMPRESSED,
    ] {
        let sb = Sandbox::new().pipeline(&parquet_pipeline());
        write_parquet_fixtures_compressed(&sb, false, compression, Some("UTC"));
        assert_eq!(ticks_table(&sb), reference, "{compression:?}");
    }
    for separator in [";", "\t"] {
        let sb = Sandbox::new()
            .pipeline(CSV_PIPELINE)
            .file("exports/markets.csv", &fixture("markets.csv").replace(',', separator))
            .file("exports/ticks.csv", &fixture("ticks.csv").replace(',', separator));
        assert_eq!(ticks_table(&sb), reference, "separated by {separator:?}");
    }

    // A Parquet timestamp with no zone is wall-clock time: refused until the stage names the zone.
    let sb = Sandbox::new().pipeline(&parquet_pipeline());
    write_parquet_fixtures_compressed(&sb, false, Compression::ZSTD(ZstdLevel::default()), None);
    let run = sb.dagrun(&["build", "ticks"]).failure();
    assert!(
        run.stdout().contains("exports/ticks.parquet")
            && run.stdout().contains("the column is a timestamp without a time zone")
            && run.stdout().contains("set param `timezone = \"UTC\"`"),
        "{}",
        run.stdout()
    );
    say_times_are_utc(&sb, "exports/ticks.parquet");
    assert_eq!(ticks_table(&sb), reference, "naive Parquet times read in the zone given");

    // A `;` export from a locale that writes decimal commas: refused with what to change.
    let sb = Sandbox::new()
        .pipeline(CSV_PIPELINE)
        .file("exports/markets.csv", &fixture("markets.csv").replace(',', ";"))
        .file("exports/ticks.csv", &decimal_commas(&fixture("ticks.csv")));
    let run = sb.dagrun(&["build", "ticks"]).failure();
    assert!(
        run.stdout().contains("exports/ticks.csv line 2, column `price`")
            && run.stdout().contains("it has a decimal comma; export numbers with a decimal point"),
        "{}",
        run.stdout()
    );
    assert!(!sb.path("data/ticks.arrow").exists(), "no partial table is left");
}

#[test]
fn a_bad_quote_is_dropped_and_counted_but_a_mostly_bad_file_fails() {
    let lines: Vec<String> = fixture("ticks.csv").lines().map(str::to_string).collect();
    let with_rows = |bad: &dyn Fn(usize) -> bool| -> String {
        let mut out = format!("{}\n", lines[0]);
        for (i, line) in lines.iter().enumerate().skip(1) {
            let mut fields: Vec<String> = line.split(',').map(str::to_string).collect();
            if bad(i) {
                // Crossed: the bid above the ask; or no ask at all.
                if i % 2 == 0 { fields.swap(4, 5) } else { fields[5].clear() }
            }
            out.push_str(&fields.join(","));
            out.push('\n');
        }
        out
    };
    let sb = csv_sandbox(&with_rows(&|i| i == 7 || i == 10));
    sb.build().success();
    assert_eq!(ticks_metric(&sb, "rows_bad_quote"), "2");
    assert_eq!(ticks_metric(&sb, "rows_read"), "1200");
    assert_eq!(ticks_metric(&sb, "ticks"), "1198");

    let run = csv_sandbox(&with_rows(&|i| i % 3 != 0)).dagrun(&["build", "ticks"]).failure();
    assert!(
        run.stdout().contains("exports/ticks.csv: 800 of 1200 rows have a crossed or missing quote (the first, ")
            && run.stdout().contains("exports/ticks.csv line 2: bid 192.04, ask missing)")
            && run.stdout().contains("a file this broken is refused"),
        "{}",
        run.stdout()
    );
}

#[test]
fn rows_repeating_a_market_and_time_are_merged_and_counted() {
    let text = fixture("ticks.csv");
    let lines: Vec<&str> = text.lines().collect();
    // Line 2 again, a trade later at another price and volume; then line 3 twice more.
    let mut again: Vec<String> = lines[1].split(',').map(str::to_string).collect();
    again[2] = again[5].clone();
    again[3] = "5".into();
    let mut rows: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    rows.insert(2, again.join(","));
    rows.push(lines[2].to_string());
    rows.push(lines[2].to_string());
    let sb = csv_sandbox(&(rows.join("\n") + "\n"));
    sb.build().success();
    assert_eq!(ticks_metric(&sb, "rows_merged"), "3");
    assert_eq!(ticks_metric(&sb, "ticks"), "1200");
    assert!(sb.read(".dagrun/logs/1/ticks.log").contains("3 merged into an earlier row of the same market and time"));
}

/// Markets whose mid is a pure random walk (a cent up or down each tick) and whose trades
/// print at the bid or the ask at random: nothing in them is predictable.
fn random_walk_exports(markets: usize, ticks: usize) -> (String, String) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut coin = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state & 1 == 1
    };
    let mut markets_csv = String::from("market_id,venue,instrument,category,listed_at,tick_size,fee_bps\n");
    let mut ticks_csv = String::from("market_id,ts,price,volume,bid,ask\n");
    for m in 0..markets {
        markets_csv.push_str(&format!("RW{m},XNAS,RW{m},equity,2020-01-01T00:00:00Z,0.01,0.5\n"));
        let mut mid_cents: i64 = 10_000;
        for t in 0..ticks {
            mid_cents += if coin() { 1 } else { -1 };
            let (bid, ask) = (mid_cents - 1, mid_cents + 1);
            let price = if coin() { ask } else { bid };
            let ts = 1_767_571_200_000 + t as i64 * 60_000;
            let cents = |c: i64| format!("{}.{:02}", c / 100, c % 100);
            ticks_csv.push_str(&format!("RW{m},{ts},{},100,{},{}\n", cents(price), cents(bid), cents(ask)));
        }
    }
    (markets_csv, ticks_csv)
}

#[test]
fn bid_ask_bounce_is_not_taken_for_signal() {
    // Trade prices here bounce between bid and ask, which makes the next *trade* move
    // predictable (after a print at the ask the next is likelier lower). Labels on mids
    // see the random walk for what it is.
    let (markets, ticks) = random_walk_exports(4, 5_000);
    let sb =
        Sandbox::new().pipeline(CSV_PIPELINE).file("exports/markets.csv", &markets).file("exports/ticks.csv", &ticks);
    sb.build().success();
    let metrics: serde_json::Value = serde_json::from_str(&sb.read("data/metrics.json")).unwrap();
    let auc = metrics["test"]["auc"].as_f64().unwrap();
    assert_eq!(metrics["test"]["rows"], 3_992, "every test tick with a move two ticks on");
    assert!((auc - 0.5).abs() < 0.035, "test AUC {auc} on a random walk");
}

/// The repository's whole pipeline on the CSV fixtures.
fn full_export_pipeline() -> Sandbox {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipeline.toml")).unwrap();
    let text = text
        .replace(
            "outputs = [\"data/markets.arrow\"]\nparams = { seed = 42, n_markets = 12 }",
            "inputs = [\"exports/markets.csv\"]\noutputs = [\"data/markets.arrow\"]\nparams = { source = \"exports/markets.csv\" }",
        )
        .replace(
            "inputs = [\"data/markets.arrow\"]\n# ingest.json: where the data came from, for the report\noutputs = [\"data/ticks.arrow\", \"data/ingest.json\"]\nparams = { seed = 42, ticks_per_market = 20000 }",
            "inputs = [\"data/markets.arrow\", \"exports/ticks.csv\"]\noutputs = [\"data/ticks.arrow\", \"data/ingest.json\"]\nparams = { source = \"exports/ticks.csv\" }",
        );
    assert!(text.contains("params = { source = \"exports/ticks.csv\" }"), "pipeline.toml's stages moved");
    Sandbox::new()
        .pipeline(&text)
        .file("exports/markets.csv", &fixture("markets.csv"))
        .file("exports/ticks.csv", &fixture("ticks.csv"))
}

#[test]
fn the_threshold_is_tuned_on_validation_and_never_sees_the_test_period() {
    let sb = full_export_pipeline();
    sb.build().success();
    let before: serde_json::Value = serde_json::from_str(&sb.read("data/backtest.json")).unwrap();
    assert_eq!(before["threshold_chosen"], "tuned on the validation period by net PnL");
    let test_start = before["test_start_ts"].as_i64().unwrap();
    // Rewrite every price of the test period; nothing before it.
    let cut = humantime::format_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(test_start as u64))
        .to_string();
    sb.edit("exports/ticks.csv", |text| {
        let mut lines = text.lines();
        let mut out = format!("{}\n", lines.next().unwrap());
        for (i, line) in lines.enumerate() {
            let mut fields: Vec<String> = line.split(',').map(str::to_string).collect();
            if fields[1] >= cut {
                let factor = 1.0 + 0.004 * ((i * 7919 % 11) as f64 - 5.0) / 5.0;
                for f in [2, 4, 5] {
                    fields[f] = format!("{:.6}", fields[f].parse::<f64>().unwrap() * factor);
                }
            }
            out.push_str(&fields.join(","));
            out.push('\n');
        }
        out
    });
    sb.build().success();
    let after: serde_json::Value = serde_json::from_str(&sb.read("data/backtest.json")).unwrap();
    for key in ["threshold", "sensitivity", "validation", "validation_start_ts", "test_start_ts"] {
        assert_eq!(before[key], after[key], "{key} moved when only the test period changed");
    }
    assert_ne!(before["test"], after["test"], "the test period's result follows its data");
    let md = sb.read("artifacts/report.md");
    assert!(md.contains("Exported data: ticks from `exports/ticks.csv`, markets from `exports/markets.csv`. 1200 rows read; 0 merged"), "{md}");
}

#[test]
fn a_dropped_row_reaches_the_report_though_the_ticks_table_is_unchanged() {
    let sb = full_export_pipeline();
    sb.build().success();
    // A row with no ask: dropped, so the ticks table is the same bytes as before.
    sb.edit("exports/ticks.csv", |text| text + "AAPL.XNAS,2026-03-02T19:33:00Z,192.06,7,192.04,\n");
    let run = sb.build().success();
    let out = run.stdout();
    assert!(out.contains("run      ticks") && out.contains("cut off  inference"), "{out}");
    // The engine's cutoff is per stage: `ticks` wrote a new ingest.json, so its readers run
    // again and find their outputs unchanged.
    assert!(out.contains("done     features   ") && out.contains("(outputs unchanged)"), "{out}");
    assert!(out.contains("done     publish"), "the report follows the counts: {out}");
    let md = sb.read("artifacts/report.md");
    assert!(md.contains("1201 rows read; 0 merged into an earlier row of the same market and time (last price and quote, summed volume); 1 dropped for a crossed or missing quote"), "{md}");
}
