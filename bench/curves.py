#!/usr/bin/env python3
"""How cost grows with work (issue #26): the gateway next to the bare tokio-tungstenite server,
alternating in every round, each server started fresh and pinned to core 0, the client on core 1.

- Memory: RSS growth per authenticated connection at 1k, 5k, 10k and 15k connections
  (`im-bench ws-conns`), with the kernel's own per-socket memory (TCP buffers, from
  /proc/net/sockstat) counted separately, since it is not in the process's RSS.
- Push latency against fan-out: one Push to every connected user (`im-bench ws-push`, group phase)
  at 100, 1k and 10k recipients, p50 and p99 from the Push call to the last client's frame.

    cargo build --release -p im-gateway -p im-backends -p im-bench
    python3 bench/curves.py --runs 3

Writes the "Curves" section of docs/BENCHMARKS.md, its plots and docs/benchmarks/curves.json."""

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svg  # noqa: E402
import ws  # noqa: E402
from run import BIN, ROOT, write_section  # noqa: E402

BEGIN, END = "<!-- curves:begin -->", "<!-- curves:end -->"
SIZES = [1_000, 5_000, 10_000, 15_000]
FANOUT = [100, 1_000, 10_000]


def measure(args, tmp, backend_port):
    mem = {n: {s: [] for s in SIZES} for n in ws.SYSTEMS}
    kernel = {s: [] for s in SIZES}
    push = {n: {s: [] for s in FANOUT} for n in ws.SYSTEMS}
    for run in range(args.runs):
        for size in SIZES:
            for name, start in ws.SYSTEMS.items():
                r = ws.run_client("ws-conns", start, tmp, backend_port, ["--conns", str(size)])
                mem[name][size].append(r["bytes_per_conn"])
                # Both ends live on this machine while the client holds them: two sockets each.
                kernel[size].append(r["tcp_mem_pages"] * 4096 / (2 * size))
                print(f"run {run + 1}/{args.runs} {name} {size} conns: {r['bytes_per_conn']:.0f} B/conn",
                      file=sys.stderr)
        for size in FANOUT:
            for name, start in ws.SYSTEMS.items():
                r = ws.run_client("ws-push", start, tmp, backend_port,
                                  ["--conns", str(size), "--burst", "1", "--group-repeats", "10"])
                group = next(p for p in r["phases"] if p["phase"] == "group")
                push[name][size].append(group)
                print(f"run {run + 1}/{args.runs} {name} push to {size}: p50 {group['p50_ms']:.1f} "
                      f"p99 {group['p99_ms']:.1f} ms", file=sys.stderr)
    return {"date": datetime.date.today().isoformat(), "runs": args.runs, "memory": mem, "kernel": kernel,
            "push": push}


def report(args, res):
    med = statistics.median
    names = list(ws.SYSTEMS)
    mem = {n: {int(s): v for s, v in res["memory"][n].items()} for n in names}
    push = {n: {int(s): v for s, v in res["push"][n].items()} for n in names}
    kernel = {int(s): v for s, v in res["kernel"].items()}
    plots = os.path.join(os.path.dirname(args.out), "benchmarks")
    lines = [
        BEGIN,
        "## Curves",
        "",
        f"Command: `python3 bench/curves.py --runs {res['runs']}`; {res['date']}. The gateway and the bare",
        "tokio-tungstenite server alternate in every round, each started fresh on core 0, the client on",
        "core 1; medians of the rounds.",
        "",
        "### Memory per connection against connections",
        "",
        "| connections | " + " | ".join(f"{n} B/conn" for n in names) + " | gateway vs bare | kernel TCP B/socket |",
        "|---:|" + "---:|" * (len(names) + 2),
    ]
    for s in SIZES:
        g, b = med(mem[names[0]][s]), med(mem[names[1]][s])
        lines.append(f"| {s:,} | {g:.0f} | {b:.0f} | {g / b:.2f}x | {med(kernel[s]):.0f} |")
    g15 = med(mem[names[0]][SIZES[-1]])
    k15 = med(kernel[SIZES[-1]])
    lines += [
        "",
        f"On paper, 1,000,000 connections at the 15,000-connection figure: {g15 * 1e6 / 2**30:.1f} GiB of gateway",
        f"RSS, plus the kernel's socket memory: buffer pages {k15 * 1e6 / 2**30:.2f} GiB at this run's idle sockets",
        "(sockstat's TCP `mem`; it grows with unread data, up to `tcp_rmem`/`tcp_wmem` per socket), plus the",
        "socket objects themselves (the kernel's slab: `tcp_sock`, file, inode), which sockstat does not count",
        "and this script does not measure, plus the file descriptors (`ulimit -n` must allow them).",
        "The gateway's figure falls with the count because part of its growth is fixed (the first",
        "connections size the registry, the runtime's and the allocator's arenas): the per-connection",
        "cost is the slope, not the 1,000-connection figure.",
        "",
        "![RSS per connection](benchmarks/curve-memory.svg)",
        "",
        "### Push latency against fan-out",
        "",
        "One Push to every connected user, repeated 10 times per round; latency from the Push call to each",
        "client's frame.",
        "",
        "| recipients | " + " | ".join(f"{n} p50 / p99 ms" for n in names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for s in FANOUT:
        cells = [f"{med(r['p50_ms'] for r in push[n][s]):.1f} / {med(r['p99_ms'] for r in push[n][s]):.1f}"
                 for n in names]
        lines.append(f"| {s:,} | " + " | ".join(cells) + " |")
    lines += ["", "![Push latency against fan-out](benchmarks/curve-push.svg)", "",
              "Every round: [`benchmarks/curves.json`](benchmarks/curves.json).", END]
    svg.bars(os.path.join(plots, "curve-memory.svg"), "RSS per connection (bytes)", "bytes",
             [f"{s:,}" for s in SIZES], {n: [med(mem[n][s]) for s in SIZES] for n in names})
    svg.bars(os.path.join(plots, "curve-push.svg"), "Group push p99 (ms) by recipients", "ms",
             [f"{s:,}" for s in FANOUT], {n: [med(r["p99_ms"] for r in push[n][s]) for s in FANOUT] for n in names})
    write_section(args.out, BEGIN, END, "\n".join(lines), "curves.json", res)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="im-bench-curves-")
    with open(os.path.join(tmp, "hs256.key"), "w") as f:
        f.write("bench-hs256-secret-0123456789abcdef")
    with open(os.path.join(tmp, "internal.token"), "w") as f:
        f.write("bench-internal-token-0123456789")
    backend_port = ws.free_port()
    backend = subprocess.Popen(ws.LOAD_CPU + [os.path.join(BIN, "im-backends"), "--services", "echo",
                                              "--diagnostics", "--listen", f"127.0.0.1:{backend_port}"],
                               env=dict(os.environ, RUST_LOG="warn"))
    try:
        ws.wait_port(backend_port)
        res = measure(args, tmp, backend_port)
    finally:
        backend.terminate()
        backend.wait(timeout=10)
    report(args, res)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
