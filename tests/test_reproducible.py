"""Issue 14: the data stages write the same bytes on any CPU and at any thread count.

The stage test (about 30 s on the 2-core machine, so not marked slow) runs ingest, sequences and outcomes (the stage scripts) on a real Synthea export
in subprocesses that differ in what could change floating-point results: thread counts (DuckDB,
OpenMP/OpenBLAS, torch), NumPy's SIMD dispatch (``NPY_DISABLE_CPU_FEATURES`` with every
dispatch target this CPU has) and OpenBLAS's kernel (``OPENBLAS_CORETYPE``: another CPU's code
path on this one). Every output file must have the same SHA-256. The fast tests pin the helpers
of :mod:`ehrseq.repro` that make this so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import ROOT, export_dir

from ehrseq.plots import histogram, histogram_edges
from ehrseq.repro import (
    kaplan_meier,
    km_median,
    libm_exp,
    libm_log,
    round_days,
    round_decimals,
    round_sig,
    standardise,
    weighted_sum,
)

# ------------------------------------------------------------------ helpers (fast)


def test_round_days_is_whole_seconds():
    d = np.array([0.0, 1.0 / 24, 12.3456789, 400.0000001, np.nan])
    r = round_days(d)
    secs = r[:4] * 86_400
    np.testing.assert_array_equal(secs, np.round(secs))
    assert np.abs(r[:4] - d[:4]).max() <= 0.5 / 86_400 and np.isnan(r[4])
    assert r[1] == 1.0 / 24  # the one-hour floor of durations is on the grid


def test_fixed_order_sums_and_libm():
    rng = np.random.default_rng(0)
    X = rng.integers(-1, 2, (500, 11)).astype(float)
    X[:, -1] = rng.normal(size=500)
    w = rng.normal(size=11)
    np.testing.assert_allclose(weighted_sum(X, w), X @ w, rtol=0, atol=1e-12)
    # fixed order: a column-by-column sum, whatever the number of rows
    assert weighted_sum(X[:7], w)[3] == weighted_sum(X, w)[3]
    z = standardise(X[:, -1])
    assert abs(math.fsum(z)) < 1e-12 and abs(math.fsum(z * z) / len(z) - 1) < 1e-12
    np.testing.assert_array_equal(standardise(np.full(4, 3.0)), np.zeros(4))
    x = rng.uniform(-5, 5, 100)
    np.testing.assert_array_equal(libm_exp(x), [math.exp(v) for v in x])
    np.testing.assert_array_equal(libm_log(np.abs(x)), [math.log(abs(v)) for v in x])
    np.testing.assert_array_equal(round_decimals([-1e-12, 0.1234567891234]), [0.0, 0.123456789])


def test_kaplan_meier_is_lifelines_without_logs():
    from lifelines import KaplanMeierFitter

    rng = np.random.default_rng(1)
    cases = [(np.round(rng.exponential(5, 300)), rng.integers(0, 2, 300)),
             (rng.exponential(100, 50), rng.integers(0, 2, 50)),
             (np.array([1.0, 2, 3, 4]), np.array([1, 1, 0, 1])),
             (np.array([2.0, 2, 2]), np.array([0, 0, 0]))]
    for d, e in cases:
        km = KaplanMeierFitter().fit(d, e)
        times, at_risk, observed, surv = kaplan_meier(d, e)
        np.testing.assert_array_equal(times, km.survival_function_.index.to_numpy())
        np.testing.assert_array_equal(at_risk, km.event_table["at_risk"].to_numpy())
        np.testing.assert_array_equal(observed, km.event_table["observed"].to_numpy())
        np.testing.assert_allclose(surv, km.survival_function_.iloc[:, 0], atol=1e-12)
        assert km_median(d, e) == km.median_survival_time_
    assert math.isnan(km_median([], []))


def test_histogram_edges_short_and_like_numpy(tmp_path):
    rng = np.random.default_rng(2)
    v = rng.integers(4, 4000, 200)
    log_edges = histogram_edges(v, 40, log_x=True)
    ref = np.geomspace(v.min(), v.max() + 1, 41)
    assert log_edges[0] == v.min() and log_edges[-1] == v.max() + 1
    np.testing.assert_allclose(log_edges, ref, rtol=1e-5)
    lin = histogram_edges(v, 40)
    np.testing.assert_allclose(lin, np.histogram_bin_edges(v, 40), rtol=1e-5)
    assert np.histogram(v, lin)[0].sum() == len(v)
    for edges in (log_edges, lin):   # at most 6 significant digits: short, stable CSV text
        assert all(round_sig(x, 6) == x for x in edges)
    assert list(histogram_edges(np.full(5, 3.0), 2)) == [2.5, 3.0, 3.5]
    assert list(histogram_edges(np.array([]), 2)) == [0.0, 0.5, 1.0]
    histogram(v, tmp_path / "h", "t", "x", log_x=True)
    csv = pd.read_csv(tmp_path / "h.csv")
    assert csv["count"].sum() == len(v) and (csv["bin_start"] < csv["bin_end"]).all()


# ------------------------------------------------------------------ the stages (slow)

# One subprocess per variant runs the three stage scripts in a workspace: the env (NumPy's
# dispatch, OpenBLAS's kernel, OpenMP threads) is read at import time, so it must be a fresh
# interpreter; DuckDB's and torch's thread counts are set here.
CHILD = r"""
import json, os, runpy, sys
threads = int(sys.argv[2])
import duckdb, numpy, torch
_connect = duckdb.connect
def connect(*a, **k):
    con = _connect(*a, **k)
    if threads:
        con.execute(f"SET threads={threads}")
    return con
duckdb.connect = connect
if threads:
    torch.set_num_threads(threads)
from numpy.lib.introspect import opt_func_info
try:
    import threadpoolctl
    blas = [i.get("architecture") for i in threadpoolctl.threadpool_info()
            if i.get("internal_api") == "openblas"]
except ImportError:
    blas = []
info = {"exp": opt_func_info("^exp$", "float64")["exp"]["dd"]["current"], "blas": blas,
        "duckdb_threads": duckdb.connect().execute("SELECT current_setting('threads')").fetchone()[0],
        "torch_threads": torch.get_num_threads()}
os.chdir(sys.argv[1])
for stage in ("ingest", "sequences", "outcomes"):
    sys.argv = [stage]
    try:
        runpy.run_path(os.path.join(os.environ["REPO"], "stages", stage + ".py"),
                       run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
print("INFO " + json.dumps(info))
"""

OUTPUT_DIRS = ("data/interim", "data/processed", "metrics", "plots")


def numpy_dispatch_targets() -> list[str]:
    """NumPy's SIMD dispatch targets this CPU runs (X86_V3 on an AVX2 machine with NumPy 2.x;
    AVX2, FMA3, AVX512F... with NumPy 1.x): the names ``NPY_DISABLE_CPU_FEATURES`` takes."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:   # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    return [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]


def run_data_stages(work: Path, raw: Path, threads: int, env: dict) -> tuple[dict, dict]:
    """ingest + sequences + outcomes in ``work`` on ``raw``: (sha256 per output file, info)."""
    (work / "data/raw").mkdir(parents=True)
    (work / "data/raw/synthea").symlink_to(raw)
    (work / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    full = {**os.environ, "REPO": str(ROOT), "PYTHONPATH": str(ROOT / "src"), **env}
    res = subprocess.run([sys.executable, "-c", CHILD, str(work), str(threads)], env=full,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{env}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    info = json.loads(res.stdout.split("INFO ", 1)[1].splitlines()[0])
    hashes = {str(f.relative_to(work)): hashlib.sha256(f.read_bytes()).hexdigest()
              for top in OUTPUT_DIRS for f in sorted((work / top).rglob("*")) if f.is_file()}
    return hashes, info


def test_data_stages_identical_across_threads_simd_and_blas_kernels(tmp_path):
    raw = export_dir("unmc-v3.2")
    one = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    four = {"OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    disabled = numpy_dispatch_targets()
    other_cpu = {**four, "NPY_DISABLE_CPU_FEATURES": " ".join(disabled)}
    if platform.machine() in ("x86_64", "AMD64"):
        other_cpu["OPENBLAS_CORETYPE"] = "Prescott"   # another CPU's BLAS kernels
    variants = {"default": (0, {}), "1 thread": (1, one), "4 threads, other SIMD/BLAS":
                (4, other_cpu)}
    runs, seconds = {}, {}
    for name, (threads, env) in variants.items():
        t0 = time.perf_counter()
        runs[name] = run_data_stages(tmp_path / name.split(",")[0].replace(" ", "_"), raw,
                                     threads, env)
        seconds[name] = round(time.perf_counter() - t0, 1)
    print(f"seconds per variant: {seconds}; disabled NumPy targets: {disabled}")
    base, base_info = runs["default"]
    assert any(f.endswith("outcomes.parquet") for f in base) and len(base) >= 15, sorted(base)
    # the variants really ran differently
    assert runs["1 thread"][1]["duckdb_threads"] == 1 and runs["1 thread"][1]["torch_threads"] == 1
    other = runs["4 threads, other SIMD/BLAS"][1]
    assert other["duckdb_threads"] == 4
    if disabled:
        assert other["exp"].startswith("baseline"), other
    if "OPENBLAS_CORETYPE" in other_cpu and base_info["blas"]:
        assert other["blas"] != base_info["blas"], (base_info, other)
    for name, (hashes, _) in runs.items():
        diff = sorted(f for f in base.keys() | hashes.keys() if base.get(f) != hashes.get(f))
        assert not diff, f"{name}: outputs differ from the default run: {diff}"
