"""Stage `train_trajectory`: multi-horizon onset risks for several conditions and death.

Labels (``ehrseq.outcomes.trajectory_labels``) at the shared landmark of every outcome-eligible
patient; the disease-trajectory model (``ehrseq.models.trajectory``) trained by the one
training loop, rank-aware under torchrun like ``train_survival``; logistic regression and random
forest on TF-IDF code features per target and horizon as baselines; all scored on the test split
by ``ehrseq.evaluate.multilabel`` (docs/trajectory.md).

Reads the ``trajectory`` section of params.yaml (:class:`ehrseq.params.TrajectoryParams`).
"""


import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve, roc_curve

from ehrseq.data.tensors import make_loader
from ehrseq.evaluate.multilabel import evaluate_multilabel, reliability_table
from ehrseq.evaluate.task import OUTCOMES, SEQUENCES, SurvivalTask
from ehrseq.io import InputError, atomic_outputs, run_stage, write_json
from ehrseq.models.classical import Featurizer
from ehrseq.models.trajectory import (
    DiseaseTrajectoryModel,
    TrajectoryDataset,
    make_loss,
    trajectory_config,
)
from ehrseq.outcomes.landmarks import input_window
from ehrseq.outcomes.trajectory_labels import DEATH, build_labels, frequent_onsets, label_summary
from ehrseq.params import load_params
from ehrseq.plots import plt, training_curves
from ehrseq.train import distributed
from ehrseq.train.loop import (
    fingerprint,
    fit,
    load_pretrained,
    make_run_key,
    predict,
    save_model,
    seed_everything,
)

EVENTS = Path("data/interim/events.parquet")
SURVIVAL_MODEL = Path("models/train_survival")
PRETRAINED_BEHRT = Path("models/pretrain_behrt")
MODEL_DIR = Path("models/train_trajectory")
PRED = Path("data/predictions/train_trajectory")
PLOTS = Path("plots/train_trajectory")
METRICS = Path("metrics/train_trajectory.json")
log = logging.getLogger("train_trajectory")


def init_from_survival(model: DiseaseTrajectoryModel, vocab: dict) -> bool:
    """Load the survival LSTM's encoder weights when models/train_survival exists."""
    weights = SURVIVAL_MODEL / "model.safetensors"
    if not weights.exists():
        log.warning("trajectory.init_from_survival: %s missing; training from random weights",
                    weights)
        return False
    saved = json.loads((SURVIVAL_MODEL / "vocab.json").read_text())
    if saved.get("tokens") != vocab["tokens"]:
        raise InputError(f"{SURVIVAL_MODEL}/vocab.json differs from the current sequences "
                         "vocabulary; re-run train_survival or set init_from_survival: false")
    try:
        model.encoder.load_survival(load_file(str(weights)))
    except ValueError as err:
        raise InputError(f"{weights}: {err}; train_survival and train_trajectory must use the "
                         "same model.size and model.lstm") from None
    return True


def pos_weights(labels: np.ndarray, mode) -> torch.Tensor | None:
    if mode is None:
        return None
    if mode != "auto":
        return torch.full(labels.shape[1:], float(mode))
    known = ~np.isnan(labels)
    pos = (np.nan_to_num(labels) > 0).sum(0)
    ratio = np.where(pos > 0, (known.sum(0) - pos) / np.maximum(pos, 1), 1.0)
    return torch.as_tensor(np.clip(ratio, 1.0, 100.0), dtype=torch.float32)


def fit_baseline(name: str, X_tr, y_tr: np.ndarray, X_te, seed: int, n_jobs: int) -> np.ndarray:
    """One classifier per (target, horizon) on the known training rows; a cell with one class
    predicts its rate. Probabilities are made non-decreasing across horizons (running max)."""
    n_te, T, H = X_te.shape[0], y_tr.shape[1], y_tr.shape[2]
    out = np.zeros((n_te, T, H))
    for t in range(T):          # a handful of targets x horizons; each fit is vectorised
        for j in range(H):
            known = ~np.isnan(y_tr[:, t, j])
            y = y_tr[known, t, j].astype(int)
            if y.size == 0 or y.min() == y.max():
                out[:, t, j] = y.mean() if y.size else 0.0
                continue
            clf = (LogisticRegression(C=1.0, max_iter=2000) if name == "lr" else
                   RandomForestClassifier(n_estimators=300, min_samples_leaf=5,
                                          n_jobs=n_jobs, random_state=seed))
            out[:, t, j] = clf.fit(X_tr[known], y).predict_proba(X_te)[:, 1]
    return np.maximum.accumulate(out, axis=2)


# --------------------------------------------------------------------------- plots

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


# --------------------------------------------------------------------------- the stage

def main() -> None:
    params = load_params()
    tp = params.trajectory
    task = SurvivalTask.load()
    t = task.table
    targets_all = tp.targets or [*params.outcome.onset_codes, DEATH]
    horizons = tp.horizons
    frequent = frequent_onsets(EVENTS, task.seqs.patients, t.iloc[task.rows("train")],
                               horizons[-1], tp.frequent_targets, targets_all,
                               params.sequences.event_kinds)
    targets_all = [*targets_all, *frequent]
    lab = build_labels(EVENTS, task.seqs.patients, t, targets_all, horizons,
                       params.sequences.event_kinds)
    tr, va, te = task.rows("train"), task.rows("val"), task.rows("test")
    train_pos = (np.nan_to_num(lab.labels[tr]) > 0).sum(axis=(0, 2))
    keep_t = np.flatnonzero(train_pos > 0)
    metrics: dict = {"n_train": len(tr), "n_val": len(va), "n_test": len(te)}
    for j in np.flatnonzero(train_pos == 0):
        metrics[f"skipped.target.{targets_all[j]}"] = "no positive in the train split"
        log.warning("target %s (%s): no positive in the train split at any horizon; skipped",
                    targets_all[j], lab.descriptions.get(targets_all[j], "never recorded"))
    if not len(keep_t):  # a small cohort: nothing to learn; say so instead of failing the DAG
        reason = (f"no trajectory target {targets_all} has an onset within {horizons[-1]} days "
                  "of the landmark in the train split (use more patients or trajectory.targets)")
        log.warning("nothing trained: %s", reason)
        with atomic_outputs(MODEL_DIR, PRED, PLOTS) as (model_dir, pred_dir, plots_dir):
            for d in (model_dir, pred_dir):
                d.mkdir()
                (d / "SKIPPED.txt").write_text(reason + "\n")
            plots_dir.mkdir()
            fig, ax = plt.subplots(figsize=(6, 1.5))
            ax.axis("off")
            ax.text(0.0, 0.5, "train_trajectory: nothing trained\n" + reason, wrap=True,
                    fontsize=8, va="center")
            fig.savefig(plots_dir / "skipped.png")
            plt.close(fig)
        write_json(METRICS, {**metrics, "trained": 0, "skipped.reason": reason})
        return
    targets = [targets_all[j] for j in keep_t]
    labels = lab.labels[:, keep_t]
    summary = label_summary(lab, t["split"].to_numpy())

    pre, pre_cfg = (load_pretrained(PRETRAINED_BEHRT, "pretrain_behrt", task.seqs.vocab)
                    if tp.encoder == "behrt" else (None, None))
    cfg = trajectory_config(params.model, task.seqs.vocab_size, targets, horizons, tp.encoder,
                            pre_cfg)
    seed_everything(params.train.seed, params.train.deterministic)
    model = DiseaseTrajectoryModel(cfg)
    if pre is not None:
        model.encoder.load_pretrained(pre.encoder.state_dict())
        initialised = str(PRETRAINED_BEHRT)
    else:
        initialised = str(SURVIVAL_MODEL) if tp.init_from_survival and init_from_survival(
            model, task.seqs.vocab) else ""
    idx, lmv, window = t["index"].to_numpy(), t["landmark_visits"].to_numpy(), task.window

    def dataset(r):
        return TrajectoryDataset(task.seqs, idx[r], lmv[r], labels[r], max_visits=window[r])

    trn = params.train
    loss_fn = make_loss(pos_weights(labels[tr], tp.pos_weight))
    ddp = distributed.setup()
    loader = make_loader(dataset(tr), trn.batch_size, shuffle=True, seed=trn.seed,
                          num_workers=trn.num_workers, rank=ddp.rank, world_size=ddp.world_size)
    key = make_run_key("train_trajectory", params.model, trn, tp, ddp.world_size,
                       initialised, fingerprint(SEQUENCES, OUTCOMES, *([initialised] if initialised else []),
                                                extra=np.ascontiguousarray(labels).tobytes()))
    train_kw = dict(val_loader=make_loader(dataset(va), trn.batch_size), run_key=key,
                    checkpoint_root=trn.checkpoint_dir, wrap_model=distributed.wrap,
                    rank=ddp.rank, world_size=ddp.world_size)
    if not ddp.is_main:  # other ranks train; rank 0 alone writes outputs
        fit(model, loader, loss_fn, trn, **train_kw)
        distributed.teardown()
        return
    with atomic_outputs(MODEL_DIR, PRED, PLOTS) as (model_dir, pred_dir, plots_dir):
        stats = fit(model, loader, loss_fn, trn, live_dir=plots_dir / "live", **train_kw)
        distributed.teardown()
        probs = {"trajectory": predict(model, make_loader(dataset(te), trn.batch_size),
                                       lambda m, b: m.predict_proba(b), len(te))}
        seconds = {}
        if tp.baselines:
            feat = Featurizer(seed=trn.seed).fit(task.counts("train"), task.age[tr],
                                                 task.male[tr])
            X_tr = feat.sparse(task.counts("train"), task.age[tr], task.male[tr])
            X_te = feat.sparse(task.counts("test"), task.age[te], task.male[te])
            for name in tp.baselines:
                t0 = time.time()
                probs[name] = fit_baseline(name, X_tr, labels[tr], X_te, trn.seed,
                                           trn.threads or -1)
                seconds[name] = time.time() - t0
        y_te = labels[te]
        for name, p in probs.items():
            res = evaluate_multilabel(y_te, p, targets, horizons, params.evaluate.bootstrap,
                                      params.evaluate.seed)
            metrics.update({f"{name}.{k}": v for k, v in res["metrics"].items()})
        metrics.update({f"skipped.{k}": v for k, v in res["skipped"].items()})
        for s in ("train", "test"):
            g = summary[summary["split"] == s]
            for col in ("known", "positives"):
                metrics.update({f"labels.{s}_{col}_{h}.{tg}": int(n) for tg, h, n in
                                zip(g["target"], g["horizon"], g[col], strict=True)})

        save_model(model_dir, model, cfg, task.seqs.vocab)
        pred_dir.mkdir()
        np.savez_compressed(pred_dir / "test.npz", index=idx[te], targets=np.array(targets),
                            horizons=np.array(horizons), labels=y_te,
                            **{f"prob_{k}": v for k, v in probs.items()})
        plots_dir.mkdir(exist_ok=True)
        summary.assign(description=summary["target"].map(lab.descriptions)).to_csv(
            plots_dir / "labels.csv", index=False)
        training_curves(stats["history"], plots_dir / "training_curves")
        plot_curves(y_te, probs, targets, horizons, plots_dir)
        plot_reliability(y_te, probs, horizons, plots_dir)
        example = plot_patient(model, task, lab, targets, keep_t, te, horizons,
                               tp.example_landmarks, plots_dir, params.outcome.history,
                               trn.batch_size)

    hours = stats["wall_time_s"] / 3600
    metrics.update({
        "trajectory.size": params.model.size,
        "trajectory.encoder": tp.encoder,
        "trajectory.initialised_from": initialised or "random",
        "trajectory.n_params": stats["n_params"],
        "trajectory.epochs": stats["epochs"],
        "trajectory.best_epoch": stats["best_epoch"],
        "trajectory.best_val_loss": stats["best_value"],
        "trajectory.train_seconds": stats["wall_time_s"],
        "trajectory.patients_per_s": stats["patients_per_s"],
        "trajectory.peak_memory_mb": stats["peak_memory_mb"],
        "trajectory.device": stats["device_name"],
        "trajectory.world_size": ddp.world_size,
        "trajectory.gpu_cost_usd": hours * params.evaluate.gpu_hourly_usd
        if stats["device"].startswith("cuda") else 0.0,
        "n_targets": len(targets),
        "example_patient_index": example,
        **{f"{k}.train_seconds": v for k, v in seconds.items()},
    })
    write_json(METRICS, metrics)
    for name in probs:
        log.info("%s: macro AUROC %s", name, ", ".join(
            f"{h} d {metrics[f'{name}.auroc_{h}.macro']:.3f}" for h in horizons))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
