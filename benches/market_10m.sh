#!/usr/bin/env bash
# The market pipeline at scale: 100 markets x 100,000 ticks = 10 million ticks, from
# scratch, with -j 2. Prints time per stage, features throughput and peak memory.
# usage: benches/market_10m.sh [N_MARKETS] [TICKS_PER_MARKET]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
markets=${1:-100}
ticks=${2:-100000}
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed -e "s/n_markets = 12/n_markets = $markets/" -e "s/ticks_per_market = 20000/ticks_per_market = $ticks/" \
  "$repo/pipeline.toml" >"$work/pipeline.toml"
/usr/bin/time -f "%e %M" -o "$work/time" "$repo/target/release/dagrun" -C "$work" build -j 2 >"$work/out"
read -r wall peak_kb <"$work/time"
total=$((markets * ticks))
echo "market pipeline: $markets markets x $ticks ticks = $total ticks, -j 2"
"$repo/target/release/dagrun" -C "$work" status --json | python3 -c "
import json, sys
stages = json.load(sys.stdin)['stages']
print('| stage | seconds |')
print('|---|---:|')
for s in stages:
    print('| %s | %.2f |' % (s['stage'], (s['last_duration_ms'] or 0) / 1000))
features = next(s for s in stages if s['stage'] == 'features')['last_duration_ms'] / 1000
print()
print('features throughput: %.1f million rows/s' % ($total / features / 1e6))
"
echo "wall time: ${wall}s; peak memory: $((peak_kb / 1024)) MiB"
grep -E "^(held out|training)" "$work/.dagrun/logs/1/model.log" || true
