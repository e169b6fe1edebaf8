#!/usr/bin/env python3
"""Trim a fuzz corpus to at most CAP files after `cargo fuzz cmin`.

    fuzz/trim_corpus.py TARGET [CAP] [-- LIBFUZZER_ARGS...]

libFuzzer's merge keeps every input that adds an edge anywhere in the
binary (toml's and serde_json's parsers included), which leaves the config
and control-request corpora with many hundreds of files. This keeps, by
greedy set cover over the edges the corpus reaches:

1. inputs until every edge in ctsync's own source (src/) is covered, then
2. the inputs adding the most other edges, up to CAP files in all.

It reads the edges each input covers from a libFuzzer merge control file
(run here, edge coverage only) and maps edges to source files through the
binary's `__sancov_pcs` table and addr2line. Build first
(`cargo +nightly fuzz build TARGET`); run from the repository root.
Linux x86-64 only (reads the ELF relocations by hand).
"""

import os
import re
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src") + os.sep


def section(binary, name):
    out = subprocess.run(["readelf", "-S", "-W", binary], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = re.search(r"\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", line)
        if m and m.group(1) == name:
            return tuple(int(m.group(i), 16) for i in (2, 3, 4))
    sys.exit(f"{binary}: no section {name}")


def edge_files(binary):
    """The source file of each edge (index into the PC table)."""
    data = open(binary, "rb").read()
    addr, _, size = section(binary, "__sancov_pcs")
    _, rel_off, rel_size = section(binary, ".rela.dyn")
    relocated = {}
    for i in range(rel_size // 24):
        offset, info, addend = struct.unpack_from("<QQq", data, rel_off + 24 * i)
        if addr <= offset < addr + size and info & 0xFFFFFFFF == 8:  # R_X86_64_RELATIVE
            relocated[offset] = addend
    pcs = [relocated.get(addr + 16 * i, 0) for i in range(size // 16)]
    out = subprocess.run(
        ["addr2line", "-e", binary],
        input="".join(f"{pc:#x}\n" for pc in pcs),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return out


def main():
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        extra = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    if not args:
        sys.exit(__doc__)
    target = args[0]
    cap = int(args[1]) if len(args) > 1 else 400
    binary = os.path.join(ROOT, "fuzz/target/x86_64-unknown-linux-gnu/release", target)
    corpus = os.path.join(ROOT, "fuzz/corpus", target)
    with tempfile.TemporaryDirectory() as tmp:
        control = os.path.join(tmp, "control")
        scratch = os.path.join(tmp, "out")
        os.mkdir(scratch)
        subprocess.run(
            [binary, "-merge=1", "-use_counters=0", f"-merge_control_file={control}", *extra, scratch, corpus],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        lines = open(control).read().split("\n")
    n = int(lines[0])
    files = lines[2 : 2 + n]
    cov = {}
    for line in lines[2 + n :]:
        p = line.split()
        if p and p[0] == "COV":
            cov[int(p[1])] = set(map(int, p[2:]))
    where = edge_files(binary)
    every = set().union(*cov.values()) if cov else set()
    own = {e for e in every if where[e].startswith(SRC)}
    size = {i: os.path.getsize(files[i]) for i in cov}
    chosen, got = [], set()

    def pick(universe, limit):
        left = {i: c & universe for i, c in cov.items() if i not in chosen}
        while len(chosen) < limit:
            best = max(left, key=lambda i: (len(left[i] - got), -size[i]), default=None)
            if best is None or not left[best] - got:
                return
            got.update(cov[best])
            chosen.append(best)
            del left[best]

    pick(own, len(cov))
    for_own = len(chosen)
    pick(every, cap)
    keep = {os.path.basename(files[i]) for i in chosen}
    for name in os.listdir(corpus):
        if name not in keep:
            os.remove(os.path.join(corpus, name))
    print(
        f"{target}: kept {len(keep)} of {n} files ({for_own} for src/); "
        f"edges {len(got)}/{len(every)}, in src/ {len(got & own)}/{len(own)}"
    )


if __name__ == "__main__":
    main()
