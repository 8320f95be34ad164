#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs them.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests need only a POSIX shell and coreutils, which every machine here has; the
# process-group test also uses pgrep (procps) when it is present.
if ! command -v pgrep >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq procps >/dev/null 2>&1 || true
fi
cargo test --locked "$@"
