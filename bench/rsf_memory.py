"""Benchmark: peak memory and time of the random survival forest (the `baselines` stage's RSF)
with coarsened training times against the exact ones, as the training landmarks grow.

Each fit runs in its own subprocess (peak resident memory, ``ru_maxrss``, is per process): a
simulated training set of N landmarks with the baselines' dense width (``--features``, the SVD
of the default run plus demographics), exponential times with a log-hazard on 3 features and
uniform censoring, so nearly every time is distinct, as with day-resolution landmarks. The
forest is :class:`ehrseq.models.classical.RSF` at the smallest leaf of the tuning grid
(``min_samples_leaf=5``: the largest trees), once with ``max_times`` = the default
(:data:`~ehrseq.models.classical.RSF_MAX_TIMES`) and once exact (every distinct time). An
exact fit whose projected memory would pass ``--max-gb`` is skipped, not run (it would take
the machine down). Printed: per N, the distinct times, seconds and peak GB of each, and the
ratio exact / coarsened.

    python bench/rsf_memory.py                         # N = 1000 2000 7000
    python bench/rsf_memory.py --sizes 1000 --max-gb 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def child(n: int, features: int, max_times: int) -> dict:
    from ehrseq.models.classical import RSF, coarsen_times

    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, features))
    t_event = rng.exponential(365.0 * np.exp(-(X[:, 0] + 0.5 * X[:, 1] - 0.5 * X[:, 2])))
    t_cens = rng.uniform(1.0, 1500.0, size=n)
    d, e = np.minimum(t_event, t_cens).round(3), (t_event <= t_cens).astype(int)
    start = time.perf_counter()
    RSF(seed=0, min_samples_leaf=5, max_times=max_times).fit(X, d, e)
    return {"seconds": time.perf_counter() - start,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "times": int(len(np.unique(coarsen_times(d, max_times))))}


def run(n: int, features: int, max_times: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(n), str(features),
                          str(max_times)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    from ehrseq.models.classical import RSF_MAX_TIMES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 7000])
    p.add_argument("--features", type=int, default=66)
    p.add_argument("--max-gb", type=float, default=12.0,
                   help="skip an exact fit projected above this (GB)")
    p.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(*a.child)))
        return
    print(f"RSF, 200 trees, min_samples_leaf 5, {a.features} features; coarsened: at most "
          f"{RSF_MAX_TIMES} distinct times")
    print("| landmarks | distinct times | exact s | exact GB | coarsened s | coarsened GB | "
          "GB exact / coarsened |")
    print("|---|---|---|---|---|---|---|")
    per_time_node = None       # GB per (distinct time x landmark), from the last exact fit
    for n in a.sizes:
        c = run(n, a.features, RSF_MAX_TIMES)
        projected = None if per_time_node is None else per_time_node * n * n
        if projected is not None and projected > a.max_gb:
            print(f"| {n:,} | {n:,} (about) | skipped | ~{projected:.0f} (projected) | "
                  f"{c['seconds']:.1f} | {c['peak_gb']:.2f} | ~{projected / c['peak_gb']:.0f} |")
            continue
        x = run(n, a.features, 10**9)
        per_time_node = x["peak_gb"] / (x["times"] * n)
        print(f"| {n:,} | {x['times']:,} | {x['seconds']:.1f} | {x['peak_gb']:.2f} | "
              f"{c['seconds']:.1f} | {c['peak_gb']:.2f} | {x['peak_gb'] / c['peak_gb']:.1f} |")


if __name__ == "__main__":
    main()
