#!/usr/bin/env python3
"""Bridge and gRPC pass-through throughput and latency, next to the backend called directly and to
a bare Pingora pass-through, all in one run. Writes docs/BENCHMARKS.md and docs/benchmarks/raw.json.

Every system gets one worker thread; h2load is the client on the same 2 cores, so figures are
compared as ratios within the run, never against other machines."""

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pb_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def echo_request(text):
    raw = text.encode()
    return b"\x0a" + pb_varint(len(raw)) + raw  # EchoRequest.text = field 1


def percentile(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, round(p / 100 * (len(sorted_vals) - 1))))
    return sorted_vals[k]


def h2load(url, body, headers, n, c, m, log):
    if os.path.exists(log):
        os.remove(log)  # h2load appends
    cmd = ["h2load", "-n", str(n), "-c", str(c), "-m", str(m), "-d", body, "--log-file", log]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    lat, ok, failed = [], 0, 0
    with open(log) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            status, us = int(parts[1]), int(parts[2])
            if status == 200:
                ok += 1
                lat.append(us)
            else:
                failed += 1
    rps = None
    for line in out.splitlines():
        if line.startswith("finished in"):
            rps = float(line.split(",")[1].split()[0])
    lat.sort()
    return {"rps": rps, "ok": ok, "failed": failed,
            "p50_ms": percentile(lat, 50) / 1000, "p99_ms": percentile(lat, 99) / 1000}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="im-bench-")
    backend_port, edge, admin, bare = free_port(), free_port(), free_port(), free_port()
    routes = os.path.join(tmp, "routes.yaml")
    with open(routes, "w") as f:
        f.write(f"""upstreams:
  echo:
    endpoints: ["127.0.0.1:{backend_port}"]
    health_check: {{ grpc_service: im.echo.v1.EchoService, interval: 1s }}
routes:
  - {{ name: echo, http: {{ path: /service/echo }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo, auth: none }}
  - {{ name: echo_grpc, grpc_service: im.echo.v1.EchoService, upstream: echo, auth: none }}
""")
    config = os.path.join(tmp, "gateway.yaml")
    with open(config, "w") as f:
        f.write(f"listen: {{ edge: 127.0.0.1:{edge}, admin: 127.0.0.1:{admin} }}\nthreads: 1\n"
                "reload: { watch: false }\nshutdown: { grace_period: 0s, graceful_timeout: 1s }\n")
    bodies = {}
    msg = echo_request("hello from the benchmark")
    for name, data in [("grpc", b"\x00" + len(msg).to_bytes(4, "big") + msg), ("proto", msg),
                       ("json", b'{"text":"hello from the benchmark"}')]:
        path = os.path.join(tmp, f"body.{name}")
        with open(path, "wb") as f:
            f.write(data)
        bodies[name] = path

    env = dict(os.environ, RUST_LOG="warn")
    procs = {
        "backend": subprocess.Popen([os.path.join(BIN, "im-backends"), "--listen", f"127.0.0.1:{backend_port}"], env=env),
        "gateway": subprocess.Popen([os.path.join(BIN, "im-gateway"), "run", "--config", config, "--routes", routes], env=env),
        "bare": subprocess.Popen([os.path.join(BIN, "bare-pingora"), "--listen", f"127.0.0.1:{bare}",
                                  "--upstream", f"127.0.0.1:{backend_port}"], env=env,
                                 stderr=subprocess.DEVNULL),
    }
    try:
        for port in (backend_port, edge, admin, bare):
            wait_port(port)
        deadline = time.time() + 20
        while time.time() < deadline:  # the endpoint joins rotation after its first passing check
            ready = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz"))
            if ready["upstreams"]["echo"]["healthy"]:
                break
            time.sleep(0.1)
        grpc_h = ["content-type: application/grpc", "te: trailers"]
        method = "/im.echo.v1.EchoService/Echo"
        cases = [
            ("backend direct (gRPC)", "backend", f"http://127.0.0.1:{backend_port}{method}", "grpc", grpc_h),
            ("bare Pingora pass-through (gRPC)", "bare", f"http://127.0.0.1:{bare}{method}", "grpc", grpc_h),
            ("gateway gRPC pass-through", "gateway", f"http://127.0.0.1:{edge}{method}", "grpc", grpc_h),
            ("gateway HTTP bridge, protobuf", "gateway", f"http://127.0.0.1:{edge}/service/echo", "proto",
             ["content-type: application/x-protobuf"]),
            ("gateway HTTP bridge, JSON", "gateway", f"http://127.0.0.1:{edge}/service/echo", "json",
             ["content-type: application/json"]),
        ]
        # Warm up every path once.
        for _, _, url, body, hdrs in cases:
            h2load(url, bodies[body], hdrs, 2000, 8, 16, os.path.join(tmp, "warm.log"))
        results = {c[0]: [] for c in cases}
        for run in range(args.runs):
            for name, proc, url, body, hdrs in cases:  # alternate systems within each round
                pid = procs[proc].pid
                before = cpu_seconds(pid)
                r = h2load(url, bodies[body], hdrs, args.requests, 8, 16, os.path.join(tmp, "run.log"))
                r["cpu_us_per_req"] = (cpu_seconds(pid) - before) * 1e6 / max(1, r["ok"])
                results[name].append(r)
                print(f"run {run + 1}/{args.runs} {name}: {r['rps']:.0f} req/s p50 {r['p50_ms']:.2f} ms "
                      f"p99 {r['p99_ms']:.2f} ms cpu {r['cpu_us_per_req']:.1f} us/req failed {r['failed']}",
                      file=sys.stderr)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(timeout=10)

    med = {name: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
           | {"failed": sum(r["failed"] for r in runs)} for name, runs in results.items()}
    write_report(args, med, results)


def write_report(args, med, results):
    bare = med["bare Pingora pass-through (gRPC)"]
    direct = med["backend direct (gRPC)"]
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" :\t")
    lines = [
        "# Benchmarks",
        "",
        "Every figure comes from one run of the command below on the machine it names; the systems are",
        "measured alternately in each round and the table shows medians of the rounds. Compare ratios,",
        "not absolute numbers: the load generator shares the 2 cores with the systems under test.",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}",
        f"- command: `bench/run.sh --runs {args.runs} --requests {args.requests}`",
        "- load: h2load, 8 connections x 16 streams, unary `im.echo.v1.EchoService/Echo` (a 26-byte message) on a tonic",
        "  echo backend; gateway and bare Pingora each run one worker thread; CPU is the server process's",
        "  utime+stime from /proc during the run, divided by the requests served.",
        "",
        "## Gateway core: bridge and pass-through",
        "",
        "| case | req/s | p50 ms | p99 ms | CPU µs/req | req/s vs bare Pingora | CPU vs bare Pingora | req/s vs direct | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in med.items():
        lines.append(
            f"| {name} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['cpu_us_per_req']:.1f} | "
            f"{m['rps'] / bare['rps']:.2f}x | {m['cpu_us_per_req'] / bare['cpu_us_per_req']:.2f}x | "
            f"{m['rps'] / direct['rps']:.2f}x | {m['failed']} |")
    lines += [
        "",
        "CPU for `backend direct` is the backend's own; for the proxies it is the proxy process only.",
        "",
        "Raw per-run results: [`benchmarks/raw.json`](benchmarks/raw.json).",
        "",
    ]
    os.makedirs(os.path.join(os.path.dirname(args.out), "benchmarks"), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(os.path.dirname(args.out), "benchmarks", "raw.json"), "w") as f:
        json.dump({"medians": med, "runs": results}, f, indent=2)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
