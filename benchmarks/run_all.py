"""Run every benchmark in turn (what `make bench` runs); each prints its own figures.

The figures recorded in BENCHMARKS.md were measured with the individual commands named there;
this script reruns them all (about an hour and a half on 2 CPU cores, most of it the tuning
benchmark and the service's chaos runs). Pass --quick for a smaller smoke run of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, a smoke run of each")
    args = p.parse_args()
    py = sys.executable
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    runs = [
        [py, f"{HERE}/bench_precise.py"]
        + (["--elements", "10000", "--steps", "200"] if args.quick else []),
        [py, "-m", "revhpo", "bench"]
        + (["--steps", "20", "--memory-steps", "20", "--cold-spec", ""] if args.quick else []),
        [py, f"{HERE}/bench_engine.py"] + (["--quick"] if args.quick else []),
        [py, f"{HERE}/bench_nets.py"] + (["--quick"] if args.quick else []),
        [py, f"{HERE}/bench_tuning.py"] + (["--quick"] if args.quick else []),
    ]
    for backend in ("sqlite", "postgres"):
        runs.append(
            [py, f"{HERE}/bench_service.py", "chaos", "--backend", backend]
            + (
                ["--jobs", "6", "--workers", "2"]
                if args.quick
                else ["--jobs", "50", "--workers", "3"]
            )
        )
        runs.append([py, f"{HERE}/bench_service.py", "load", "--backend", backend])
    runs.append([py, f"{HERE}/bench_service.py", "owners", "--backend", "sqlite"])
    failed = 0
    for cmd in runs:
        print(f"\n$ {' '.join(cmd[1:])}", flush=True)
        failed += subprocess.run(cmd, env=env).returncode != 0
    print(f"\n{len(runs) - failed} benchmarks ran, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
