"""The benchmark table and the paired comparisons of the `evaluate` stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ehrseq.evaluate.report import collect, comparisons_markdown, paired_comparisons, to_markdown
from ehrseq.evaluate.survival import harrell_c, risk_score


def test_table_rows_come_from_the_metrics_keys(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({
        "oracle.c_harrell": 0.8, "oracle.c_harrell_lo": 0.7, "oracle.c_harrell_hi": 0.9,
        "cox.c_harrell": 0.75, "cox.c_harrell_lo": 0.7, "cox.c_harrell_hi": 0.8,
        "cox.n": 40, "cox.n_events": 12}))
    (tmp_path / "b.json").write_text(json.dumps({
        "med2vec.c_harrell": 0.7, "med2vec.c_harrell_lo": 0.6, "med2vec.c_harrell_hi": 0.8,
        "med2vec.n_params": 120_000, "med2vec.n_params_trainable": 60_000,
        "med2vec.checkpoint_bytes": 2_500_000, "med2vec.train_seconds": 3.25,
        "med2vec.n": 40, "med2vec.n_events": 12}))
    rows = collect([tmp_path / "a.json", tmp_path / "b.json"],
                   {"outcome": {"name": "synthetic"}, "model": {"size": "small"}})
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
    table = pd.DataFrame({"index": np.arange(n) * 3, "split": np.where(np.arange(n) < 80,
                                                                       "train", "test"),
                          "duration": rng.exponential(300, n) + 1,
                          "event": rng.integers(0, 2, n)})
    out = tmp_path / "outcomes"
    out.mkdir()
    table.to_parquet(out / "outcomes.parquet")
    test = table[table["split"] == "test"]
    times = np.array([30.0, 90.0, 365.0, 2000.0])
    truth = -test["duration"].to_numpy() / 200                 # a perfect ranking

    def write(name, score, order):
        surv = np.exp(-np.outer(np.exp(score), times) / 1000.0)
        np.savez(tmp_path / f"{name}.npz", index=test["index"].to_numpy()[order],
                 times=times, surv=surv[order])

    write("behrt_full", truth, np.arange(len(test))[::-1])     # stored in another order
    write("behrt_scratch", rng.standard_normal(len(test)), np.arange(len(test)))
    write("cox", truth, np.arange(len(test)))
    files = sorted(tmp_path.glob("*.npz"))
    rows = paired_comparisons(files, out, [30, 90, 365], n_boot=100, seed=0)
    by = {(r["a"], r["b"]): r for r in rows}
    assert set(by) == {("behrt_full", "behrt_scratch"), ("behrt_full", "cox")}  # pairs present
    d, e = test["duration"].to_numpy(), test["event"].to_numpy()
    h = 365.0 if (e.astype(bool) & (d <= 365)).any() else None
    assert h is not None
    full = risk_score(np.exp(-np.outer(np.exp(truth), times) / 1000.0), times, h)
    assert by[("behrt_full", "cox")]["delta"] == pytest.approx(0.0)       # same predictions
    r = by[("behrt_full", "behrt_scratch")]
    assert r["delta"] > 0.2 and r["lo"] > 0 and harrell_c(d, e, full) == pytest.approx(1.0)
    assert "**a better**" in comparisons_markdown(rows)
    np.savez(tmp_path / "lstm.npz", index=test["index"].to_numpy()[:5], times=times,
             surv=np.ones((5, 4)))
    with pytest.raises(ValueError, match="lstm.npz: predictions miss 35 test patients"):
        paired_comparisons([tmp_path / "lstm.npz"], out, [30, 90, 365], 10, 0)


def test_every_model_is_compared_with_the_oracle_on_a_synthetic_outcome(tmp_path):
    rng = np.random.default_rng(1)
    n = 200
    true_risk = rng.standard_normal(n)
    duration = rng.exponential(300 * np.exp(-true_risk)) + 1
    table = pd.DataFrame({"index": np.arange(n), "split": np.where(np.arange(n) < 100,
                                                                   "train", "test"),
                          "duration": duration, "event": np.ones(n, int),
                          "true_risk": true_risk})
    out = tmp_path / "outcomes"
    out.mkdir()
    table.to_parquet(out / "outcomes.parquet")
    test = table[table["split"] == "test"]
    times = np.array([30.0, 90.0, 365.0, 2000.0])
    for name, score in (("cox", test["true_risk"].to_numpy()),
                        ("km", np.zeros(len(test)))):
        surv = np.exp(-np.outer(np.exp(score), times) / 1000.0)
        np.savez(tmp_path / f"{name}.npz", index=test["index"].to_numpy(), times=times, surv=surv)
    rows = paired_comparisons(sorted(tmp_path.glob("*.npz")), out, [30, 90, 365], 100, 0)
    by = {(r["a"], r["b"]): r for r in rows}
    assert by[("cox", "oracle")]["delta"] == pytest.approx(0.0)      # the true ranking itself
    km = by[("km", "oracle")]
    assert km["hi"] < 0 and "**b better**" in comparisons_markdown(rows)   # KM is below it
    table.drop(columns="true_risk").to_parquet(out / "outcomes.parquet")  # a real outcome
    assert not [r for r in paired_comparisons(sorted(tmp_path.glob("*.npz")), out,
                                              [30, 90, 365], 10, 0) if r["b"] == "oracle"]
