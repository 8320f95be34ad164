#!/usr/bin/env python3
"""dagrun beside ninja, make, DVC and Snakemake on the same generated pipelines.

For each size and shape (benches/gen_pipeline.py) it measures every tool, each in a copy of
the pipeline of its own: the full build at -j 2, the no-op build, status (or dry run), one
source edited (a line appended) and one source touched (mtime only). Within a cell the tools
take turns, one run each, the first of each round rotating, so that a shared machine's drift
falls on all of them alike (measured one tool after another, the same code's ratio to
ninja moved by a third or more between runs). Each cell is the median wall time, the peak RSS
over its runs, and for edit/touch how many stages re-ran (outputs whose mtime changed). Writes
BENCHMARKS.md (or --out) with the command, versions, date and machine.

usage: benches/compare.py [--sizes 100,1000,10000,100000] [--shapes chains]
                          [--peer-max 1000] [--out BENCHMARKS.md]

Runs per cell, from a tool's first run: 11 when it took under 0.5 s, 5 under 2 s, 3 under
20 s, else 1 (as the peers' anchor figures were taken, but for more runs of the quickest).
DVC and Snakemake run up to --peer-max stages; a DVC full build over 100 stages takes
minutes (over 300 s at 1,000), so above that its built state is seeded with make plus
`dvc commit -f` and the full cell says so. Every tool's copy exists at once, in a temporary
directory (three copies of 100,000 files at the largest size without the peers). Installs
ninja, make and GNU time with apt, and DVC and Snakemake in target/bench-venv, when missing.
DAGRUN_BIN=/path/to/dagrun uses that binary instead of `cargo build --release`.
"""
import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VENV = os.path.join(REPO, "target", "bench-venv")
PEERS = {"dvc": "dvc==3.67.1", "snakemake": "snakemake==9.27.1"}
DVC_FULL_MAX = 100


def sh(cmd, cwd=None, check=True):
    return subprocess.run(cmd, cwd=cwd, shell=isinstance(cmd, str), check=check, capture_output=True, text=True)


def ensure_tools():
    missing = [pkg for tool, pkg in [("ninja", "ninja-build"), ("make", "make")] if not shutil.which(tool)]
    if not os.path.exists("/usr/bin/time"):
        missing.append("time")
    if missing:
        sh(["apt-get", "install", "-y", "-qq", *missing])
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        sh([sys.executable, "-m", "venv", VENV])
    if sh([py, "-c", "import dvc, snakemake"], check=False).returncode != 0:
        print("installing DVC and Snakemake in target/bench-venv", file=sys.stderr)
        sh([os.path.join(VENV, "bin", "pip"), "install", "-q", *PEERS.values()])
    if os.environ.get("DAGRUN_BIN"):
        return os.path.abspath(os.environ["DAGRUN_BIN"])
    sh(["cargo", "build", "--release", "--quiet", "--manifest-path", os.path.join(REPO, "Cargo.toml")])
    return os.path.join(REPO, "target", "release", "dagrun")


def commands(tool, dagrun):
    """(build, status, clean) for a tool, run in the pipeline's directory."""
    venv_bin = os.path.join(VENV, "bin")
    if tool == "dagrun":
        return [dagrun, "build", "-j", "2", "-q"], [dagrun, "status"], "rm -rf out/* .dagrun"
    if tool == "ninja":
        return ["ninja", "-j2"], ["ninja", "-n"], "rm -rf out/* .ninja_log .ninja_deps"
    if tool == "make":
        return ["make", "-s", "-j2"], ["make", "-n"], "rm -rf out/*"
    if tool == "dvc":
        dvc = os.path.join(venv_bin, "dvc")
        return [dvc, "repro", "-q"], [dvc, "status", "-q"], "rm -rf out/* dvc.lock .dvc/tmp"
    snakemake = os.path.join(venv_bin, "snakemake")
    return (
        [snakemake, "--cores", "2", "--quiet"],
        [snakemake, "-n", "--quiet"],
        "rm -rf out/* .snakemake",
    )


def timed(cmd, cwd):
    """Wall seconds and peak RSS (KiB) of one run."""
    rss_file = os.path.join(cwd, ".rss")
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file, *cmd], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):  # `dvc status` and `ninja -n` exit 0; dagrun status exits 0
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}: {done.stderr[-2000:]}")
    with open(rss_file) as f:
        rss = int(f.read().split()[-1])
    os.remove(rss_file)
    return wall, rss


def mtimes(cwd):
    out = os.path.join(cwd, "out")
    return {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in os.listdir(out)}


def runs_wanted(wall):
    """How many runs a cell takes, from its first: more for quick commands, whose noise on a
    shared machine is a larger share of their time."""
    return 11 if wall < 0.5 else 5 if wall < 2 else 3 if wall < 20 else 1


def cell(tools, command, prepare=None):
    """Median wall, peak RSS and stages re-run of one command for each tool (`tools` maps a
    tool to its pipeline directory). The tools take turns, run by run, the first of each
    round rotating, so that the machine's drift over the cell falls on all of them alike."""
    walls = {tool: [] for tool in tools}
    rss = {tool: 0 for tool in tools}
    reran = {}
    wanted = {tool: 1 for tool in tools}
    order = list(tools)
    while any(len(walls[tool]) < wanted[tool] for tool in tools):
        for tool in order:
            if len(walls[tool]) >= wanted[tool]:
                continue
            cwd = tools[tool]
            if prepare:
                prepare(tool)
            before = mtimes(cwd)
            wall, peak = timed(command(tool), cwd)
            after = mtimes(cwd)
            walls[tool].append(wall)
            rss[tool] = max(rss[tool], peak)
            reran[tool] = sum(1 for name, t in after.items() if before.get(name) != t)
            wanted[tool] = runs_wanted(walls[tool][0])
        order = order[1:] + order[:1]
    return {tool: (statistics.median(walls[tool]), rss[tool], reran[tool]) for tool in tools}


def seed_dvc(cwd):
    """The built state DVC would record, without DVC's minutes-long full build."""
    sh(["make", "-s", "-j2"], cwd=cwd)
    sh([os.path.join(VENV, "bin", "dvc"), "commit", "-f", "-q"], cwd=cwd)


def measure(tools, n, shape, dagrun, work):
    """Every cell of every tool at one size and shape, each tool in a directory of its own."""
    dirs, sources = {}, {}
    for tool in tools:
        cwd = os.path.join(work, f"{tool}-{n}-{shape}")
        src = sh([sys.executable, os.path.join(HERE, "gen_pipeline.py"), cwd, str(n), shape]).stdout.strip()
        dirs[tool], sources[tool] = cwd, os.path.join(cwd, src)
        if tool == "dvc":
            sh([os.path.join(VENV, "bin", "dvc"), "init", "--no-scm", "-q"], cwd=cwd)

    def build(tool):
        return commands(tool, dagrun)[0]

    def status(tool):
        return commands(tool, dagrun)[1]

    def clean(tool):
        sh(commands(tool, dagrun)[2], cwd=dirs[tool])

    def edit(tool):
        with open(sources[tool], "a") as f:
            f.write("edit\n")

    def touch(tool):
        os.utime(sources[tool])

    rows = {tool: {"tool": tool, "n": n, "shape": shape} for tool in tools}
    full = {tool: cwd for tool, cwd in dirs.items() if not (tool == "dvc" and n > DVC_FULL_MAX)}
    for tool in dirs.keys() - full.keys():
        seed_dvc(dirs[tool])
        rows[tool]["full"] = None
    for name, cells_tools, command, prepare in [
        ("full", full, build, clean),
        ("noop", dirs, build, None),
        ("status", dirs, status, None),
        ("edit", dirs, build, edit),
        ("touch", dirs, build, touch),
    ]:
        print(f"{n} {shape}: {name}", file=sys.stderr, flush=True)
        for tool, result in cell(cells_tools, command, prepare).items():
            rows[tool][name] = result
        if name == "full":
            for tool, cwd in dirs.items():
                sh(build(tool), cwd=cwd)  # whatever the full cell left, go on from a built tree
    for cwd in dirs.values():
        shutil.rmtree(cwd, ignore_errors=True)
    return [rows[tool] for tool in tools]


def fmt_time(seconds):
    return f"{seconds:.4f}" if seconds < 1 else f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def fmt(c, with_reran=False):
    if c is None:
        return "not run ¹"
    wall, rss, reran = c
    text = f"{fmt_time(wall)} s, {rss / 1024:.0f} MB"
    return f"{text} ({reran})" if with_reran else text


def version(cmd):
    done = sh(cmd, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--shapes", default="chains")
    parser.add_argument("--peer-max", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(REPO, "BENCHMARKS.md"))
    args = parser.parse_args()
    dagrun = ensure_tools()
    sizes = [int(s) for s in args.sizes.split(",")]
    shapes = args.shapes.split(",")
    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dagrun-compare-") as work:
        for n in sizes:
            for shape in shapes:
                tools = [t for t in ["dagrun", "ninja", "make", "dvc", "snakemake"] if t not in PEERS or n <= args.peer_max]
                rows += measure(tools, n, shape, dagrun, work)
    write_report(args, rows, started, dagrun)


def write_report(args, rows, started, dagrun):
    venv_bin = os.path.join(VENV, "bin")
    lines = [
        "# Benchmarks: dagrun beside ninja, make, DVC and Snakemake",
        "",
        f"Written by `benches/compare.py --sizes {args.sizes} --shapes {args.shapes} --peer-max {args.peer_max}`",
        f"on {started:%Y-%m-%d %H:%M} UTC. Machine: {os.cpu_count()} cores, {platform.platform()};",
        "shared and noisy, so compare cells of one run, not runs.",
        "",
        "Versions: " + "; ".join([
            version([dagrun, "--version"]),
            "ninja " + version(["ninja", "--version"]),
            version(["make", "--version"]),
            "dvc " + version([os.path.join(venv_bin, "dvc"), "--version"]),
            "snakemake " + version([os.path.join(venv_bin, "snakemake"), "--version"]),
        ]) + ".",
        "",
        "Each stage is `cat INPUTS > OUT && echo NAME >> OUT` (benches/gen_pipeline.py); chains =",
        "round(sqrt(N-1)) independent chains and one fan-in sink. The tools take turns within a",
        "cell, one run each, each in its own copy of the pipeline. Each cell: median wall time,",
        "peak RSS of the command, and for edit and touch the stages that re-ran (outputs",
        "rewritten). full: from scratch, `-j 2` (dagrun with its run-cache on, storing every",
        "output); no-op: the build again; status: `dagrun status`, `ninja -n`, `make -n`, `dvc",
        "status`, `snakemake -n`; edit: a line appended to one source; touch: its mtime bumped.",
        "",
        "| tool | N | full | no-op | status | edit (re-ran) | touch (re-ran) | no-op µs/stage | full vs ninja | no-op vs ninja |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ninja = {(r["n"], r["shape"]): r for r in rows if r["tool"] == "ninja"}

    def vs_ninja(r, name):
        theirs = ninja.get((r["n"], r["shape"]), {}).get(name)
        return f"{r[name][0] / theirs[0]:.2f}×" if r[name] and theirs else "–"

    for r in rows:
        shape = "" if r["shape"] == "chains" else f" ({r['shape']})"
        lines.append(
            f"| {r['tool']} | {r['n']:,}{shape} | {fmt(r['full'])} | {fmt(r['noop'])} | {fmt(r['status'])} | "
            f"{fmt(r['edit'], True)} | {fmt(r['touch'], True)} | {r['noop'][0] / r['n'] * 1e6:.1f} | "
            f"{vs_ninja(r, 'full')} | {vs_ninja(r, 'noop')} |"
        )
    lines += [
        "",
        f"¹ Not run: DVC's full build of more than {DVC_FULL_MAX} stages takes minutes (over 300 s at",
        "1,000 on this machine); its built state was seeded with `make -j2` and `dvc commit -f`.",
        "",
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
