"""Classical survival baselines: Kaplan–Meier, penalised Cox PH, logistic regression and random
forest per horizon, random survival forest. Each is a plain fit/predict object that returns a
survival matrix ``S(t | x)`` on the common time grid, so every model is scored by the one
evaluation module (``ehrseq.evaluate.survival``) with the one risk score.

Each model gives its own S(t) at exactly the grid times asked (the grid holds the horizons and
every test duration, see :meth:`ehrseq.evaluate.task.SurvivalTask.time_grid`):

- Kaplan–Meier: lifelines' step function, 1 before the first training time;
- Cox: lifelines' ``predict_survival_function(X, times=...)``, whose baseline cumulative
  hazard is linearly interpolated between training durations (lifelines' own convention);
- LR / RF per horizon: a step function that changes only at the horizons (see
  :class:`HorizonClassifier`);
- RSF: scikit-survival's step function over the training times, flat after the last and 1
  before the first (scikit-survival's own ``StepFunction`` would give S at the first training
  time there).

Features (built by :class:`Featurizer` on the training split only): TF-IDF of the code counts
up to the landmark, reduced by truncated SVD for the models that need dense inputs, plus age at
the landmark (standardised) and sex.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from lifelines import CoxPHFitter
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sksurv.ensemble import RandomSurvivalForest

from ..evaluate.survival import km_survival, survival_at


class Featurizer:
    """Code counts → (sparse TF-IDF + demographics, dense SVD + demographics)."""

    def __init__(self, n_components: int = 16, seed: int = 0):
        self.n_components, self.seed = n_components, seed

    def fit(self, counts: sp.csr_matrix, age: np.ndarray, male: np.ndarray) -> Featurizer:
        self.tfidf = TfidfTransformer(sublinear_tf=True).fit(counts)
        k = max(1, min(self.n_components, counts.shape[1] - 1, counts.shape[0] - 1))
        self.svd = TruncatedSVD(k, random_state=self.seed).fit(self.tfidf.transform(counts))
        self.age_mean, self.age_std = float(age.mean()), float(age.std() or 1.0)
        dense = self.svd.transform(self.tfidf.transform(counts))
        self.mu, self.sd = dense.mean(0), dense.std(0) + 1e-8
        return self

    def _demo(self, age, male) -> np.ndarray:
        return np.column_stack([(age - self.age_mean) / self.age_std, male.astype(float)])

    def sparse(self, counts, age, male) -> sp.csr_matrix:
        return sp.hstack([self.tfidf.transform(counts), sp.csr_matrix(self._demo(age, male))],
                         format="csr")

    def dense(self, counts, age, male) -> np.ndarray:
        z = (self.svd.transform(self.tfidf.transform(counts)) - self.mu) / self.sd
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
        df = self._df(X).assign(duration=duration, event=event)
        self.model.fit(df, "duration", "event")
        return self

    def predict_survival(self, X, times) -> np.ndarray:
        return self.model.predict_survival_function(self._df(X), times=times).to_numpy().T


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
                self.models[h] = self.make().fit(X[known], y)
        return self

    def predict_survival(self, X, times) -> np.ndarray:
        p = np.column_stack([
            np.full(X.shape[0], m) if isinstance(m, float) else m.predict_proba(X)[:, 1]
            for m in self.models.values()])
        s_h = np.minimum.accumulate(1.0 - p, axis=1)
        k = np.searchsorted(self.horizons, times, side="right") - 1
        return np.where(k >= 0, s_h[:, np.clip(k, 0, None)], 1.0)


class RSF:
    """scikit-survival's random survival forest on the dense features."""

    def __init__(self, seed: int = 0):
        self.model = RandomSurvivalForest(n_estimators=200, min_samples_leaf=10,
                                          max_features="sqrt", n_jobs=-1, random_state=seed)

    def fit(self, X, duration, event):
        from sksurv.util import Surv

        y = Surv.from_arrays(np.asarray(event).astype(bool), np.asarray(duration, float))
        self.model.fit(X, y)
        return self

    def predict_survival(self, X, times) -> np.ndarray:
        surv = self.model.predict_survival_function(X, return_array=True)
        return survival_at(surv, self.model.unique_times_, times)


def make_models(horizons, seed: int = 0) -> dict:
    """name → (model, which features it takes: 'none' | 'sparse' | 'dense')."""
    return {
        "km": (KaplanMeier(), "dense"),
        "cox": (CoxPH(), "dense"),
        "lr": (HorizonClassifier(lambda: LogisticRegression(C=1.0, max_iter=2000), horizons),
               "sparse"),
        "rf": (HorizonClassifier(lambda: RandomForestClassifier(
            n_estimators=300, min_samples_leaf=5, n_jobs=-1, random_state=seed), horizons),
            "sparse"),
        "rsf": (RSF(seed), "dense"),
    }
