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
from ehrseq.data.tensors import make_loader, set_value_codes, uses_values
from ehrseq.evaluate.multilabel_plots import plot_curves, plot_patient, plot_reliability
from ehrseq.io import run_stage
from ehrseq.models.behrt import check_pretrained
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
from ehrseq.outcomes.trajectory_labels import DEATH, trajectory_task
from ehrseq.params import load_params
from ehrseq.train.recipe import skip_stage, train_stage

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
    horizons = tp.horizons
    tr, va, te = task.rows("train"), task.rows("val"), task.rows("test")
    tt = trajectory_task(EVENTS, task.seqs.patients, t, tp.targets or [*params.outcome.onset_codes,
                         DEATH], horizons, tp.frequent_targets, tr, params.sequences.event_kinds)
    lab, targets, keep_t, labels, summary = tt.lab, tt.targets, tt.keep, tt.labels, tt.summary
    metrics: dict = {"n_train": len(tr), "n_val": len(va), "n_test": len(te),
                     **{f"skipped.target.{k}": v for k, v in tt.skipped.items()}}
    for k in tt.skipped:
        log.warning("target %s (%s): no positive in the train split at any horizon; skipped",
                    k, lab.descriptions.get(k, "never recorded"))
    if not targets:  # a small cohort: nothing to learn; say so instead of failing the DAG
        reason = (f"no trajectory target {list(tt.skipped)} has an onset within {horizons[-1]} "
                  "days of the landmark in the train split (use more patients or "
                  "trajectory.targets)")
        skip_stage(STAGE, reason, metrics)
        return
    pre, pre_cfg = (load_pretrained(PRETRAINED_BEHRT, "pretrain_behrt", task.seqs.vocab)
                    if tp.encoder == "behrt" else (None, None))
    if pre_cfg is not None:   # its time and value inputs must be params.yaml's
        check_pretrained(pre_cfg, params.model, task.seqs, PRETRAINED_BEHRT)
    cfg = trajectory_config(params.model, task.seqs.vocab_size, targets, horizons, tp.encoder,
                            pre_cfg, values=uses_values(getattr(params.model, tp.encoder).values,
                                                        task.seqs, f"model.{tp.encoder}.values"),
                            value_deltas=tp.encoder == "lstm" and uses_values(
                                params.model.lstm.value_deltas, task.seqs,
                                "model.lstm.value_deltas"))
    initialised = str(PRETRAINED_BEHRT) if pre is not None else ""

    def build() -> DiseaseTrajectoryModel:
        nonlocal initialised
        model = DiseaseTrajectoryModel(cfg)
        set_value_codes(model, task.seqs)
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
        np.savez_compressed(out.predictions / "test.npz", **task.keys("test"),
                            targets=np.array(targets), horizons=np.array(horizons),
                            labels=y_te, **{f"prob_{k}": v for k, v in probs.items()})
        summary.assign(description=summary["target"].map(lab.descriptions)).to_csv(
            out.plots / "labels.csv", index=False)
        plot_curves(y_te, probs, targets, horizons, out.plots)
        plot_reliability(y_te, probs, horizons, out.plots)
        m["example_patient_index"] = plot_patient(
            model, task, lab, targets, keep_t, te, horizons, tp.example_landmarks, out.plots,
            params.outcome.history, trn.batch_size)
        m.update(tt.label_metrics())
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
