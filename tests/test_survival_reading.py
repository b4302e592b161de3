"""Every model's survival is read at exactly the time asked (issue 10, "honest scoring").

- discrete-time models: S between bin edges by constant hazard within each bin
  (:func:`interpolate_discrete`), horizons made bin edges by :func:`time_bins`;
- the common grid holds every test duration, training event time, horizon and edge;
- a training stage saves the interpolated curve (``survival_predictions``) and ``evaluate``
  scores it;
- our Antolini C and integrated Brier score agree with pycox's on the same curves.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from ehrseq.data.task import SurvivalTask, time_grid
from ehrseq.evaluate.scoring import score_all
from ehrseq.evaluate.survival import (
    antolini_c,
    evaluate_survival,
    interpolate_discrete,
    survival_at,
)
from ehrseq.params import ReportParams
from ehrseq.survival.bins import time_bins
from ehrseq.train.recipe import survival_predictions

pytestmark = pytest.mark.usefixtures("one_thread")

EDGES = np.array([0.0, 10.0, 30.0, 60.0, 100.0])
RATES = np.array([[0.01, 0.02, 0.005, 0.03],  # per-day hazard in each bin, one row per patient
                  [0.002, 0.0, 0.04, 0.01]])


def piecewise_s(t, rates=RATES, edges=EDGES):
    """The exact S(t) of a piecewise-constant hazard, flat after the last edge."""
    t = np.minimum(np.atleast_1d(np.asarray(t, float)), edges[-1])
    width = np.clip(t[:, None] - edges[None, :-1], 0, np.diff(edges)[None, :])  # [T, K]
    return np.exp(-(width @ rates.T).T)  # [n, T]


# ------------------------------------------------------------------ interpolation


def test_interpolate_discrete_is_the_constant_hazard_curve():
    s_edges = piecewise_s(EDGES)
    t = np.array([0.0, 0.5, 5.0, 10.0, 18.5, 29.9, 30.0, 45.0, 99.0, 100.0, 150.0, 1e4])
    np.testing.assert_allclose(interpolate_discrete(s_edges, EDGES, t), piecewise_s(t),
                               rtol=1e-12, atol=0)
    # at an edge it is the model's own value, bit for bit; a scalar gives one value per patient
    for k, e in enumerate(EDGES):
        np.testing.assert_array_equal(interpolate_discrete(s_edges, EDGES, e), s_edges[:, k])
    assert interpolate_discrete(s_edges, EDGES, 30.0).shape == (2,)
    # flat beyond the last edge
    np.testing.assert_array_equal(interpolate_discrete(s_edges, EDGES, [100.0, 500.0])[:, 1],
                                  s_edges[:, -1])


def test_interpolate_discrete_vs_the_old_step_read():
    """The step read gave a discrete model's "30 days" as S at the previous edge; the
    interpolation gives S(30) itself (here 30 d lies inside the bin (10, 60])."""
    edges = np.array([0.0, 10.0, 60.0])
    s_edges = piecewise_s(edges, RATES[:, :2], edges)
    truth = piecewise_s(30.0, RATES[:, :2], edges)[:, 0]
    np.testing.assert_allclose(interpolate_discrete(s_edges, edges, 30.0), truth, rtol=1e-12)
    step = survival_at(s_edges[:, 1:], edges[1:], 30.0)
    assert np.abs(step - truth).max() > 0.1  # S(10) is not S(30)


def test_interpolate_discrete_edge_cases():
    # edges without the leading 0: S(0) = 1 is added, constant hazard on (0, first edge]
    s = np.array([[0.8, 0.4]])
    np.testing.assert_allclose(interpolate_discrete(s, [10.0, 20.0], [0.0, 5.0, 15.0]),
                               [[1.0, 0.8**0.5, 0.8 * 0.5**0.5]], rtol=1e-12)
    # S reaching 0 stays 0; monotone; float32 input (what train.loop.predict returns)
    s = np.array([[1.0, 0.5, 0.0, 0.0]], dtype=np.float32)
    out = interpolate_discrete(s, [0, 1, 2, 3], np.linspace(0, 4, 41))
    assert out.dtype == np.float64 and (np.diff(out) <= 0).all() and out[0, -1] == 0
    assert out[0, 9] == pytest.approx(0.5**0.9) and out[0, 10] == 0.5  # t = 0.9, 1.0
    assert (out[0, 11:] == 0).all()  # S(2) = 0: an infinite hazard in (1, 2], S = 0 after 1
    with pytest.raises(ValueError, match="one column per edge"):
        interpolate_discrete(np.ones((2, 3)), [0, 1], 0.5)
    with pytest.raises(ValueError, match="strictly increasing"):
        interpolate_discrete(np.ones((2, 3)), [0, 2, 1], 0.5)


# ------------------------------------------------------------------ horizons are bin edges


def test_time_bins_make_the_horizons_edges():
    rng = np.random.default_rng(0)
    d = rng.uniform(1, 500, 400)
    e = rng.random(400) < 0.5
    plain = time_bins(d, e, 12)
    with_h = time_bins(d, e, 12, horizons=[30, 90, 365, 5000])
    assert {30.0, 90.0, 365.0} <= set(with_h)
    assert 5000.0 not in with_h  # beyond training follow-up: nobody at risk in that bin
    assert with_h[0] == 0 and (np.diff(with_h) >= 1.0).all()  # no sliver bins
    assert len(plain) - 1 <= len(with_h) - 1 <= len(plain) - 1 + 3
    # a fitted edge within a day of a horizon gives way to it
    near = plain[3] + 0.5
    snapped = time_bins(d, e, 12, horizons=[near])
    assert near in snapped and plain[3] not in snapped and len(snapped) == len(plain)
    np.testing.assert_array_equal(time_bins(d, e, 12, horizons=()), plain)


def test_time_grid_holds_every_time_asked():
    cuts = np.array([0.0, 25.0, 30.0, 80.0])
    test_d = np.array([3.0, 3.0, 40.5, 700.0])
    train_ev = np.array([1.0, 25.0, 99.0])
    g = time_grid(cuts, [30, 90, 365], test_d, train_ev)
    np.testing.assert_array_equal(g, [1, 3, 25, 30, 40.5, 80, 90, 99, 365, 700])
    task = _task(pd.DataFrame({"index": range(4), "split": ["train", "train", "test", "test"],
                               "duration": [5.0, 7.0, 2.0, 9.0], "event": [1, 0, 0, 1]}), cuts, [30])
    np.testing.assert_array_equal(task.time_grid(), [2, 5, 9, 25, 30, 80])


# ------------------------------------------------------------------ predictions to scores end to end


def _task(table, cuts, horizons):
    n = len(table)
    if "landmark_visits" not in table:
        table = table.assign(landmark_visits=1)
    return SurvivalTask(seqs=None, table=table, cuts=np.asarray(cuts, float),
                        horizons=[float(h) for h in horizons], age=np.zeros(n),
                        male=np.zeros(n, bool))


class _FixedCurves(torch.nn.Module):
    """A "discrete-time model" that predicts given survival probabilities at the edges."""

    def __init__(self, s_edges):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.s = torch.as_tensor(s_edges, dtype=torch.float32)

    def predict_survival(self, batch):
        return self.s[batch.rows]


def test_discrete_models_are_saved_and_scored_at_the_horizon(tmp_path):
    rng = np.random.default_rng(3)
    n = 300
    split = np.where(np.arange(n) < 200, "train", "test")
    dur = np.round(rng.uniform(1, 500, n), 1)
    event = (rng.random(n) < 0.6).astype(int)
    table = pd.DataFrame({"index": np.arange(n), "split": split, "duration": dur, "event": event})
    horizons = [30, 90, 365]
    tr = split == "train"
    edges = time_bins(dur[tr], event[tr], 5, horizons=horizons)
    task = _task(table, edges, horizons)
    table = task.table
    rates = rng.uniform(0.0005, 0.01, size=(100, len(edges) - 1))
    s_edges = piecewise_s(edges, rates, edges).astype(np.float32)
    loader = [SimpleNamespace(rows=torch.arange(i, min(i + 32, 100))) for i in range(0, 100, 32)]
    survival_predictions("fixed", _FixedCurves(s_edges), task, loader, tmp_path / "pred")
    (tmp_path / "out").mkdir()
    table.to_parquet(tmp_path / "out" / "outcomes.parquet")
    metrics, _ = score_all(tmp_path / "pred", tmp_path / "out", horizons,
                           ReportParams(bootstrap=0))
    z = np.load(tmp_path / "pred" / "fixed.npz")
    np.testing.assert_array_equal(z["times"], task.time_grid())
    for h in horizons:
        k = int(np.flatnonzero(edges == h)[0])
        np.testing.assert_array_equal(survival_at(z["surv"], z["times"], h), s_edges[:, k])
    # at every test duration: the constant-hazard curve's own value
    d_te = dur[~tr]
    got = survival_at(z["surv"], z["times"], d_te)[np.arange(100), np.arange(100)]
    want = piecewise_s(d_te, rates, edges)[np.arange(100), np.arange(100)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    c = antolini_c(d_te, event[~tr], z["surv"], z["times"])
    assert metrics["fixed.c_antolini"] == pytest.approx(c)


# ------------------------------------------------------------------ cross-check with pycox


def _simulate(n, seed):
    """Continuous (untied) times; curves exponential in a covariate with some noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    rate = np.exp(x) / 300
    t_ev = rng.exponential(1 / rate)
    t_c = rng.uniform(20, 600, n)
    return x, np.minimum(t_ev, t_c), (t_ev <= t_c).astype(int)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied-predictions"])
def test_antolini_and_ibs_agree_with_pycox(tied):
    """Our Antolini C and integrated Brier score against pycox 0.3.0's ``EvalSurv`` on the same
    curves. Conventions converted (pycox's on the left, ours on the right):

    - step read: pycox's ``steps="post"`` reads the last grid time <= t but, before the first
      grid time, the first column; ours gives S = 1 there. We give pycox the curve with a
      leading time 0 where S = 1, which makes the two reads identical.
    - Antolini ties: pycox's ``"antolini"`` counts a tie S_i(t_i) = S_j(t_i) as 0, ours as 1/2.
      With C(S) = pycox's C of the curves and C(1 - S) that of the reversed curves (the share of
      strictly discordant pairs), ties are the remainder, so ours = C(S) + (1 - C(S) - C(1-S))/2.
      Comparable pairs are the same (t_i < t_j, or t_i = t_j with only j censored, i an event).
    - IPCW: pycox's ``censor_surv="km"`` is a Kaplan–Meier of the censoring in the *test* set;
      ours is scikit-survival's censoring Kaplan–Meier on the *training* split: we hand pycox
      our G as its censoring curve (G = 1 at time 0). pycox reads G(t_i-) at an event time,
      ours G(t_i): the same here, as no test time equals a training time (continuous times).
    - Brier reduction: pycox 0.3.0 divides the weighted sum by the sum of the weights (Hajek);
      Graf et al., scikit-survival and ours divide by n: we take pycox's per-patient scores
      (``reduce=False``) and divide their sum by n.
    - integration: pycox integrates with ``scipy.integrate.simps`` (removed from SciPy 1.14, so
      its ``integrated_brier_score`` fails here); we integrate its Brier curve on our IBS grid
      with the trapezoid rule over the interval length, as ours does.
    """
    pycox_ipcw = pytest.importorskip("pycox.evaluation.ipcw")
    from pycox.evaluation import EvalSurv
    from sksurv.nonparametric import CensoringDistributionEstimator
    from sksurv.util import Surv

    _, d_tr, e_tr = _simulate(800, seed=10)
    x, d, e = _simulate(300, seed=11)
    times = time_grid([0, 50, 150], [30, 90, 365], d, d_tr[e_tr == 1])
    rng = np.random.default_rng(12)
    surv = np.exp(-np.outer(np.exp(x + rng.normal(0, 0.5, x.size)) / 300, times))
    if tied:
        surv = np.round(surv, 2)

    def pycox_c(s):
        frame = pd.DataFrame(np.vstack([np.ones(len(d)), s.T]), index=np.r_[0.0, times])
        return EvalSurv(frame, d, e.astype(np.int64), steps="post").concordance_td("antolini")

    c_s, c_rev = pycox_c(surv), pycox_c(1.0 - surv)
    assert (c_s + c_rev < 1 - 1e-3) == tied  # the tie variant really has tied pairs
    ours = antolini_c(d, e, surv, times)
    assert ours == pytest.approx(c_s + (1.0 - c_s - c_rev) / 2, abs=1e-12)

    res = evaluate_survival(d, e, surv, times, d_tr, e_tr, horizons=[30, 90, 365], n_boot=0)
    assert res["c_antolini"] == pytest.approx(ours, abs=1e-12)
    tau = res["tau"]
    grid = np.linspace(d.min(), tau, 100)  # the IBS grid of evaluate_survival (ibs_points)
    cens = CensoringDistributionEstimator().fit(Surv.from_arrays(e_tr.astype(bool), d_tr))
    g_times = np.r_[0.0, np.unique(d_tr)]
    g = np.repeat(np.r_[1.0, cens.predict_proba(g_times[1:])][:, None], len(d), axis=1)
    s_index = np.r_[0.0, times]
    s_frame = np.vstack([np.ones(len(d)), surv.T])  # [times, patients], as pycox wants
    scores, _ = pycox_ipcw.brier_score(grid, d, e.astype(np.int64), s_frame, g, s_index,
                                       g_times, np.inf, False, "post", "post")
    bs = scores.sum(axis=1) / len(d)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    ibs_pycox = trapezoid(bs, grid) / (grid[-1] - grid[0])
    assert res["ibs"] == pytest.approx(ibs_pycox, rel=1e-9)
    for h in (30, 90):
        s_h, _ = pycox_ipcw.brier_score(np.array([float(h)]), d, e.astype(np.int64), s_frame, g,
                                        s_index, g_times, np.inf, False, "post", "post")
        assert res[f"brier_{h}"] == pytest.approx(s_h.sum() / len(d), rel=1e-9)
