"""Clustering patient embeddings into subtypes, and describing the subtypes.

:func:`cluster_embedding` runs, on one embedding ``X [n, d]``, fitting on the rows of the
``fit`` mask (the stage: the train split) and assigning every other row with the fitted models
(the stage scores the test split, which no encoder trained on):

1. UMAP (umap-learn, seeded) of the fitted rows to ``umap_dims`` dimensions (``min_dist`` 0,
   the setting UMAP's authors recommend for clustering) and HDBSCAN on those coordinates
   (noise = label -1); other rows are placed by ``UMAP.transform`` and labelled by
   ``hdbscan.approximate_predict`` (noise when they fall outside every cluster);
2. K-means (scikit-learn, k-means++) on the fitted rows of ``X`` itself for every ``k`` in
   ``kmeans_k``; the ``k`` with the highest silhouette wins (silhouette on a seeded sample of
   ``silhouette_sample`` patients when there are more, so it stays O(n)); other rows go to
   the nearest centre;
3. internal quality on the fitted rows: silhouette, Davies–Bouldin, Calinski–Harabasz
   (K-means on ``X``; HDBSCAN on the UMAP coordinates, noise left out), HDBSCAN's noise share;
4. stability as ARI on the fitted rows: ``stability_seed_ari`` is the mean pairwise ARI of
   the labels from ``seeds`` seeds (K-means seeds; for HDBSCAN, UMAP seeds),
   ``stability_boot_ari`` the mean ARI against the reference labels of ``bootstrap`` refits:
   K-means fitted on a bootstrap sample then assigning every fitted row; HDBSCAN refitted on
   a random 80 % subsample of the UMAP coordinates, compared on that subsample (duplicates
   from a bootstrap would fake density for a density-based method);
5. a 2-D UMAP (``min_dist`` 0.1, fitted the same way) for pictures.

Cluster ids are renumbered by decreasing size on the fitted rows (0 = largest), noise stays -1. External truth
(:func:`external_scores`) counts HDBSCAN noise as one more cluster, so noise costs ARI.

Characterisation: :func:`enriched_codes` (per cluster, log-odds ratio of having a code in the
inputs vs the other patients, Haldane-corrected, ranked by z), :func:`cluster_profiles`
(size, age, sex, event rate, dominant planted subtype and phenotype), :func:`logrank`
(multivariate log-rank test across clusters, and how many clusters differ from the rest at
a Bonferroni-corrected 5 %), :func:`km_curves` and the plotting helpers.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)

NOISE = -1


@dataclass
class ClusterResult:
    kmeans: np.ndarray            # [n] labels of the best k, 0 = largest cluster
    hdbscan: np.ndarray           # [n] labels, -1 = noise
    umap: np.ndarray              # [n, umap_dims] coordinates HDBSCAN clustered (or assigned)
    umap2d: np.ndarray            # [n, 2] coordinates for pictures
    sweep: pd.DataFrame           # k, silhouette, davies_bouldin, calinski_harabasz, inertia
    labels_by_k: dict = field(default_factory=dict)   # k -> [n] K-means labels of the sweep
    metrics: dict = field(default_factory=dict)   # flat: kmeans.*, hdbscan.*, seconds.*
    # every [n] array covers all rows: fitted rows their fitted labels, the rest assigned


# --------------------------------------------------------------------------- small pieces

def relabel_by_size(labels, new=None):
    """Renumber clusters 0..K-1 by decreasing size (ties by old label); -1 stays -1.

    ``new``: labels that the fitted model assigned to more rows, renumbered with the same map
    (a label absent from ``labels`` becomes -1); then the pair is returned."""
    labels = np.asarray(labels, np.int64)
    ok = labels != NOISE
    used, counts = np.unique(labels[ok], return_counts=True)
    lut = np.empty(len(used), np.int64)
    lut[np.lexsort((used, -counts))] = np.arange(len(used))

    def apply(lab):
        lab = np.asarray(lab, np.int64)
        if not len(used):
            return np.full(len(lab), NOISE, np.int64)
        i = np.minimum(np.searchsorted(used, lab), len(used) - 1)
        return np.where(used[i] == lab, lut[i], NOISE)     # noise and unknown labels: -1

    return apply(labels) if new is None else (apply(labels), apply(new))


def _scalar(v):
    """A NumPy scalar as the plain Python value (dict keys, CSV cells)."""
    return v.item() if isinstance(v, np.generic) else v


def n_clusters(labels) -> int:
    labels = np.asarray(labels)
    return len(np.unique(labels[labels != NOISE]))


def internal_scores(X, labels, sample: int | None = 5000, seed: int = 0) -> dict:
    """Silhouette (on a seeded sample of ``sample`` rows when larger), Davies–Bouldin and
    Calinski–Harabasz of ``labels`` on ``X``, noise rows left out; NaN with < 2 clusters."""
    labels = np.asarray(labels)
    ok = labels != NOISE
    x, lab = np.asarray(X)[ok], labels[ok]
    k = len(np.unique(lab))
    if k < 2 or k >= len(lab):
        return {"silhouette": float("nan"), "davies_bouldin": float("nan"),
                "calinski_harabasz": float("nan")}
    size = sample if sample and len(lab) > sample else None
    return {"silhouette": float(silhouette_score(x, lab, sample_size=size, random_state=seed)),
            "davies_bouldin": float(davies_bouldin_score(x, lab)),
            "calinski_harabasz": float(calinski_harabasz_score(x, lab))}


def external_scores(labels, truth) -> dict:
    """ARI and AMI of ``labels`` against ``truth`` (noise counted as its own cluster)."""
    return {"ari": float(adjusted_rand_score(truth, labels)),
            "ami": float(adjusted_mutual_info_score(truth, labels))}


def mean_pairwise_ari(label_sets: Sequence[np.ndarray]) -> float:
    """Mean ARI over all pairs of labelings (NaN with fewer than two)."""
    aris = [adjusted_rand_score(a, b) for i, a in enumerate(label_sets)
            for b in label_sets[i + 1:]]
    return float(np.mean(aris)) if aris else float("nan")


# umap-learn computes every pairwise distance itself below this many rows (its small-data
# path), through scikit-learn with its numba metric as a Python callable: one interpreted call
# per pair (4.5 million per fit at 3,000 rows). Below it, the same exact distances come from
# SciPy's C loop and reach UMAP as ``metric="precomputed"`` (bench/cluster.py --compare).
UMAP_EXACT_ROWS = 4096
_SCIPY_METRIC = {"euclidean": "euclidean", "cosine": "cosine", "manhattan": "cityblock",
                 "correlation": "correlation"}


def exact_distances(A: np.ndarray, B: np.ndarray, metric: str) -> np.ndarray:
    """``[len(A), len(B)]`` distances (float32) as umap-learn's own metric gives them,
    including its convention where cosine or correlation is undefined (an all-zero or constant
    row): 0 between equal rows, 1 otherwise."""
    from scipy.spatial.distance import cdist

    with np.errstate(invalid="ignore", divide="ignore"):
        D = cdist(np.asarray(A, np.float64), np.asarray(B, np.float64), _SCIPY_METRIC[metric])
    i, j = np.nonzero(~np.isfinite(D))
    if len(i):
        D[i, j] = np.where((np.asarray(A)[i] == np.asarray(B)[j]).all(1), 0.0, 1.0)
    if metric in ("cosine", "correlation"):
        # 1 - cos rounds to ±1e-16 for a row and itself (umap-learn's own loop gives 0), and
        # UMAP takes each row's first non-zero distance as its nearest neighbour's
        D[D < 1e-7] = 0.0
    return D.astype(np.float32)


def umap_fit(X, dims: int, neighbors: int, min_dist: float, metric: str, seed: int):
    """Seeded UMAP fitted on ``X``: (coordinates ``[n, dims]``, ``place``), where
    ``place(new_rows)`` gives new rows' coordinates in the fitted map (``UMAP.transform``).
    Neighbours capped at n - 1; random init on tiny inputs, where the spectral initialisation
    is ill-posed. Below :data:`UMAP_EXACT_ROWS` rows the exact distances are computed here
    and passed precomputed (the same neighbour graph umap-learn would build, without its
    per-pair Python calls)."""
    from .umap_cache import load_umap

    umap = load_umap()
    X = np.asarray(X, np.float32)
    n = len(X)
    exact = n < UMAP_EXACT_ROWS and metric in _SCIPY_METRIC
    kw = dict(n_components=dims, n_neighbors=max(2, min(neighbors, n - 1)), min_dist=min_dist,
              random_state=seed, init="spectral" if n > 4 * (dims + 2) else "random")
    if exact:   # keep the metric's own disconnection distance (cosine: 2), not precomputed's
        kw.update(metric="precomputed", disconnection_distance=umap.umap_.
                  DISCONNECTION_DISTANCES.get(metric, np.inf))
    else:
        kw.update(metric=metric)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "n_jobs overridden by random_state", tiny graphs
        reducer = umap.UMAP(**kw)
        coords = reducer.fit_transform(exact_distances(X, X, metric) if exact else X)

    def place(new) -> np.ndarray:
        new = np.asarray(new, np.float32)
        if len(new) == 0:
            return np.zeros((0, dims), np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "Transforming new data with precomputed metric"
            out = reducer.transform(exact_distances(new, X, metric) if exact else new)
        return np.asarray(out, np.float32)

    return np.asarray(coords, np.float32), place


def hdbscan_fit(U, min_cluster_size: int, min_samples: int, new=None):
    """HDBSCAN labels of ``U`` (relabelled by size, -1 = noise); with ``new``, also the labels
    ``hdbscan.approximate_predict`` gives those rows in the fitted clustering (the pair)."""
    import hdbscan

    model = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples,
                            prediction_data=new is not None).fit(U)
    if new is None:
        return relabel_by_size(model.labels_)
    assigned = (hdbscan.approximate_predict(model, new)[0] if len(new) and
                (model.labels_ != NOISE).any() else np.full(len(new), NOISE))
    return relabel_by_size(model.labels_, assigned)


def kmeans_fit(X, k: int, seed: int, n_init: int):
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # duplicate points: fewer distinct clusters than k
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(X)


def _rows(fit: np.ndarray, on_fit: np.ndarray, on_rest: np.ndarray) -> np.ndarray:
    """Reassemble per-row values from the fitted rows and the assigned rest."""
    out = np.empty((len(fit), *on_fit.shape[1:]), on_fit.dtype)
    out[fit], out[~fit] = on_fit, on_rest
    return out


# --------------------------------------------------------------------------- the computation

def cluster_embedding(X, *, fit=None, umap_dims: int = 5, umap_neighbors: int = 15,
                      umap_metric: str = "euclidean", min_cluster_size: int | None = None,
                      min_samples: int = 10, kmeans_k: Sequence[int] = range(2, 9),
                      kmeans_n_init: int = 4, seeds: int = 3, bootstrap: int = 5,
                      silhouette_sample: int | None = 5000, seed: int = 0,
                      picture: bool = True) -> ClusterResult:
    """UMAP + HDBSCAN and a K-means sweep on one embedding, with internal quality and
    stability (see the module docstring). ``fit``: boolean mask of the rows the models are
    fitted on (None = all); every other row is assigned by the fitted models. Internal
    quality and stability are computed on the fitted rows. ``min_cluster_size`` None =
    max(10, 2 % of the fitted rows), capped at half of them."""
    X = np.asarray(X, np.float32)
    n = len(X)
    fit = np.ones(n, bool) if fit is None else np.asarray(fit, bool)
    if fit.shape != (n,):
        raise ValueError(f"fit mask of shape {fit.shape} for {n} rows")
    Xf, Xr = X[fit], X[~fit]
    nf = len(Xf)
    if nf < 4:
        raise ValueError(f"clustering needs at least 4 patients to fit on, got {nf}")
    secs: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    m: dict = {"n": n, "n_fit": nf}

    t0 = time.perf_counter()
    Uf, place = umap_fit(Xf, umap_dims, umap_neighbors, 0.0, umap_metric, seed)
    U = _rows(fit, Uf, place(Xr))
    secs["umap"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mcs = min_cluster_size or max(10, round(0.02 * nf))
    mcs = max(2, min(mcs, nf // 2))
    ms = max(1, min(min_samples, mcs))
    hf, hr = hdbscan_fit(Uf, mcs, ms, new=U[~fit])
    h = _rows(fit, hf, hr)
    secs["hdbscan"] = time.perf_counter() - t0
    m.update({"hdbscan.n_clusters": n_clusters(hf),
              "hdbscan.noise_share": float(np.mean(hf < 0)),
              "hdbscan.min_cluster_size": mcs})
    m.update({f"hdbscan.{k}": v for k, v in internal_scores(Uf, hf, silhouette_sample,
                                                            seed).items()})

    t0 = time.perf_counter()
    rows, fits = [], {}
    for k in sorted({int(k) for k in kmeans_k if 2 <= k < nf}):   # one fit per k (a handful)
        km = kmeans_fit(Xf, k, seed, kmeans_n_init)
        fits[k] = km
        rows.append({"k": k, **internal_scores(Xf, km.labels_, silhouette_sample, seed),
                     "inertia": float(km.inertia_)})
    sweep = pd.DataFrame(rows)
    if sweep.empty or sweep["silhouette"].isna().all():
        raise ValueError(f"kmeans_k {list(kmeans_k)}: no k in [2, n) gave two clusters "
                         f"(n = {nf} fitted rows)")
    best = sweep.loc[sweep["silhouette"].idxmax()]
    k = int(best["k"])
    by_k = {kk: _rows(fit, *relabel_by_size(f.labels_, f.predict(Xr) if len(Xr) else []))
            for kk, f in fits.items()}
    km_labels = by_k[k]
    kmf = km_labels[fit]
    secs["kmeans_sweep"] = time.perf_counter() - t0
    m.update({"kmeans.k": k, "kmeans.n_clusters": n_clusters(kmf),
              **{f"kmeans.{c}": float(best[c])
                 for c in ("silhouette", "davies_bouldin", "calinski_harabasz")}})

    t0 = time.perf_counter()
    seed_labels = [kmf] + [kmeans_fit(Xf, k, seed + s, kmeans_n_init).labels_
                           for s in range(1, seeds)]
    boot = []
    for _ in range(bootstrap):         # one refit per bootstrap sample
        idx = rng.integers(0, nf, nf)
        boot.append(adjusted_rand_score(kmf,
                                        kmeans_fit(Xf[idx], k, seed, kmeans_n_init).predict(Xf)))
    m["kmeans.stability_seed_ari"] = mean_pairwise_ari(seed_labels)
    m["kmeans.stability_boot_ari"] = float(np.mean(boot)) if boot else float("nan")
    secs["kmeans_stability"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    seed_labels = [hf] + [hdbscan_fit(umap_fit(Xf, umap_dims, umap_neighbors, 0.0, umap_metric,
                                               seed + s)[0], mcs, ms) for s in range(1, seeds)]
    sub = []
    for _ in range(bootstrap):         # one refit per subsample
        idx = np.sort(rng.choice(nf, max(4, int(0.8 * nf)), replace=False))
        sub.append(adjusted_rand_score(hf[idx], hdbscan_fit(Uf[idx], mcs, ms)))
    found = n_clusters(hf) > 0         # all noise agrees with all noise: no evidence
    m["hdbscan.stability_seed_ari"] = mean_pairwise_ari(seed_labels) if found else float("nan")
    m["hdbscan.stability_boot_ari"] = float(np.mean(sub)) if sub and found else float("nan")
    secs["hdbscan_stability"] = time.perf_counter() - t0

    U2 = np.zeros((n, 2), np.float32)
    if picture:
        t0 = time.perf_counter()
        U2f, place2 = umap_fit(Xf, 2, umap_neighbors, 0.1, umap_metric, seed)
        U2 = _rows(fit, U2f, place2(Xr))
        secs["umap_2d"] = time.perf_counter() - t0
    m.update({f"seconds.{k}": v for k, v in secs.items()})
    m["seconds.total"] = float(sum(secs.values()))
    return ClusterResult(km_labels, h, U, U2, sweep, by_k, m)


# --------------------------------------------------------------------------- characterisation

def enriched_codes(presence: sp.spmatrix, labels, tokens: Sequence[str],
                   descriptions: dict[str, str] | None = None, top: int = 10,
                   min_count: int = 3) -> pd.DataFrame:
    """Codes over-represented in each cluster vs all other patients.

    ``presence`` is the binary patients x vocabulary matrix (code in the inputs). Per cluster
    ``c`` and code ``j``: ``a`` patients of c have j, ``b`` do not; ``c0``/``d0`` the same
    for the rest. ``log_odds = log((a+.5)(d0+.5) / ((b+.5)(c0+.5)))``, ``z = log_odds / se``
    with ``se = sqrt(sum 1/(cell+.5))``. The ``top`` codes by z with ``a >= min_count``.
    """
    labels = np.asarray(labels)
    P = sp.csr_matrix(presence, dtype=np.float64)
    P.data[:] = 1.0
    ids = np.unique(labels)
    onehot = sp.csr_matrix((np.ones(len(labels)), (np.searchsorted(ids, labels),
                                                   np.arange(len(labels)))),
                           shape=(len(ids), len(labels)))
    a = np.asarray((onehot @ P).todense())                     # [clusters, vocab]
    total = np.asarray(P.sum(0)).ravel()[None, :]
    size = np.asarray(onehot.sum(1)).ravel()[:, None]
    b, c0 = size - a, total - a
    d0 = (len(labels) - size) - c0
    lo = np.log((a + .5) * (d0 + .5) / ((b + .5) * (c0 + .5)))
    z = lo / np.sqrt(1 / (a + .5) + 1 / (b + .5) + 1 / (c0 + .5) + 1 / (d0 + .5))
    z = np.where(a >= min_count, z, -np.inf)
    descriptions = descriptions or {}
    parts = []
    for i, cl in enumerate(ids):        # one pass per cluster
        top_j = np.argsort(-z[i], kind="stable")[:top]
        top_j = top_j[np.isfinite(z[i, top_j])]
        rest = max(len(labels) - int(size[i, 0]), 1)
        parts.append(pd.DataFrame({
            "cluster": int(cl), "rank": np.arange(1, len(top_j) + 1),
            "token": [tokens[j] for j in top_j],
            "description": [descriptions.get(tokens[j]) or tokens[j] for j in top_j],
            "n_cluster": a[i, top_j].astype(int), "share_cluster": a[i, top_j] / size[i, 0],
            "share_rest": c0[i, top_j] / rest,
            "log_odds": lo[i, top_j], "z": z[i, top_j]}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _mode_share(values: pd.Series) -> tuple[str, float]:
    vc = values.astype(str).value_counts()
    return (str(vc.index[0]), float(vc.iloc[0] / vc.sum())) if len(vc) else ("", float("nan"))


def cluster_profiles(labels, age, male, duration, event, subtype=None,
                     phenotype=None) -> pd.DataFrame:
    """One row per cluster: patients, share, age (mean, median), male share, event rate,
    median follow-up (days), and the dominant planted subtype / phenotype with their share."""
    df = pd.DataFrame({"cluster": np.asarray(labels), "age": age, "male": np.asarray(male, float),
                       "duration": duration, "event": event,
                       "subtype": subtype if subtype is not None else "",
                       "phenotype": phenotype if phenotype is not None else ""})
    rows = []
    for cl, g in df.groupby("cluster"):     # one row per cluster
        st, st_share = _mode_share(g["subtype"])
        ph, ph_share = _mode_share(g["phenotype"])
        rows.append({"cluster": int(cl), "patients": len(g), "share": len(g) / len(df),
                     "age_mean": g["age"].mean(), "age_median": g["age"].median(),
                     "male_share": g["male"].mean(), "event_rate": g["event"].mean(),
                     "median_duration_days": g["duration"].median(),
                     "top_subtype": st, "top_subtype_share": st_share,
                     "top_phenotype": ph, "top_phenotype_share": ph_share})
    return pd.DataFrame(rows)


def logrank(duration, event, labels, alpha: float = 0.01) -> dict:
    """Multivariate log-rank test across clusters (lifelines): ``p``, ``stat``, ``log10_p``
    (from the chi-square tail, finite where ``p`` underflows a 6-decimal metric) and
    ``n_separated``: clusters whose one-vs-rest log-rank p is below ``alpha`` (0.01, the
    benchmark's threshold; with up to 5 clusters as strict as Bonferroni at 5 %)."""
    from lifelines.statistics import logrank_test, multivariate_logrank_test
    from scipy.stats import chi2

    labels = np.asarray(labels)
    d, e = np.asarray(duration, float), np.asarray(event, int)
    ids = np.unique(labels)
    if len(ids) < 2 or e.sum() == 0:     # one group, or no event: nothing to test
        return {"p": float("nan"), "stat": float("nan"), "log10_p": float("nan"),
                "n_separated": 0, "one_vs_rest_p": {}}
    res = multivariate_logrank_test(d, labels, e)
    per = {}
    for cl in ids:                          # one test per cluster
        m = labels == cl
        per[_scalar(cl)] = float(logrank_test(d[m], d[~m], e[m], e[~m]).p_value)
    return {"p": float(res.p_value), "stat": float(res.test_statistic),
            "log10_p": float(chi2.logsf(res.test_statistic, len(ids) - 1) / np.log(10)),
            "n_separated": int(sum(p < alpha for p in per.values())),
            "one_vs_rest_p": per}


def km_curves(duration, event, labels) -> pd.DataFrame:
    """Kaplan–Meier curve per cluster, long format: cluster, days, survival, at_risk."""
    from lifelines import KaplanMeierFitter

    labels = np.asarray(labels)
    d, e = np.asarray(duration, float), np.asarray(event, int)
    parts = []
    for cl in np.unique(labels):            # one curve per cluster
        m = labels == cl
        km = KaplanMeierFitter().fit(d[m], e[m])
        sf = km.survival_function_.iloc[:, 0]
        parts.append(pd.DataFrame({"cluster": _scalar(cl), "days": sf.index.to_numpy(),
                                   "survival": sf.to_numpy(),
                                   "at_risk": km.event_table["at_risk"].to_numpy()}))
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------- output helpers

def markdown_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub Markdown table of ``df`` (no extra dependency)."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else format(float(v), floatfmt)
        return str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot_scatter(xy: np.ndarray, panels: dict[str, np.ndarray], path: str | Path,
                 title: str) -> None:
    """One 2-D scatter panel per labeling (noise / -1 in grey) into ``path`` (PNG)."""
    from ..plots import plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), dpi=110,
                             squeeze=False)
    for ax, (name, lab) in zip(axes[0], panels.items(), strict=True):
        lab = np.asarray(lab).astype(str)
        grey = np.isin(lab, ("-1", "none"))
        cats = sorted(set(lab[~grey]), key=lambda c: (len(c), c))
        cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
        if grey.any():
            ax.scatter(*xy[grey].T, s=5, c="#c8c8c8", label="noise" if lab[grey][0] == "-1"
                       else "none")
        for j, c in enumerate(cats[:20]):     # one colour per category (<= 20 shown)
            ax.scatter(*xy[lab == c].T, s=6, color=cmap(j % cmap.N), label=c)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, markerscale=2, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_km(curves: pd.DataFrame, path: str | Path, title: str,
            events: dict[int, int] | None = None) -> None:
    """Step plot of :func:`km_curves` output into ``path`` (PNG)."""
    from ..plots import plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for cl, g in curves.groupby("cluster"):   # one curve per cluster
        n = int(g["at_risk"].iloc[0])
        extra = f", events={events[cl]}" if events and cl in events else ""
        ax.step(g["days"], g["survival"], where="post", label=f"subtype {cl} (n={n}{extra})")
    ax.set_xlabel("days from landmark")
    ax.set_ylabel("event-free probability (Kaplan–Meier)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
