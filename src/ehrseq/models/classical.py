"""Classical survival baselines: Kaplan–Meier, penalised Cox PH, elastic-net Cox on code
presence, logistic regression, random forest and gradient-boosted trees (LightGBM) per
horizon, random survival forest. Each is a plain fit/predict object that returns a survival
matrix ``S(t | x)`` on the common time grid, so every model is scored by the one evaluation
module (``ehrseq.evaluate.survival``) with the one risk score.

Each model gives its own S(t) at exactly the grid times asked (the grid holds the horizons and
every test duration, see :meth:`ehrseq.data.task.SurvivalTask.time_grid`):

- Kaplan–Meier: lifelines' step function, 1 before the first training time;
- Cox: lifelines' ``predict_survival_function(X, times=...)``, whose baseline cumulative
  hazard is linearly interpolated between training durations (lifelines' own convention);
- elastic-net Cox: scikit-survival's Breslow step function over the training event times,
  read as RSF's below;
- LR / RF / GBM per horizon: a step function that changes only at the horizons (see
  :class:`HorizonClassifier`);
- RSF: scikit-survival's step function over the training times, flat after the last and 1
  before the first (scikit-survival's own ``StepFunction`` would give S at the first training
  time there).

Features (built by :class:`Featurizer` on the training split only): TF-IDF of the code counts
of the input window and, in the ``baselines`` stage, time-windowed counts and recency of every
code (:mod:`ehrseq.data.windows`, MEDS-Tab style), reduced by truncated SVD for the models that
need dense inputs, plus age at the landmark (standardised) and sex. The elastic-net Cox takes
the presence (0/1) of every code in the input window instead, standardised, for the codes
present in at least :data:`PRESENCE_MIN_ROWS` training rows: the lasso picks the few codes
that matter out of thousands, which dense SVD components and tree splits on noisy columns do
less well on a cohort of a thousand patients (docs/benchmarks.md, negative control).

Equal tuning (docs/training.md): every family but Kaplan–Meier has one main regularisation
hyperparameter (:data:`TUNED`), tried over the grid of params.yaml ``tune`` (as many values as
the neural models' learning rates, :func:`classical_grid`) by :func:`fit_best`, which fits on
the training split and keeps the value with the highest Harrell's C on the validation split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceError
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sksurv.ensemble import RandomSurvivalForest

from ..params import TuneParams
from ..survival.curves import harrell_c, km_survival, risk_score, survival_at

PRESENCE_MIN_ROWS = 5
"""A code enters the elastic-net Cox's presence features if it is in at least this many
training rows (rarer ones cannot be estimated and only cost memory)."""


class Featurizer:
    """Code counts (+ optional time-windowed features, :mod:`ehrseq.data.windows`) →
    (sparse TF-IDF + log1p(windows) + demographics, dense SVD of both + demographics, dense
    standardised code presence + demographics)."""

    def __init__(self, n_components: int = 16, seed: int = 0):
        self.n_components, self.seed = n_components, seed

    def _codes(self, counts, windows) -> sp.csr_matrix:
        parts = [self.tfidf.transform(counts)]
        if windows is not None:
            parts.append(windows.log1p())   # counts and recency in [0, 1]: log1p keeps 0 = absent
        return sp.hstack(parts, format="csr")

    def fit(self, counts: sp.csr_matrix, age: np.ndarray, male: np.ndarray,
            windows: sp.csr_matrix | None = None) -> Featurizer:
        self.tfidf = TfidfTransformer(sublinear_tf=True).fit(counts)
        codes = self._codes(counts, windows)
        k = max(1, min(self.n_components, codes.shape[1] - 1, codes.shape[0] - 1))
        self.svd = TruncatedSVD(k, random_state=self.seed).fit(codes)
        self.age_mean, self.age_std = float(age.mean()), float(age.std() or 1.0)
        dense = self.svd.transform(codes)
        self.mu, self.sd = dense.mean(0), dense.std(0) + 1e-8
        rows = np.asarray((counts > 0).sum(0)).ravel()
        self.present = np.flatnonzero(rows >= min(PRESENCE_MIN_ROWS, max(counts.shape[0], 1)))
        pres = self._presence(counts)
        self.p_mu, self.p_sd = pres.mean(0), pres.std(0) + 1e-8
        return self

    def _presence(self, counts) -> np.ndarray:
        return (counts[:, self.present] > 0).toarray().astype(np.float64)

    def _demo(self, age, male) -> np.ndarray:
        return np.column_stack([(age - self.age_mean) / self.age_std, male.astype(float)])

    def sparse(self, counts, age, male, windows=None) -> sp.csr_matrix:
        return sp.hstack([self._codes(counts, windows), sp.csr_matrix(self._demo(age, male))],
                         format="csr")

    def dense(self, counts, age, male, windows=None) -> np.ndarray:
        z = (self.svd.transform(self._codes(counts, windows)) - self.mu) / self.sd
        return np.column_stack([z, self._demo(age, male)])

    def presence(self, counts, age, male, windows=None) -> np.ndarray:
        z = (self._presence(counts) - self.p_mu) / self.p_sd
        return np.column_stack([z, self._demo(age, male)])


class KaplanMeier:
    """The null model: every patient gets the training split's Kaplan–Meier curve."""

    def fit(self, X, duration, event):
        self.duration, self.event = np.asarray(duration), np.asarray(event)
        return self

    def predict_survival(self, X, times) -> np.ndarray:
        s = km_survival(self.duration, self.event, times)
        return np.tile(s, (X.shape[0], 1))


class CoxPH:
    """lifelines' Cox proportional hazards with an L2 penalty, on the dense features."""

    def __init__(self, penalizer: float = 0.1):
        self.model = CoxPHFitter(penalizer=penalizer)

    def _df(self, X):
        return pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])

    def fit(self, X, duration, event):
        X = np.asarray(X)
        # a constant column (e.g. sex on a dataset without it) has no effect to estimate, and
        # lifelines' scaling would divide by its zero spread
        self.keep = np.flatnonzero(X.std(0) > 0) if len(X) else np.arange(X.shape[1])
        df = self._df(X[:, self.keep]).assign(duration=duration, event=event)
        self.model.fit(df, "duration", "event")
        return self

    def predict_survival(self, X, times) -> np.ndarray:
        X = np.asarray(X)[:, self.keep]
        return self.model.predict_survival_function(self._df(X), times=times).to_numpy().T


class CoxNet:
    """scikit-survival's elastic-net Cox (``l1_ratio`` 0.5) on the presence features. The
    penalty is ``alpha_ratio`` times the smallest one that zeroes every coefficient on the
    training data (scale-free, so one grid fits any cohort); the path is fitted from there
    down, warm-started, and read at its end."""

    def __init__(self, alpha_ratio: float = 0.1, l1_ratio: float = 0.5, steps: int = 10):
        self.alpha_ratio, self.l1_ratio, self.steps = alpha_ratio, l1_ratio, steps

    def fit(self, X, duration, event):
        from sksurv.linear_model import CoxnetSurvivalAnalysis
        from sksurv.util import Surv

        y = Surv.from_arrays(np.asarray(event).astype(bool), np.asarray(duration, float))
        top = CoxnetSurvivalAnalysis(l1_ratio=self.l1_ratio, n_alphas=2,
                                     alpha_min_ratio=0.5).fit(X, y).alphas_[0]
        path = top * np.geomspace(1.0, self.alpha_ratio, self.steps)
        self.model = CoxnetSurvivalAnalysis(l1_ratio=self.l1_ratio, alphas=path,
                                            fit_baseline_model=True, max_iter=100_000).fit(X, y)
        self.alpha = self.model.alphas_[-1]
        return self

    def predict_survival(self, X, times) -> np.ndarray:
        fns = self.model.predict_survival_function(X, alpha=self.alpha)
        surv = np.stack([f.y for f in fns]) if len(fns) else np.ones((0, 1))
        return survival_at(surv, fns[0].x if len(fns) else np.zeros(1), times)


class HorizonClassifier:
    """One classifier per horizon h for "event by h"; patients censored before h are left out
    of that horizon's training set. S(t) is 1 - P(event by h) at the last horizon h <= t
    (monotone by a running minimum), and 1 before the first horizon."""

    def __init__(self, make, horizons):
        self.make, self.horizons = make, sorted(horizons)

    def fit(self, X, duration, event):
        duration, event = np.asarray(duration), np.asarray(event).astype(bool)
        self.models = {}
        for h in self.horizons:
            known = event & (duration <= h) | (duration > h)
            y = (event & (duration <= h))[known]
            if y.min() == y.max():  # a single class: predict its rate
                self.models[h] = float(y.mean())
            else:
                self.models[h] = serial_predict(self.make().fit(X[known], y))
        return self

    def predict_survival(self, X, times) -> np.ndarray:
        p = np.column_stack([
            np.full(X.shape[0], m) if isinstance(m, float) else m.predict_proba(X)[:, 1]
            for m in self.models.values()])
        s_h = np.minimum.accumulate(1.0 - p, axis=1)
        k = np.searchsorted(self.horizons, times, side="right") - 1
        return np.where(k >= 0, s_h[:, np.clip(k, 0, None)], 1.0)


def serial_predict(model):
    """A fitted forest that predicts in one thread: with ``n_jobs`` > 1, scikit-learn's and
    scikit-survival's forests add the trees' predictions into one array from several threads in
    whatever order they finish, so the last bits of a prediction change from run to run (two
    fresh clones of one commit gave different rf.npz and rsf.npz; every other output was
    byte-identical). Fitting stays parallel: each tree's seed is drawn before the threads start."""
    if getattr(model, "n_jobs", None) not in (None, 1):
        model.n_jobs = 1
    return model


RSF_MAX_TIMES = 512
"""The most distinct training times a random survival forest keeps (see :class:`RSF`)."""


def coarsen_times(duration, max_times: int) -> np.ndarray:
    """``duration`` with at most ``max_times`` distinct values: when it has more, each time
    moves up to the next of ``max_times`` points spread evenly over the quantiles of its
    distinct values (the first and the last kept), so the order of any two times is kept or
    becomes a tie, and no time moves past the next grid point."""
    t = np.asarray(duration, float)
    u = np.unique(t)
    if len(u) <= max_times:
        return t
    grid = np.quantile(u, np.linspace(0.0, 1.0, max_times))
    return grid[np.searchsorted(grid, t, side="left")]


class RSF:
    """scikit-survival's random survival forest on the dense features.

    Each tree node stores the cumulative hazard and survival over every distinct training
    time, so memory grows with nodes x times: at 7,000 training landmarks (1,000 patients, 10
    landmarks each) that passed this machine's 24 GB. Training times are therefore coarsened
    to at most ``max_times`` distinct values (:func:`coarsen_times`; 512 by default: the
    default cohort's 285 stay exact; a forest of 7,000 landmarks then took 2.3 GB,
    bench/rsf_memory.py)."""

    def __init__(self, seed: int = 0, min_samples_leaf: int = 10,
                 max_times: int = RSF_MAX_TIMES):
        self.model = RandomSurvivalForest(n_estimators=200, min_samples_leaf=min_samples_leaf,
                                          max_features="sqrt", n_jobs=-1, random_state=seed)
        self.max_times = max_times

    def fit(self, X, duration, event):
        from sksurv.util import Surv

        y = Surv.from_arrays(np.asarray(event).astype(bool),
                             coarsen_times(duration, self.max_times))
        serial_predict(self.model.fit(X, y))
        return self

    def predict_survival(self, X, times) -> np.ndarray:
        surv = self.model.predict_survival_function(X, return_array=True)
        return survival_at(surv, self.model.unique_times_, times)


MODELS = ("km", "cox", "coxnet", "lr", "rf", "rsf", "gbm")
KINDS = {"km": "dense", "cox": "dense", "coxnet": "presence", "lr": "sparse", "rf": "sparse",
         "rsf": "dense", "gbm": "sparse"}
"""Which features each model takes: ``sparse`` (TF-IDF + windows + demographics), ``dense``
(SVD + demographics; Kaplan–Meier ignores them) or ``presence`` (standardised 0/1 per code +
demographics): the methods of :class:`Featurizer`."""


@dataclass(frozen=True)
class Tuned:
    """A family's tuned hyperparameter: its name, the params.yaml ``tune`` key of its grid,
    today's default (the only value when tuning is off) and which way regularises more."""

    hyperparam: str
    grid_key: str
    default: float
    larger_regularises: bool


TUNED = {
    "cox": Tuned("penalizer", "cox_penalizer", 0.1, True),
    "coxnet": Tuned("alpha", "coxnet_alpha", 0.1, True),
    "lr": Tuned("C", "lr_c", 1.0, False),
    "rf": Tuned("min_samples_leaf", "forest_min_leaf", 5, True),
    "rsf": Tuned("min_samples_leaf", "forest_min_leaf", 10, True),
    "gbm": Tuned("min_child_samples", "forest_min_leaf", 20, True),
}
"""The families with a hyperparameter to tune (Kaplan–Meier has none)."""


def make_model(name: str, horizons, seed: int = 0, value=None):
    """One unfitted model of family ``name``; ``value`` sets its :data:`TUNED` hyperparameter
    (``None`` = the default)."""
    if name == "km":
        return KaplanMeier()
    v = TUNED[name].default if value is None else value
    if name == "cox":
        return CoxPH(penalizer=float(v))
    if name == "coxnet":
        return CoxNet(alpha_ratio=float(v))
    if name == "lr":
        return HorizonClassifier(lambda: LogisticRegression(C=float(v), max_iter=2000),
                                 horizons)
    if name == "rf":
        return HorizonClassifier(lambda: RandomForestClassifier(
            n_estimators=300, min_samples_leaf=int(v), n_jobs=-1, random_state=seed), horizons)
    if name == "rsf":
        return RSF(seed, min_samples_leaf=int(v))
    if name == "gbm":
        return HorizonClassifier(lambda: gbm_classifier(int(v), seed), horizons)
    raise ValueError(f"unknown classical model {name!r}; known: {list(MODELS)}")


def gbm_classifier(min_child_samples: int, seed: int = 0):
    """LightGBM for one horizon's "event by h": small trees, shrinkage, row and column
    subsampling; single-threaded and deterministic, so a fit gives the same bytes anywhere."""
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=15,
                          min_child_samples=min_child_samples, subsample=0.8, subsample_freq=1,
                          colsample_bytree=0.5, reg_lambda=1.0, random_state=seed, n_jobs=1,
                          deterministic=True, force_col_wise=True, verbose=-1)


COUNT_MODELS = ("cox", "coxnet", "lr", "rf", "rsf", "gbm")
"""The count-based models the neural ones must beat; the best of them on the validation split
is named ``best_count`` (Kaplan–Meier ranks nobody)."""


def make_models(horizons, seed: int = 0) -> dict:
    """name → (model with its default hyperparameter, which features it takes: see
    :data:`KINDS`)."""
    return {name: (make_model(name, horizons, seed), KINDS[name]) for name in MODELS}


def classical_grid(name: str, tune: TuneParams) -> list:
    """The values of ``name``'s hyperparameter to try: its ``tune`` grid when tuning is on
    (``tune.lrs`` set: as many values as the neural models' lrs), else today's default alone;
    ``[None]`` for Kaplan–Meier (nothing to tune)."""
    if name not in TUNED:
        return [None]
    t = TUNED[name]
    return list(getattr(tune, t.grid_key)) if tune.lrs else [t.default]


def tune_label(name: str, value) -> str:
    """``("cox", 0.01)`` -> ``penalizer_0.01``: the value's part of metric names (as
    ``lr_0.003`` for the neural models' learning rates)."""
    return f"{TUNED[name].hyperparam}_{value:g}"


FIT_FAILURES = (ConvergenceError,)
"""A candidate whose fit raises one of these (lifelines' Cox at a small penalizer) is
skipped, with a null validation C; the stage fails only when every candidate does."""


def validation_c(model, X_val, d_val, e_val, horizon: float) -> float:
    """Harrell's C on the validation split of the one risk score ``1 - S(h* | x)``
    (:func:`ehrseq.evaluate.survival.risk_score`); NaN when it cannot be computed (no
    comparable pair, non-finite predictions) or when the model gives every validation landmark
    the same risk: it ranks nobody, like Kaplan–Meier, so it never wins the tuning or the best
    count model against one that ranks (a forest whose leaves hold every training landmark, as
    at 25 labelled patients, scored 0.5 there and beat models whose C on 7 validation patients
    fell below it)."""
    risk = risk_score(model.predict_survival(X_val, np.array([float(horizon)])),
                      np.array([float(horizon)]), horizon)
    if not np.isfinite(risk).all() or not np.asarray(e_val).any() or np.ptp(risk) == 0:
        return math.nan
    try:
        return harrell_c(d_val, e_val, risk)
    except (ValueError, ZeroDivisionError):  # sksurv: no comparable pair
        return math.nan


@dataclass
class ClassicalTuneResult:
    model: Any
    """The model of the chosen value, fitted on the training split."""
    value: Any
    val_c: dict = field(default_factory=dict)
    """Validation Harrell's C of every value tried (NaN: not computable or the fit failed)."""
    fit_seconds: float = 0.0
    """Fit time of the chosen value."""
    wall_time_s: float = 0.0
    """Fit and validation prediction time of every value together."""


def fit_best(make: Callable[[Any], Any], grid: Sequence, X_train, d_train, e_train, X_val,
             d_val, e_val, horizon: float, *, larger_regularises: bool = True,
             log: Callable[[str], None] | None = None) -> ClassicalTuneResult:
    """Fit ``make(value)`` on the training split for every value of ``grid`` and keep the one
    with the highest validation Harrell's C of ``1 - S(horizon | x)`` (:func:`validation_c`).

    Ties (and values whose C is NaN) go to the more regularised value: the grid is tried from
    the most to the least regularised (``larger_regularises`` says which way) and a later
    value must be strictly better. It sees only the training and validation arrays it is
    given: the test split never enters the choice.
    """
    if not len(grid):
        raise ValueError("fit_best: no value to try")
    order = list(grid) if None in grid else sorted(grid, reverse=larger_regularises)
    best: ClassicalTuneResult | None = None
    best_c = -math.inf
    val_c: dict = {}
    wall, error = 0.0, None
    for v in order:
        t0 = time.time()
        try:
            model = make(v).fit(X_train, d_train, e_train)
        except FIT_FAILURES as err:
            error, val_c[v] = err, math.nan
            wall += time.time() - t0
            if log is not None:
                log(f"{v}: fit failed ({err}); skipped")
            continue
        fit_s = time.time() - t0
        c = val_c[v] = validation_c(model, X_val, d_val, e_val, horizon)
        wall += time.time() - t0
        if log is not None:
            log(f"{v}: validation C {c:.4f}")
        score = c if math.isfinite(c) else -math.inf
        if best is None or score > best_c:   # strictly better: ties keep the earlier value
            best, best_c = ClassicalTuneResult(model, v, fit_seconds=fit_s), score
        del model   # a worse model is freed here
    if best is None:
        raise error  # type: ignore[misc]
    best.val_c, best.wall_time_s = {v: val_c[v] for v in grid}, wall
    return best


def classical_tune_metrics(name: str, result: ClassicalTuneResult) -> dict:
    """Flat metrics of a tuning: ``<name>.tuned.<hyperparam>``, ``<name>.tune.n_values``,
    ``<name>.tune.wall_time_s`` and ``<name>.tune.<hyperparam>_<value>.val_c`` for each value
    (null where it could not be computed)."""
    m: dict = {f"{name}.tuned.{TUNED[name].hyperparam}": result.value,
               f"{name}.tune.n_values": len(result.val_c),
               f"{name}.tune.wall_time_s": round(result.wall_time_s, 3)}
    for v, c in result.val_c.items():
        m[f"{name}.tune.{tune_label(name, v)}.val_c"] = c if math.isfinite(c) else None
    return m


def multilabel_baseline(name: str, X_tr, y_tr: np.ndarray, X_te, seed: int,
                        n_jobs: int) -> np.ndarray:
    """Multi-horizon onset risks by a count model (``name``: ``lr`` or ``rf``; the
    ``train_trajectory`` baselines): one classifier per (target, horizon) on the known training rows; a cell with one class
    predicts its rate. Probabilities are made non-decreasing across horizons (running max)."""
    n_te, T, H = X_te.shape[0], y_tr.shape[1], y_tr.shape[2]
    out = np.zeros((n_te, T, H))
    for t in range(T):          # a handful of targets x horizons; each fit is vectorised
        for j in range(H):
            known = ~np.isnan(y_tr[:, t, j])
            y = y_tr[known, t, j].astype(int)
            if y.size == 0 or y.min() == y.max():
                out[:, t, j] = y.mean() if y.size else 0.0
                continue
            clf = (LogisticRegression(C=1.0, max_iter=2000) if name == "lr" else
                   RandomForestClassifier(n_estimators=300, min_samples_leaf=5,
                                          n_jobs=n_jobs, random_state=seed))
            out[:, t, j] = serial_predict(clf.fit(X_tr[known], y)).predict_proba(X_te)[:, 1]
    return np.maximum.accumulate(out, axis=2)
