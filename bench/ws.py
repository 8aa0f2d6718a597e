#!/usr/bin/env python3
"""WebSocket benchmarks: memory per authenticated connection (`im-bench ws-conns`) and push fan-out
(`im-bench ws-push`), the gateway next to the bare tokio-tungstenite broadcast server (`bare-ws`),
alternating systems in each round, every server started fresh and pinned to core 0, the client on
core 1. Writes the "WebSocket push" section of docs/BENCHMARKS.md and docs/benchmarks/ws.json."""

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
from run import BIN, LOAD_CPU, PROXY_CPU, ROOT, free_port, wait_port, write_section  # noqa: E402
import svg  # noqa: E402

BEGIN, END = "<!-- ws:begin -->", "<!-- ws:end -->"


def start_gateway(tmp, backend_port, binary=os.path.join(BIN, "im-gateway"), extra_yaml=""):
    ports = {k: free_port() for k in ("edge", "admin", "push", "internal")}
    with open(os.path.join(tmp, "routes.yaml"), "w") as f:
        f.write(f"""upstreams:
  echo:
    endpoints: ["127.0.0.1:{backend_port}"]
    health_check: {{ grpc_service: im.echo.v1.EchoService, interval: 1s }}
routes:
  - {{ name: echo, http: {{ path: /service/echo }}, cmd: 9001, upstream: echo, grpc: im.echo.v1.EchoService/Echo,
       auth: none, rate_limit: {{ key: ip, per_second: 1000000, burst: 1000000 }} }}
""")
    # With an RS256 public key beside the secret (bench/jwt_cold.py), tokens of either kind pass.
    rsa_pub = os.path.join(tmp, "rsa.pub.pem")
    rs256 = ", public_keys: [{ alg: RS256, file: rsa.pub.pem }]" if os.path.exists(rsa_pub) else ""
    with open(os.path.join(tmp, "gateway.yaml"), "w") as f:
        f.write(f"""listen: {{ edge: 127.0.0.1:{ports['edge']}, admin: 127.0.0.1:{ports['admin']},
          push: 127.0.0.1:{ports['push']}, internal: 127.0.0.1:{ports['internal']} }}
threads: 1
routes: routes.yaml
reload: {{ watch: false }}
shutdown: {{ grace_period: 0s, graceful_timeout: 1s }}
auth: {{ hs256_secret_file: hs256.key{rs256} }}
push:
  internal_token_file: internal.token
  max_connections_per_ip: 100000
  handshake_rate: {{ per_second: 100000, burst: 100000 }}
  drain_window: 0s
{extra_yaml}""")
    proc = subprocess.Popen(PROXY_CPU + [binary, "run", "--config", os.path.join(tmp, "gateway.yaml")],
                            env=dict(os.environ, RUST_LOG="warn"))
    for p in ports.values():
        wait_port(p)
    auth = ["--secret", os.path.join(tmp, "hs256.key"), "--internal-token", os.path.join(tmp, "internal.token")]
    return proc, ports["push"], ports["internal"], auth


def start_bare(_tmp, _backend_port):
    ws, grpc = free_port(), free_port()
    proc = subprocess.Popen(PROXY_CPU + [os.path.join(BIN, "bare-ws"), "--ws", f"127.0.0.1:{ws}",
                                         "--grpc", f"127.0.0.1:{grpc}"])
    wait_port(ws)
    wait_port(grpc)
    return proc, ws, grpc, []


SYSTEMS = {"gateway": start_gateway, "bare tokio-tungstenite": start_bare}
# Each client run takes fresh source addresses (127.0.N.x): ports a finished run left in TIME_WAIT
# would otherwise make the next run's binds search a crowded port range (it skewed connect storms).
SOURCE_NETS = iter(range(1, 255))


def run_client(kind, start, tmp, backend_port, extra):
    proc, ws, grpc, auth = start(tmp, backend_port)
    try:
        time.sleep(1.5)  # the gateway's backend joins after a passing health check
        cmd = LOAD_CPU + [os.path.join(BIN, "im-bench"), kind, "--url", f"ws://127.0.0.1:{ws}/ws",
                          "--push", f"http://127.0.0.1:{grpc}", "--pid", str(proc.pid),
                          "--source-net", str(next(SOURCE_NETS))] + auth + extra
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--conns", type=int, default=15_000, help="connections for the memory case")
    ap.add_argument("--push-conns", type=int, default=10_000)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--group-repeats", type=int, default=10)
    ap.add_argument("--storm", type=int, default=10_000, help="handshakes in a connect storm (0: skip)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the section from docs/benchmarks/ws.json without measuring")
    args = ap.parse_args()
    if args.report_only:
        with open(os.path.join(os.path.dirname(args.out), "benchmarks", "ws.json")) as f:
            results = json.load(f)["runs"]
        args.runs = len(results["gateway"]["conns"])
        write_report(args, results)
        return

    tmp = tempfile.mkdtemp(prefix="im-bench-ws-")
    with open(os.path.join(tmp, "hs256.key"), "w") as f:
        f.write("bench-hs256-secret-0123456789abcdef")
    with open(os.path.join(tmp, "internal.token"), "w") as f:
        f.write("bench-internal-token-0123456789")
    backend_port = free_port()
    backend = subprocess.Popen(LOAD_CPU + [os.path.join(BIN, "im-backends"), "--services", "echo", "--diagnostics",
                                           "--listen", f"127.0.0.1:{backend_port}"],
                               env=dict(os.environ, RUST_LOG="warn"))
    results = {name: {"conns": [], "push": [], "storm": []} for name in SYSTEMS}
    try:
        wait_port(backend_port)
        for run in range(args.runs):
            for name, start in SYSTEMS.items():
                r = run_client("ws-conns", start, tmp, backend_port, ["--conns", str(args.conns)])
                results[name]["conns"].append(r)
                print(f"run {run + 1}/{args.runs} {name} ws-conns: {r['bytes_per_conn']:.0f} B/conn", file=sys.stderr)
            for name, start in SYSTEMS.items():
                if not args.storm:
                    break
                r = run_client("ws-storm", start, tmp, backend_port, ["--conns", str(args.storm)])
                results[name]["storm"].append(r)
                print(f"run {run + 1}/{args.runs} {name} ws-storm: {r['handshakes_per_s']:.0f}/s, "
                      f"{r['server_cpu_us_per_handshake']:.0f} us CPU each", file=sys.stderr)
            for name, start in SYSTEMS.items():
                r = run_client("ws-push", start, tmp, backend_port,
                               ["--conns", str(args.push_conns), "--burst", str(args.burst),
                                "--group-repeats", str(args.group_repeats)])
                results[name]["push"].append(r)
                summary = ", ".join(f"{p['phase']} {p['deliveries_per_cpu_s']:.0f}/cpu-s" for p in r["phases"])
                print(f"run {run + 1}/{args.runs} {name} ws-push: {summary}", file=sys.stderr)
    finally:
        backend.terminate()
        backend.wait(timeout=10)
    write_report(args, results)


def med(values):
    return statistics.median(values)


def write_report(args, results):
    gw, bare = results["gateway"], results["bare tokio-tungstenite"]
    mem = {n: med([r["bytes_per_conn"] for r in results[n]["conns"]]) for n in results}
    phases = ["users", "group", "burst"]

    def phase_med(sys_results, phase, key):
        return med([next(p for p in r["phases"] if p["phase"] == phase)[key] for r in sys_results["push"]])

    verdict = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    lines = [
        BEGIN,
        "## WebSocket push",
        "",
        f"Command: `python3 bench/ws.py --runs {args.runs}` (also run by `bench/run.sh`); date {datetime.date.today().isoformat()}.",
        "Each case starts its server fresh, pinned to core 0; the client (`im-bench`) runs on core 1 and opens",
        "connections from 4 loopback source addresses. Medians of the rounds; the systems alternate within each round.",
        "The baseline is `bare-ws` (bench crate): tokio-tungstenite with 1 KiB read buffers, one task per connection,",
        "one write per message, the same PushService entry point, no auth, limits or registry.",
        "",
        f"### Memory per connection ({args.conns:,} connections)",
        "",
        "Server RSS growth (`/proc/<pid>/status`) divided by connections, measured after every connection sent one",
        "request (gateway: routed by `cmd` to the echo backend) and received one push.",
        "",
        "| system | bytes per connection (median) | each round | vs bare |",
        "|---|---:|---:|---:|",
    ]
    for n in results:
        each = ", ".join(f"{r['bytes_per_conn']:.0f}" for r in results[n]["conns"])
        lines.append(f"| {n} | {mem[n]:.0f} ({mem[n] / 1024:.2f} KiB) | {each} | "
                     f"{mem[n] / mem['bare tokio-tungstenite']:.2f}x |")
    lines += [
        "",
        f"### Push fan-out ({args.push_conns:,} connected users)",
        "",
        "(a) one Push call per user, 32 calls in flight; (b) one Push to all users, repeated "
        f"{args.group_repeats} times; (c) a burst of {args.burst} Pushes to all users, 8 calls in flight.",
        "Deliveries per server CPU-second from `/proc/<pid>/stat`; latency from the Push call to the client",
        "decoding the frame; for (c) from the start of the burst (every push of it is requested at once), so",
        "it shows how long each system takes to drain the burst. The client shares the machine (core 1).",
        "",
        "| case | gateway deliveries/CPU-s | bare deliveries/CPU-s | ratio | gateway p50 / p99 ms | bare p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ratios = {}
    for ph in phases:
        g, b = phase_med(gw, ph, "deliveries_per_cpu_s"), phase_med(bare, ph, "deliveries_per_cpu_s")
        ratios[ph] = g / b
        lines.append(
            f"| ({'abc'[phases.index(ph)]}) {ph} | {g:.0f} | {b:.0f} | {g / b:.2f}x | "
            f"{phase_med(gw, ph, 'p50_ms'):.1f} / {phase_med(gw, ph, 'p99_ms'):.1f} | "
            f"{phase_med(bare, ph, 'p50_ms'):.1f} / {phase_med(bare, ph, 'p99_ms'):.1f} |")
    if args.storm and all(results[n].get("storm") for n in results):
        def storm_med(n, key):
            return med([r[key] for r in results[n]["storm"]])
        lines += [
            "",
            f"### Connect storm ({args.storm:,} handshakes, 128 in flight)",
            "",
            "Each client opens TCP, completes the WebSocket handshake (gateway: HS256 token checked, session",
            "registered) and closes at once. Tokens are signed before the clock starts.",
            "",
            "| system | handshakes/s | server CPU µs per handshake | p50 / p99 ms |",
            "|---|---:|---:|---:|",
        ]
        for n in results:
            lines.append(f"| {n} | {storm_med(n, 'handshakes_per_s'):.0f} | "
                         f"{storm_med(n, 'server_cpu_us_per_handshake'):.0f} | "
                         f"{storm_med(n, 'p50_ms'):.1f} / {storm_med(n, 'p99_ms'):.1f} |")
    gmem = mem["gateway"]
    plots = os.path.join(os.path.dirname(args.out), "benchmarks")
    os.makedirs(plots, exist_ok=True)
    names = list(results)
    svg.bars(os.path.join(plots, "ws-memory.svg"), f"Memory per WebSocket connection at {args.conns:,}", "B",
             names, {"bytes/conn": [mem[n] for n in names]})
    svg.bars(os.path.join(plots, "ws-push.svg"), "Push deliveries per server CPU-second", "/CPU-s",
             [f"({'abc'[i]}) {ph}" for i, ph in enumerate(phases)],
             {n: [phase_med(results[n], ph, "deliveries_per_cpu_s") for ph in phases] for n in names})
    lines += [
        "",
        "![Memory per connection](benchmarks/ws-memory.svg)",
        "",
        "![Push deliveries per CPU-second](benchmarks/ws-push.svg)",
        "",
        "### WebSocket targets",
        "",
        "| target | measured | |",
        "|---|---:|---|",
        f"| memory per connection <= 8 KiB (stretch 6 KiB) | {gmem / 1024:.1f} KiB | {verdict(gmem <= 8192)} |",
        f"| (a) one push per user >= 0.8x bare | {ratios['users']:.2f}x | {verdict(ratios['users'] >= 0.8)} |",
        f"| (b) group push >= 0.8x bare | {ratios['group']:.2f}x | {verdict(ratios['group'] >= 0.8)} |",
        f"| (c) burst >= 1.5x bare | {ratios['burst']:.2f}x | {verdict(ratios['burst'] >= 1.5)} |",
        "",
        "Push ratios move between runs on this machine: over the runs of this command on 2026-11-25, (a) came",
        "out between 0.76x and 0.93x and (b) between 0.75x and 0.98x. Read both as at the edge of their 0.8x",
        "target, not safely above it. Per-round figures are in the raw JSON.",
        "",
        "Connect storms: each client run now takes fresh loopback source addresses (127.0.N.x). Earlier runs",
        "reused 127.0.0.x, whose ports were still in TIME_WAIT from the previous 30,000+ connections, and the",
        "gateway's storm rounds came out anywhere between 417 and 8,500 handshakes/s; with fresh addresses the",
        "rounds are steady for both systems.",
        "",
        "The gateway's figure varies between rounds (7.5 to 9.2 KB per connection over the runs made on",
        "2026-11-25) while the baseline's does not: how much the allocator keeps depends on how many requests",
        "are in flight while connections open. The target holds on the median, not on every round.",
        "",
        "Where the memory goes (heaptrack, 2026-11-25): one task per session (handshake state, then reads,",
        "the outbox pump and one timer) about 2 KiB, tungstenite's buffers about 1 KiB, the registry entry,",
        "close channel and Pingora's stream about 1.3 KiB; the rest is allocator overhead and fragmentation",
        "left by the requests in flight while the connections open. What it took to get here from 37 KiB:",
        "Pingora's own per-connection task (about 13 KiB with its handshake state) ends at once because the",
        "push app moves the stream into a task of its own; no L4 buffer under tungstenite's; an outbound queue",
        "that allocates nothing while empty (a 1,024-slot channel cost 1.3 KiB); reader and writer in one task;",
        "sessions keep the verified identity instead of the token, and handshakes do not fill the",
        "verified-token cache. Case (a) is one gRPC call per delivery, so it mostly measures PushService's",
        "call path (tonic server, internal-token check, registry lookup) against the baseline's bare map.",
        "Raw results: [`benchmarks/ws.json`](benchmarks/ws.json).",
        END,
    ]
    write_section(args.out, BEGIN, END, "\n".join(lines), "ws.json",
                  {"memory_bytes_per_conn": mem, "runs": results})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
