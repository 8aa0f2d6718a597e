#!/usr/bin/env python3
"""Keeps the services' code in pieces a newcomer can hold: no source file over 500 lines and no
non-test function over 80 lines (both counted as raw lines, comments and blank lines included)
in gateway/src, backends/src, telemetry/src and launcher/src. A file counts whole, its inline tests included;
test files (`*_tests.rs`, `tests.rs`) are exempt, and so are functions in test modules
(`#[cfg(test)] mod … { }`) and `#[test]` functions: tests may be longer.
Usage: scripts/code-shape.py [dir …]; exits 1 and names each offender."""
import re
import sys
from pathlib import Path

MAX_FILE, MAX_FN = 500, 80
DIRS = ["gateway/src", "backends/src", "telemetry/src", "launcher/src"]


def blank_out(src: str) -> str:
    """`src` with comments, strings and char literals replaced by spaces (newlines kept)."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', src[i:i + 10]) and not (i and (src[i - 1].isalnum() or src[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", src[i:]).group(1)
            end = src.find('"' + hashes, i + 2 + len(hashes))
            j = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", src[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def block_end(text: str, open_at: int) -> int:
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(text) - 1


def check(path: Path) -> list:
    src = path.read_text()
    problems = []
    if path.name.endswith("tests.rs"):
        return problems
    text = blank_out(src)
    line_of = lambda pos: text.count("\n", 0, pos) + 1
    test_spans = []
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        test_spans.append((m.start(), block_end(text, m.end() - 1)))
    in_tests = lambda pos: any(a <= pos <= b for a, b in test_spans)
    lines = src.count("\n") + (0 if src.endswith("\n") else 1)
    if lines > MAX_FILE:
        problems.append(f"{path}: {lines} lines (at most {MAX_FILE}; move tests to a tests.rs)")
    for m in re.finditer(r"\bfn\s+(\w+)", text):
        if in_tests(m.start()) or re.search(r"#\[(tokio::)?test[^\]]*\]\s*(async\s+)?$", text[max(0, m.start() - 200):m.start()]):
            continue
        stop = re.compile(r"[{;]").search(text, m.end())
        if not stop or text[stop.start()] == ";":
            continue
        end = block_end(text, stop.start())
        length = line_of(end) - line_of(m.start()) + 1
        if length > MAX_FN:
            problems.append(f"{path}:{line_of(m.start())}: fn {m.group(1)} is {length} lines (at most {MAX_FN})")
    return problems


def main() -> int:
    dirs = sys.argv[1:] or DIRS
    problems = [p for d in dirs for f in sorted(Path(d).rglob("*.rs")) for p in check(f)]
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
