"""Stage `baselines`: Kaplan–Meier, penalised Cox, LR and RF per horizon, random survival
forest, each tuned on the validation split (equal tuning: as many values of its
regularisation hyperparameter as the neural models have learning rates, best validation
Harrell's C at h*), then scored on the test split by the one evaluation module."""

import logging
import time
from pathlib import Path

import numpy as np

from ehrseq.evaluate.survival import harrell_c_interval, reference_horizon
from ehrseq.evaluate.task import SurvivalTask, score
from ehrseq.io import atomic_outputs, run_stage, write_json
from ehrseq.models.classical import (
    KINDS,
    MODELS,
    TUNED,
    Featurizer,
    classical_grid,
    classical_tune_metrics,
    fit_best,
    make_model,
)
from ehrseq.params import load_params

PRED = Path("data/predictions/baselines")
PLOTS = Path("plots/baselines")
log = logging.getLogger("baselines")


def main() -> None:
    params = load_params()
    ev = params.evaluate
    task = SurvivalTask.load()
    times = task.time_grid(ev.horizons)
    tr, va, te = task.rows("train"), task.rows("val"), task.rows("test")
    d_tr, e_tr = task.outcome("train")
    d_va, e_va = task.outcome("val")
    feat = Featurizer(seed=params.train.seed).fit(task.counts("train"), task.age[tr],
                                                  task.male[tr])
    X = {split: {"sparse": feat.sparse(task.counts(split), task.age[r], task.male[r]),
                 "dense": feat.dense(task.counts(split), task.age[r], task.male[r])}
         for split, r in (("train", tr), ("val", va), ("test", te))}
    # h* of the tuning's risk score: the same rule as the test scores' (reference_horizon),
    # computed from the validation and training outcomes alone
    h_val = reference_horizon(d_va, e_va, d_tr, e_tr, ev.horizons)
    metrics: dict = {"n_train": len(tr), "n_val": len(va), "n_test": len(te),
                     "tune.risk_horizon": h_val}
    true_risk = task.table["true_risk"].to_numpy(float)[te]
    if np.isfinite(true_risk).all():  # synthetic outcome: the ceiling any model can reach
        d_te, e_te = task.outcome("test")
        oracle = harrell_c_interval(d_te, e_te, true_risk, ev.bootstrap, ev.seed)
        metrics.update({f"oracle.{k}": v for k, v in oracle.items()})
    with atomic_outputs(PRED) as (out,):
        out.mkdir()
        for name in MODELS:
            kind = KINDS[name]
            tuned = fit_best(lambda v, name=name: make_model(name, ev.horizons,
                                                             params.train.seed, v),
                             classical_grid(name, params.tune), X["train"][kind], d_tr, e_tr,
                             X["val"][kind], d_va, e_va, h_val,
                             larger_regularises=name in TUNED and TUNED[name].larger_regularises,
                             log=lambda msg, name=name: log.info("%s tuning: %s", name, msg))
            t0 = time.time()
            surv = tuned.model.predict_survival(X["test"][kind], times)
            metrics[f"{name}.train_seconds"] = round(tuned.fit_seconds + time.time() - t0, 3)
            if name in TUNED:
                metrics.update(classical_tune_metrics(name, tuned))
            np.savez_compressed(out / f"{name}.npz", index=task.table["index"].to_numpy()[te],
                                times=times, surv=surv)
            metrics.update(score(name, surv, times, task, ev, PLOTS))
            log.info("%s: C-index %.3f [%.3f, %.3f]", name, metrics[f"{name}.c_harrell"],
                     metrics[f"{name}.c_harrell_lo"], metrics[f"{name}.c_harrell_hi"])
    write_json("metrics/baselines.json", metrics)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
