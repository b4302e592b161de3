"""The classical baselines (ehrseq.models.classical): each one's survival curve is a survival
function, ranks patients the right way round, handles censoring, and, read on the common grid
at a horizon h, gives exactly its own library's S(h)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from sklearn.linear_model import LogisticRegression

from ehrseq.data.task import time_grid
from ehrseq.evaluate.survival import survival_at
from ehrseq.models.classical import (
    RSF,
    CoxNet,
    CoxPH,
    Featurizer,
    HorizonClassifier,
    KaplanMeier,
    coarsen_times,
    make_models,
)

HORIZONS = [30, 90, 180]
H = 180.0  # the horizon the censoring checks look at (~45% censored before it)


def simulate(n, seed, beta=1.0, base_rate=1 / 300, cens_max=400.0):
    """Exponential times, log-hazard ``beta * x0`` (x1, x2 are noise), uniform censoring."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    rate = base_rate * np.exp(beta * X[:, 0])
    t_event = rng.exponential(1 / rate)
    t_cens = rng.uniform(1.0, cens_max, size=n)
    return X, rate, np.minimum(t_event, t_cens), (t_event <= t_cens).astype(int)


@pytest.fixture(scope="module")
def data():
    X, rate, d, e = simulate(600, seed=1)
    Xt, rate_t, dt, et = simulate(200, seed=2)
    grid = time_grid([0, 20, 60, 150], HORIZONS, dt, d[e == 1])
    return {"X": X, "d": d, "e": e, "Xt": Xt, "rate_t": rate_t, "dt": dt, "grid": grid}


@pytest.fixture(scope="module")
def fitted(data):
    models = make_models(HORIZONS, seed=0)
    return {name: m.fit(data["X"], data["d"], data["e"]) for name, (m, _) in models.items()}


def test_curves_are_survival_functions(data, fitted):
    times = np.concatenate([[0.25], data["grid"], [data["grid"][-1] * 2]])
    for name, m in fitted.items():
        s = m.predict_survival(data["Xt"], times)
        assert s.shape == (len(data["Xt"]), len(times)), name
        assert np.isfinite(s).all() and s.min() >= 0 and s.max() <= 1, name
        assert (np.diff(s, axis=1) <= 1e-12).all(), f"{name}: S(t) increases somewhere"


def test_risk_orientation(data, fitted):
    """A covariate that raises the hazard raises the predicted risk 1 - S(h) (KM: no covariates,
    one curve for everyone)."""
    probe = np.zeros((5, 3))
    probe[:, 0] = [-2, -1, 0, 1, 2]
    for name, m in fitted.items():
        risk = 1 - survival_at(m.predict_survival(probe, data["grid"]), data["grid"], 90.0)
        if name == "km":
            assert np.ptp(risk) == 0
            continue
        assert risk[-1] > risk[0] + 0.1, f"{name}: risk {risk}"
        if name in ("cox", "coxnet", "lr"):  # linear in x0: strictly monotone (forests: not)
            assert (np.diff(risk) > 0).all(), f"{name}: {risk}"
        # on real test patients too: risk correlates with the true hazard
        r = 1 - survival_at(m.predict_survival(data["Xt"], data["grid"]), data["grid"], 90.0)
        rank = pd.Series(r).rank().corr(pd.Series(data["rate_t"]).rank())
        assert rank > 0.4, f"{name}: rank correlation of risk with the true hazard {rank:.2f}"


# ----------------------------------------------------------- read at h: the library's own S(h)


def test_km_read_at_horizon_is_lifelines(data):
    km = KaplanMeier().fit(None, data["d"], data["e"])
    s = km.predict_survival(data["Xt"], data["grid"])
    kmf = KaplanMeierFitter().fit(data["d"], data["e"])
    for h in HORIZONS + [float(data["dt"][0])]:  # the horizons and a test duration
        want = kmf.survival_function_at_times(h).to_numpy()[0]
        np.testing.assert_array_equal(survival_at(s, data["grid"], h), want)
    # between grid points the step read is still lifelines' value: the grid holds every
    # training event time, where the curve changes
    t = np.linspace(1, data["grid"][-1] + 50, 97)
    np.testing.assert_allclose(survival_at(s, data["grid"], t)[0],
                               kmf.survival_function_at_times(t).to_numpy(), rtol=0, atol=1e-12)


def test_cox_read_at_horizon_is_lifelines(data, fitted):
    cox = fitted["cox"]
    s = cox.predict_survival(data["Xt"], data["grid"])
    df = pd.DataFrame(data["Xt"], columns=[f"x{i}" for i in range(3)])
    for h in HORIZONS:
        want = cox.model.predict_survival_function(df, times=[h]).to_numpy()[0]
        np.testing.assert_allclose(survival_at(s, data["grid"], h), want, rtol=1e-12)
    # the coefficient of the risk covariate is positive (hazard ratio > 1)
    assert cox.model.params_["x0"] > 0.5


def test_rsf_read_at_horizon_is_sksurv(data, fitted):
    rsf = fitted["rsf"]
    s = rsf.predict_survival(data["Xt"], data["grid"])
    fns = rsf.model.predict_survival_function(data["Xt"])
    for h in HORIZONS:
        want = np.array([f(h) for f in fns])
        np.testing.assert_allclose(survival_at(s, data["grid"], h), want, rtol=1e-12)
    # before the first training time S is 1 (sksurv's StepFunction would give S(t_1) there)
    first = rsf.model.unique_times_[0]
    np.testing.assert_array_equal(rsf.predict_survival(data["Xt"][:3], [first / 2]), 1.0)


def test_coxnet_read_at_horizon_is_sksurv(data, fitted):
    """The elastic-net Cox gives scikit-survival's own Breslow S(h) at the end of its path, and
    its lasso keeps the risk covariate and drops the noise ones."""
    net = fitted["coxnet"]
    s = net.predict_survival(data["Xt"], data["grid"])
    fns = net.model.predict_survival_function(data["Xt"], alpha=net.alpha)
    for h in HORIZONS:
        want = np.array([f(h) for f in fns])
        np.testing.assert_allclose(survival_at(s, data["grid"], h), want, rtol=1e-12)
    coef = net.model.coef_[:, -1]
    assert coef[0] > 0.3 and np.abs(coef[1:]).max() < 0.5 * coef[0], coef
    assert net.alpha == pytest.approx(net.model.alphas_[0] * 0.1)
    # a stronger penalty shrinks the risk coefficient
    strong = CoxNet(alpha_ratio=0.8).fit(data["X"], data["d"], data["e"])
    assert 0 <= strong.model.coef_[0, -1] < coef[0]


def test_presence_features_pick_the_code_among_noise():
    """Code presence (standardised 0/1 of the codes in >= PRESENCE_MIN_ROWS training rows):
    an elastic-net Cox on it finds the one code that sets the hazard among 200 noise codes,
    where the SVD features of the same counts blur it."""
    import scipy.sparse as sp

    from ehrseq.models.classical import PRESENCE_MIN_ROWS

    rng = np.random.default_rng(3)
    n, v = 800, 201
    counts = sp.csr_matrix(rng.poisson(0.3, size=(n, v)) * (rng.random((n, v)) < 0.5))
    has = np.asarray(counts[:, 0].todense()).ravel() > 0
    t = rng.exponential(300 / np.exp(1.2 * has)) + 1
    c = rng.uniform(1, 600, n)
    d, e = np.minimum(t, c), (t <= c).astype(int)
    age, male = rng.normal(50, 10, n), rng.random(n) < 0.5
    tr, te = slice(0, 600), slice(600, None)
    feat = Featurizer(seed=0).fit(counts[tr], age[tr], male[tr])
    assert all((np.asarray((counts[tr][:, j] > 0).sum()) >= PRESENCE_MIN_ROWS)
               for j in feat.present)
    X = feat.presence(counts, age, male)
    assert X.shape == (n, len(feat.present) + 2)
    np.testing.assert_allclose(X[tr, :-2].mean(0), 0, atol=1e-9)
    net = CoxNet().fit(X[tr], d[tr], e[tr])
    coef = net.model.coef_[:, -1]
    assert np.argmax(np.abs(coef)) == list(feat.present).index(0), coef[:5]
    risk = 1 - net.predict_survival(X[te], [180.0])[:, 0]
    assert risk[has[te]].mean() > risk[~has[te]].mean() + 0.1


def test_horizon_classifier_read_at_horizon(data, fitted):
    """S(h) = 1 - P(event by h) of the horizon-h classifier (after the running minimum over
    the horizons that keeps the curve monotone); a step between horizons, 1 before the first."""
    for name in ("lr", "rf"):
        m = fitted[name]
        s = m.predict_survival(data["Xt"], data["grid"])
        p = np.column_stack([m.models[h].predict_proba(data["Xt"])[:, 1] for h in HORIZONS])
        want = np.minimum.accumulate(1 - p, axis=1)
        for j, h in enumerate(HORIZONS):
            np.testing.assert_allclose(survival_at(s, data["grid"], h), want[:, j], rtol=1e-12)
        mid = survival_at(s, data["grid"], 60.0)  # between the 30 and 90 d horizons
        np.testing.assert_allclose(mid, want[:, 0], rtol=1e-12)
        np.testing.assert_array_equal(m.predict_survival(data["Xt"], [10.0]), 1.0)


# ----------------------------------------------------------- censoring


def _mean_s(model, X, grid, h=H):
    return float(survival_at(model.predict_survival(X, grid), grid, h).mean())


def test_km_uses_censoring(data):
    d, e = data["d"], data["e"]
    kept = KaplanMeier().fit(None, d, e).predict_survival(np.zeros((1, 1)), [H])[0, 0]
    dropped = KaplanMeier().fit(None, d[e == 1], e[e == 1]).predict_survival(
        np.zeros((1, 1)), [H])[0, 0]
    naive = float((d > H).mean())  # censored patients counted as event-free throughout
    truth = float(np.exp(-data["rate_t"] * H).mean())
    assert abs(kept - truth) < 0.06
    assert dropped < truth - 0.1 and naive < truth - 0.1


@pytest.mark.parametrize("make", [lambda: CoxPH(), lambda: RSF(seed=0), lambda: CoxNet()],
                         ids=["cox", "rsf", "coxnet"])
def test_survival_models_use_censoring(data, make):
    """Fitted with its censored patients, a model's mean S(h) on test patients matches the true
    S(h); fitted without them (dropped: only events left) it is far too pessimistic."""
    d, e, X = data["d"], data["e"], data["X"]
    truth = float(np.exp(-data["rate_t"] * H).mean())
    kept = _mean_s(make().fit(X, d, e), data["Xt"], data["grid"])
    dropped = _mean_s(make().fit(X[e == 1], d[e == 1], e[e == 1]), data["Xt"], data["grid"])
    assert abs(kept - truth) < 0.06, (kept, truth)
    assert dropped < truth - 0.1, (dropped, truth)


def test_horizon_classifier_censoring(data):
    """At horizon h the classifier learns "event by h" from the patients whose status at h is
    known: a patient censored before h is left out (not counted event-free), one censored
    after h is a control."""
    d, e, X = data["d"], data["e"], data["X"]
    m = HorizonClassifier(lambda: LogisticRegression(max_iter=2000), [H]).fit(X, d, e)
    known = (e == 1) & (d <= H) | (d > H)
    by_hand = LogisticRegression(max_iter=2000).fit(X[known], ((e == 1) & (d <= H))[known])
    s = m.predict_survival(data["Xt"], [H])[:, 0]
    np.testing.assert_allclose(s, 1 - by_hand.predict_proba(data["Xt"])[:, 1], rtol=1e-10)
    # the patients censored before h do not matter at all ...
    early = (e == 0) & (d <= H)
    assert early.sum() > 100
    m2 = HorizonClassifier(lambda: LogisticRegression(max_iter=2000), [H]).fit(
        X[~early], d[~early], e[~early])
    np.testing.assert_allclose(m2.predict_survival(data["Xt"], [H])[:, 0], s, rtol=1e-10)
    # ... while counting them as event-free would change the answer (more optimistic)
    naive = LogisticRegression(max_iter=2000).fit(X, (e == 1) & (d <= H))
    assert (1 - naive.predict_proba(data["Xt"])[:, 1]).mean() > s.mean() + 0.05


def test_cox_ignores_a_constant_column():
    """A feature with no spread (sex on a MEDS dataset without it) must not stop Cox."""
    from ehrseq.models.classical import CoxPH

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=200), np.zeros(200)])
    t = rng.exponential(np.exp(-X[:, 0])) + 0.01
    e = np.ones(200, int)
    s = CoxPH(0.1).fit(X, t, e).predict_survival(X[:5], np.array([0.5, 1.0]))
    assert s.shape == (5, 2) and np.isfinite(s).all()
    assert np.argsort(s[:, 0]).tolist() == np.argsort(-X[:5, 0]).tolist()   # ranks by x0


def test_forests_predict_in_one_thread(data, fitted):
    """Forests fit in parallel but predict serially: several threads add the trees' outputs in
    the order they finish, which changed the last bits of rf.npz / rsf.npz between two fresh
    clones of one commit."""
    assert fitted["rsf"].model.n_jobs == 1
    forests = [m for m in fitted["rf"].models.values() if not isinstance(m, float)]
    assert forests and all(m.n_jobs == 1 for m in forests)
    a = fitted["rf"].predict_survival(data["Xt"], data["grid"])
    assert np.array_equal(a, fitted["rf"].predict_survival(data["Xt"], data["grid"]))


def test_rsf_keeps_at_most_max_times_and_still_ranks(data, fitted):
    """Coarsened training times (issue 26 part 7: memory at 7,000 landmarks): order kept or
    tied, each time moved up to the next grid point; a forest on 64 distinct times ranks the
    test patients about as well as one on all 600."""
    from ehrseq.evaluate.survival import harrell_c

    d = data["d"]
    c = coarsen_times(d, 64)
    assert len(np.unique(c)) <= 64 and np.all(c >= d) and c.max() == d.max()
    assert np.all(np.diff(c[np.argsort(d, kind="stable")]) >= 0)   # order kept or tied
    assert np.array_equal(coarsen_times(d, 600), d)                 # few enough: exact
    small = RSF(seed=0, max_times=64).fit(data["X"], d, data["e"])
    assert len(small.model.unique_times_) <= 64
    assert len(fitted["rsf"].model.unique_times_) <= 512

    _, _, dt, et = simulate(200, seed=2)     # the test split of the fixture, with its events

    def c_at(model):
        s = survival_at(model.predict_survival(data["Xt"], data["grid"]), data["grid"], H)
        return harrell_c(dt, et, 1 - s)

    full = RSF(seed=0, max_times=10_000).fit(data["X"], d, data["e"])
    assert len(full.model.unique_times_) == len(np.unique(d))
    assert abs(c_at(small) - c_at(full)) < 0.02, (c_at(small), c_at(full))
