r"""Multi-label, multi-horizon binary evaluation: AUROC, AUPRC, Brier, ECE with bootstrap CIs.

A prediction is ``prob[i, t, h]`` = P(onset of target t within horizon h) and the truth
``labels[i, t, h]`` in {0, 1, NaN}; NaN (masked: present at the landmark, or censored before
h) cells are left out of that (target, horizon). Every (target, horizon) cell is scored on its
known test patients; the macro average of a metric at a horizon is the mean over the targets
whose cell is evaluable.

Metrics (each the sample-weighted form, so that one code path gives the point estimate, with
all weights 1, and every bootstrap resample, with multinomial multiplicities as weights):

- ``auroc``: :math:`P(p_+ > p_-) + \tfrac12 P(p_+ = p_-)`, scikit-learn's ``roc_auc_score``;
  computed per distinct score with cumulative sums (one sort per cell).
- ``auprc``: average precision :math:`\sum_k (R_k - R_{k-1}) P_k` over distinct thresholds,
  scikit-learn's ``average_precision_score`` (no interpolation).
- ``brier``: :math:`\frac1n\sum_i (p_i - y_i)^2`.
- ``ece``: 10 equal-width bins of p on [0, 1] (the last closed),
  :math:`\sum_b \frac{n_b}{n}\,|\bar p_b - \bar y_b|`.

A cell with fewer than :data:`MIN_CLASS` positives or negatives among its known test patients
is skipped: every metric NaN, and a reason in ``skipped`` (with none the AUROC is undefined;
with a few it ranks nothing, and the others would be misleading beside evaluable cells). Bootstrap: ``n_boot`` resamples of test
patients (seeded), shared by all targets and horizons (so macro averages resample patients
jointly); 95 % percentile intervals over the resamples where the metric is defined. One
``[1 + n_boot, n]`` weight matrix and matrix products: no loop over resamples.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from .survival import _interval as percentile_interval  # one bootstrap interval rule
from .survival import bootstrap_weights

METRICS = ("auroc", "auprc", "brier", "ece")
MIN_CLASS = 5
"""A cell is scored only with at least this many test positives and negatives: fewer cannot
rank models (a 95% interval of AUROC spans most of [0, 1])."""
N_BINS = 10


def _groups(p: np.ndarray, y: np.ndarray, w: np.ndarray):
    """Positive and negative weight per distinct score, scores descending: ``[R, G]`` each."""
    o = np.argsort(-p, kind="stable")
    ps, ys, ws = p[o], y[o], w[:, o]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    pos = np.add.reduceat(ws * ys, starts, axis=1)
    neg = np.add.reduceat(ws * (1 - ys), starts, axis=1)
    return pos, neg


def _div(a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def weighted_auroc(y, p, w) -> np.ndarray:
    """AUROC per row of weights ``w`` ``[R, n]`` (NaN where a row has one class only)."""
    pos, neg = _groups(np.asarray(p, float), np.asarray(y, float), np.atleast_2d(w))
    neg_above = np.cumsum(neg, axis=1) - neg          # negatives scored strictly higher
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    wrong = (pos * (neg_above + 0.5 * neg)).sum(1)    # pairs ranked wrong, ties half
    return 1.0 - _div(wrong, n_pos * n_neg)


def weighted_auprc(y, p, w) -> np.ndarray:
    """Average precision per row of weights (NaN where a row has no positive)."""
    pos, neg = _groups(np.asarray(p, float), np.asarray(y, float), np.atleast_2d(w))
    tp, fp = np.cumsum(pos, 1), np.cumsum(neg, 1)
    precision = _div(tp, tp + fp)
    return _div((pos * np.nan_to_num(precision)).sum(1), pos.sum(1))


def weighted_brier(y, p, w) -> np.ndarray:
    w = np.atleast_2d(w)
    return _div(w @ (np.asarray(p, float) - np.asarray(y, float)) ** 2, w.sum(1))


def calibration_bins(p, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-width bin of each probability, 0..n_bins-1 (1.0 in the last bin)."""
    return np.clip((np.asarray(p, float) * n_bins).astype(np.int64), 0, n_bins - 1)


def weighted_ece(y, p, w, n_bins: int = N_BINS) -> np.ndarray:
    """Expected calibration error per row of weights (equal-width bins)."""
    p, y, w = np.asarray(p, float), np.asarray(y, float), np.atleast_2d(w)
    onehot = np.eye(n_bins)[calibration_bins(p, n_bins)]          # [n, bins]
    n_b = w @ onehot
    gap = np.abs(w @ (onehot * p[:, None]) - w @ (onehot * y[:, None]))  # n_b * |p̄ - ȳ|
    return _div(gap.sum(1), n_b.sum(1))


FUNCS = {"auroc": weighted_auroc, "auprc": weighted_auprc, "brier": weighted_brier,
         "ece": weighted_ece}


def reliability_table(y, p, n_bins: int = N_BINS) -> list[dict]:
    """Rows (bin, lo, hi, n, predicted, observed) of the reliability diagram (empty bins
    left out)."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    b = calibration_bins(p, n_bins)
    n = np.bincount(b, minlength=n_bins)
    sp, sy = np.bincount(b, p, n_bins), np.bincount(b, y, n_bins)
    return [{"bin": k, "lo": k / n_bins, "hi": (k + 1) / n_bins, "n": int(n[k]),
             "predicted": sp[k] / n[k], "observed": sy[k] / n[k]}
            for k in np.flatnonzero(n)]



def evaluate_multilabel(labels, prob, targets: Sequence[str], horizons: Sequence[int],
                        n_boot: int = 200, seed: int = 0, groups=None) -> dict:
    """Score ``prob`` against ``labels`` (both ``[n, T, H]``; NaN labels masked).
    ``groups``: the patient of each row (landmark); resamples draw patients.

    Returns ``{"metrics": {f"{m}_{h}.{target}": value, ..._lo, ..._hi, and .macro},
    "skipped": {f"{h}.{target}": reason}, "n": {...}, "boot": {(m, h): [T, R] array}}``;
    ``metrics`` is flat for ``metrics/*.json`` (prefix it with the model name).
    """
    labels, prob = np.asarray(labels, float), np.asarray(prob, float)
    if labels.shape != prob.shape or labels.ndim != 3:
        raise ValueError(f"labels {labels.shape} and prob {prob.shape} must both be "
                         "[patients, targets, horizons]")
    n, T, H = labels.shape
    if (T, H) != (len(targets), len(horizons)):
        raise ValueError(f"{T} targets x {H} horizons in the arrays, but {len(targets)} "
                         f"targets and {len(horizons)} horizons named")
    known = ~np.isnan(labels)
    if (known & ~np.isfinite(prob)).any():
        raise ValueError("prob must be finite wherever the label is known")
    w_all = bootstrap_weights(n, n_boot, seed, groups)
    out: dict = {}
    skipped: dict[str, str] = {}
    counts: dict[str, int] = {}
    boots: dict = {}
    for j, h in enumerate(horizons):          # a few horizons x a few targets: cells, each
        per_metric = {m: [] for m in METRICS}  # vectorised over patients and resamples
        for t, name in enumerate(targets):
            m = known[:, t, j]
            y, p, w = labels[m, t, j], prob[m, t, j], w_all[:, m]
            n_pos, n_known = int(y.sum()), int(m.sum())
            counts[f"n_{h}.{name}"], counts[f"pos_{h}.{name}"] = n_known, n_pos
            reason = None
            if n_pos < MIN_CLASS:
                reason = f"{n_pos} positives among {n_known} known test patients"
            elif n_known - n_pos < MIN_CLASS:
                reason = f"{n_known - n_pos} negatives among {n_known} known test patients"
            for metric, fn in FUNCS.items():
                key = f"{metric}_{h}.{name}"
                boot = np.full(w_all.shape[0], np.nan) if reason else fn(y, p, w)
                out[key] = float(boot[0])
                out[f"{key}_lo"], out[f"{key}_hi"] = percentile_interval(boot[1:])
                per_metric[metric].append(boot)
            if reason:
                skipped[f"{h}.{name}"] = reason
        for metric, rows in per_metric.items():
            b = np.stack(rows)                               # [T, R]
            boots[(metric, h)] = b
            ok = np.isfinite(b[:, 0])
            key = f"{metric}_{h}.macro"
            if not ok.any():
                out[key] = out[f"{key}_lo"] = out[f"{key}_hi"] = math.nan
                continue
            with warnings.catch_warnings():   # a resample may lack every target's class
                warnings.simplefilter("ignore", RuntimeWarning)
                macro = np.nanmean(b[ok], axis=0)
            out[key] = float(macro[0])
            out[f"{key}_lo"], out[f"{key}_hi"] = percentile_interval(macro[1:])
            out[f"{metric}_{h}.n_targets"] = int(ok.sum())
    return {"metrics": out, "skipped": skipped, "n": counts, "boots": boots}
