"""Survival curves every family shares: the Kaplan–Meier null curve, reading S(t) off a stored
grid (step) or off bin edges (constant hazard), the one risk score ``1 - S(h*)``, and Harrell's
C of a risk score. Used by models (tuning), training (predictions) and evaluation alike.
(A discrete-time model's hazards become survival in torch: ``models.losses.hazard_to_survival``.)
"""

from __future__ import annotations

import numpy as np

TIED_TOL = 1e-8  # risks (or survival probabilities) closer than this are a tie, as in sksurv


def km_survival(train_duration, train_event, times) -> np.ndarray:
    """Kaplan–Meier survival of the training split at ``times``: the null model, shape ``[T]``.

    Every patient gets the same curve; evaluate it with
    ``np.broadcast_to(km_survival(...), (n_test, len(times)))``.
    """
    from lifelines import KaplanMeierFitter  # here: every training stage imports this module

    kmf = KaplanMeierFitter().fit(np.asarray(train_duration, float), np.asarray(train_event, bool))
    return kmf.survival_function_at_times(np.asarray(times, float)).to_numpy(dtype=float)


def survival_at(surv, times, t) -> np.ndarray:
    """Step interpolation of a survival matrix: ``S(t) = surv[:, k]``, ``k`` = last ``times[k] <= t``.

    ``S(t) = 1`` before ``times[0]``; after ``times[-1]`` the last value is carried forward.
    A scalar ``t`` gives shape ``[n]``; an array of times gives ``[n, len(t)]``.
    """
    surv = np.asarray(surv, dtype=float)
    times = np.asarray(times, dtype=float)
    k = np.searchsorted(times, np.asarray(t, dtype=float), side="right")
    padded = np.concatenate([np.ones((surv.shape[0], 1)), surv], axis=1)
    return padded[:, k]


def interpolate_discrete(surv_edges, edges, t) -> np.ndarray:
    r"""S(t) of a discrete-time model that gives S at its bin edges, constant hazard in each bin.

    A discrete-time (logistic-hazard) model predicts ``surv_edges[i, k] = S(edges[k] | x_i)``
    (``[n, K+1]``; a leading edge 0 with S = 1 is added when ``edges[0] > 0``). Inside a bin
    :math:`a \le t \le b` the hazard is taken as constant, so the log survival is linear:

    .. math::  S(t) = S(a)\,\big(S(b)/S(a)\big)^{(t-a)/(b-a)}

    exact at every edge, continuous, and monotone. ``S(a) = 0`` stays 0. Beyond the last edge S
    is held flat at its last value: the model is trained with every follow-up beyond the last
    edge censored there, so it says nothing about later times, and a flat tail is also what the
    Kaplan–Meier, Cox (lifelines) and RSF curves do beyond their last time, so no family gets
    an extrapolation the others lack. A scalar ``t`` gives ``[n]``, an array ``[n, len(t)]``.
    """
    s = np.clip(np.asarray(surv_edges, dtype=float), 0.0, 1.0)
    e = np.asarray(edges, dtype=float).ravel()
    if s.ndim != 2 or s.shape[1] != e.size:
        raise ValueError(f"surv_edges must be [n, {e.size}] (one column per edge), got {s.shape}")
    if e.size and e[0] > 0:
        e = np.concatenate([[0.0], e])
        s = np.concatenate([np.ones((s.shape[0], 1)), s], axis=1)
    if e.size < 2 or e[0] < 0 or (np.diff(e) <= 0).any():
        raise ValueError("edges must be >= 0 and strictly increasing, with at least one bin")
    tt = np.atleast_1d(np.asarray(t, dtype=float))
    k = np.clip(np.searchsorted(e, tt, side="right") - 1, 0, e.size - 2)
    frac = np.clip((tt - e[k]) / (e[k + 1] - e[k]), 0.0, 1.0)
    s_a, s_b = s[:, k], s[:, k + 1]
    ratio = np.divide(s_b, s_a, out=np.zeros_like(s_b), where=s_a > 0)
    inside = s_a * np.clip(ratio, 0.0, 1.0) ** frac  # 0 ** 0 = 1: S(a) at the left edge
    out = np.where(frac >= 1.0, s_b, inside)  # the right edge (and beyond) bit for bit
    return out[:, 0] if np.ndim(t) == 0 else out


def risk_score(surv, times, horizon: float) -> np.ndarray:
    """The one risk score of this project: ``1 - S(horizon | x)`` (see the module docstring)."""
    return 1.0 - survival_at(surv, times, float(horizon))


def harrell_c(duration, event, risk) -> float:
    """Harrell's C of a risk score (higher = earlier event), tied risks count one half (sksurv)."""
    from sksurv.metrics import concordance_index_censored

    return float(
        concordance_index_censored(
            np.asarray(event, bool),
            np.asarray(duration, float),
            np.asarray(risk, float),
            tied_tol=TIED_TOL,
        )[0]
    )
