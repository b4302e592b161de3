"""Representation probes (docs/results.md, issue 27): how well each planted feature of the
synthetic scenario can be read from each patient representation.

For every representation the embed stage wrote (the survival LSTM's state, BEHRT's ``[CLS]``
and mean, Med2Vec's visit mean; TF-IDF + SVD and a random projection of the code counts: the
count side) and every feature of ``outcomes/features.parquet`` (the scenario's named effects,
or a custom function's features), a linear model is fitted on the **validation** landmarks'
representations (standardised on them) and scored on the **test** landmarks: AUROC by a
logistic regression for a 0/1 feature, R² by a ridge regression (its penalty chosen by
leave-one-out on the validation landmarks) for any other. A feature constant on either split
gets no score. The models never see the training split, on which the representations were
learnt, so a high score means the representation carries the feature, not that the probe
memorised it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ALPHAS = np.logspace(-2, 4, 7)


def load_representations(folder: str | Path) -> dict[str, np.ndarray]:
    """``<method>.npz`` of the embed stage -> its ``X`` (rows in the order of outcomes.parquet)."""
    out = {}
    for f in sorted(Path(folder).glob("*.npz")):
        with np.load(f, allow_pickle=False) as z:
            out[f.stem] = np.asarray(z["X"], np.float64)
    return out


def probe_scores(features: pd.DataFrame, split, reps: dict[str, np.ndarray]) -> list[dict]:
    """One row per (representation, feature): ``score`` (AUROC or R² on the test split, None
    when the feature is constant on the validation or the test split), ``kind``, ``n_val``,
    ``n_test``."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import r2_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    split = np.asarray(split)
    val, test = split == "val", split == "test"
    rows = []
    for rep, X in reps.items():
        if len(X) != len(features):
            raise ValueError(f"representation {rep}: {len(X)} rows, features {len(features)}")
        scaler = StandardScaler().fit(X[val])
        xv, xt = scaler.transform(X[val]), scaler.transform(X[test])
        for name in features.columns:
            y = features[name].to_numpy(np.float64)
            binary = bool(np.isin(y, (0.0, 1.0)).all())
            row = {"representation": rep, "feature": name, "kind": "auroc" if binary else "r2",
                   "n_val": int(val.sum()), "n_test": int(test.sum()), "score": None}
            yv, yt = y[val], y[test]
            if len(np.unique(yv)) > 1 and len(np.unique(yt)) > 1:
                if binary:
                    m = LogisticRegression(C=1.0, max_iter=2000).fit(xv, yv)
                    row["score"] = float(roc_auc_score(yt, m.predict_proba(xt)[:, 1]))
                else:
                    m = RidgeCV(alphas=ALPHAS).fit(xv, yv)
                    row["score"] = float(r2_score(yt, m.predict(xt)))
            rows.append(row)
    return rows


def probes_markdown(rows: list[dict]) -> str:
    """A table: representations by row, features by column (AUROC or R²)."""
    if not rows:
        return ""
    feats = list(dict.fromkeys(r["feature"] for r in rows))
    kind = {r["feature"]: r["kind"] for r in rows}
    lines = ["| representation | " + " | ".join(f"{f} ({'AUROC' if kind[f] == 'auroc' else 'R²'})"
                                                for f in feats) + " |",
             "|---|" + "---|" * len(feats)]
    for rep in dict.fromkeys(r["representation"] for r in rows):
        cell = {r["feature"]: r["score"] for r in rows if r["representation"] == rep}
        lines.append(f"| {rep} | " + " | ".join("n/a" if cell[f] is None else f"{cell[f]:.3f}"
                                                for f in feats) + " |")
    n = rows[0]
    return ("\n".join(lines) + f"\n\nFitted on {n['n_val']} validation landmarks, scored on "
            f"{n['n_test']} test landmarks (AUROC for a 0/1 feature, R² otherwise; n/a: the "
            "feature is constant on a split). src/ehrseq/evaluate/probes.py.\n")
