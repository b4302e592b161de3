"""Cross-fitting (issue 27 part 4): folds by patient, every patient held out exactly once, a
fold's pre-training and vocabulary-free splits, and the joined scoring of the folds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ehrseq.data.folds import fold_arg, fold_of, fold_split, fold_stage, refold
from ehrseq.evaluate.crossfit import all_landmarks, join_folds, score_crossfit, split_crossfit
from ehrseq.io import InputError
from ehrseq.params import CrossfitParams, Params, ParamsError, ReportParams


def params_with(folds):
    return Params(crossfit={"folds": folds})


def test_every_patient_is_held_out_exactly_once():
    ids = np.array([f"p{i:04d}" for i in range(600)])
    split = np.where(np.arange(600) % 50 == 0, "corpus", "train")
    p = params_with([0, 1, 2, 3, 4])
    held = np.zeros(600, int)
    for k in range(5):
        s = fold_split(ids, split, k, p)
        held += s == "test"
        assert (s[split == "corpus"] == "corpus").all()               # a corpus stays a corpus
        rest = s[(s != "test") & (split != "corpus")]
        assert 0.12 < (rest == "val").mean() < 0.24                    # val / (train + val)
        assert set(s) == {"train", "val", "test", "corpus"}
    assert (held[split != "corpus"] == 1).all() and (held[split == "corpus"] == 0).all()
    # a patient's fold depends on its id alone, not on the others
    assert (fold_of(ids[:37], 5, "ehrseq-v1") == fold_of(ids, 5, "ehrseq-v1")[:37]).all()
    sizes = np.bincount(fold_of(ids, 5, "ehrseq-v1"))
    assert sizes.min() > 80                                            # roughly even folds


def test_refold_by_patient_keeps_all_landmarks_together():
    t = pd.DataFrame({"patient": np.repeat([f"p{i}" for i in range(40)], 3),
                      "split": "train"})
    out = refold(t, 1, params_with([0, 1, 2]))
    assert out.groupby("patient")["split"].nunique().max() == 1       # one split per patient
    assert refold(t, None, params_with([0, 1, 2])) is t               # the main run: unchanged
    assert (t["split"] == "train").all()                              # a copy, not in place


def test_fold_parameters_and_cli():
    assert fold_arg(["--fold", "3", "--other"]) == 3 and fold_arg([]) is None
    assert fold_stage("finetune_behrt/full", 2) == "crossfit/finetune_behrt/full/f2"
    assert fold_stage("baselines", None) == "baselines"
    assert CrossfitParams(folds=[2, 0, 1]).folds == [0, 1, 2]
    for bad in ([0], [1, 2], [0, 0, 1]):
        with pytest.raises(ValueError, match=r"\[0, 1, \.\.\., K-1\]"):
            CrossfitParams(folds=bad)
    with pytest.raises(ParamsError, match="--fold 3: crossfit.folds is \\[0, 1\\]"):
        fold_split(["a"], ["train"], 3, params_with([0, 1]))


def write_outcomes(d, n_patients=30, per=2, seed=0):
    rng = np.random.default_rng(seed)
    m = n_patients * per
    risk = rng.normal(size=m)                                 # the times follow the true risk
    t = pd.DataFrame({"patient": np.repeat([f"p{i}" for i in range(n_patients)], per),
                      "index": np.repeat(np.arange(n_patients), per),
                      "landmark_visits": np.tile(np.arange(2, 2 + per), n_patients),
                      "split": "train",
                      "duration": (rng.exponential(200, m) * np.exp(-risk)).round() + 1,
                      "event": (rng.random(m) < 0.6).astype(int), "true_risk": risk})
    d.mkdir(parents=True, exist_ok=True)
    t.to_parquet(d / "outcomes.parquet")
    return t


def write_fold(d, t, rows, name, grid, risk, best=False):
    """A survival prediction of ``rows`` of ``t`` on ``grid``: S = exp(-t/200 * e^risk)."""
    d.mkdir(parents=True, exist_ok=True)
    surv = np.exp(-np.outer(np.exp(risk[rows]), grid) / 200)
    np.savez_compressed(d / f"{name}.npz", index=t["index"].to_numpy()[rows],
                        landmark_visits=t["landmark_visits"].to_numpy()[rows], times=grid,
                        surv=surv)
    (d / f"{name}.json").write_text(json.dumps({"best_count": best}))


def test_folds_join_on_one_grid_and_every_landmark_once(tmp_path):
    t = write_outcomes(tmp_path / "outcomes")
    o = all_landmarks(tmp_path / "outcomes")
    fold = fold_of(t["patient"], 2, "s")
    grids = [np.array([5.0, 50.0, 400.0]), np.array([10.0, 50.0, 100.0, 800.0])]
    risk = t["true_risk"].to_numpy()
    files = {}
    for k in (0, 1):
        d = tmp_path / "pred/crossfit/train_survival" / f"f{k}"
        write_fold(d, t, np.flatnonzero(fold == k), "lstm", grids[k], risk)
        files[k] = d / "lstm.npz"
    surv, times = join_folds(files, o)
    assert list(times) == [5.0, 10.0, 50.0, 100.0, 400.0, 800.0]
    r0, r1 = np.flatnonzero(fold == 0)[0], np.flatnonzero(fold == 1)[0]
    s0 = np.exp(-np.exp(risk[r0]) * grids[0] / 200)                   # fold 0's own values
    assert np.allclose(surv[r0], [s0[0], s0[0], s0[1], s0[1], s0[2], s0[2]])
    s1 = np.exp(-np.exp(risk[r1]) * grids[1] / 200)
    assert np.allclose(surv[r1], [1.0, s1[0], s1[1], s1[2], s1[2], s1[3]])   # 1 before its grid
    # a fold missing: landmarks never predicted is an error naming the folder
    with pytest.raises(InputError, match="never"):
        join_folds({0: files[0]}, o)


def test_crossfit_scores_every_patient_once_with_paired_intervals(tmp_path):
    t = write_outcomes(tmp_path / "outcomes", n_patients=80)
    fold = fold_of(t["patient"], 2, "s")
    risk = t["true_risk"].to_numpy()
    noise = np.random.default_rng(1).normal(size=len(t))
    grid = np.unique(t["duration"].to_numpy())
    outs = []
    for k in (0, 1):
        rows = np.flatnonzero(fold == k)
        base = tmp_path / "pred/crossfit/baselines" / f"f{k}"
        write_fold(base, t, rows, "cox", grid, risk + noise, best=True)
        write_fold(base, t, rows, "km", grid, 0 * risk)
        lstm = tmp_path / "pred/crossfit/train_survival" / f"f{k}"
        write_fold(lstm, t, rows, "lstm", grid, risk + 3 * noise)
        outs += [base, lstm]
    main = tmp_path / "pred/baselines"
    rest, folds = split_crossfit([main, *outs], tmp_path / "pred")
    assert rest == [main] and folds == outs
    flat, md = score_crossfit(folds, tmp_path / "outcomes", [100.0], ReportParams(bootstrap=50))
    assert flat["crossfit.folds"] == 2 and flat["crossfit.landmarks"] == len(t)
    assert flat["crossfit.best_count.models"] == "cox, cox"
    # the oracle ranks best, the noisier lstm below cox: read from the joined scores
    assert flat["crossfit.oracle.c_harrell"] > flat["crossfit.cox.c_harrell"] \
        > flat["crossfit.lstm.c_harrell"] > 0.5
    d = flat["crossfit.delta.lstm-best_count.delta"]
    assert d == pytest.approx(flat["crossfit.lstm.c_harrell"] - flat["crossfit.cox.c_harrell"])
    assert flat["crossfit.delta.lstm-best_count.half_width"] > 0
    assert "| lstm |" in md and "best count model" in md
    # a model with one fold only is named, not scored
    write_fold(tmp_path / "pred/crossfit/extra/f0", t, np.flatnonzero(fold == 0), "gru", grid,
               risk)
    flat, md = score_crossfit([*outs, tmp_path / "pred/crossfit/extra/f0"],
                              tmp_path / "outcomes", [100.0], ReportParams(bootstrap=20))
    assert flat["crossfit.incomplete.gru"] == "1 of 2 folds" and "crossfit.gru.c_harrell" not in flat


def test_headline_adds_the_crossfitted_scores_only_when_there_are_some():
    from ehrseq.evaluate.report import headline

    flat = {"test.patients": 28, "test.landmarks": 84, "test.events": 40,
            "lstm.c_harrell": 0.6, "lstm.stage": "train_survival",
            "cox.c_harrell": 0.65, "cox.stage": "baselines"}
    plain = headline(flat)
    assert not any(k.startswith("crossfit.") for k in plain)
    flat.update({"crossfit.folds": 5, "crossfit.lstm.c_harrell": 0.61,
                 "crossfit.best_count.c_harrell": 0.66, "crossfit.cox.c_harrell": 0.66,
                 "crossfit.delta.lstm-best_count.delta": -0.05,
                 "crossfit.delta.lstm-best_count.lo": -0.07,
                 "crossfit.delta.lstm-best_count.hi": -0.03})
    h = headline(flat)
    assert {k: v for k, v in h.items() if k.startswith("crossfit.")} == {
        "crossfit.folds": 5, "crossfit.best_count.c": 0.66, "crossfit.lstm.c": 0.61,
        "crossfit.lstm.vs_best_count": -0.05, "crossfit.lstm.vs_best_count_lo": -0.07,
        "crossfit.lstm.vs_best_count_hi": -0.03}                      # count models: not there
