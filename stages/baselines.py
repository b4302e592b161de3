"""Stage `baselines`: Kaplan–Meier, penalised Cox, LR, RF and LightGBM per horizon, random
survival forest, on TF-IDF counts and time-windowed code features (MEDS-Tab style). Each is
tuned on the validation split (equal tuning: as many values of its regularisation
hyperparameter as the neural models have learning rates, best validation Harrell's C at h*);
the best count model on validation is named ``best_count``. Writes each model's test
predictions and run statistics (``data/predictions/baselines/<model>.npz`` and ``.json``); the
``evaluate`` stage scores them. ``--labelled N --replicate R``: a learning-curve point (stage
``curve_baselines``, writing under ``curve/baselines/n<N>_r<R>``; docs/learning_curves.md)."""

import json
import logging
import time
from pathlib import Path

import numpy as np

from ehrseq.data.task import curve_run
from ehrseq.data.windows import window_features
from ehrseq.evaluate.survival import reference_horizon
from ehrseq.io import InputError, atomic_outputs, run_stage, write_json
from ehrseq.models.classical import (
    COUNT_MODELS,
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

log = logging.getLogger("baselines")


def main() -> None:
    params = load_params()
    run = curve_run("baselines")             # a learning-curve point, or the main run
    task, stage, point, why = run.task, run.stage, run.stats, run.skip
    pred = Path("data/predictions") / stage
    if why:                                  # a recorded skip, never a crash
        log.warning("%s: nothing trained: %s", stage, why)
        with atomic_outputs(pred) as (out,):
            out.mkdir()
            (out / "SKIPPED.txt").write_text(why + "\n")
        return write_json(f"metrics/{stage}.json", {**point, "trained": 0,
                                                    "skipped.reason": why})
    horizons, times = task.horizons, task.time_grid()
    tr, va, te = task.rows("train"), task.rows("val"), task.rows("test")
    d_tr, e_tr = task.outcome("train")
    d_va, e_va = task.outcome("val")
    t = task.table
    win = {split: window_features(task.seqs, t["index"].to_numpy()[r],
                                  t["landmark_visits"].to_numpy()[r], task.window[r],
                                  t["landmark_time"].to_numpy()[r])
           for split, r in (("train", tr), ("val", va), ("test", te))}
    for split, w in win.items():
        if w.nnz == 0:
            raise InputError(f"outcome {params.outcome.name!r}, {split} split: the code features "
                             f"of all {w.shape[0]} landmarks are empty (no vocabulary token in "
                             "any input window); check sequences.event_kinds, "
                             "sequences.min_count and outcome.history")
    feat = Featurizer(seed=params.train.seed).fit(task.counts("train"), task.age[tr],
                                                  task.male[tr], win["train"])
    X = {split: {kind: getattr(feat, kind)(task.counts(split), task.age[r], task.male[r],
                                           win[split]) for kind in set(KINDS.values())}
         for split, r in (("train", tr), ("val", va), ("test", te))}
    # h* of the tuning's risk score: the same rule as the test scores' (reference_horizon),
    # computed from the validation and training outcomes alone
    h_val = reference_horizon(d_va, e_va, d_tr, e_tr, horizons)
    metrics: dict = {"n_train": len(tr), "n_val": len(va), "n_test": len(te),
                     "tune.risk_horizon": h_val, "n_features": X["train"]["sparse"].shape[1]}
    runs, val_c = {}, {}
    with atomic_outputs(pred) as (out,):
        out.mkdir()
        for name in MODELS:
            kind = KINDS[name]
            tuned = fit_best(lambda v, name=name: make_model(name, horizons,
                                                             params.train.seed, v),
                             classical_grid(name, params.tune), X["train"][kind], d_tr, e_tr,
                             X["val"][kind], d_va, e_va, h_val,
                             larger_regularises=name in TUNED and TUNED[name].larger_regularises,
                             log=lambda msg, name=name: log.info("%s tuning: %s", name, msg))
            t0 = time.time()
            surv = tuned.model.predict_survival(X["test"][kind], times)
            run = {f"{name}.train_seconds": round(tuned.fit_seconds + time.time() - t0, 3),
                   f"{name}.device": "cpu", f"{name}.device_type": "cpu"}
            if name in TUNED:
                run.update(classical_tune_metrics(name, tuned))
            np.savez_compressed(out / f"{name}.npz", **task.keys("test"), times=times,
                                surv=surv)
            runs[name] = run
            val_c[name] = tuned.val_c[tuned.value]
            log.info("%s: fitted in %.1f s, validation C %.4f", name,
                     run[f"{name}.train_seconds"], val_c[name])
        # the strongest count model, chosen on VALIDATION (never on the test split)
        best = max(COUNT_MODELS, key=lambda m: (np.nan_to_num(val_c[m], nan=-1.0),
                                                 -COUNT_MODELS.index(m)))
        metrics.update({"best_count.model": best, "best_count.val_c": val_c[best]})
        for name, run in runs.items():
            (out / f"{name}.json").write_text(json.dumps(
                {"model": name, "stage": stage,   # no validation C (NaN): null
                 "val_c": val_c[name] if np.isfinite(val_c[name]) else None,
                 "best_count": name == best, **point,
                 **{k[len(name) + 1:]: v for k, v in run.items()}}, indent=1, sort_keys=True)
                + "\n")
            metrics.update(run)
    write_json(f"metrics/{stage}.json", {**metrics, **point})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
