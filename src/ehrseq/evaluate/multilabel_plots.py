"""Figures of the multi-horizon onset models (``train_trajectory``): ROC and PR curves,
reliability diagrams, and one test patient's risk at successive landmarks (which needs the
model, so it is drawn by the training stage; every metric is computed by ``evaluate``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from ..data.tensors import make_loader
from ..models.inference import predict
from ..models.trajectory import TrajectoryDataset
from ..outcomes.landmarks import input_window
from ..plots import plt
from .multilabel import reliability_table


def _frequent_target(y: np.ndarray, j: int) -> int | None:
    """The target with most test positives at horizon j among cells with both classes."""
    pos = (np.nan_to_num(y[:, :, j]) > 0).sum(0)
    neg = (y[:, :, j] == 0).sum(0)
    ok = (pos > 0) & (neg > 0)
    return int(np.argmax(np.where(ok, pos, -1))) if ok.any() else None


def plot_curves(y, probs: dict, targets, horizons, out: Path) -> None:
    """ROC and PR curves per horizon for the most frequent target (PNG + long CSV)."""
    rows = {"roc": [], "pr": []}
    figs = {k: plt.subplots(1, len(horizons), figsize=(4 * len(horizons), 4), dpi=110,
                            squeeze=False) for k in rows}
    for j, h in enumerate(horizons):
        t = _frequent_target(y, j)
        axes = {k: figs[k][1][0, j] for k in rows}
        if t is None:
            for ax in axes.values():
                ax.text(0.5, 0.5, "no evaluable target", ha="center", va="center")
            continue
        known = ~np.isnan(y[:, t, j])
        yy = y[known, t, j]
        for name, p in probs.items():
            pp = p[known, t, j]
            fpr, tpr, _ = roc_curve(yy, pp)
            prec, rec, _ = precision_recall_curve(yy, pp)
            axes["roc"].plot(fpr, tpr, label=name)
            axes["pr"].step(rec, prec, where="post", label=name)
            rows["roc"] += [(name, h, targets[t], a, b) for a, b in zip(fpr, tpr, strict=True)]
            rows["pr"] += [(name, h, targets[t], a, b) for a, b in zip(rec, prec, strict=True)]
        axes["roc"].plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        axes["pr"].axhline(yy.mean(), color="grey", lw=1, ls="--", label="prevalence")
        for k, (xl, yl) in {"roc": ("false positive rate", "true positive rate"),
                            "pr": ("recall", "precision")}.items():
            ax = axes[k]
            ax.set(xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(0, 1.02),
                   title=f"{targets[t]} within {h} d (n={known.sum()}, +{int(yy.sum())})")
            ax.legend(fontsize=8)
    for k, (fig, _) in figs.items():
        fig.tight_layout()
        fig.savefig(out / f"{k}.png")
        plt.close(fig)
        cols = ["model", "horizon", "target"] + (["fpr", "tpr"] if k == "roc"
                                                 else ["recall", "precision"])
        pd.DataFrame(rows[k], columns=cols).to_csv(out / f"{k}.csv", index=False)


def plot_reliability(y, probs: dict, horizons, out: Path) -> None:
    """Reliability diagrams per horizon, every known (patient, target) cell pooled."""
    fig, axes = plt.subplots(1, len(horizons), figsize=(4 * len(horizons), 4), dpi=110,
                             squeeze=False)
    rows = []
    for j, h in enumerate(horizons):
        ax = axes[0, j]
        known = ~np.isnan(y[:, :, j])
        for name, p in probs.items():
            tab = reliability_table(y[:, :, j][known], p[:, :, j][known])
            rows += [{"model": name, "horizon": h, **r} for r in tab]
            ax.plot([r["predicted"] for r in tab], [r["observed"] for r in tab], marker="o",
                    ms=4, label=name)
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        ax.set(xlabel=f"predicted P(onset within {h} d)", ylabel="observed fraction",
               xlim=(0, 1), ylim=(0, 1), title=f"{h} days (all targets pooled)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reliability.png")
    plt.close(fig)
    pd.DataFrame(rows).to_csv(out / "reliability.csv", index=False)


def plot_patient(model, task, lab, targets, keep_t, rows_te, horizons, max_points: int,
                 out: Path, history, batch_size: int) -> int:
    """One test patient's P(onset within the largest horizon) at successive landmarks (visit
    k: inputs = the first k visits, from the fewest visits any landmark has, so the model is
    not asked about histories shorter than it was trained on). Returns the sequences index."""
    seqs, t = task.seqs, task.table
    idx = t["index"].to_numpy()[rows_te]
    n_vis = seqs.n_visits[idx]
    has_event = np.isfinite(lab.first_any[rows_te][:, keep_t]).any(1)
    score = n_vis + np.where(has_event, n_vis.max() + 1, 0)  # prefer a patient with an onset
    r = int(np.argmax(score))
    p = int(idx[r])
    k0 = min(int(t["landmark_visits"].min()), int(n_vis[r]))
    ks = np.unique(np.linspace(k0, n_vis[r], min(int(n_vis[r]), max_points)).round()
                   .astype(int))
    lm_p = np.full(len(ks), p)
    ds = TrajectoryDataset(seqs, lm_p, ks, max_visits=input_window(
        seqs.visit_offsets, seqs.patient_offsets, lm_p, ks, history.max_visits,
        history.max_tokens))
    prob = predict(model, make_loader(ds, batch_size), lambda m, b: m.predict_proba(b), len(ks))
    when = seqs.visit_time[seqs.patient_offsets[p] + ks - 1]
    dates = pd.to_datetime(when, unit="D")
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    recs = []
    for i, name in enumerate(targets):
        desc = lab.descriptions.get(name, "")
        label = name if desc.lower() == name else f"{name} {desc[:28]}"
        line, = ax.plot(dates, prob[:, i, -1], marker=".", ms=3, label=label)
        first = lab.first_any[rows_te[r], keep_t[i]]
        if np.isfinite(first):
            ax.axvline(pd.to_datetime(first, unit="D"), color=line.get_color(), ls=":", lw=1)
        recs.append(pd.DataFrame({"visit": ks, "date": dates.strftime("%Y-%m-%d"),
                                  "target": name, **{f"p_{h}": prob[:, i, j]
                                                     for j, h in enumerate(horizons)}}))
    ax.axvline(pd.to_datetime(t["landmark_time"].to_numpy()[rows_te[r]], unit="D"),
               color="black", lw=1, label="evaluation landmark")
    ax.set(xlabel="landmark (visit date)", ylabel=f"P(onset within {horizons[-1]} d)",
           title=f"test patient {t['patient'].to_numpy()[rows_te[r]][:8]}…: risk over time "
                 "(dotted: first record of the target)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "patient_trajectory.png")
    plt.close(fig)
    pd.concat(recs).to_csv(out / "patient_trajectory.csv", index=False)
    return p
