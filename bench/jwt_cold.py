#!/usr/bin/env python3
"""Cold JWT checks: what a token's first check costs, and what that means when users reconnect.

1. Signature checks per backend: `bench/jwt-backends` (a crate of its own, outside the workspace,
   so aws-lc's C build never enters the product's) checks 2,000 distinct RS256 and ES256 tokens
   once each with jsonwebtoken's RustCrypto backend (the gateway's before issue #26), its aws-lc-rs
   backend, and ring (the gateway's now, `gateway/src/filters/auth/crypto.rs`). Backends alternate
   in every round.
2. A reconnect storm: `im-bench ws-storm` opens --storm connections (128 in flight), each a user
   with a token the gateway has never seen (RS256, signed for this round), completes the handshake
   and closes; handshakes per second and the gateway's CPU per handshake. With --before, the
   previous gateway binary runs the same storm alternately in every round; an HS256 storm (a cold
   check costing about nothing) runs beside them as the floor.

    cargo build --release -p im-gateway -p im-backends -p im-bench
    python3 bench/jwt_cold.py --runs 5 [--before /path/to/old/im-gateway]

Writes the "Cold JWT checks" section of docs/BENCHMARKS.md and docs/benchmarks/jwt.json."""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import BIN, ROOT, write_section  # noqa: E402
import ws  # noqa: E402

BEGIN, END = "<!-- jwt:begin -->", "<!-- jwt:end -->"
BACKENDS = ["rustcrypto", "aws-lc", "ring"]
CRATE = os.path.join(ROOT, "bench", "jwt-backends")


def keys(tmp):
    for name, args in [("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("ec", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])]:
        key = os.path.join(tmp, f"{name}.pem")
        subprocess.run(["openssl", "genpkey"] + args + ["-out", key], check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", os.path.join(tmp, f"{name}.pub.pem")],
                       check=True, capture_output=True)


def checks(tmp, runs):
    subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path", os.path.join(CRATE, "Cargo.toml")],
                   check=True)
    binary = os.path.join(CRATE, "target", "release", "jwt-backends")
    out = {b: [] for b in BACKENDS}
    for run in range(runs):
        for b in BACKENDS[run % 3:] + BACKENDS[:run % 3]:
            r = json.loads(subprocess.run(ws.PROXY_CPU + [binary, b, tmp], check=True, capture_output=True,
                                          text=True).stdout)
            out[b].append(r)
            print(f"run {run + 1}/{runs} {b}: RS256 {r['RS256']:.1f} us, ES256 {r['ES256']:.1f} us", file=sys.stderr)
    return out


def storms(tmp, runs, conns, binaries):
    backend_port = ws.free_port()
    backend = subprocess.Popen(ws.LOAD_CPU + [os.path.join(BIN, "im-backends"), "--services", "echo", "--listen",
                                              f"127.0.0.1:{backend_port}"], env=dict(os.environ, RUST_LOG="warn"))
    cases = [(f"{label}, RS256 fresh tokens", binary, True) for label, binary in binaries]
    cases.append((f"{binaries[-1][0]}, HS256", binaries[-1][1], False))
    out = {name: [] for name, _, _ in cases}
    try:
        ws.wait_port(backend_port)
        for run in range(runs):
            for name, binary, rsa in cases[run % len(cases):] + cases[:run % len(cases)]:
                def start(t, port, binary=binary, rsa=rsa):
                    proc, push, internal, auth = ws.start_gateway(t, port, binary=binary)
                    if rsa:
                        auth = ["--rsa-key", os.path.join(t, "rsa.pem")] + auth[2:]
                    return proc, push, internal, auth
                r = ws.run_client("ws-storm", start, tmp, backend_port, ["--conns", str(conns)])
                out[name].append(r)
                print(f"run {run + 1}/{runs} {name}: {r['handshakes_per_s']:.0f}/s, "
                      f"{r['server_cpu_us_per_handshake']:.0f} us CPU each, failed {r['failed']}", file=sys.stderr)
    finally:
        backend.terminate()
        backend.wait(timeout=10)
    return out


def med(rounds, key):
    return statistics.median(r[key] for r in rounds)


def report(args, res):
    ch, st = res["checks"], res["storms"]
    lines = [
        BEGIN,
        "## Cold JWT checks",
        "",
        f"Command: `python3 bench/jwt_cold.py --runs {args.runs}"
        + (" --before <previous im-gateway>" if args.before else "") + f"`; {res['date']}.",
        "A token's first check is a signature check (later ones hit `auth.token_cache`): every login, and",
        "every user at once when a node restarts and its sockets reconnect. Backends alternate in every round,",
        "pinned to core 0; each figure is the median of the rounds.",
        "",
        "| backend | RS256 µs per check | ES256 µs per check | RS256 speed-up over RustCrypto | C build it adds |",
        "|---|---:|---:|---:|---|",
    ]
    base = med(ch["rustcrypto"], "RS256")
    builds = {"rustcrypto": "none (pure Rust)", "aws-lc": "aws-lc-sys (cmake, about 2 min on 2 cores)",
              "ring": "none: ring is already built for rustls"}
    for b in BACKENDS:
        lines.append(f"| {b} | {med(ch[b], 'RS256'):.1f} | {med(ch[b], 'ES256'):.1f} | "
                     f"{base / med(ch[b], 'RS256'):.1f}x | {builds[b]} |")
    lines += ["", f"Reconnect storm: {args.storm:,} users, each with a token new to the gateway, 128 handshakes in",
              "flight (`im-bench ws-storm`); the gateway pinned to core 0, the client on core 1.", "",
              "| gateway | handshakes/s | gateway CPU µs per handshake | p50 / p99 ms | failed |",
              "|---|---:|---:|---:|---:|"]
    for name, rounds in st.items():
        lines.append(f"| {name} | {med(rounds, 'handshakes_per_s'):,.0f} | {med(rounds, 'server_cpu_us_per_handshake'):.0f} | "
                     f"{med(rounds, 'p50_ms'):.1f} / {med(rounds, 'p99_ms'):.1f} | {sum(r['failed'] for r in rounds)} |")
    names = list(st)
    if args.before:
        pairs = [a["handshakes_per_s"] / b["handshakes_per_s"] for a, b in zip(st[names[1]], st[names[0]])]
        lines += ["", f"After / before, RS256 storm, paired by round: {statistics.median(pairs):.2f}x handshakes/s "
                  f"(worst round {min(pairs):.2f}x)."]
    lines += ["", "Every round: [`benchmarks/jwt.json`](benchmarks/jwt.json).", END]
    write_section(args.out, BEGIN, END, "\n".join(lines), "jwt.json", res)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--storm", type=int, default=10_000, help="users reconnecting (0: skip the storm)")
    ap.add_argument("--before", help="the previous im-gateway binary, for the storm's before/after")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="im-bench-jwt-")
    keys(tmp)
    with open(os.path.join(tmp, "hs256.key"), "w") as f:
        f.write("bench-hs256-secret-0123456789abcdef")
    with open(os.path.join(tmp, "internal.token"), "w") as f:
        f.write("bench-internal-token-0123456789")
    res = {"date": datetime.date.today().isoformat(), "checks": checks(tmp, args.runs), "storms": {}}
    if args.storm:
        binaries = ([("before", args.before)] if args.before else []) + [("now", os.path.join(BIN, "im-gateway"))]
        res["storms"] = storms(tmp, args.runs, args.storm, binaries)
    report(args, res)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
