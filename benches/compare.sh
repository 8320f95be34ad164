#!/usr/bin/env bash
# Runs dagrun beside ninja and make (and DVC / Snakemake when installed) on the same
# generated pipeline, one command at a time, and prints a markdown table of medians and
# dagrun's ratio to ninja. The shapes and phases are those of ../shared/anchors/RESULTS.md.
#
# usage: benches/compare.sh [N...]            (default: 1000 10000)
#        SHAPES="chains wide" RUNS=10 benches/compare.sh 1000
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
sizes=("${@:-1000 10000}")
read -r -a sizes <<<"${sizes[*]}"
shapes=(${SHAPES:-chains})
runs=${RUNS:-10}

command -v hyperfine >/dev/null || { echo "installing hyperfine and ninja-build" >&2; apt-get install -y -qq hyperfine ninja-build >/dev/null; }
command -v ninja >/dev/null || apt-get install -y -qq ninja-build >/dev/null
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
dagrun="$repo/target/release/dagrun"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# median seconds of a command run in DIR, with an optional prepare step
median() { # dir runs prepare command
  local json="$work/h.json"
  if [[ -n $3 ]]; then
    (cd "$1" && hyperfine -N -w 1 -r "$2" --prepare "sh -c '$3'" --export-json "$json" "$4" >/dev/null 2>&1)
  else
    (cd "$1" && hyperfine -N -w 2 -r "$2" --export-json "$json" "$4" >/dev/null 2>&1)
  fi
  python3 -c "import json,sys; print('%.4f' % json.load(open('$json'))['results'][0]['median'])"
}

tools=(dagrun ninja make)
command -v dvc >/dev/null && tools+=(dvc)
command -v snakemake >/dev/null && tools+=(snakemake)

echo "| tool | N | shape | full | no-op | status | edit | touch | no-op µs/stage | no-op vs ninja |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
for n in "${sizes[@]}"; do
  for shape in "${shapes[@]}"; do
    declare -A noop=()
    for tool in "${tools[@]}"; do
      dir="$work/$tool-$n-$shape"
      src=$(python3 "$here/gen_pipeline.py" "$dir" "$n" "$shape")
      case $tool in
        dagrun) full="$dagrun build -j 2"; build="$dagrun build -j 2"; status="$dagrun status"; clean="rm -rf out/* .dagrun" ;;
        ninja) full="ninja -j2"; build="ninja -j2"; status="ninja -n"; clean="rm -rf out/* .ninja_log .ninja_deps" ;;
        make) full="make -s -j2"; build="make -s -j2"; status="make -n"; clean="rm -rf out/*" ;;
        *) echo "| $tool | $n | $shape | (see shared/anchors/RESULTS.md) ||||||" ; continue ;;
      esac
      full_runs=$(( n >= 10000 ? 1 : 3 ))
      t_full=$(median "$dir" "$full_runs" "$clean" "$full")
      (cd "$dir" && $build >/dev/null 2>&1)
      t_noop=$(median "$dir" "$runs" "" "$build")
      t_status=$(median "$dir" "$runs" "" "$status")
      t_edit=$(median "$dir" 5 "echo edit >> $src" "$build")
      t_touch=$(median "$dir" 5 "touch $src" "$build")
      noop[$tool]=$t_noop
      per_stage=$(python3 -c "print('%.1f' % ($t_noop / $n * 1e6))")
      ratio=""
      if [[ $tool != ninja && -n ${noop[ninja]:-} ]]; then ratio=$(python3 -c "print('%.1f×' % ($t_noop / ${noop[ninja]}))"); fi
      if [[ $tool == dagrun ]]; then ratio="(after ninja)"; fi
      echo "| $tool | $n | $shape | $t_full | $t_noop | $t_status | $t_edit | $t_touch | $per_stage | $ratio |"
    done
    python3 -c "print('| ratio | $n | $shape | dagrun no-op / ninja no-op = %.1f× |||||||' % (${noop[dagrun]} / ${noop[ninja]}))"
  done
done
