"""Time bins for discrete-time survival models (``outcome.time_bins``).

The edges are fitted on the durations of the *events* in the training split:

- ``quantile``: ``[0, q(1/n), q(2/n), ..., q(1)]``, the quantiles of the event times, so each
  bin holds about as many training events (ties merge edges, giving fewer bins);
- ``equal``: ``n`` bins of equal width on ``[0, max event time]``.

Then every evaluation horizon (``outcome.horizons``, passed as ``horizons``) that lies inside
the training follow-up becomes an edge too, so a horizon never falls inside a bin: a
discrete-time model's S(30 d) is then its own prediction at an edge, not an interpolation
(:func:`ehrseq.evaluate.survival.interpolate_discrete`). A horizon at or beyond the longest
training duration is not added: no training patient would be at risk in the bin it closes, so
that bin's hazard would never be trained. Each horizon adds at most one bin; a fitted edge
within a day of a horizon is dropped in its favour, so no bin is a sliver.

Fitted edges are rounded to the whole second (:func:`ehrseq.repro.round_days`), so
``time_bins.json`` has the same bytes on every machine.

Durations beyond the last edge are censored there (:func:`bin_targets`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import InputError
from ..repro import round_days

SNAP_DAYS = 1.0  # a fitted edge closer than this to a horizon is replaced by the horizon


def read_bins(outcomes: str | Path) -> tuple[np.ndarray, list[float]]:
    """(time-bin edges, evaluation horizons) from the outcomes stage's ``time_bins.json``."""
    path = Path(outcomes) / "time_bins.json"
    if not path.is_file():
        raise InputError(f"{path}: missing; run the outcomes stage first")
    bins = json.loads(path.read_text())
    return np.asarray(bins["cuts"], dtype=float), [float(h) for h in bins["horizons"]]


HORIZON_QUANTILES = (0.25, 0.5, 0.75)


def fit_horizons(duration, event, horizons=None) -> list[float]:
    """The evaluation horizons (days): ``horizons`` when given, else the quartiles
    (:data:`HORIZON_QUANTILES`) of the training event times, rounded up to whole days,
    distinct. Fitted on the training split only: never on the test outcomes."""
    if horizons is not None:
        return [float(h) for h in sorted(horizons)]
    t = np.asarray(duration, np.float64)[np.asarray(event).astype(bool)]
    if t.size == 0:
        raise InputError("outcome.horizons: null fits them to the training event times, but "
                         "the training split has no event")
    return [float(h) for h in np.unique(np.maximum(np.ceil(np.quantile(t, HORIZON_QUANTILES)),
                                                   1.0))]


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


def bin_edges(cuts: Sequence[float]) -> np.ndarray:
    """The bin edges starting at 0; raises ``ValueError`` unless strictly increasing."""
    edges = np.asarray(cuts, dtype=np.float64)
    if edges.ndim != 1 or len(edges) == 0 or edges[0] < 0:
        raise ValueError(f"cuts must be a non-empty list of day counts >= 0, got {cuts!r}")
    if edges[0] > 0:
        edges = np.concatenate([[0.0], edges])
    if len(edges) < 2 or (np.diff(edges) <= 0).any():
        raise ValueError(f"cuts must be strictly increasing with at least one bin, got {cuts!r}")
    return edges


def bin_targets(duration, event, cuts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Map (duration, event) to (bin index, event flag) for :func:`nll_logistic_hazard`.

    - An event at t falls in the bin containing t (right-closed: t = edges[k+1] is bin k).
    - A censoring at t counts as surviving its bin only if t reaches the bin's midpoint
      (the life-table convention), else as surviving up to the previous bin; one censored in
      the first half of the first bin is kept as surviving bin 0.
    - Anything beyond the last edge is censored there: bin K-1, event 0.
    """
    edges = bin_edges(cuts)
    n_bins = len(edges) - 1
    t = np.asarray(duration, dtype=np.float64)
    e = np.asarray(event).astype(np.float32)
    if t.shape != e.shape:
        raise ValueError(f"duration {t.shape} and event {e.shape} differ in shape")
    if np.isnan(t).any() or (t < 0).any():
        raise ValueError("durations must be >= 0 and not NaN")
    k = np.clip(np.searchsorted(edges, t, side="left") - 1, 0, n_bins - 1)
    beyond = t > edges[-1]
    mid = (edges[k] + edges[k + 1]) / 2
    censored = (e == 0) | beyond
    idx = np.where(censored & ~beyond & (t < mid), np.maximum(k - 1, 0), k)
    return idx.astype(np.int64), np.where(beyond, 0.0, e).astype(np.float32)
