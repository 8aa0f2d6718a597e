#!/usr/bin/env python3
"""Cross-node push in cluster mode: two gateway nodes and one redis-server, the 10,000 WebSocket
clients on node B, PushService called on node A (cross-node: every push travels A -> Redis -> B)
or on node B itself (same-node), alternating in every round. Reports deliveries per wall-second
and latency for the three ws-push phases as cross / same ratios, and Redis's own count of PUBLISH
commands per Push call (INFO commandstats). Writes the "Cluster mode" section of
docs/BENCHMARKS.md and docs/benchmarks/cluster.json.

    python3 bench/cluster.py --runs 3"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ws  # noqa: E402
from run import BIN, LOAD_CPU, ROOT, free_port, wait_port, write_section  # noqa: E402

BEGIN, END = "<!-- cluster:begin -->", "<!-- cluster:end -->"
PHASES = ["users", "group", "burst"]


def redis_calls(port, command):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True,
                         text=True, check=True).stdout
    prefix = f"cmdstat_{command}:calls="
    for line in out.splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix):].split(",")[0])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--conns", type=int, default=10_000)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--group-repeats", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="im-bench-cluster-")
    redis_port = free_port()
    redis = subprocess.Popen(LOAD_CPU + ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    backend_port = free_port()
    backend = subprocess.Popen(LOAD_CPU + [os.path.join(BIN, "im-backends"), "--services", "echo",
                                           "--listen", f"127.0.0.1:{backend_port}"],
                               env=dict(os.environ, RUST_LOG="warn"))
    results = {"same-node": [], "cross-node": []}
    publishes = {"same-node": [], "cross-node": []}
    try:
        wait_port(redis_port)
        wait_port(backend_port)
        for run in range(args.runs):
            for case in results:
                nodes = []
                for name in ("a", "b"):
                    d = os.path.join(tmp, f"{run}-{case}-{name}")
                    os.makedirs(d)
                    with open(os.path.join(d, "hs256.key"), "w") as f:
                        f.write("bench-hs256-secret-0123456789abcdef")
                    with open(os.path.join(d, "internal.token"), "w") as f:
                        f.write("bench-internal-token-0123456789")
                    extra = (f"cluster: {{ redis_url: \"redis://127.0.0.1:{redis_port}\", node_id: {name}, "
                             f"prefix: \"bench{run}{case[0]}:\" }}\n")
                    nodes.append(ws.start_gateway(d, backend_port, extra_yaml=extra))
                (a, a_ws, a_grpc, auth), (b, b_ws, b_grpc, _) = nodes
                try:
                    time.sleep(3)  # both nodes live in each other's view, backend healthy
                    push_at = a_grpc if case == "cross-node" else b_grpc
                    before = redis_calls(redis_port, "publish")
                    cmd = LOAD_CPU + [os.path.join(BIN, "im-bench"), "ws-push", "--url", f"ws://127.0.0.1:{b_ws}/ws",
                                      "--push", f"http://127.0.0.1:{push_at}", "--pid", str(b.pid),
                                      "--source-net", str(next(ws.SOURCE_NETS)), "--conns", str(args.conns),
                                      "--burst", str(args.burst), "--group-repeats", str(args.group_repeats),
                                      "--settle-ms", "3000"] + auth
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode != 0:
                        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    calls = args.conns + args.group_repeats + args.burst
                    publishes[case].append((redis_calls(redis_port, "publish") - before, calls))
                    results[case].append(r)
                    summary = ", ".join(f"{p['phase']} {p['deliveries'] / p['wall_s']:.0f}/s p99 {p['p99_ms']:.1f} ms"
                                        for p in r["phases"])
                    print(f"run {run + 1}/{args.runs} {case}: {summary}", file=sys.stderr)
                finally:
                    for p in (a, b):
                        p.terminate()
                    for p in (a, b):
                        p.wait(timeout=10)
    finally:
        for p in (backend, redis):
            p.terminate()
            p.wait(timeout=10)
    write_report(args, results, publishes)


def write_report(args, results, publishes):
    med = statistics.median

    def phase(case, name, key):
        vals = []
        for r in results[case]:
            p = next(p for p in r["phases"] if p["phase"] == name)
            vals.append(p["deliveries"] / p["wall_s"] if key == "rate" else p[key])
        return med(vals)

    lines = [
        BEGIN,
        "## Cluster mode: cross-node push",
        "",
        f"Command: `python3 bench/cluster.py --runs {args.runs}`; date {datetime.date.today().isoformat()}.",
        f"Two gateway nodes (one worker thread each, core 0) and one redis-server (core 1, with the client and",
        f"the echo backend); {args.conns:,} WebSocket clients on node B. Same-node: PushService called on B.",
        "Cross-node: called on A, which looks the users up in Redis and publishes one message per target node",
        "(here: B). Throughput is deliveries per wall-second of each ws-push phase, medians of the rounds; the",
        "cases alternate in every round, each on fresh nodes; the client waits 3 s after connecting (both",
        "cases) so the registrations made during the connect storm are in Redis.",
        "",
        "| phase | same-node deliveries/s | cross-node deliveries/s | cross / same | same p99 ms | cross p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in PHASES:
        same, cross = phase("same-node", name, "rate"), phase("cross-node", name, "rate")
        lines.append(f"| ({'abc'[PHASES.index(name)]}) {name} | {same:,.0f} | {cross:,.0f} | {cross / same:.2f}x | "
                     f"{phase('same-node', name, 'p99_ms'):.1f} | {phase('cross-node', name, 'p99_ms'):.1f} |")
    per_push = {case: med([p / c for p, c in publishes[case]]) for case in publishes}
    lines += [
        "",
        "Redis `PUBLISH` commands per Push call (`INFO commandstats`, probes included): "
        f"same-node {per_push['same-node']:.3f}, cross-node {per_push['cross-node']:.3f} "
        "(target: one per target node; here one target node).",
        "",
        "Cross / same at or above 0.7x is the target.",
        "",
        "Phases as in \"WebSocket push\" above: (a) one Push per user, 32 in flight; (b) one Push to all users,",
        f"{args.group_repeats} times; (c) {args.burst} Pushes to all users at once. Raw: "
        "[`benchmarks/cluster.json`](benchmarks/cluster.json).",
        END,
    ]
    block = "\n".join(lines)
    write_section(args.out, BEGIN, END, block, "cluster.json", {"runs": results, "publishes": publishes})
    print(block)


if __name__ == "__main__":
    main()
