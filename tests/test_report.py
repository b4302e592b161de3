"""The benchmark table, the scoring of every prediction found under a directory, and the paired
comparisons of the `evaluate` stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ehrseq.evaluate.report import (
    collect,
    comparisons_markdown,
    headroom,
    paired_comparisons,
    to_markdown,
)
from ehrseq.evaluate.scoring import Outcomes, find_predictions, gpu_cost, score_all
from ehrseq.evaluate.survival import harrell_c, risk_score
from ehrseq.io import InputError
from ehrseq.params import ReportParams


def outcomes(tmp_path, rng, index, landmark_visits, n_train):
    """``tmp_path/outcomes/outcomes.parquet``: the first ``n_train`` rows train, the rest test,
    exponential durations and coin-flip events; returns (its folder, the test rows)."""
    n = len(index)
    table = pd.DataFrame({"index": index, "landmark_visits": landmark_visits,
                          "split": np.where(np.arange(n) < n_train, "train", "test"),
                          "duration": rng.exponential(300, n) + 1,
                          "event": rng.integers(0, 2, n)})
    out = tmp_path / "outcomes"
    out.mkdir()
    table.to_parquet(out / "outcomes.parquet")
    return out, table[table["split"] == "test"]


def compare(pred_dir, outcomes, n_boot):
    """What the evaluate stage does: score every prediction under ``pred_dir``, then pair."""
    metrics, risks = score_all(pred_dir, outcomes, [30, 90, 365], ReportParams(bootstrap=n_boot))
    neural = [n for n in risks if f"{n}.n_params" in metrics]
    return metrics, paired_comparisons(risks, Outcomes.load(outcomes), n_boot, 0,
                                       metrics.get("best_count.model"), neural)


def test_table_rows_come_from_the_metrics_keys():
    rows = collect({
        "oracle.c_harrell": 0.8, "oracle.c_harrell_lo": 0.7, "oracle.c_harrell_hi": 0.9,
        "cox.c_harrell": 0.75, "cox.c_harrell_lo": 0.7, "cox.c_harrell_hi": 0.8,
        "cox.n": 40, "cox.n_events": 12,
        "med2vec.c_harrell": 0.7, "med2vec.c_harrell_lo": 0.6, "med2vec.c_harrell_hi": 0.8,
        "med2vec.n_params": 120_000, "med2vec.n_params_trainable": 60_000,
        "med2vec.checkpoint_bytes": 2_500_000, "med2vec.train_seconds": 3.25,
        "med2vec.n": 40, "med2vec.n_events": 12, "med2vec.size": "small",
        "best.c_harrell": 0.75}, {"outcome": {"name": "synthetic"}})
    assert [r["model"] for r in rows] == ["oracle (true risk)", "cox", "med2vec"]
    m2v = rows[2]
    assert m2v["size"] == "small" and rows[1]["size"] == ""        # only neural rows have one
    assert m2v["params"] == "120,000" and m2v["trained params"] == "60,000"
    assert m2v["checkpoint MB"] == "2.50" and rows[1]["checkpoint MB"] == "n/a"
    assert m2v["C (Harrell) [95% CI]"] == "0.700 [0.600, 0.800]"
    md = to_markdown(rows)
    assert md.count("\n") == 5 and "| synthetic | med2vec | small |" in md


def test_paired_comparisons_align_predictions_by_patient(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    out, test = outcomes(tmp_path, rng, np.repeat(np.arange(n // 2) * 3, 2),
                         np.tile([2, 5], n // 2), n_train=80)   # 2 landmarks each
    times = np.array([30.0, 90.0, 365.0, 2000.0])
    truth = -test["duration"].to_numpy() / 200                 # a perfect ranking

    preds = tmp_path / "predictions"

    def write(name, score, order, stage):
        surv = np.exp(-np.outer(np.exp(score), times) / 1000.0)
        (preds / stage).mkdir(parents=True, exist_ok=True)
        np.savez(preds / stage / f"{name}.npz", index=test["index"].to_numpy()[order],
                 landmark_visits=test["landmark_visits"].to_numpy()[order], times=times,
                 surv=surv[order])

    write("behrt_full", truth, np.arange(len(test))[::-1], "finetune_behrt/full")  # reordered
    write("behrt_scratch", rng.standard_normal(len(test)), np.arange(len(test)),
          "finetune_behrt/scratch")
    write("cox", truth, np.arange(len(test)), "baselines")
    (preds / "baselines/cox.json").write_text(json.dumps({"best_count": True}))
    (preds / "finetune_behrt/full/behrt_full.json").write_text(json.dumps({"n_params": 10}))
    metrics, rows = compare(preds, out, 100)
    assert metrics["best_count.model"] == "cox"
    assert metrics["best_count.c_harrell"] == metrics["cox.c_harrell"]
    assert metrics["behrt_full.c_harrell"] == metrics["cox.c_harrell"]   # found at any depth
    assert metrics["test.patients"] == 20 and metrics["test.landmarks"] == 40
    by = {(r["a"], r["b"]): r for r in rows}
    assert set(by) == {("behrt_full", "behrt_scratch"), ("behrt_full", "cox"),   # pairs present
                       ("behrt_full", "best_count")}    # every neural model vs the best count
    assert by[("behrt_full", "best_count")]["delta"] == pytest.approx(0.0)
    d, e = test["duration"].to_numpy(), test["event"].to_numpy()
    h = 365.0 if (e.astype(bool) & (d <= 365)).any() else None
    assert h is not None
    full = risk_score(np.exp(-np.outer(np.exp(truth), times) / 1000.0), times, h)
    assert by[("behrt_full", "cox")]["delta"] == pytest.approx(0.0)       # same predictions
    r = by[("behrt_full", "behrt_scratch")]
    assert r["delta"] > 0.2 and r["lo"] > 0 and harrell_c(d, e, full) == pytest.approx(1.0)
    assert "**a better**" in comparisons_markdown(rows)
    np.savez(preds / "lstm.npz", index=test["index"].to_numpy()[:5], times=times,
             surv=np.ones((5, 4)))
    with pytest.raises(InputError, match="lstm.npz: written before landmarks had keys"):
        compare(preds, out, 10)
    np.savez(preds / "lstm.npz", index=test["index"].to_numpy()[:5], times=times,
             landmark_visits=test["landmark_visits"].to_numpy()[:5], surv=np.ones((5, 4)))
    with pytest.raises(InputError, match="lstm.npz: predictions miss 35 test landmarks"):
        compare(preds, out, 10)


def test_every_model_is_compared_with_the_oracle_on_a_synthetic_outcome(tmp_path):
    rng = np.random.default_rng(1)
    n = 200
    true_risk = rng.standard_normal(n)
    duration = rng.exponential(300 * np.exp(-true_risk)) + 1
    table = pd.DataFrame({"index": np.arange(n), "landmark_visits": np.full(n, 2),
                          "split": np.where(np.arange(n) < 100, "train", "test"),
                          "duration": duration, "event": np.ones(n, int),
                          "true_risk": true_risk})
    out = tmp_path / "outcomes"
    out.mkdir()
    table.to_parquet(out / "outcomes.parquet")
    test = table[table["split"] == "test"]
    times = np.array([30.0, 90.0, 365.0, 2000.0])
    preds = tmp_path / "predictions"
    preds.mkdir()
    for name, score in (("cox", test["true_risk"].to_numpy()),
                        ("km", np.zeros(len(test)))):
        surv = np.exp(-np.outer(np.exp(score), times) / 1000.0)
        np.savez(preds / f"{name}.npz", index=test["index"].to_numpy(),
                 landmark_visits=test["landmark_visits"].to_numpy(), times=times, surv=surv)
    metrics, rows = compare(preds, out, 100)
    assert metrics["oracle.c_harrell"] == pytest.approx(metrics["cox.c_harrell"])
    by = {(r["a"], r["b"]): r for r in rows}
    assert by[("cox", "oracle")]["delta"] == pytest.approx(0.0)      # the true ranking itself
    km = by[("km", "oracle")]
    assert km["hi"] < 0 and "**b better**" in comparisons_markdown(rows)   # KM is below it
    # headroom: oracle minus the best count model, with the negated paired interval
    assert headroom(rows, "cox") == {"headroom": 0.0, "headroom_lo": 0.0, "headroom_hi": 0.0}
    h = headroom(rows, "km")
    assert h["headroom"] == pytest.approx(-km["delta"]) and h["headroom_lo"] == -km["hi"] > 0
    assert headroom(rows, None) == {}
    table.drop(columns="true_risk").to_parquet(out / "outcomes.parquet")  # a real outcome
    metrics, rows = compare(preds, out, 10)
    assert "oracle.c_harrell" not in metrics and not [r for r in rows if r["b"] == "oracle"]


def test_predictions_are_found_by_directory_with_their_run_statistics(tmp_path):
    """A new model (a fine-tuning mode, a learning-curve point) is one more file under the
    predictions directory: scored, costed and tabled with no list to edit."""
    rng = np.random.default_rng(2)
    n = 120
    table = pd.DataFrame({"index": np.arange(n), "landmark_visits": np.full(n, 2), "split": np.where(np.arange(n) < 60, "train",
                                                                   "test"),
                          "duration": rng.exponential(300, n) + 1, "event": np.ones(n, int)})
    out = tmp_path / "outcomes"
    out.mkdir()
    table.to_parquet(out / "outcomes.parquet")
    test = table[table["split"] == "test"]
    times = np.array([30.0, 90.0, 365.0, 2000.0])
    preds = tmp_path / "predictions" / "some_new_stage" / "point_25"
    preds.mkdir(parents=True)
    surv = np.exp(-np.outer(np.exp(rng.standard_normal(len(test))), times) / 1000.0)
    np.savez(preds / "new_model.npz", index=test["index"].to_numpy(),
             landmark_visits=test["landmark_visits"].to_numpy(), times=times, surv=surv)
    info = {"model": "new_model", "train_seconds": 1800.0, "tune.wall_time_s": 3600.0,
            "device_type": "cuda", "world_size": 2, "n_params": 1000, "size": "large"}
    (preds / "new_model.json").write_text(json.dumps(info))
    metrics, _ = score_all(tmp_path / "predictions", out, [30, 90, 365],
                           ReportParams(bootstrap=0, gpu_hourly_usd=3.0))
    assert 0 <= metrics["new_model.c_harrell"] <= 1 and metrics["new_model.size"] == "large"
    assert metrics["new_model.gpu_cost_usd"] == pytest.approx(6.0)   # 1 h x 2 GPUs x $3
    assert gpu_cost({"device_type": "cpu", "train_seconds": 9e9}, 3.0) == 0.0
    rows = collect(metrics, {"outcome": {"name": "synthetic"}})
    assert [r["model"] for r in rows] == ["new_model"] and rows[0]["size"] == "large"
    np.savez(preds / "broken.npz", something=np.zeros(3))
    with pytest.raises(InputError, match="broken.npz: arrays \\['something'\\]"):
        find_predictions(tmp_path / "predictions")


def test_a_collapsed_prediction_is_flagged(tmp_path):
    """Issue 26 part 6: a model that gives every test landmark nearly the same curve (its
    ranking at h* rests on differences of 1e-3) is flagged in the metrics and the report; a
    healthy model is not."""
    from ehrseq.evaluate.report import collapse_markdown
    from ehrseq.evaluate.scoring import collapse

    rng = np.random.default_rng(1)
    n = 160
    out, test = outcomes(tmp_path, rng, np.arange(n), np.ones(n, int), n_train=80)
    times = np.array([30.0, 90.0, 365.0, 2000.0])
    preds = tmp_path / "predictions"
    preds.mkdir()
    truth = -test["duration"].to_numpy() / 300
    for name, score in (("healthy", truth), ("flat", 1e-3 * truth)):   # same order, no spread
        surv = np.exp(-np.outer(np.exp(score), times) / 1000.0)
        np.savez(preds / f"{name}.npz", index=test["index"].to_numpy(),
                 landmark_visits=test["landmark_visits"].to_numpy(), times=times, surv=surv)
    metrics, _ = score_all(preds, out, [30, 90, 365], ReportParams(bootstrap=0))
    assert metrics["healthy.collapsed"] == 0 and metrics["healthy.risk_spread"] > 0.5
    assert metrics["flat.collapsed"] == 1 and metrics["flat.risk_spread"] < 0.01
    assert "vary by" in metrics["flat.collapse_reason"]
    assert metrics["flat.c_harrell"] == pytest.approx(metrics["healthy.c_harrell"])  # same rank
    rows = collect(metrics)
    md = to_markdown(rows) + collapse_markdown(rows)
    assert "| flat ⚠ collapsed |" in md and "`flat`: test risks" in md and "healthy ⚠" not in md
    # the second rule: Antolini near 0.5 while Harrell is not, whatever the spread
    risk = rng.uniform(0, 1, 50)
    flag = collapse("m", risk, {"m.c_antolini": 0.497, "m.c_harrell": 0.664})
    assert flag["m.collapsed"] == 1 and "Antolini C 0.497" in flag["m.collapse_reason"]
    assert collapse("m", risk, {"m.c_antolini": 0.60, "m.c_harrell": 0.66})["m.collapsed"] == 0
    assert collapse("km", np.full(50, 0.3), {})["km.collapsed"] == 0   # the population curve
    assert collapse("lstm", np.full(50, 0.3), {})["lstm.collapsed"] == 1


def test_report_names_the_fitted_horizons_and_groups_the_comparisons():
    """Issue 28 part 5: AUC columns at the horizons the metrics hold (not a fixed 365 days),
    calibration per horizon, comparisons in three groups each sorted by ΔC."""
    from ehrseq.evaluate.report import calibration_markdown

    m = {"cox.c_harrell": 0.7, "cox.auc_49": 0.71, "cox.auc_344": 0.66, "cox.ece_49": 0.05,
         "cox.ece_344": 0.08, "lstm.c_harrell": 0.6, "lstm.auc_49": 0.61, "lstm.auc_344": 0.58,
         "lstm.n_params": 10}
    rows = collect(m)
    md = to_markdown(rows)
    header = md.splitlines()[0]
    assert "AUC@49d | AUC@344d" in header and "365" not in header
    assert "| 0.710 | 0.660 |" in md
    cal = calibration_markdown(rows)
    assert cal.splitlines()[0] == "| model | ECE@49d | ECE@344d |" and "| cox | 0.050 | 0.080 |" in cal

    def r(a, b, d):
        return {"question": f"{a} - {b}", "a": a, "b": b, "delta": d, "lo": d - 0.1,
                "hi": d + 0.1, "p_not_better": 0.5}

    pairs = [r("lstm", "best_count", -0.05), r("med2vec", "best_count", 0.02),
             r("lstm", "oracle", -0.1), r("behrt_full", "behrt_scratch", 0.03)]
    text = comparisons_markdown(pairs)
    best, oracle, named = (text.index(s) for s in ("### Against the best count",
                                                   "### Against the oracle", "### Named"))
    assert best < oracle < named
    assert text.index("med2vec - best_count") < text.index("lstm - best_count")   # by ΔC
