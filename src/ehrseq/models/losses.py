"""Losses and label transforms for discrete-time survival models (after pycox).

Time bins: ``cuts`` are increasing edges in days, ``edges = [0, c_1, ..., c_K]`` (a leading
0 is added when missing), and bin k is the interval ``(edges[k], edges[k+1]]``. A model gives
one logit per bin; ``h_k = sigmoid(logit_k)`` is the probability of the event in bin k given
survival to its start, and ``S(edges[k+1]) = prod_{j<=k} (1 - h_j)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


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


def nll_logistic_hazard(logits: torch.Tensor, idx: torch.Tensor, event: torch.Tensor,
                        reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood of the discrete-time logistic-hazard model.

    Per patient with bin j and event flag e:
    ``-[sum_{k<j} log(1 - h_k) + e log h_j + (1 - e) log(1 - h_j)]``,
    computed from logits with BCE-with-logits (numerically stable), as pycox does.
    ``logits`` [B, K], ``idx`` int [B], ``event`` [B] 0/1.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [batch, bins], got shape {tuple(logits.shape)}")
    idx = idx.long().view(-1, 1)
    target = torch.zeros_like(logits).scatter(1, idx, event.to(logits.dtype).view(-1, 1))
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = bce.cumsum(1).gather(1, idx).view(-1)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def hazard_to_survival(logits: torch.Tensor) -> torch.Tensor:
    """Survival at every edge ``[B, K+1]`` (``S(0) = 1``) from hazard logits ``[B, K]``."""
    log_s = F.logsigmoid(-logits.float()).cumsum(1)
    return torch.cat([torch.ones_like(log_s[:, :1]), log_s.exp()], dim=1)
