#!/usr/bin/env python3
"""Generates one pipeline as dagrun, ninja, make, DVC and Snakemake files, in the shapes of
../shared/anchors/RESULTS.md: `chains` (round(sqrt(N-1)) independent chains and one
fan-in sink) or `wide` (N-1 independent leaves and one sink). Each stage is
`cat INPUTS > OUT && echo NAME >> OUT`.

usage: gen_pipeline.py DIR N chains|wide
"""
import math
import os
import sys


def stages(n, shape):
    """Yields (name, inputs, output) in dependency order."""
    if shape == "wide":
        leaves = [(f"s{i}", [f"src/s{i}.txt"], f"out/s{i}.txt") for i in range(n - 1)]
        yield from leaves
        yield ("sink", [out for _, _, out in leaves], "out/sink.txt")
        return
    chains = max(1, round(math.sqrt(n - 1)))
    per_chain = [(n - 1) // chains + (1 if c < (n - 1) % chains else 0) for c in range(chains)]
    ends = []
    for c, length in enumerate(per_chain):
        prev = f"src/c{c}.txt"
        for k in range(length):
            name = f"c{c}_{k}"
            out = f"out/{name}.txt"
            yield (name, [prev], out)
            prev = out
        ends.append(prev)
    yield ("sink", ends, "out/sink.txt")


def main():
    root, n, shape = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.makedirs(os.path.join(root, "src"), exist_ok=True)
    os.makedirs(os.path.join(root, "out"), exist_ok=True)
    all_stages = list(stages(n, shape))
    sources = sorted({i for _, ins, _ in all_stages for i in ins if i.startswith("src/")})
    for src in sources:
        with open(os.path.join(root, src), "w") as f:
            f.write(f"{src}\n")
    with open(os.path.join(root, "pipeline.toml"), "w") as f:
        f.write(f'[pipeline]\nname = "bench-{shape}-{n}"\n\n')
        for name, ins, out in all_stages:
            quoted = ", ".join(f'"{i}"' for i in ins)
            f.write(f'[stages.{name}]\ncmd = "cat {" ".join(ins)} > {out} && echo {name} >> {out}"\n')
            f.write(f'inputs = [{quoted}]\noutputs = ["{out}"]\n\n')
    with open(os.path.join(root, "build.ninja"), "w") as f:
        f.write("rule stage\n  command = cat $in > $out && echo $name >> $out\n\n")
        for name, ins, out in all_stages:
            f.write(f"build {out}: stage {' '.join(ins)}\n  name = {name}\n")
        f.write("default out/sink.txt\n")
    with open(os.path.join(root, "Makefile"), "w") as f:
        f.write("all: out/sink.txt\n\n")
        for name, ins, out in all_stages:
            f.write(f"{out}: {' '.join(ins)}\n\tcat {' '.join(ins)} > {out} && echo {name} >> {out}\n")
    with open(os.path.join(root, "dvc.yaml"), "w") as f:
        f.write("stages:\n")
        for name, ins, out in all_stages:
            f.write(f"  {name}:\n    cmd: cat {' '.join(ins)} > {out} && echo {name} >> {out}\n")
            f.write("    deps:\n" + "".join(f"      - {i}\n" for i in ins))
            f.write(f"    outs:\n      - {out}:\n          cache: false\n")
    with open(os.path.join(root, "Snakefile"), "w") as f:
        f.write('rule all:\n    input: "out/sink.txt"\n\n')
        for name, ins, out in all_stages:
            quoted = ", ".join(f'"{i}"' for i in ins)
            f.write(f"rule {name}:\n    input: {quoted}\n    output: \"{out}\"\n")
            f.write(f"    shell: \"cat {{input}} > {{output}} && echo {name} >> {{output}}\"\n\n")
    print(sources[0])


if __name__ == "__main__":
    main()
