#!/usr/bin/env python3
"""Full builds from scratch, tools taking turns, with each tool's own CPU apart from its stages.

usage: full_build_turns.py PIPELINE_DIR ROUNDS LABEL=COMMAND... [ninja=ninja]

PIPELINE_DIR is a pipeline from gen_pipeline.py (on tmpfs for steadier numbers). Each tool
gets its own copy of it (PIPELINE_DIR.0, .1, ...) and runs in it. COMMAND is a dagrun binary,
by absolute path, and its arguments, e.g. `base=/tmp/dagrun-before build -j 2 -q`; `ninja`
runs `ninja -j 2`. Every round cleans each copy (outputs, .dagrun, ninja's log) and builds it
once, the first tool rotating from round to round.

For each tool it prints the medians of the wall time (and its ratio to the last tool's), the
CPU of the whole build (user and system, the stages included) and the CPU of the tool's own
process alone, with the lowest and highest of the rounds. The own CPU is the process's
`utime` and `stime` in /proc/PID/stat, read once it has exited but before it is reaped (so
that /proc/PID is still there): they count all its threads and none of the stages. The
stages cost the same under every tool but move with the machine (on a shared virtual machine
the dynamic loader's `cpuid` calls in every `sh` and `cat` were about 40% of a build's CPU
samples). The own CPU has the kernel's 10 ms resolution; compare it between binaries of one
set: between sets an hour apart, the same binary's own CPU moved by a quarter.
"""
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time


def clean(copy):
    shutil.rmtree(os.path.join(copy, ".dagrun"), ignore_errors=True)
    for name in (".ninja_log", ".ninja_deps"):
        try:
            os.remove(os.path.join(copy, name))
        except FileNotFoundError:
            pass
    shutil.rmtree(os.path.join(copy, "out"), ignore_errors=True)
    os.makedirs(os.path.join(copy, "out"))


def build(command, copy):
    """(wall, CPU with the stages, CPU of the tool's own process) of one build."""
    argv = ["ninja", "-j", "2"] if command == "ninja" else command.split()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=copy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    wall = time.perf_counter() - started
    with open(f"/proc/{process.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    if process.wait() != 0:
        sys.exit(f"{command}: the build failed in {copy}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, total, own


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    source, rounds = sys.argv[1], int(sys.argv[2])
    tools = [spec.split("=", 1) for spec in sys.argv[3:]]
    copies = []
    for k in range(len(tools)):
        copy = f"{source}.{k}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(source, copy)
        copies.append(copy)
    results = {label: [] for label, _ in tools}
    for r in range(rounds):
        order = list(range(len(tools)))
        order = order[r % len(tools) :] + order[: r % len(tools)]
        for k in order:
            label, command = tools[k]
            clean(copies[k])
            results[label].append(build(command, copies[k]))
    last = statistics.median(w for w, _, _ in results[tools[-1][0]])
    for label, _ in tools:
        wall, total, own = (statistics.median(x[i] for x in results[label]) for i in range(3))
        owns = [x[2] for x in results[label]]
        print(
            f"{label:10s} wall {wall:.3f} s ({wall / last:.3f}x {tools[-1][0]})  "
            f"cpu {total:.3f} s (utilization {total / wall:.2f})  "
            f"own cpu {own:.3f} s ({min(owns):.2f} to {max(owns):.2f})"
        )


if __name__ == "__main__":
    main()
