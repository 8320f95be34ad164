#!/usr/bin/env bash
# dagrun's `features` stage against the same eight features in Polars (features_polars.py),
# on the same ticks.arrow: three rounds, each running dagrun, then Polars with global windows,
# then Polars with .over. Checks the Polars outputs against dagrun's, then prints medians.
# usage: benches/features_vs_polars.sh [N_MARKETS] [TICKS_PER_MARKET]
# DAGRUN_BIN=/path/to/dagrun uses that binary instead of running cargo build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
markets=${1:-100}
ticks=${2:-100000}
rounds=3

venv="$repo/target/bench-venv"
py="$venv/bin/python"
[ -x "$py" ] || python3 -m venv "$venv"
"$py" -c "import polars, pyarrow, numpy" 2>/dev/null || "$venv/bin/pip" install -q polars pyarrow numpy

if [ -n "${DAGRUN_BIN:-}" ]; then
  dagrun=$DAGRUN_BIN
else
  cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
  dagrun="$repo/target/release/dagrun"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed -e "s/n_markets = 12/n_markets = $markets/" -e "s/ticks_per_market = 20000/ticks_per_market = $ticks/" \
  "$repo/pipeline.toml" >"$work/pipeline.toml"
# sed changes nothing, silently, if pipeline.toml's defaults ever move: refuse to time the wrong size.
grep -q "n_markets = $markets\b" "$work/pipeline.toml" && grep -q "ticks_per_market = $ticks\b" "$work/pipeline.toml" ||
  { echo "could not set n_markets/ticks_per_market in $repo/pipeline.toml" >&2; exit 1; }
# Runs a command with its output kept aside, shown only if it fails.
quiet() { "$@" >"$work/log" 2>&1 || { cat "$work/log" >&2; return 1; }; }
quiet "$dagrun" -C "$work" build ticks -j 2

seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

for round in $(seq "$rounds"); do
  echo "round $round/$rounds" >&2
  quiet "$dagrun" -C "$work" invalidate features
  # Flush earlier runs' output first, so that no run pays for another's writeback.
  sync
  start=$EPOCHREALTIME
  quiet "$dagrun" -C "$work" build features -j 2
  wall=$(seconds_since "$start")
  stage=$("$dagrun" -C "$work" status --json | "$py" -c '
import json, sys
print(next(s for s in json.load(sys.stdin)["stages"] if s["stage"] == "features")["last_duration_ms"] / 1000)')
  echo "$stage $wall" >>"$work/times.dagrun"
  for method in global over; do
    sync
    start=$EPOCHREALTIME
    own=$("$py" "$here/features_polars.py" "$work/data/ticks.arrow" "$work/polars-$method.arrow" "$method" | tail -n 1)
    echo "$own $(seconds_since "$start")" >>"$work/times.$method"
  done
done

# Correctness, on the last round's outputs: the same rows, NaN in the same places, values
# equal to 1e-9 relative. Relative to the larger of the value and the column's mean
# magnitude: zscore_20 = (price - mean) / sd cancels near 0, where both sides round to
# ~1e-12 absolute and a bare relative test would flag noise.
"$py" - "$work/data/features.arrow" "$work"/polars-{global,over}.arrow <<'EOF'
import sys
import numpy as np
import polars as pl

want = pl.read_ipc(sys.argv[1])
bad = 0
for path in sys.argv[2:]:
    got = pl.read_ipc(path)
    name = path.rsplit("/", 1)[-1]
    if got.columns != want.columns:
        sys.exit(f"{name}: columns {got.columns}, dagrun has {want.columns}")
    for key in ["market_id", "ts"]:
        if not got[key].equals(want[key]):
            sys.exit(f"{name}: {key} differs from dagrun's")
    diffs = []
    for col in want.columns[2:]:
        a, b = want[col].to_numpy(), got[col].to_numpy()
        nan = np.isnan(a)
        if (nan != np.isnan(b)).any():
            print(f"{name} {col}: NaN at {np.flatnonzero(nan != np.isnan(b))[:5]}... in one only", file=sys.stderr)
            bad += 1
            continue
        a, b = a[~nan], b[~nan]
        diff = np.abs(a - b)
        scale = np.maximum(np.abs(a), np.abs(a).mean())
        worst = int(np.argmax(diff / scale)) if len(a) else 0
        if len(a) and diff[worst] > 1e-9 * scale[worst]:
            print(f"{name} {col}: dagrun {float(a[worst])!r}, polars {float(b[worst])!r}", file=sys.stderr)
            bad += 1
        diffs.append(f"{col} {diff.max() if len(a) else 0:.1e}")
    print(f"{name} vs dagrun, max abs difference: " + ", ".join(diffs))
if bad:
    sys.exit(f"FAILED: {bad} column(s) disagree with dagrun")
EOF

"$py" - "$work" "$markets" "$ticks" "$rounds" "$(nproc)" <<'EOF'
import statistics, sys
import polars as pl

work, markets, ticks, rounds, cores = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def medians(name):
    runs = [tuple(map(float, line.split())) for line in open(f"{work}/times.{name}")]
    own = [r[0] for r in runs]
    return statistics.median(own), statistics.median(r[1] for r in runs), " ".join(f"{t:.2f}" for t in own)
rows = {
    "dagrun `features` stage": medians("dagrun"),
    "Polars, global windows + market mask": medians("global"),
    'Polars, `.over("market_id")`': medians("over"),
}
print(f"\nfeatures: {markets} markets x {ticks} ticks = {markets * ticks} rows; median of {rounds} interleaved runs")
print("own time = read + compute + write + fsync, as each measures it (dagrun: the stage's last_duration_ms)")
print("| run | own time (s) | whole command (s) | own time, each run |")
print("|---|---:|---:|---|")
for name, (own, wall, each) in rows.items():
    print(f"| {name} | {own:.2f} | {wall:.2f} | {each} |")
polars_rows = list(rows.items())[1:]
best_name, (best, *_) = min(polars_rows, key=lambda r: r[1][0])
dagrun = rows["dagrun `features` stage"][0]
print(f"\ndagrun / best Polars (own time): {dagrun / max(best, 1e-3):.2f} (best: {best_name})")
print(f"machine: nproc {cores}; polars {pl.__version__}")
EOF
