"""Floating-point values that data stages write: the same bytes on every machine.

IEEE 754 rounds ``+ - * /``, ``sqrt`` and comparisons exactly, so elementwise arithmetic gives
the same bits on every CPU, at any thread count, with or without SIMD. Three things do not, and
the data stages (synthesize, ingest, sequences, outcomes) avoid them for every value they write
(docs/architecture.md, "Reproducibility"):

- NumPy's float64 ``exp``, ``log``, ``log10`` and ``power`` dispatch to AVX-512 kernels (NumPy's
  ``X86_V4`` target, ``numpy.lib.introspect.opt_func_info``) on CPUs that have AVX-512; those
  differ from the C library's values in the last bit (numpy/numpy#23523), on AVX2 machines
  NumPy gives the C library's values. :func:`libm_exp` / :func:`libm_log` call the C library
  (``math.exp``/``math.log``) value by value instead.
- Matrix products (``X @ beta``) go to OpenBLAS, whose kernel (its summation order, its use of
  FMA) is chosen per CPU at run time (``OPENBLAS_CORETYPE``) and whose work is split by thread
  count. :func:`weighted_sum` adds the columns one after the other instead.
- Sums whose order a library chooses (BLAS, parallel aggregates). :func:`mean`,
  :func:`standardise` use ``math.fsum``: the correctly rounded sum, the same in any order.

What is written is then also rounded at a stated precision, so the last-bit differences a C
library could still make (another libm: macOS, musl) almost never reach the files:

- times (durations, time-bin edges): to the whole second (:func:`round_days`);
- risks (``true_risk``) and Kaplan–Meier survival in plots: :data:`RISK_DECIMALS` decimals;
- bin edges of plot histograms: :data:`PLOT_DIGITS` significant digits (:func:`round_sig`).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

SECONDS_PER_DAY = 86_400.0
RISK_DECIMALS = 9
"""Decimals of written risks (log-hazards) and survival probabilities."""
PLOT_DIGITS = 6
"""Significant digits of written plot bin edges."""


def round_days(days) -> np.ndarray:
    """Days rounded to the whole second (NaN and inf pass through)."""
    d = np.asarray(days, dtype=np.float64)
    return np.round(d * SECONDS_PER_DAY) / SECONDS_PER_DAY


def round_decimals(x, decimals: int = RISK_DECIMALS) -> np.ndarray:
    """``x`` rounded to ``decimals`` decimals (``np.round``: scale, round half to even,
    unscale: elementwise IEEE operations, the same bits everywhere); -0.0 becomes 0.0."""
    return np.round(np.asarray(x, dtype=np.float64), decimals) + 0.0


def round_sig(x: float, digits: int = PLOT_DIGITS) -> float:
    """``x`` to ``digits`` significant digits (Python's correctly rounded decimal formatting)."""
    return float(f"{float(x):.{digits}g}")


def libm_exp(x) -> np.ndarray:
    """``exp`` of every value by the C library (not NumPy's CPU-dependent SIMD kernels)."""
    a = np.asarray(x, dtype=np.float64)
    return np.fromiter(map(math.exp, a.ravel().tolist()), np.float64, a.size).reshape(a.shape)


def libm_log(x) -> np.ndarray:
    """``log`` of every (positive) value by the C library."""
    a = np.asarray(x, dtype=np.float64)
    return np.fromiter(map(math.log, a.ravel().tolist()), np.float64, a.size).reshape(a.shape)


def weighted_sum(X, w) -> np.ndarray:
    """``X @ w`` for a 2-D ``X``, computed column after column (no BLAS): fixed order."""
    X = np.asarray(X, dtype=np.float64)
    out = np.zeros(X.shape[0], dtype=np.float64)
    for j, wj in enumerate(np.asarray(w, dtype=np.float64).tolist()):
        out = out + X[:, j] * wj
    return out


def mean(x) -> float:
    """Mean by ``math.fsum`` (NaN for an empty array)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    return math.fsum(a.tolist()) / a.size if a.size else float("nan")


def standardise(x) -> np.ndarray:
    """``(x - mean) / sd`` (population sd) with both moments summed by ``math.fsum``; all
    zeros when ``sd`` is 0."""
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a
    mu = mean(a)
    dev = a - mu
    sd = math.sqrt(math.fsum((dev * dev).ravel().tolist()) / a.size)
    return dev / sd if sd > 0 else np.zeros_like(a)


def kaplan_meier(duration, event) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kaplan–Meier estimate without logarithms: ``(times, at_risk, observed, survival)``.

    ``times``: 0 and every distinct duration (lifelines' ``event_table`` index);
    ``survival = cumprod(1 - observed / at_risk)``: a product in time order, the same bits on
    every machine (lifelines sums logarithms and exponentiates, NumPy's CPU-dependent ``log``
    and ``exp``).
    """
    d = np.asarray(duration, dtype=np.float64)
    e = np.asarray(event).astype(bool)
    times, inverse = np.unique(np.concatenate([[0.0], d]), return_inverse=True)
    inverse = inverse[1:]
    removed = np.bincount(inverse, minlength=len(times))
    observed = np.bincount(inverse[e], minlength=len(times))
    at_risk = len(d) - np.concatenate([[0], np.cumsum(removed)[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(at_risk > 0, 1.0 - observed / np.maximum(at_risk, 1), 1.0)
    return times, at_risk.astype(np.int64), observed.astype(np.int64), np.cumprod(factor)


def km_median(duration, event) -> float:
    """The first time at which the Kaplan–Meier survival is at most 1/2 (inf if never, NaN for
    no data): lifelines' ``median_survival_time_``, from :func:`kaplan_meier`."""
    if len(duration) == 0:
        return float("nan")
    times, _, _, surv = kaplan_meier(duration, event)
    below = np.flatnonzero(surv <= 0.5)
    return float(times[below[0]]) if below.size else float("inf")


def hash_uniform(ids, seed: int, tag: str) -> np.ndarray:
    """One U(0, 1) number per id from SHA-256 of (tag, seed, id), strictly inside (0, 1).

    Per-patient draws that do not depend on the other patients or their order.
    """
    raw = np.array([int.from_bytes(hashlib.sha256(f"{tag}:{seed}:{i}".encode()).digest()[:8],
                                   "big") for i in ids], dtype=np.float64)
    return (raw + 0.5) / 2.0**64
