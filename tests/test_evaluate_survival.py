"""The shared survival evaluation: tie handling, the one risk score, bootstrap, edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from lifelines import KaplanMeierFitter
from lifelines.utils import concordance_index
from sksurv.metrics import (
    brier_score,
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import CensoringDistributionEstimator
from sksurv.util import Surv

from ehrseq.evaluate import survival as ev
from ehrseq.evaluate.survival import (
    antolini_c,
    evaluate_survival,
    harrell_c,
    km_survival,
    plot_calibration,
    plot_km_by_risk_group,
    risk_score,
    scalar_metrics,
    survival_at,
)

GRID = np.arange(1.0, 1201.0)  # daily grid; every horizon below lies on it


def simulate(n, seed, beta=1.0, base_rate=1 / 400, censor=(100.0, 900.0)):
    """Exponential survival with a log-hazard linear in one covariate, independent censoring.

    Returns x, the true rates, duration (whole days >= 1) and event.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    rate = base_rate * np.exp(beta * x)
    t_event = rng.exponential(1 / rate)
    t_cens = rng.uniform(*censor, size=n)
    duration = np.maximum(np.ceil(np.minimum(t_event, t_cens)), 1.0)
    event = (t_event <= t_cens).astype(int)
    return x, rate, duration, event


def exp_surv(rate, times=GRID):
    return np.exp(-np.outer(rate, times))


@pytest.fixture(scope="module")
def train():
    _, _, t, d = simulate(3000, seed=100)
    return t, d


# ------------------------------------------------------------------ (1) ties count one half


def test_harrell_tied_risks_count_one_half():
    t = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    d = np.array([1, 1, 0, 1, 0])
    risk = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    # Comparable pairs (i has the event and the shorter time):
    #   i=0: j=1,2,3,4, all lower risk           -> 4 concordant of 4
    #   i=1: j=2 tie, j=3 tie, j=4 lower         -> 0.5 + 0.5 + 1 = 2 of 3
    #   i=3: j=4 lower                           -> 1 of 1
    # C = 7 / 8 (counting ties as 0, as the old project did, would give 6 / 8).
    assert harrell_c(t, d, risk) == pytest.approx(7 / 8)
    assert concordance_index(t, -risk, d) == pytest.approx(7 / 8)

    surv = np.repeat((1 - risk)[:, None], 3, axis=1)  # constant in time: 1 - S(h*) = risk
    res = evaluate_survival(t, d, surv, [0.5, 1.0, 10.0], t, d, horizons=[3], n_boot=0)
    assert res["c_harrell"] == pytest.approx(7 / 8)
    assert res["c_antolini"] == pytest.approx(7 / 8)
    assert antolini_c(t, d, surv, [0.5, 1.0, 10.0]) == pytest.approx(7 / 8)


# ------------------------------------------------------------------ (2) perfect, reversed, random


def test_c_index_perfect_reversed_and_random(train):
    _, _, t, d = simulate(800, seed=1)
    t = t + np.random.default_rng(0).uniform(0, 0.5, t.size)  # no tied durations
    rank = np.argsort(np.argsort(t))  # 0 = shortest
    perfect = exp_surv(1e-4 * (1 + (t.size - 1 - rank) / 10))  # shorter = higher hazard
    reversed_ = exp_surv(1e-4 * (1 + rank / 10))  # longer = higher hazard
    random_ = exp_surv(np.random.default_rng(2).uniform(1e-4, 1e-2, t.size))

    for surv, want in ((perfect, 1.0), (reversed_, 0.0)):
        res = evaluate_survival(t, d, surv, GRID, *train, n_boot=0)
        for key in ("c_harrell", "c_antolini", "c_uno"):
            assert res[key] == pytest.approx(want, abs=1e-9), key

    res = evaluate_survival(t, d, random_, GRID, *train, n_boot=200, seed=3)
    for key in ("c_harrell", "c_antolini", "c_uno", "auc_365"):
        assert abs(res[key] - 0.5) < 0.06, key
        assert res[f"{key}_lo"] < 0.5 < res[f"{key}_hi"], key


# ------------------------------------------------------------------ (3) one risk score


def test_constant_prediction_scores_one_half_and_km_matches_truth_free_baseline(train):
    _, _, t, d = simulate(1500, seed=4)
    times = np.linspace(1, 1000, 200)
    km_train = np.broadcast_to(km_survival(*train, times), (t.size, times.size))
    res = evaluate_survival(t, d, km_train, times, *train, n_boot=20)
    for key in ("c_harrell", "c_antolini", "c_uno", "auc_30", "auc_90", "auc_365"):
        assert res[key] == pytest.approx(0.5), key
        assert res[f"{key}_lo"] == pytest.approx(0.5) == res[f"{key}_hi"], key

    # The truth-free baseline: the marginal survival of the test split itself, the best a
    # model that ignores every patient's history can do. KM on train must come close.
    km_test = np.broadcast_to(km_survival(t, d, times), (t.size, times.size))
    baseline = evaluate_survival(t, d, km_test, times, *train, n_boot=0)
    assert abs(res["ibs"] - baseline["ibs"]) < 0.005
    assert res["ibs"] > 0.05  # and it is a real loss, not a degenerate zero


def test_risk_does_not_depend_on_sequence_length(train):
    """Same survival curves on a short coarse grid and on a long fine one: same risk, same C."""
    _, rate, t, d = simulate(1000, seed=5)
    short = np.array([30.0, 90.0, 365.0, 400.0])
    long = np.arange(1.0, 3001.0)
    res_s = evaluate_survival(t, d, exp_surv(rate, short), short, *train, n_boot=0)
    res_l = evaluate_survival(t, d, exp_surv(rate, long), long, *train, n_boot=0)
    h = res_s["risk_horizon"]
    assert h == res_l["risk_horizon"] == 365.0
    np.testing.assert_allclose(
        risk_score(exp_surv(rate, short), short, h), risk_score(exp_surv(rate, long), long, h)
    )
    for key in ("c_harrell", "c_uno", "auc_30", "auc_90", "auc_365", "ece_365"):
        assert res_s[key] == pytest.approx(res_l[key]), key
    # the old project's score, a sum of per-step hazards, changes with the number of steps
    old = [(-np.log(exp_surv(rate, g)[:, :1]) * g.size).ravel() for g in (short, long)]
    assert not np.allclose(old[0], old[1])


# ------------------------------------------------------------------ (4) Antolini, the engine


def _brute_antolini(t, d, surv, times):
    def s(i, u):  # step interpolation, written out independently
        k = np.flatnonzero(times <= u)
        return 1.0 if k.size == 0 else surv[i, k[-1]]

    num = den = 0.0
    for i in range(t.size):
        for j in range(t.size):
            if i == j or not d[i]:
                continue
            if t[i] < t[j] or (t[i] == t[j] and not d[j]):
                den += 1
                si, sj = s(i, t[i]), s(j, t[i])
                num += 1.0 if si < sj else 0.5 if si == sj else 0.0
    return num / den


def test_antolini_matches_brute_force_loop():
    rng = np.random.default_rng(6)
    n, T = 70, 12
    t = rng.integers(1, 40, n).astype(float)  # many tied durations
    d = rng.integers(0, 2, n)
    times = np.sort(rng.choice(np.arange(2, 45), T, replace=False)).astype(float)
    hazards = rng.uniform(0, 0.3, (n, T))
    surv = np.round(np.cumprod(1 - hazards, axis=1), 1)  # rounded: many tied predictions
    surv = np.minimum.accumulate(surv, axis=1)
    assert antolini_c(t, d, surv, times) == pytest.approx(_brute_antolini(t, d, surv, times))


def test_bootstrap_engine_reproduces_library_point_estimates(train):
    """Intervals come from the vectorised engine: with unit weights it must equal the libraries."""
    _, rate, t, d = simulate(600, seed=7)
    rate = rate * np.exp(np.random.default_rng(8).normal(0, 0.5, t.size))
    surv = exp_surv(rate)
    risk = risk_score(surv, GRID, 365.0)
    one = np.ones((1, t.size))
    assert ev._harrell_boot(t, d.astype(bool), risk, one)[0] == pytest.approx(
        concordance_index_censored(d.astype(bool), t, risk)[0]
    )

    y_train, y_test = Surv.from_arrays(train[1], train[0]), Surv.from_arrays(d, t)
    ipcw = CensoringDistributionEstimator().fit(y_train).predict_ipcw(y_test)
    tau = 365.0
    row_w = np.where(t < tau, ipcw**2, 0.0)
    assert ev._harrell_boot(t, d.astype(bool), risk, one, row_weights=row_w)[0, 0] == pytest.approx(
        concordance_index_ipcw(y_train, y_test, risk, tau=tau)[0]
    )
    for h in (30.0, 365.0):
        p = 1 - survival_at(surv, GRID, h)
        assert ev._auc_boot(t, d.astype(bool), p, h, ipcw, one)[0] == pytest.approx(
            cumulative_dynamic_auc(y_train, y_test, p, [h])[0][0]
        )
    res = evaluate_survival(t, d, surv, GRID, *train, n_boot=0)
    grid = np.linspace(t.min(), tau, 100)
    assert res["ibs"] == pytest.approx(
        integrated_brier_score(y_train, y_test, survival_at(surv, GRID, grid), grid)
    )
    assert res["brier_90"] == pytest.approx(
        brier_score(y_train, y_test, survival_at(surv, GRID, 90.0)[:, None], [90.0])[1][0]
    )


def test_bootstrap_weights_equal_resampling_patients(train):
    """A resample's statistic equals the weighted one, duplicated patients included."""
    _, rate, t, d = simulate(300, seed=9)
    surv = exp_surv(rate * np.exp(np.random.default_rng(10).normal(0, 0.7, t.size)))
    w = ev.bootstrap_weights(t.size, 3, seed=11)
    assert (w[0] == 1).all() and (w[1:].sum(axis=1) == t.size).all()
    risk = risk_score(surv, GRID, 365.0)
    harrell = ev._harrell_boot(t, d.astype(bool), risk, w)
    antolini = ev._antolini_boot(t, d.astype(bool), surv, GRID, w)
    p = np.round(1 - survival_at(surv, GRID, 90.0), 2)  # rounded: tied predictions
    y_train = Surv.from_arrays(train[1], train[0])
    ipcw = CensoringDistributionEstimator().fit(y_train).predict_ipcw(Surv.from_arrays(d, t))
    auc = ev._auc_boot(t, d.astype(bool), p, 90.0, ipcw, w)
    for b in (1, 2, 3):
        idx = np.repeat(np.arange(t.size), w[b].astype(int))
        assert harrell[b] == pytest.approx(harrell_c(t[idx], d[idx], risk[idx]))
        assert antolini[b] == pytest.approx(antolini_c(t[idx], d[idx], surv[idx], GRID))
        y_b = Surv.from_arrays(d[idx], t[idx])
        assert auc[b] == pytest.approx(cumulative_dynamic_auc(y_train, y_b, p[idx], [90.0])[0][0])


def test_weighted_km_matches_lifelines():
    rng = np.random.default_rng(12)
    t = rng.integers(1, 30, 80).astype(float)
    d = rng.integers(0, 2, 80)
    w = rng.integers(0, 4, (1, 80)).astype(float)
    idx = np.repeat(np.arange(80), w[0].astype(int))
    kmf = KaplanMeierFitter().fit(t[idx], d[idx])
    for h in (0.5, 5.0, 17.0, 29.0):
        assert ev._weighted_km_at(h, t, d, w)[0] == pytest.approx(kmf.predict(h))


# ------------------------------------------------------------------ (5) oracle vs noisy model


def test_oracle_beats_noisy_model_and_is_calibrated(train):
    x, rate, t, d = simulate(3000, seed=13)
    noisy = 1 / 400 * np.exp(x + np.random.default_rng(14).normal(0, 1.0, x.size))
    oracle = evaluate_survival(t, d, exp_surv(rate), GRID, *train, n_boot=50)
    worse = evaluate_survival(t, d, exp_surv(noisy), GRID, *train, n_boot=50)
    for key in ("c_harrell", "c_antolini", "c_uno", "auc_90", "auc_365"):
        assert oracle[key] > worse[key] + 0.02, key
    assert oracle["ibs"] < worse["ibs"]
    for h in (30, 90, 365):
        assert oracle[f"ece_{h}"] < 0.05, h
        assert oracle[f"brier_{h}"] < worse[f"brier_{h}"], h
    assert worse["ece_365"] > oracle["ece_365"]
    # calibration table: 10 bins per horizon, observed matches lifelines on the bin
    rows = [r for r in oracle["calibration"] if r["horizon"] == 365.0]
    assert len(rows) == 10 and sum(r["n"] for r in rows) == t.size
    p = 1 - survival_at(exp_surv(rate), GRID, 365.0)
    top = p >= np.quantile(p, 0.9)
    kmf = KaplanMeierFitter().fit(t[top], d[top])
    assert rows[-1]["observed"] == pytest.approx(1 - kmf.predict(365.0))


# ------------------------------------------------------------------ (6) intervals


def test_interval_contains_point_and_narrows_with_n(train):
    widths = {}
    for n in (300, 3000):
        _, rate, t, d = simulate(n, seed=15)
        res = evaluate_survival(t, d, exp_surv(rate), GRID, *train, n_boot=200, seed=16)
        for key in ("c_harrell", "c_antolini", "c_uno", "ibs", "auc_90", "brier_365"):
            assert res[f"{key}_lo"] <= res[key] <= res[f"{key}_hi"], (n, key)
            widths[n, key] = res[f"{key}_hi"] - res[f"{key}_lo"]
    for key in ("c_harrell", "c_antolini", "c_uno", "ibs", "auc_90", "brier_365"):
        assert widths[3000, key] < 0.6 * widths[300, key], key


def test_bootstrap_is_seeded(train):
    _, rate, t, d = simulate(400, seed=17)
    a = evaluate_survival(t, d, exp_surv(rate), GRID, *train, n_boot=30, seed=1)
    b = evaluate_survival(t, d, exp_surv(rate), GRID, *train, n_boot=30, seed=1)
    c = evaluate_survival(t, d, exp_surv(rate), GRID, *train, n_boot=30, seed=2)
    assert a["c_harrell_lo"] == b["c_harrell_lo"] != c["c_harrell_lo"]


# ------------------------------------------------------------------ (7) horizons out of range


def test_horizon_beyond_follow_up_gives_nan_with_reason(train):
    _, rate, t, d = simulate(500, seed=18)
    res = evaluate_survival(t, d, exp_surv(rate), GRID, *train, horizons=[0.5, 90, 5000])
    for m in ("auc", "brier", "ece"):
        assert math.isnan(res[f"{m}_5000"]) and math.isnan(res[f"{m}_5000_lo"])
        assert "beyond the end of test follow-up" in res["skipped"][f"{m}_5000"]
        assert math.isnan(res[f"{m}_0p5"])
        assert "no events" in res["skipped"][f"{m}_0p5"]
    assert res["tau"] == res["risk_horizon"] == 90.0
    assert ev.reference_horizon(t, d, *train, [0.5, 90, 5000]) == 90.0
    assert all(math.isfinite(res[k]) for k in ("c_harrell", "c_uno", "ibs", "auc_90"))
    assert {r["horizon"] for r in res["calibration"]} == {90.0}


def test_training_follow_up_shorter_than_test(train):
    """IPCW is undefined past the training follow-up: skip those horizons, never crash."""
    _, rate, t, d = simulate(500, seed=19)
    t_tr, d_tr = train
    short = t_tr < 200
    res = evaluate_survival(t, d, exp_surv(rate), GRID, t_tr[short], d_tr[short], n_boot=20)
    assert "training follow-up" in res["skipped"]["auc_365"]
    assert math.isfinite(res["auc_90"]) and math.isfinite(res["c_uno"])


def test_no_evaluable_horizon_still_reports_concordance(train):
    _, rate, t, d = simulate(300, seed=20)
    res = evaluate_survival(t, d, exp_surv(rate), GRID, *train, horizons=[5000], n_boot=10)
    assert math.isnan(res["c_uno"]) and math.isnan(res["ibs"]) and math.isnan(res["tau"])
    assert {"c_uno", "ibs", "risk_horizon", "auc_5000"} <= set(res["skipped"])
    assert res["risk_horizon"] == pytest.approx(np.median(t))
    assert 0.6 < res["c_harrell"] < 0.9 and math.isfinite(res["c_harrell_lo"])


def test_no_events_in_test(train):
    t = np.array([10.0, 20.0, 30.0])
    res = evaluate_survival(t, [0, 0, 0], np.full((3, 3), 0.9), [5, 15, 25], *train, n_boot=5)
    assert math.isnan(res["c_harrell"]) and "no events" in res["skipped"]["c_harrell"]


def test_bad_inputs_are_named():
    t, d = np.array([1.0, 2.0, 3.0]), np.array([1, 0, 1])
    with pytest.raises(ValueError, match=r"surv must have shape \[n_patients, n_times\]"):
        evaluate_survival(t, d, np.ones((3, 2)), [1, 2, 3], t, d)
    with pytest.raises(ValueError, match="duration must be finite and > 0 days; row 1"):
        evaluate_survival([1, 0, 2], d, np.ones((3, 3)), [1, 2, 3], t, d)
    with pytest.raises(ValueError, match="strictly increasing"):
        evaluate_survival(t, d, np.ones((3, 3)), [1, 3, 2], t, d)
    with pytest.raises(ValueError, match="train_event must be 0/1"):
        evaluate_survival(t, d, np.ones((3, 3)), [1, 2, 3], t, [0, 2, 1])


# ------------------------------------------------------------------ helpers and plots


def test_helpers():
    surv = np.array([[0.9, 0.5, 0.2]])
    times = np.array([10.0, 20.0, 30.0])
    np.testing.assert_allclose(survival_at(surv, times, [0, 9.9, 10, 25, 30, 99])[0],
                               [1, 1, 0.9, 0.5, 0.2, 0.2])  # fmt: skip
    assert survival_at(surv, times, 15.0).shape == (1,)
    t = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(km_survival(t, [1, 1, 1, 1], [0.5, 1, 2.5, 4]), [1, 0.75, 0.5, 0])


def test_plots_and_metrics_json(tmp_path, train):
    from ehrseq.io import write_json

    _, rate, t, d = simulate(400, seed=21)
    surv = exp_surv(rate)
    res = evaluate_survival(t, d, surv, GRID, *train, n_boot=20)
    plot_km_by_risk_group(t, d, risk_score(surv, GRID, res["risk_horizon"]),
                          tmp_path / "km.png", tmp_path / "km.csv")  # fmt: skip
    plot_calibration(res["calibration"], tmp_path / "cal.png", tmp_path / "cal.csv")
    for name in ("km.png", "cal.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    km_lines = (tmp_path / "km.csv").read_text().splitlines()
    assert km_lines[0] == "group,time,survival" and {ln.split(",")[0] for ln in km_lines[1:]} == {
        "Q1", "Q2", "Q3", "Q4"}  # fmt: skip
    cal_lines = (tmp_path / "cal.csv").read_text().splitlines()
    assert cal_lines[0].startswith("horizon,bin,n,predicted,observed")
    assert len(cal_lines) == 1 + 30
    metrics = scalar_metrics(res)
    assert "calibration" not in metrics and "skipped" not in metrics
    write_json(tmp_path / "m.json", metrics)
    assert json.loads((tmp_path / "m.json").read_text())["c_harrell"] == pytest.approx(
        res["c_harrell"], abs=1e-6
    )


def test_harrell_c_interval_matches_point_and_covers_it():
    from ehrseq.evaluate.survival import harrell_c, harrell_c_interval

    rng = np.random.default_rng(3)
    t = rng.exponential(size=400)
    d = rng.random(400) < 0.6
    risk = -t + rng.normal(scale=2.0, size=400)
    res = harrell_c_interval(t, d, risk, n_boot=100, seed=1)
    assert res["c_harrell"] == pytest.approx(harrell_c(t, d, risk))
    assert res["c_harrell_lo"] < res["c_harrell"] < res["c_harrell_hi"]
    assert res["c_harrell_lo"] > 0.5  # a real signal: the interval excludes 0.5


def test_paired_c_difference_uses_the_same_resamples():
    from ehrseq.evaluate.survival import harrell_c, harrell_c_interval, paired_c_difference

    rng = np.random.default_rng(7)
    n = 150
    x = rng.standard_normal(n)
    t = rng.exponential(np.exp(-x))
    e = rng.random(n) < 0.7
    good, noisy = x, x + 2.0 * rng.standard_normal(n)
    r = paired_c_difference(t, e, good, noisy, n_boot=300, seed=3)
    assert r["delta"] == pytest.approx(harrell_c(t, e, good) - harrell_c(t, e, noisy))
    assert r["lo"] > 0 and r["p_not_better"] < 0.025          # clearly better: interval > 0
    same = paired_c_difference(t, e, good, good, n_boot=50, seed=3)
    assert same["delta"] == 0 and same["lo"] == same["hi"] == 0 and same["p_not_better"] == 1
    # pairing: the interval of the difference is narrower than the two marginal ones combined
    a, b = (harrell_c_interval(t, e, s, n_boot=300, seed=3) for s in (good, noisy))
    assert r["hi"] - r["lo"] < (a["c_harrell_hi"] - a["c_harrell_lo"]) + \
        (b["c_harrell_hi"] - b["c_harrell_lo"])


def test_intervals_resample_patients_not_landmarks(train):
    """Several landmarks per patient: a resample draws patients, all of a patient's rows
    together. Duplicating every row (two identical landmarks per patient) leaves every interval
    as it was; resampling rows instead would shrink it by about 1/sqrt(2)."""
    from ehrseq.evaluate.multilabel import evaluate_multilabel
    from ehrseq.evaluate.survival import paired_c_difference

    _, rate, t, d = simulate(300, seed=23)
    noisy = rate * np.exp(np.random.default_rng(4).normal(size=rate.size))
    pid = np.arange(t.size)
    two = np.repeat(np.arange(t.size), 2)                  # each row twice, side by side
    kw = dict(n_boot=200, seed=5)
    one = evaluate_survival(t, d, exp_surv(rate), GRID, *train, **kw, groups=pid)
    dup = evaluate_survival(t[two], d[two], exp_surv(rate)[two], GRID, *train, **kw,
                            groups=pid[two])
    rows = evaluate_survival(t[two], d[two], exp_surv(rate)[two], GRID, *train, **kw)
    for m in ("c_harrell", "c_uno", "ibs", "brier_365", "auc_365"):
        width = one[f"{m}_hi"] - one[f"{m}_lo"]
        assert dup[m] == pytest.approx(one[m], rel=1e-9, abs=1e-12)
        assert dup[f"{m}_hi"] - dup[f"{m}_lo"] == pytest.approx(width, rel=1e-6)
        assert rows[f"{m}_hi"] - rows[f"{m}_lo"] < 0.85 * width     # what rows would claim
    a = paired_c_difference(t, d, rate, noisy, **kw, groups=pid)
    b = paired_c_difference(t[two], d[two], rate[two], noisy[two], **kw, groups=pid[two])
    assert (b["delta"], b["hi"] - b["lo"]) == pytest.approx((a["delta"], a["hi"] - a["lo"]))
    y = (t <= 365).astype(float)[:, None, None]
    p = (1 - np.exp(-rate * 365))[:, None, None]
    m1 = evaluate_multilabel(y, p, ["x"], [365], **kw, groups=pid)["metrics"]
    m2 = evaluate_multilabel(y[two], p[two], ["x"], [365], **kw, groups=pid[two])["metrics"]
    assert m2["auroc_365.x_hi"] - m2["auroc_365.x_lo"] == pytest.approx(
        m1["auroc_365.x_hi"] - m1["auroc_365.x_lo"], rel=1e-6)
