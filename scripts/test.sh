#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs them.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests need a POSIX shell and coreutils, which every machine here has, and these
# Debian packages, installed when missing (the tests fail, not pass, without them):
# - procps (pgrep): the process-group tests;
# - graphviz (dot): the `graph` test parses our dot output with the real `dot`;
# - chromium, chromium-driver: the dashboard's end-to-end test in a real headless browser;
# - e2fsprogs (chattr): the read-only state database test;
# - bsdutils (script): the live display test, in a real pseudo-terminal;
# - python3 with venv: DVC, the oracle of the dvc.yaml tests, goes in target/test-venv;
# - slurm-wlm and munge (by scripts/slurm-dev.sh, below): the Slurm executor's tests.
# The full-disk and read-only tests need root: elsewhere they fail unless
# DAGRUN_SKIP_ROOT_TESTS=1 is set, which skips them with a SKIPPED line.
need=()
command -v pgrep >/dev/null || need+=(procps)
command -v dot >/dev/null || need+=(graphviz)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v chattr >/dev/null || need+=(e2fsprogs)
command -v script >/dev/null || need+=(bsdutils)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3 python3-venv)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "installing ${need[*]}" >&2
    apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null; }
  else
    echo "missing and this is not root: install them (apt-get install ${need[*]})" >&2
  fi
fi
# DVC, pinned, in a venv of its own (about 25 s the first time; kept with target/).
dvc_version=3.67.1
if ! target/test-venv/bin/dvc version 2>/dev/null | grep -q "^DVC version: $dvc_version"; then
  echo "installing dvc $dvc_version in target/test-venv" >&2
  python3 -m venv target/test-venv
  target/test-venv/bin/pip install -q --disable-pip-version-check "dvc==$dvc_version"
fi
# A single-node Slurm cluster (slurm-wlm, munge) for the Slurm executor's tests: installed
# and started when missing (root only). Where it cannot start, its tests are skipped, loudly.
if ! { [ "$(id -u)" = 0 ] && ./scripts/slurm-dev.sh start; }; then
  echo "WARNING: no Slurm cluster here (scripts/slurm-dev.sh start needs root and apt): the Slurm tests are SKIPPED" >&2
  export DAGRUN_SKIP_SLURM_TESTS=1
fi
cargo test --locked "$@"
