#!/usr/bin/env python3
"""How long llama.cpp's OpenMP threads should spin at a barrier: one daemon per `GOMP_SPINCOUNT`,
scenario B's editor requests alternated between them so that every setting sees the same noise.
`--busy N` runs N busy-looping processes beside them (a laptop that also compiles). BENCHMARKS.md,
"The editor path with llama.cpp at -O3, and how long OpenMP threads spin"."""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("bench", HERE / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endorm", default=str(HERE.parent / "target/release/endorm"))
    parser.add_argument("--model", type=Path, default=bench.DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20, help="timed requests per setting")
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes beside the daemons")
    parser.add_argument("spins", nargs="+", help="GOMP_SPINCOUNT values (0: what OMP_WAIT_POLICY=PASSIVE does)")
    args = parser.parse_args()

    daemons = {}
    for spin in args.spins:
        os.environ["GOMP_SPINCOUNT"] = spin
        daemons[spin] = bench.Daemon(args.endorm, args.model, args.threads, n_ctx=4096, n_batch=512, cache_slots=4)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    wall = {spin: [] for spin in args.spins}
    candidates = {spin: [] for spin in args.spins}
    try:
        for i, prefix in enumerate(bench.editor_requests(args.rounds + 1)):
            for spin, daemon in daemons.items():
                body = {"format": "raw", "prompt": prefix, "candidates": bench.EDITOR_CANDIDATES}
                response, seconds = bench.score(daemon.sock, body)
                if i:  # the first request is cold
                    wall[spin].append(seconds * 1000)
                    candidates[spin].append(response["timings"]["candidates_ms"])
    finally:
        for process in busy:
            process.kill()
        for daemon in daemons.values():
            daemon.close()
    print(f"{args.model.name}, {args.threads} threads, {args.busy} busy processes beside")
    for spin in args.spins:
        print(f"GOMP_SPINCOUNT={spin:>8}: B p50 {statistics.median(wall[spin]):.0f} ms, "
              f"candidates {statistics.median(candidates[spin]):.0f} ms")


if __name__ == "__main__":
    main()
