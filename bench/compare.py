#!/usr/bin/env python3
"""Two gateway binaries side by side: the HTTP bridge (im-bench, JSON, auth off and RS256 + per-user
limit), native gRPC pass-through (im-bench grpc, auth off) and WebSocket push (im-bench ws-push, the three fan-out phases), the binaries alternating in
every round, the same backend, load tool and configs for both. For a refactor that must not cost
speed: build the previous commit's `im-gateway` somewhere, then

    python3 bench/compare.py --before /path/to/old/im-gateway --runs 3

Prints medians and after/before ratios and writes them into the "Before and after" section of
docs/BENCHMARKS.md (docs/benchmarks/compare.json holds every round)."""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ws  # noqa: E402
from run import BIN, LOAD_CPU, PROXY_CPU, ROOT, free_port, wait_port, write_section  # noqa: E402

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def start_bridge_gateway(binary, tmp, name, backend_port, public_key, extra="", rust_log="error", log=None,
                         wrapper=(), timeout=30):
    """A gateway with the bench's echo bridge routes, `extra` appended to its gateway.yaml, its
    stderr to `log` (a path) when given, run under `wrapper` (e.g. valgrind) within `timeout`
    seconds; returns (process, edge port)."""
    edge, admin = free_port(), free_port()
    routes = os.path.join(tmp, f"{name}-routes.yaml")
    with open(routes, "w") as f:
        f.write(f"""upstreams:
  echo:
    endpoints: ["127.0.0.1:{backend_port}"]
    health_check: {{ grpc_service: im.echo.v1.EchoService, interval: 1s }}
routes:
  - {{ name: echo, http: {{ path: /service/echo }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo, auth: none }}
  - {{ name: echo_auth, http: {{ path: /service/echo_auth }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo,
       rate_limit: {{ key: user, per_second: 100000, burst: 100000 }} }}
  - {{ name: echo_grpc, grpc_service: im.echo.v1.EchoService, upstream: echo, auth: none }}
""")
    config = os.path.join(tmp, f"{name}-gateway.yaml")
    with open(config, "w") as f:
        f.write(f"""listen: {{ edge: 127.0.0.1:{edge}, admin: 127.0.0.1:{admin},
          push: 127.0.0.1:{free_port()}, internal: 127.0.0.1:{free_port()} }}
threads: 1
reload: {{ watch: false }}
shutdown: {{ grace_period: 0s, graceful_timeout: 1s }}
push: {{ drain_window: 0s }}
client_ip: {{ trusted_proxies: ["127.0.0.0/8"] }}
auth: {{ public_keys: [{{ alg: RS256, file: {public_key} }}] }}
{extra}""")
    stderr = open(log, "w") if log else None
    proc = subprocess.Popen(PROXY_CPU + list(wrapper) + [binary, "run", "--config", config, "--routes", routes],
                            env=dict(os.environ, RUST_LOG=rust_log), stdout=subprocess.DEVNULL, stderr=stderr)
    wait_port(edge, timeout)
    wait_port(admin, timeout)
    deadline = time.time() + max(20, timeout)
    while time.time() < deadline:  # the endpoint joins rotation after its first passing check
        ready = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz"))
        if ready["upstreams"]["echo"]["healthy"]:
            break
        time.sleep(0.1)
    return proc, edge


def bridge_inputs(prefix):
    """A scratch dir with an RSA key pair (the RS256 case's; `<key>.pub` for the gateway) and the
    bridge's JSON body: (dir, key, body)."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    key = os.path.join(tmp, "rsa.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-pubout", "-in", key, "-out", key + ".pub"], check=True, capture_output=True)
    body = os.path.join(tmp, "body.json")
    with open(body, "w") as f:
        f.write('{"text":"hello from the benchmark"}')
    return tmp, key, body


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the previous im-gateway binary")
    ap.add_argument("--before-label", default="before")
    ap.add_argument("--after", default=os.path.join(BIN, "im-gateway"), help="the new binary (default: this tree's)")
    ap.add_argument("--after-label", default="after")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--push-conns", type=int, default=10_000)
    ap.add_argument("--user-repeats", type=int, default=3,
                    help="passes of one push per user in phase (a); one pass is too short to time on 10 ms CPU ticks")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    args = ap.parse_args()
    binaries = {args.before_label: args.before, args.after_label: args.after}

    tmp, key, body = bridge_inputs("im-bench-compare-")
    with open(os.path.join(tmp, "hs256.key"), "w") as f:
        f.write("bench-hs256-secret-0123456789abcdef")
    with open(os.path.join(tmp, "internal.token"), "w") as f:
        f.write("bench-internal-token-0123456789")
    exp = ["--exp", str(int(time.time()) + 3 * 3600), "--ips", "5000"]
    # EchoRequest { text: "hello" }, as the raw message `im-bench grpc` frames.
    grpc_body = os.path.join(tmp, "echo-request.bin")
    with open(grpc_body, "wb") as f:
        f.write(b"\x0a\x05hello")
    json_body = ["--body", body, "--content-type", "application/json"]
    bridge_cases = {
        "bridge JSON, auth off": ("http", "/service/echo", json_body),
        "bridge JSON, RS256 + per-user limit": ("http", "/service/echo_auth", json_body +
                                                ["--alg", "RS256", "--key", key, "--users", "2000"]),
        "gRPC pass-through, auth off": ("grpc", "/im.echo.v1.EchoService/Echo", ["--body", grpc_body]),
    }

    def imbench(edge, mode, path, extra, n):
        cmd = LOAD_CPU + [os.path.join(BIN, "im-bench"), mode, "--url", f"http://127.0.0.1:{edge}{path}",
                          "--conns", "8", "--streams", "16", "--requests", str(n)] + exp + extra
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)

    backend_port = free_port()
    backend = subprocess.Popen(LOAD_CPU + [os.path.join(BIN, "im-backends"), "--services", "echo", "--diagnostics",
                                           "--listen", f"127.0.0.1:{backend_port}"],
                               env=dict(os.environ, RUST_LOG="warn"))
    results = {label: {case: [] for case in list(bridge_cases) + ["push"]} for label in binaries}
    gateways = {}
    try:
        wait_port(backend_port)
        for label, binary in binaries.items():
            gateways[label] = start_bridge_gateway(binary, tmp, label.replace(" ", "-"), backend_port, key + ".pub")
            for mode, path, extra in bridge_cases.values():  # warm-up, also fills the token cache
                imbench(gateways[label][1], mode, path, extra, 4000)
        for run in range(args.runs):
            for case, (mode, path, extra) in bridge_cases.items():
                for label, (proc, edge) in gateways.items():
                    before = cpu_seconds(proc.pid)
                    r = imbench(edge, mode, path, extra, args.requests)
                    r.setdefault("failed", sum(e["count"] for e in r.get("errors", [])))
                    r["cpu_us_per_req"] = (cpu_seconds(proc.pid) - before) * 1e6 / max(1, r["ok"])
                    results[label][case].append(r)
                    print(f"run {run + 1}/{args.runs} {label} {case}: {r['rps']:.0f} req/s, "
                          f"{r['cpu_us_per_req']:.0f} us CPU/req, {r['failed']} failed",
                          file=sys.stderr)
        for proc, _ in gateways.values():
            proc.terminate()
            proc.wait(timeout=10)
        gateways.clear()
        for run in range(args.runs):
            for label, binary in binaries.items():
                r = ws.run_client("ws-push", partial(ws.start_gateway, binary=binary), tmp, backend_port,
                                  ["--conns", str(args.push_conns), "--burst", "200", "--group-repeats", "10",
                                   "--user-repeats", str(args.user_repeats)])
                results[label]["push"].append(r)
                summary = ", ".join(f"{p['phase']} {p['deliveries_per_cpu_s']:.0f}/cpu-s" for p in r["phases"])
                print(f"run {run + 1}/{args.runs} {label} ws-push: {summary}", file=sys.stderr)
    finally:
        for proc, _ in gateways.values():
            proc.terminate()
        backend.terminate()
        backend.wait(timeout=10)
    write_report(args, results)


def write_report(args, results):
    before, after = args.before_label, args.after_label
    med = statistics.median
    rows = []

    def row(name, b_vals, a_vals, higher_better):
        # Rounds are paired (the two binaries ran back to back), so each pair's ratio cancels the
        # machine's slow drifts; the median of the pair ratios is the figure that counts.
        pairs = [x / y for x, y in zip(a_vals, b_vals) if y]
        rows.append((name, med(b_vals), med(a_vals), med(pairs), max(b_vals) / min(b_vals), higher_better))

    for case in [c for c in results[after] if c != "push"]:
        for key, what in (("rps", "req/s"), ("cpu_us_per_req", "server CPU µs/req")):
            row(f"{case}: {what}", [r[key] for r in results[before][case]],
                [r[key] for r in results[after][case]], key == "rps")
    for phase in ("users", "group", "burst"):
        def phase_vals(label):
            return [next(p for p in r["phases"] if p["phase"] == phase)["deliveries_per_cpu_s"]
                    for r in results[label]["push"]]
        row(f"push ({phase}): deliveries per server CPU-s", phase_vals(before), phase_vals(after), True)
    lines = [
        BEGIN,
        "## Before and after",
        "",
        f"Command: `python3 bench/compare.py --before <old im-gateway> --before-label '{before}' "
        f"--after-label '{after}' --runs {args.runs} --user-repeats {args.user_repeats}`; "
        f"date {datetime.date.today().isoformat()}.",
        "Both binaries built in release mode, the same backend, load tool (this tree's `im-bench`) and configs;",
        "the binaries alternate in every round, each pinned to core 0. \"paired\" is the median over rounds of",
        "after / before within the round (the two ran back to back), the figure the 5 % bar applies to;",
        "\"noise\" is the spread (max / min) of the previous binary's own rounds. Higher is better except CPU",
        "per request.",
        "",
        f"| case | {before} (median) | {after} (median) | paired {after} / {before} | noise | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, b, a, paired, noise, higher_better in rows:
        ok = paired >= 0.95 if higher_better else paired <= 1.05
        lines.append(f"| {name} | {b:,.0f} | {a:,.0f} | {paired:.3f} | {noise:.2f}x | "
                     f"{'within 5 %' if ok else '**outside 5 %**'} |")
    lines += ["", "Every round: [`benchmarks/compare.json`](benchmarks/compare.json).", END]
    block = "\n".join(lines)
    print(block)
    write_section(args.out, BEGIN, END, block, "compare.json",
                  {"before": before, "after": after, "runs": results})

if __name__ == "__main__":
    main()
