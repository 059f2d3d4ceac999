#!/usr/bin/env python3
"""check-includes.py — fails, naming file and line, when an include points the
wrong way between the layers or closes a cycle between modules.

The layers, lowest first: common/ (the tensor types both sides read),
kernels/, engine/, server/ (the HTTP server), cli/ (the `ppd` commands).  A
file may include its own layer and the ones below it, never one above: the
kernels know no engine, the engine knows no server or command line, the server
knows no command.

A module is a .c file and the header of the same name (engine/decode/sched.c and
engine/decode/sched.h); a header without a .c file is a module of its own.  Module A
depends on module B when a file of A includes B's header.  Any cycle among
modules fails, because a header shared by files that call one another hides
who depends on whom; each file that others call gets its own header instead.

Only the quoted includes of the files git tracks or would track count (system headers are not the
project's).  tests/ may include anything.  `make test` and `make
check-includes` run it; it reads the files once and takes well under a second.
"""
import os
import re
import subprocess
import sys

LAYERS = ["common", "kernels", "engine", "server", "cli"]
EXTS = (".c", ".h", ".cu", ".cuh")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def tracked_files(root):
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *LAYERS], cwd=root, check=True,
                             capture_output=True, text=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        out = []
        for layer in LAYERS:
            for d, _, names in os.walk(os.path.join(root, layer)):
                out += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(f for f in out if f.endswith(EXTS) and os.path.isfile(os.path.join(root, f)))


def layer_of(path):
    top = path.split("/", 1)[0]
    return LAYERS.index(top) if top in LAYERS else None


def module_of(path, files):
    stem = os.path.splitext(path)[0]
    # a header and its .c (or .cu) are one module
    return stem if (stem + ".c") in files or (stem + ".cu") in files or path.endswith((".c", ".cu")) \
        else path


def main():
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    files = tracked_files(root)
    known = set(files)
    problems = []
    edges = {}   # module -> {module: (file, line, target)}
    for f in files:
        mod = module_of(f, known)
        edges.setdefault(mod, {})
        with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fh:
            for n, text in enumerate(fh, 1):
                m = INCLUDE.match(text)
                if not m:
                    continue
                name = m.group(1)
                local = os.path.normpath(os.path.join(os.path.dirname(f), name))
                target = local if local in known else (name if name in known else None)
                if target is None:
                    continue
                lf, lt = layer_of(f), layer_of(target)
                if lt > lf:
                    problems.append(f"{f}:{n}: {LAYERS[lf]}/ includes {target} from {LAYERS[lt]}/, "
                                    f"a layer above it")
                tmod = module_of(target, known)
                if tmod != mod:
                    edges[mod].setdefault(tmod, (f, n, target))

    # Tarjan's strongly connected components, iteratively
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = [0]
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = counter[0]; counter[0] += 1
        stack.append(start); on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1
                    stack.append(w); on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, {})))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop(); on_stack.discard(w); comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        sccs.append(sorted(comp))
    for comp in sccs:
        members = set(comp)
        problems.append("include cycle among " + ", ".join(comp) + ":")
        for a in comp:
            for b, (f, n, target) in sorted(edges.get(a, {}).items()):
                if b in members:
                    problems.append(f"  {f}:{n}: includes {target}")

    for p in problems:
        print("check-includes: " + p, file=sys.stderr)
    if problems:
        print("check-includes: includes must run cli → server → engine → kernels → common, "
              "without cycles", file=sys.stderr)
        return 1
    print(f"check-includes: {len(files)} files, every include points down and no module cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
