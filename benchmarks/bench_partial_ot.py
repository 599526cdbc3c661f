"""Benchmark: exact-mass partial OT on one 40 x 2049 token problem (eps = 0.05, m = 0.9).

Compares ``pisces_cli.ot.sinkhorn(mode="partial")`` with POT
``ot.partial.entropic_partial_wasserstein(a, b, C, m=0.9, reg=0.05, stopThr=1e-9)`` at equal accuracy:
both plans within 1e-6 (relative to the mass) of a fully converged float64 plan. pisces' tolerance is the
loosest of a ladder that meets the target; the two are timed interleaved, median of the repeats.

Run: ``.venv/bin/python benchmarks/bench_partial_ot.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from bench_token_ot import relative_error, workload

from pisces_cli.ot import sinkhorn

EPS = 0.05
MASS = 0.9
TARGET = 1e-6
TOL_LADDER = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6, 1e-7, 1e-8)


def run_pot(cost_np: np.ndarray, stop_thr: float) -> np.ndarray:
    import ot

    n, m = cost_np.shape
    return ot.partial.entropic_partial_wasserstein(
        np.full(n, 1.0 / n), np.full(m, 1.0 / m), cost_np, EPS, m=MASS, stopThr=stop_thr
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat")
    parser.add_argument("--repeats", type=int, default=3, help="POT takes ~7 s per call")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    cost = workload(1, heads=1)[0, 0]
    cost_np = cost.double().numpy()
    exact, info = sinkhorn(cost.double(), eps=EPS, mode="partial", mass=MASS, tol=1e-13, max_iter=20000)
    assert bool(info.converged)

    pot_err = relative_error(torch.as_tensor(run_pot(cost_np, 1e-9))[None], exact[None])
    pisces_tol, pisces_err = TOL_LADDER[-1], float("nan")
    for tol in TOL_LADDER:
        plan, _ = sinkhorn(cost, eps=EPS, mode="partial", mass=MASS, tol=tol)
        pisces_err = relative_error(plan[None], exact[None])
        if pisces_err <= TARGET:
            pisces_tol = tol
            break
    times: dict[str, list[float]] = {"pisces": [], "POT": []}
    for _ in range(repeats):
        start = time.perf_counter()
        sinkhorn(cost, eps=EPS, mode="partial", mass=MASS, tol=pisces_tol)
        times["pisces"].append(time.perf_counter() - start)
        start = time.perf_counter()
        run_pot(cost_np, 1e-9)
        times["POT"].append(time.perf_counter() - start)
    pisces_ms = statistics.median(times["pisces"]) * 1e3
    pot_ms = statistics.median(times["POT"]) * 1e3
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads; one 40 x 2049 partial problem, m={MASS}"
    )
    print(f"pisces partial   tol={pisces_tol:.0e}  rel.err={pisces_err:.1e}  median {pisces_ms:8.1f} ms")
    print(f"POT entropic_partial_wasserstein stopThr=1e-9  rel.err={pot_err:.1e}  median {pot_ms:8.1f} ms")
    print(f"speed-up: {pot_ms / pisces_ms:.1f}x")


if __name__ == "__main__":
    main()
