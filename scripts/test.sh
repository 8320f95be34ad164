#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs them.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests need a POSIX shell and coreutils, which every machine here has, and pgrep
# (procps): the process-group tests fail without it rather than pass unchecked.
if ! command -v pgrep >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq procps >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq procps >/dev/null; }
  else
    echo "pgrep is missing and this is not root: install it (apt-get install procps)" >&2
  fi
fi
# The full-disk test mounts a tmpfs: as root it must run; elsewhere it fails unless
# DAGRUN_SKIP_ROOT_TESTS=1 is set, which skips it with a SKIPPED line.
# Graphviz: the `graph` test checks that our dot output parses with the real `dot`.
if ! command -v dot >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq graphviz >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq graphviz >/dev/null; }
  else
    echo "graphviz is missing and this is not root: install it (apt-get install graphviz)" >&2
  fi
fi
cargo test --locked "$@"
