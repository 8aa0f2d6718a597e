#!/usr/bin/env python3
"""Fails when a module of gateway/src imports a module that imports it back (directly or round a
longer loop). Modules are files; `use` paths through `crate::` and `super::` are resolved to the
deepest module file they name. Test modules (`#[cfg(test)]` to the end of a file) and comments
are ignored. Usage: scripts/module-cycles.py [gateway/src]"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "gateway/src"
modules = {}  # module path (tuple) -> file
for dirpath, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
        if rel[-1] == "mod":
            rel = rel[:-1]
        if rel in (["lib"], ["main"]):
            rel = []
        modules[tuple(rel)] = os.path.join(dirpath, f)


def resolve(path):
    """The deepest module a `::` path names."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in modules:
            return tuple(path[:n])
    return None


graph = {}
for mod, file in modules.items():
    src = open(file, encoding="utf-8").read()
    cut = src.find("#[cfg(test)]")
    if cut >= 0:
        src = src[:cut]
    src = re.sub(r"//[^\n]*", "", src)
    deps = set()
    for m in re.finditer(r"\b((?:crate|super)(?:::\w+)+)", src):
        parts = m.group(1).split("::")
        base = list(mod)
        if parts[0] == "crate":
            parts = parts[1:]
            base = []
        else:
            # `super` is the parent of this module (a mod.rs is its directory's module).
            while parts and parts[0] == "super":
                parts = parts[1:]
                base = base[:-1]
        target = resolve(base + parts)
        if target is not None and target != mod:
            deps.add(target)
    # Paths relative to this module: its own submodules (`use hub::Hub`, `frames::encode(..)`).
    children = {m[-1] for m in modules if len(m) == len(mod) + 1 and m[: len(mod)] == mod}
    for m in re.finditer(r"(?<![:\w])(\w+)((?:::\w+)+)", src):
        if m.group(1) in children:
            target = resolve(list(mod) + [m.group(1)] + m.group(2).split("::")[1:])
            if target is not None:
                deps.add(target)
    graph[mod] = deps

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(comp)


sys.setrecursionlimit(10000)
for v in list(graph):
    if v not in index:
        visit(v)

name = lambda m: "::".join(m) or "crate"
if sccs:
    for comp in sccs:
        members = sorted(comp)
        print("import cycle among: " + ", ".join(name(m) for m in members))
        for a in members:
            for b in sorted(graph[a]):
                if b in comp:
                    print(f"  {name(a)} -> {name(b)}")
    sys.exit(1)
print(f"module-cycles: {len(modules)} modules, no import cycles")
