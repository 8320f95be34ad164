#!/usr/bin/env bash
# The main job, from a fresh machine: build dagrun and run the repository's pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
exec ./target/release/dagrun build "$@"
