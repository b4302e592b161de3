"""Stage `train_trajectory`: multi-horizon onset risks for several conditions and death.

Labels (``ehrseq.outcomes.trajectory_labels``) at the shared landmark of every outcome-eligible
patient; the disease-trajectory model (``ehrseq.models.trajectory``) trained by the one recipe;
logistic regression and random forest on TF-IDF code features per target and horizon as
baselines. Writes every model's test probabilities (``data/predictions/train_trajectory/
test.npz``), scored by the ``evaluate`` stage (``ehrseq.evaluate.multilabel``;
docs/trajectory.md).

Reads the ``trajectory`` section of params.yaml (:class:`ehrseq.params.TrajectoryParams`).
"""


import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from ehrseq.data.task import OUTCOMES, SEQUENCES, SurvivalTask
from ehrseq.data.tensors import make_loader
from ehrseq.evaluate.multilabel_plots import plot_curves, plot_patient, plot_reliability
from ehrseq.io import atomic_outputs, run_stage, write_json
from ehrseq.models.classical import Featurizer, multilabel_baseline
from ehrseq.models.inference import predict
from ehrseq.models.store import load_pretrained
from ehrseq.models.trajectory import (
    DiseaseTrajectoryModel,
    TrajectoryDataset,
    init_from_survival,
    make_loss,
    pos_weights,
    trajectory_config,
)
from ehrseq.outcomes.trajectory_labels import DEATH, build_labels, frequent_onsets, label_summary
from ehrseq.params import load_params
from ehrseq.plots import skipped_figure
from ehrseq.train.recipe import train_stage

EVENTS = Path("data/interim/events.parquet")
SURVIVAL_MODEL = Path("models/train_survival")
PRETRAINED_BEHRT = Path("models/pretrain_behrt")
STAGE = "train_trajectory"
log = logging.getLogger(STAGE)


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
        with atomic_outputs(*(Path(d) / STAGE for d in ("models", "data/predictions",
                                                         "plots"))) as (model_dir, pred, plots):
            for d in (model_dir, pred):
                d.mkdir()
                (d / "SKIPPED.txt").write_text(reason + "\n")
            skipped_figure(f"{STAGE}: nothing trained\n" + reason, plots / "skipped.png")
        write_json(f"metrics/{STAGE}.json", {**metrics, "trained": 0, "skipped.reason": reason})
        return
    targets = [targets_all[j] for j in keep_t]
    labels = lab.labels[:, keep_t]
    summary = label_summary(lab, t["split"].to_numpy())
    pre, pre_cfg = (load_pretrained(PRETRAINED_BEHRT, "pretrain_behrt", task.seqs.vocab)
                    if tp.encoder == "behrt" else (None, None))
    cfg = trajectory_config(params.model, task.seqs.vocab_size, targets, horizons, tp.encoder,
                            pre_cfg)
    initialised = str(PRETRAINED_BEHRT) if pre is not None else ""

    def build() -> DiseaseTrajectoryModel:
        nonlocal initialised
        model = DiseaseTrajectoryModel(cfg)
        if pre is not None:
            model.encoder.load_pretrained(pre.encoder.state_dict())
        elif tp.init_from_survival and init_from_survival(model, task.seqs.vocab, SURVIVAL_MODEL):
            initialised = str(SURVIVAL_MODEL)
        return model

    idx, lmv, window = t["index"].to_numpy(), t["landmark_visits"].to_numpy(), task.window

    def dataset(r):
        return TrajectoryDataset(task.seqs, idx[r], lmv[r], labels[r], max_visits=window[r])

    trn = params.train

    def finish(model, out) -> dict:
        probs = {"trajectory": predict(model, make_loader(dataset(te), trn.batch_size),
                                       lambda m, b: m.predict_proba(b), len(te))}
        m = {}
        if tp.baselines:  # count models on TF-IDF code features, one per target and horizon
            feat = Featurizer(seed=trn.seed).fit(task.counts("train"), task.age[tr],
                                                 task.male[tr])
            X_tr = feat.sparse(task.counts("train"), task.age[tr], task.male[tr])
            X_te = feat.sparse(task.counts("test"), task.age[te], task.male[te])
            for name in tp.baselines:
                t0 = time.time()
                probs[name] = multilabel_baseline(name, X_tr, labels[tr], X_te, trn.seed,
                                                  params.runtime.threads or -1)
                m[f"{name}.train_seconds"] = time.time() - t0
        y_te = labels[te]
        out.predictions.mkdir()
        np.savez_compressed(out.predictions / "test.npz", index=idx[te],
                            targets=np.array(targets), horizons=np.array(horizons),
                            labels=y_te, **{f"prob_{k}": v for k, v in probs.items()})
        summary.assign(description=summary["target"].map(lab.descriptions)).to_csv(
            out.plots / "labels.csv", index=False)
        plot_curves(y_te, probs, targets, horizons, out.plots)
        plot_reliability(y_te, probs, horizons, out.plots)
        m["example_patient_index"] = plot_patient(
            model, task, lab, targets, keep_t, te, horizons, tp.example_landmarks, out.plots,
            params.outcome.history, trn.batch_size)
        for s in ("train", "test"):
            g = summary[summary["split"] == s]
            for col in ("known", "positives"):
                m.update({f"labels.{s}_{col}_{h}.{tg}": int(n) for tg, h, n in
                          zip(g["target"], g["horizon"], g[col], strict=True)})
        return {**m, "n_targets": len(targets), "trajectory.encoder": tp.encoder,
                "trajectory.initialised_from": initialised or "random"}

    inputs = (SEQUENCES, OUTCOMES, *([PRETRAINED_BEHRT] if pre is not None else []),
              *([SURVIVAL_MODEL] if tp.init_from_survival and SURVIVAL_MODEL.exists() else []))
    train_stage(
        STAGE, "trajectory", params=params, build=build,
        loss_fn=make_loss(pos_weights(labels[tr], tp.pos_weight)), train_data=dataset(tr),
        val_data=dataset(va), lrs=[trn.lr], inputs=inputs, config=cfg, vocab=task.seqs.vocab,
        key=(params.model, tp, hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()),
        predictions=True, finish=lambda model, out: {**metrics, **finish(model, out)})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
