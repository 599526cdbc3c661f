"""Cold start of `pisces --help` and `pisces ls` vs a bare `python -c pass`, measured side by side.

Prints absolute medians and the ratios to the bare interpreter start (this machine is shared and
noisy: compare within one run). Target: `pisces --help` under 1 s cold.

    python benchmarks/bench_cli_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "pisces --help": [sys.executable, "-m", "pisces_cli", "--help"],
    "pisces ls": [sys.executable, "-m", "pisces_cli", "ls"],
    "import torch (reference)": [sys.executable, "-c", "import torch"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):  # interleaved so drift hits every command alike
        for name, cmd in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            samples[name].append(time.perf_counter() - start)
    base = statistics.median(samples["python -c pass"])
    print(f"{'command':28s} {'median s':>9s} {'max s':>7s} {'x bare python':>14s}")
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"{name:28s} {med:9.3f} {max(values):7.3f} {med / base:14.1f}")
    worst_help = max(samples["pisces --help"])
    print(
        f"\npisces --help worst of {args.repeats}: {worst_help:.3f} s (target < 1 s): "
        f"{'OK' if worst_help < 1.0 else 'OVER'}"
    )


if __name__ == "__main__":
    main()
