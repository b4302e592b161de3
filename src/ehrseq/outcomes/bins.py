"""Time bins for discrete-time survival models (``outcome.time_bins``).

The edges are fitted on the durations of the *events* in the training split:

- ``quantile``: ``[0, q(1/n), q(2/n), ..., q(1)]``, the quantiles of the event times, so each
  bin holds about as many training events (ties merge edges, giving fewer bins);
- ``equal``: ``n`` bins of equal width on ``[0, max event time]``.

Then every evaluation horizon (``evaluate.horizons``, passed as ``horizons``) that lies inside
the training follow-up becomes an edge too, so a horizon never falls inside a bin: a
discrete-time model's S(30 d) is then its own prediction at an edge, not an interpolation
(:func:`ehrseq.evaluate.survival.interpolate_discrete`). A horizon at or beyond the longest
training duration is not added: no training patient would be at risk in the bin it closes, so
that bin's hazard would never be trained. Each horizon adds at most one bin; a fitted edge
within a day of a horizon is dropped in its favour, so no bin is a sliver.

Fitted edges are rounded to the whole second (:func:`ehrseq.repro.round_days`), so
``time_bins.json`` has the same bytes on every machine.

Durations beyond the last edge are censored there (see :mod:`ehrseq.models.losses`).
"""

from __future__ import annotations

import numpy as np

from ..io import InputError
from ..repro import round_days

SNAP_DAYS = 1.0  # a fitted edge closer than this to a horizon is replaced by the horizon


def time_bins(duration, event, n: int, scheme: str = "quantile", horizons=()) -> np.ndarray:
    """Strictly increasing bin edges in days, starting at 0: ``n`` bins (fewer on ties), plus
    one more edge per horizon in ``(0, max training duration)`` that is not an edge already."""
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
    inner = round_days(inner)
    h = np.asarray(horizons, dtype=np.float64).ravel()
    h = h[(h > 0) & (h < d.max())]
    if h.size:  # a fitted edge within a day of a horizon gives way to it (no sliver bins)
        inner = inner[np.abs(inner[:, None] - h[None, :]).min(axis=1) >= SNAP_DAYS]
    edges = np.unique(np.concatenate([[0.0], inner[inner > 0], h]))
    if len(edges) < 2:   # every event at t = 0 cannot happen (durations > 0); be safe
        edges = np.array([0.0, float(t.max()) or 1.0])
    return edges
