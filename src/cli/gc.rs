//! `dagrun gc`: trims the run-cache, keeping what every stage's current record references.

use dagrun::runcache::GcPolicy;
use dagrun::{Engine, Error};

use super::EXIT_OK;

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// Also keep the N newest other entries of each stage (default: none; all with --max-size).
    #[arg(long, value_name = "N")]
    keep_last: Option<usize>,
    /// Then drop the oldest other entries until the cache is at most SIZE (`500M`, `2G`, bytes).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(engine: &Engine, args: GcArgs) -> Result<u8, Error> {
    let policy =
        GcPolicy { keep_last: args.keep_last, max_size: args.max_size, dry_run: args.dry_run, ..GcPolicy::default() };
    let report = engine.gc(policy)?;
    let verb = if args.dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} {} entries and {} objects ({}); kept {} entries ({}) in {}",
        report.entries_removed,
        report.objects_removed,
        size_text(report.bytes_freed),
        report.entries_kept,
        size_text(report.bytes_kept),
        engine.spec().cache_dir().display()
    );
    Ok(EXIT_OK)
}

/// `500M`, `2G`, `1.5GiB`, `4096`: binary units, as `du -h` shows them.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: f64 = number.parse().map_err(|_| format!("`{text}` is not a size such as 500M or 2G"))?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("`{text}`: the unit must be K, M, G or T")),
    };
    Ok((number * scale as f64) as u64)
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_du_writes_them() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("10kb"), Ok(10 << 10));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3X").is_err());
    }
}
