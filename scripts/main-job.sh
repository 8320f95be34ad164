#!/usr/bin/env bash
# The main job, from a fresh machine: build dagrun and run the repository's pipeline.
# It builds the same profile and features as the tests (`cargo build`, dev with
# optimisation on), so that ./scripts/test.sh afterwards reuses the build instead of
# compiling everything a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked
echo "dagrun is built: target/debug/dagrun (put it on PATH with: export PATH=\"$PWD/target/debug:\$PATH\")" >&2
exec ./target/debug/dagrun build "$@"
