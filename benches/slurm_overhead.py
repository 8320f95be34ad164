#!/usr/bin/env python3
"""Per-stage overhead of the Slurm executor beside the local one, on N trivial stages.

Each stage writes the time it started (`date +%s.%N`) and does nothing else, so for each
stage: queue = its command's start minus `stage_runs.started_at` (recorded just before
sbatch, or before the local spawn), and record = `stage_runs.finished_at` minus that start
(the job's end seen, outputs hashed, the row committed). Prints the median and 90th
percentile of each, and the whole build's wall time, for the local executor and for Slurm.

usage: benches/slurm_overhead.py [--stages 100] [--jobs 4,100]
Needs the dev cluster (scripts/slurm-dev.sh start). DAGRUN_BIN picks the binary (default
target/release/dagrun).
"""
import argparse
import datetime
import os
import sqlite3
import statistics
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seconds(rfc3339):
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def measure(dagrun, stages, executor, jobs):
    with tempfile.TemporaryDirectory(prefix="dagrun-slurm-bench-") as root:
        with open(os.path.join(root, "pipeline.toml"), "w") as f:
            for i in range(stages):
                f.write(f'[stages.s{i:03}]\ncmd = "date +%s.%N > ${{outputs}}"\noutputs = ["out/s{i:03}.txt"]\n')
        start = time.monotonic()
        subprocess.run([dagrun, "build", "--no-cache", "-j", str(jobs), "--executor", executor, "-q"], cwd=root, check=True)
        wall = time.monotonic() - start
        db = sqlite3.connect(os.path.join(root, ".dagrun", "state.db"))
        queue, record = [], []
        for component, started_at, finished_at in db.execute(
            "SELECT component, started_at, finished_at FROM stage_runs WHERE status = 'success'"
        ):
            with open(os.path.join(root, "out", component + ".txt")) as out:
                ran_at = float(out.read())
            queue.append(ran_at - seconds(started_at))
            record.append(seconds(finished_at) - ran_at)
        return wall, queue, record


def summary(values):
    values = sorted(values)
    return f"{statistics.median(values) * 1000:7.0f} ms  {values[int(len(values) * 0.9)] * 1000:7.0f} ms"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", type=int, default=100)
    parser.add_argument("--jobs", default="4,100")
    args = parser.parse_args()
    dagrun = os.environ.get("DAGRUN_BIN", os.path.join(REPO, "target", "release", "dagrun"))
    print(f"{args.stages} trivial stages; queue = submit (or spawn) to start, record = end to recorded")
    print(f"{'executor':8} {'-j':>4} {'wall':>8}   {'queue median':>12} {'p90':>10}   {'record median':>13} {'p90':>10}")
    for executor in ["local", "slurm"]:
        for jobs in [int(j) for j in args.jobs.split(",")]:
            wall, queue, record = measure(dagrun, args.stages, executor, jobs)
            print(f"{executor:8} {jobs:>4} {wall:7.2f}s   {summary(queue)}   {summary(record)}")


if __name__ == "__main__":
    main()
