#!/usr/bin/env bash
# dagrun's hashing beside b3sum's on the same bytes: one large file, then many small ones.
#
# usage: benches/hash_vs_b3sum.sh [DIR]
#   DIR: where the files are made (default: a new directory under /dev/shm, so that the
#   disk is not what is measured); removed at the end.
#   DAGRUN_BIN picks the binary (default target/release/dagrun, built if missing);
#   HASH_MIB the large file's size (default 1024); SMALL_FILES how many 4 KiB files (20000).
#
# dagrun hashes through `dagrun build -n` on a one-stage pipeline whose input is the file or
# the directory, built once; before each run its stat cache is emptied (a dry run saves none),
# so every run hashes everything again. Its start-up (a few milliseconds) is counted. b3sum and hyperfine are Debian packages, installed
# when missing. Both hash on every core: b3sum splits a large file across threads and reads
# small files one at a time (a second line runs two b3sum processes side by side).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
for tool in b3sum hyperfine; do
    command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
dagrun="${DAGRUN_BIN:-$repo/target/release/dagrun}"
[ -x "$dagrun" ] || cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
work="${1:-$(mktemp -d /dev/shm/hash-vs-b3sum.XXXX)}"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
mib="${HASH_MIB:-1024}"
count="${SMALL_FILES:-20000}"

# The command that empties a pipeline's stat cache, so that its next plan hashes every input.
forget() {
    echo "python3 -c \"import sqlite3; db = sqlite3.connect('$1/.dagrun/state.db'); db.execute('DELETE FROM file_hashes'); db.commit()\""
}

echo "# one file of $mib MiB, $(nproc) cores"
mkdir -p "$work/large"
head -c "$((mib << 20))" /dev/urandom > "$work/large/big"
printf '[stages.use]\ncmd = "true"\ninputs = ["big"]\n' > "$work/large/pipeline.toml"
"$dagrun" -C "$work/large" build -q --no-cache
hyperfine -N -w 2 -r 10 --prepare "$(forget "$work/large")" --command-name "dagrun build -n" \
    "$dagrun -C $work/large build -n -q" "b3sum $work/large/big"

echo "# $count files of 4 KiB in 100 directories"
mkdir -p "$work/small"
python3 - "$work/small/data" "$count" <<'PY'
import os, random, sys
root, count = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
for i in range(count):
    sub = os.path.join(root, f"d{i % 100}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i}.bin"), "wb") as f:
        f.write(r.randbytes(4096))
PY
printf '[stages.use]\ncmd = "true"\ninputs = ["data"]\n' > "$work/small/pipeline.toml"
(cd "$work/small" && find data -type f | sort > list.txt)
"$dagrun" -C "$work/small" build -q --no-cache
hyperfine -N -w 2 -r 10 --prepare "$(forget "$work/small")" \
    "$dagrun -C $work/small build -n -q" \
    "sh -c 'cd $work/small && xargs -a list.txt b3sum > /dev/null'" \
    "sh -c 'cd $work/small && xargs -a list.txt -P 2 -n $(((count + 1) / 2)) b3sum > /dev/null'"
