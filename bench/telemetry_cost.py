#!/usr/bin/env python3
"""What telemetry costs on the HTTP bridge: one gateway binary, started once per configuration, the
configurations alternating in every round against the same backend and load tool (im-bench, JSON,
auth off, 8 connections x 16 streams):

    off            telemetry.access_log: false, no export
    off (control)  the same again, in a process of its own: the noise floor of a pair
    no access log (info)  telemetry.access_log: false with RUST_LOG at its default (info)
    access log     the default: access log on stderr (to a file), no export
    export 0       spans and metrics exported over OTLP to a sink, sample_ratio 0 (no span built for export)
    export 0.01    the same at sample_ratio 0.01
    export 0.1     the same at sample_ratio 0.1
    export 0.1 + access log

The OTLP sink is python grpcio (tests/grpc-clients/.venv, from scripts/bootstrap.sh) answering every
export with an empty reply, pinned to the load tool's core. Each gateway is pinned to core 0; its CPU
(every thread, the export thread included) is read from /proc per round.

    cargo build --release -p im-gateway -p im-backends -p im-bench
    python3 bench/telemetry_cost.py --runs 5

Prints medians and paired ratios against "off" and writes the "Telemetry cost" section of
docs/BENCHMARKS.md (docs/benchmarks/telemetry.json holds every round)."""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import bridge_inputs, start_bridge_gateway  # noqa: E402
from run import BIN, LOAD_CPU, ROOT, cpu_seconds, free_port, wait_port, write_section  # noqa: E402

BEGIN, END = "<!-- telemetry:begin -->", "<!-- telemetry:end -->"
SINK_PY = os.path.join(ROOT, "tests", "grpc-clients", ".venv", "bin", "python")

SINK = r'''
import sys, threading
from concurrent import futures
import grpc

counts = {"calls": 0, "bytes": 0}
lock = threading.Lock()

def export(request, context):
    with lock:
        counts["calls"] += 1
        counts["bytes"] += len(request)
    return b""  # an empty Export*ServiceResponse

class Any(grpc.GenericRpcHandler):
    def service(self, details):
        if details.method.startswith("/opentelemetry.proto.collector."):
            return grpc.unary_unary_rpc_method_handler(export)
        return None

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((Any(),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
for line in sys.stdin:
    with lock:
        print(f'{counts["calls"]} {counts["bytes"]}', flush=True)
'''

CONFIGS = {
    "off": ("telemetry: {{ access_log: false }}", "error"),
    # The same as "off" in a process of its own: what two identical gateways differ by here.
    "off (control)": ("telemetry: {{ access_log: false }}", "error"),
    # The default's twin with only the access log off: what the access line itself costs.
    "no access log (info)": ("telemetry: {{ access_log: false }}", "info"),
    "access log": ("telemetry: {{ access_log: true }}", "info"),
    "export 0": ("telemetry: {{ access_log: false, otlp_endpoint: 'http://127.0.0.1:{sink}', sample_ratio: 0.0 }}",
                 "error"),
    "export 0.01": ("telemetry: {{ access_log: false, otlp_endpoint: 'http://127.0.0.1:{sink}', sample_ratio: 0.01 }}",
                    "error"),
    "export 0.1": ("telemetry: {{ access_log: false, otlp_endpoint: 'http://127.0.0.1:{sink}', sample_ratio: 0.1 }}",
                   "error"),
    "export 0.1 + access log": (
        "telemetry: {{ access_log: true, otlp_endpoint: 'http://127.0.0.1:{sink}', sample_ratio: 0.1 }}", "info"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(BIN, "im-gateway"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--only", help="comma-separated configurations to run (default: all); \"off\" always runs")
    ap.add_argument("--case", choices=["bridge", "grpc"], default="bridge",
                    help="the JSON bridge (default) or native gRPC pass-through, both auth off")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    args = ap.parse_args()
    configs = {k: v for k, v in CONFIGS.items()
               if not args.only or k == "off" or k in args.only.split(",")}

    tmp, key, body = bridge_inputs("im-bench-telemetry-")
    sink_port, backend_port = free_port(), free_port()
    sink = subprocess.Popen(LOAD_CPU + [SINK_PY, "-c", SINK, str(sink_port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    backend = subprocess.Popen(LOAD_CPU + [os.path.join(BIN, "im-backends"), "--services", "echo",
                                           "--listen", f"127.0.0.1:{backend_port}"],
                               env=dict(os.environ, RUST_LOG="warn"))
    gateways = {}
    results = {name: [] for name in configs}

    # EchoRequest { text: "hello" }, as the raw message `im-bench grpc` frames.
    grpc_body = os.path.join(tmp, "echo-request.bin")
    with open(grpc_body, "wb") as f:
        f.write(b"\x0a\x05hello")
    mode, path, case_args = {
        "bridge": ("http", "/service/echo", ["--body", body, "--content-type", "application/json"]),
        "grpc": ("grpc", "/im.echo.v1.EchoService/Echo", ["--body", grpc_body]),
    }[args.case]

    def load(edge, n):
        cmd = LOAD_CPU + [os.path.join(BIN, "im-bench"), mode, "--url", f"http://127.0.0.1:{edge}{path}",
                          "--conns", "8", "--streams", "16", "--requests", str(n)] + case_args
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)

    try:
        wait_port(sink_port)
        wait_port(backend_port)
        for i, (name, (extra, rust_log)) in enumerate(configs.items()):
            gateways[name] = start_bridge_gateway(args.binary, tmp, f"cfg{i}", backend_port, key + ".pub",
                                                  extra=extra.format(sink=sink_port), rust_log=rust_log,
                                                  log=os.path.join(tmp, f"cfg{i}.log"))
            load(gateways[name][1], 5000)  # warm-up
        order = list(gateways.items())
        for run in range(args.runs):
            # The order rotates every round: whichever runs first in a round was measured slower
            # than its identical twin (a position effect of several per cent on this machine).
            shift = run % len(order)
            for name, (proc, edge) in order[shift:] + order[:shift]:
                before = cpu_seconds(proc.pid)
                r = load(edge, args.requests)
                r.setdefault("failed", sum(e["count"] for e in r.get("errors", [])))
                r["cpu_us_per_req"] = (cpu_seconds(proc.pid) - before) * 1e6 / max(1, r["ok"])
                results[name].append(r)
                print(f"run {run + 1}/{args.runs} {name}: {r['rps']:.0f} req/s, "
                      f"{r['cpu_us_per_req']:.1f} us CPU/req, {r['failed']} failed", file=sys.stderr)
        sink.stdin.write("\n")
        sink.stdin.flush()
        calls, received = (int(x) for x in sink.stdout.readline().split())
        logs = {name: os.path.getsize(os.path.join(tmp, f"cfg{i}.log")) for i, name in enumerate(configs)}
    finally:
        for proc, _ in gateways.values():
            proc.terminate()
        for p in (backend, sink):
            p.terminate()
    write_report(args, results, calls, received, logs)


def write_report(args, results, calls, received, logs):
    med = statistics.median
    base = results["off"]
    lines = [
        BEGIN,
        "## Telemetry cost",
        "",
        f"Command: `python3 bench/telemetry_cost.py --runs {args.runs} --requests {args.requests}"
        f"{f' --only {chr(39)}{args.only}{chr(39)}' if args.only else ''}"
        f"{f' --case {args.case}' if args.case != 'bridge' else ''}`; "
        f"date {datetime.date.today().isoformat()}.",
        f"One release `im-gateway`, {len(results)} configurations started side by side and alternating in every round",
        f"(in an order that rotates by one every round; {'JSON bridge' if args.case == 'bridge' else 'gRPC pass-through'}, auth off, im-bench 8 connections x 16",
        "streams, the same echo backend); each gateway on",
        "core 0, load tool and OTLP sink on core 1. \"paired\" is the median over rounds of config / off",
        "within the round. \"export\" sends spans (batched) and metrics (every 15 s) over OTLP/gRPC; the",
        "sampling decision is taken where a call's span opens, so an unsampled call builds nothing for",
        "export. The access log (text, `RUST_LOG=info`) goes to a file.",
        "",
        "| configuration | req/s (median) | paired req/s vs off | server CPU µs/req (median) | paired CPU vs off |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rounds in results.items():
        rps = [r["rps"] for r in rounds]
        cpu = [r["cpu_us_per_req"] for r in rounds]
        rps_pair = med([x / y["rps"] for x, y in zip(rps, base)])
        cpu_pair = med([x / y["cpu_us_per_req"] for x, y in zip(cpu, base)])
        lines.append(f"| {name} | {med(rps):,.0f} | {rps_pair:.3f} | {med(cpu):.1f} | {cpu_pair:.3f} |")
    if "access log" in results and "no access log (info)" in results:
        on, off = results["access log"], results["no access log (info)"]
        rps_pair = med([x["rps"] / y["rps"] for x, y in zip(on, off)])
        cpu_pairs = [x["cpu_us_per_req"] / y["cpu_us_per_req"] for x, y in zip(on, off)]
        lines += ["", f"The access line itself (\"access log\" / \"no access log (info)\", the same `RUST_LOG`): "
                      f"paired CPU {med(cpu_pairs):.3f} (worst round {max(cpu_pairs):.3f}), paired req/s {rps_pair:.3f}."]
    lines += [
        "",
        f"The sink received {calls} OTLP export calls ({received / 1e6:.1f} MB) over the whole run; access-log",
        f"files: {', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in logs.items() if v)}.",
        "Every round: [`benchmarks/telemetry.json`](benchmarks/telemetry.json).",
        END,
    ]
    block = "\n".join(lines)
    print(block)
    write_section(args.out, BEGIN, END, block, "telemetry.json", {"runs": results, "otlp_calls": calls,
                                                                   "otlp_bytes": received, "log_bytes": logs})


if __name__ == "__main__":
    main()
