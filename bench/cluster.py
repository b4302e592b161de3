"""Benchmark: time and peak memory of the `cluster` stage's computation as the cohort grows.

For each size a fresh subprocess simulates an embedding (a mixture of ``--components``
Gaussians in ``--dim`` dimensions, unit variance, centres N(0, sep^2)), warms UMAP's numba
code up (300 points; 4,500 for sizes from 4,096 on, where UMAP switches to NN-descent, timed
apart: every new process pays it), then times
:func:`ehrseq.evaluate.clustering.cluster_embedding` with the stage's default parameters
(``ClusterParams`` in stages/cluster.py: 5-D UMAP + HDBSCAN, K-means k = 2..8, 3 seeds,
5 bootstrap refits, 2-D UMAP for pictures). The subprocess reports the wall time of each
step, its peak resident memory (``ru_maxrss``) and its RSS just before the timed call
(interpreter, libraries and the data), and the ARI of K-means and HDBSCAN against the
simulated components as a sanity check. Ratios are against the smallest size.

    python bench/cluster.py                    # 1k, 10k, 100k patients
    python bench/cluster.py --sizes 1000 10000
    python bench/cluster.py --quick            # 500 and 2000 patients, a smoke run
    python bench/cluster.py --sizes 1000 3000 --compare   # exact distances vs umap-learn's

``--compare`` runs every size twice, the second time with umap-learn computing the pairwise
distances itself (``clustering.UMAP_EXACT_ROWS = 0``: below 4,096 rows, one interpreted
metric call per pair, the baseline before the exact distances), and prints the time ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _stage_defaults() -> dict:
    spec = importlib.util.spec_from_file_location("stage_cluster", ROOT / "stages/cluster.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    p = mod.ClusterParams()
    return {k: getattr(p, k) for k in ("umap_dims", "umap_neighbors", "umap_metric",
                                       "min_cluster_size", "min_samples", "kmeans_k",
                                       "kmeans_n_init", "seeds", "bootstrap",
                                       "silhouette_sample", "seed")}


def child(n: int, dim: int, components: int, sep: float, own: bool = False) -> None:
    """Run one size and print one JSON line (``own``: umap-learn's own pairwise distances)."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from ehrseq.evaluate import clustering
    from ehrseq.evaluate.clustering import cluster_embedding

    if own:
        clustering.UMAP_EXACT_ROWS = 0

    kw = _stage_defaults()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((components, dim)) * sep
    y = rng.integers(0, components, n)
    X = (centres[y] + rng.standard_normal((n, dim))).astype(np.float32)
    t0 = time.perf_counter()   # numba compile; >= 4096 points also compiles NN-descent
    cluster_embedding(X[:4500] if n >= 4096 else X[:300],
                      **{**kw, "seeds": 1, "bootstrap": 0, "kmeans_k": [2]}, picture=False)
    warm = time.perf_counter() - t0
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    r = cluster_embedding(X, **kw)
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
        2**20 if platform.system() == "Darwin" else 2**10)
    sec = {k.split(".", 1)[1]: v for k, v in r.metrics.items() if k.startswith("seconds.")}
    print(json.dumps({"n": n, "seconds": total, "warmup_seconds": warm, "rss_before_mb": rss0,
                      "peak_mb": peak, "steps": sec, "k": r.metrics["kmeans.k"],
                      "ari_kmeans": adjusted_rand_score(y, r.kmeans),
                      "ari_hdbscan": adjusted_rand_score(y, r.hdbscan),
                      "noise": r.metrics["hdbscan.noise_share"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--quick", action="store_true", help="500 and 2000 patients")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--components", type=int, default=6)
    ap.add_argument("--sep", type=float, default=1.0,
                    help="sd of the component centres per dimension (noise sd 1)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per size")
    ap.add_argument("--compare", action="store_true",
                    help="also time each size with umap-learn's own pairwise distances")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--own-distances", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.dim, a.components, a.sep, a.own_distances)
        return
    sizes = [500, 2_000] if a.quick else a.sizes
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}; "
          f"embedding: {a.components} Gaussians in {a.dim} dims (centre sd {a.sep})",
          flush=True)
    print(f"params: {_stage_defaults()}", flush=True)
    rows, compared = [], []

    def measure(n: int, own: bool = False) -> dict | None:
        cmd = [sys.executable, __file__, "--child", str(n), "--dim", str(a.dim),
               "--components", str(a.components), "--sep", str(a.sep)]
        try:
            res = subprocess.run(cmd + ["--own-distances"] * own, capture_output=True,
                                 text=True, timeout=a.timeout)
        except subprocess.TimeoutExpired:
            print(f"{n:>8}  timed out after {a.timeout:.0f} s", flush=True)
            return None
        if res.returncode != 0:
            sys.exit(f"size {n} failed:\n{res.stderr[-3000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])

    for n in sizes:
        r = measure(n)
        if r is None:
            break
        if a.compare and (own := measure(n, own=True)) is not None:
            compared.append((r, own))
        rows.append(r)
        s = r["steps"]
        base = rows[0]
        expo = (math.log(r["seconds"] / base["seconds"]) / math.log(n / base["n"])
                if n != base["n"] else float("nan"))
        if len(rows) == 1:
            print(f"{'patients':>8} {'total s':>8} {'umap':>6} {'hdbscan':>7} {'kmeans':>7} "
                  f"{'km stab':>7} {'hdb stab':>8} {'umap2d':>6} {'peak MB':>8} {'rss0 MB':>8} "
                  f"{'x time':>7} {'exp':>5} {'k':>2} {'ARI km':>6} {'ARI hdb':>7} {'noise':>5} "
                  f"{'warm s':>6}")
        print(f"{n:>8} {r['seconds']:>8.1f} {s['umap']:>6.1f} {s['hdbscan']:>7.1f} "
              f"{s['kmeans_sweep']:>7.1f} {s['kmeans_stability']:>7.1f} "
              f"{s['hdbscan_stability']:>8.1f} {s.get('umap_2d', 0):>6.1f} "
              f"{r['peak_mb']:>8.0f} {r['rss_before_mb']:>8.0f} "
              f"{r['seconds'] / base['seconds']:>7.1f} {expo:>5.2f} {r['k']:>2} "
              f"{r['ari_kmeans']:>6.3f} {r['ari_hdbscan']:>7.3f} {r['noise']:>5.2f} "
              f"{r['warmup_seconds']:>6.1f}", flush=True)
    print("x time: total time / the smallest size's; exp: log(time ratio) / log(size ratio)")
    if compared:
        print("\nexact distances (default) against umap-learn's own (one Python call per pair):")
        print(f"{'patients':>8} {'exact s':>8} {'own s':>8} {'own / exact':>11} "
              f"{'ARI hdb exact':>13} {'ARI hdb own':>11}")
        for r, own in compared:
            print(f"{r['n']:>8} {r['seconds']:>8.1f} {own['seconds']:>8.1f} "
                  f"{own['seconds'] / r['seconds']:>11.2f} {r['ari_hdbscan']:>13.3f} "
                  f"{own['ari_hdbscan']:>11.3f}", flush=True)


if __name__ == "__main__":
    main()
