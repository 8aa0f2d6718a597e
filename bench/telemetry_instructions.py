#!/usr/bin/env python3
"""What telemetry costs on the HTTP bridge, in instructions: the gateway runs under valgrind's
callgrind, which counts every instruction of every thread (the export thread included) and gives
the same count for the same work whatever else the machine does. The time-based figures of
bench/telemetry_cost.py carry a noise floor of several per cent on this machine; these do not.

For each configuration (those of telemetry_cost.py): start the gateway under callgrind, warm up,
zero the counters, send --requests JSON bridge requests (im-bench, 1 connection x 8 streams),
wait for the span batches to leave (the batch processor sends every 5 s), read the count, then
wait as long again idle and read that count too (health checks, the metrics export): the cost
per request is (load - idle) / requests. Sampling at 0.1 is random per call, so the traced
share varies by a few per cent of the traced part between runs.

    cargo build --release -p im-gateway -p im-backends -p im-bench
    python3 bench/telemetry_instructions.py --requests 3000

Prints instructions per request and the ratio to "off"."""

import argparse
import glob
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import bridge_inputs, start_bridge_gateway  # noqa: E402
from run import BIN, free_port, wait_port  # noqa: E402
from telemetry_cost import CONFIGS, SINK, SINK_PY  # noqa: E402

FLUSH_WAIT = 7.0

# Every call traced: what one traced call costs, and where (callgrind_annotate the kept dumps).
PROFILE = {"export 1": (CONFIGS["export 0.1"][0].replace("sample_ratio: 0.1", "sample_ratio: 1.0"), "error")}


def total(path):
    """The instruction total of one callgrind dump."""
    with open(path) as f:
        for line in f:
            m = re.match(r"(?:summary|totals): (\d+)", line)
            if m:
                return int(m.group(1))
    raise RuntimeError(f"no totals in {path}")


def dump(pid, out, label):
    before = set(glob.glob(out + ".*"))
    subprocess.run(["callgrind_control", "--dump=" + label, str(pid)], check=True, capture_output=True)
    for _ in range(600):
        new = set(glob.glob(out + ".*")) - before
        if new:
            time.sleep(0.5)  # the file is written whole before the next check
            return total(new.pop())
        time.sleep(0.1)
    raise RuntimeError("callgrind did not dump")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(BIN, "im-gateway"))
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--only", help="comma-separated configurations (default: off, export 0, export 0.1; also `export 1`, every "
                    "call traced, to profile one)")
    args = ap.parse_args()
    names = (args.only or "off,export 0,export 0.1").split(",")

    tmp, key, body = bridge_inputs("im-bench-instr-")
    sink_port, backend_port = free_port(), free_port()
    sink = subprocess.Popen([SINK_PY, "-c", SINK, str(sink_port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    backend = subprocess.Popen([os.path.join(BIN, "im-backends"), "--services", "echo",
                                "--listen", f"127.0.0.1:{backend_port}"], env=dict(os.environ, RUST_LOG="warn"))

    def load(edge, n):
        subprocess.run([os.path.join(BIN, "im-bench"), "http", "--url", f"http://127.0.0.1:{edge}/service/echo",
                        "--conns", "1", "--streams", "8", "--requests", str(n), "--body", body,
                        "--content-type", "application/json"], check=True, capture_output=True)

    results = {}
    try:
        wait_port(sink_port)
        wait_port(backend_port)
        for i, name in enumerate(names):
            extra, rust_log = {**CONFIGS, **PROFILE}[name]
            out = os.path.join(tmp, f"cg{i}.out")
            wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-line=no"]
            proc, edge = start_bridge_gateway(args.binary, tmp, f"cfg{i}", backend_port, key + ".pub",
                                              extra=extra.format(sink=sink_port), rust_log=rust_log,
                                              log=os.path.join(tmp, f"cfg{i}.log"), wrapper=wrapper, timeout=300)
            try:
                load(edge, 300)
                time.sleep(FLUSH_WAIT)
                dump(proc.pid, out, "warm")
                started = time.time()
                load(edge, args.requests)
                time.sleep(FLUSH_WAIT)
                busy = dump(proc.pid, out, "load")
                time.sleep(time.time() - started)
                idle = dump(proc.pid, out, "idle")
            finally:
                proc.terminate()
                proc.wait()
            results[name] = (busy - idle) / args.requests
            print(f"{name}: {results[name]:,.0f} instructions/request (load {busy:,}, idle {idle:,}; "
                  f"dumps {out}.*)", file=sys.stderr)
    finally:
        for p in (backend, sink):
            p.terminate()
    base = results.get("off")
    print("| configuration | instructions/request | vs off |")
    print("|---|---:|---:|")
    for name, per in results.items():
        print(f"| {name} | {per:,.0f} | {per / base:.3f} |" if base else f"| {name} | {per:,.0f} | |")


if __name__ == "__main__":
    main()
