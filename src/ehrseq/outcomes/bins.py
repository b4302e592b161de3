"""Time bins for discrete-time survival models (``outcome.time_bins``).

The edges are fitted on the durations of the *events* in the training split:

- ``quantile``: ``[0, q(1/n), q(2/n), ..., q(1)]``, the quantiles of the event times, so each
  bin holds about as many training events (ties merge edges, giving fewer bins);
- ``equal``: ``n`` bins of equal width on ``[0, max event time]``.

Durations beyond the last edge are censored there (see :mod:`ehrseq.models.losses`).
"""

from __future__ import annotations

import numpy as np

from ..io import InputError


def time_bins(duration, event, n: int, scheme: str = "quantile") -> np.ndarray:
    """Strictly increasing bin edges in days, starting at 0 (``n`` bins, or fewer on ties)."""
    d = np.asarray(duration, dtype=np.float64)
    e = np.asarray(event).astype(bool)
    t = d[e]
    if len(t) == 0:
        raise InputError("outcome.time_bins: no events in the training split to place bins on")
    if scheme == "quantile":
        inner = np.quantile(t, np.arange(1, n + 1) / n)
    elif scheme == "equal":
        inner = np.linspace(0.0, t.max(), n + 1)[1:]
    else:
        raise ValueError(f"outcome.time_bins.scheme: got {scheme!r}; accepted: quantile, equal")
    edges = np.unique(np.concatenate([[0.0], inner[inner > 0]]))
    if len(edges) < 2:   # every event at t = 0 cannot happen (durations > 0); be safe
        edges = np.array([0.0, float(t.max()) or 1.0])
    return edges
