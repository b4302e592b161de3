"""Stage `cluster`: patient subtypes from every embedding of the `embed` stage, scored against
the planted synthetic subtypes and against Synthea's own chronic-disease phenotypes, and the
subtypes of the best embedding characterised (docs/subtypes.md).

UMAP, HDBSCAN and K-means are fitted on the train split and assign every other patient; ARI,
AMI and the log-rank tests are computed on the test split only (patients no encoder trained
on, outcomes no clustering choice saw); the best embedding is chosen on train-split scores.

Reads data/processed/embeddings/*.npz, data/processed/{sequences,outcomes} and
data/interim/events.parquet. Writes data/processed/clusters/ (<embedding>.parquet: labels and
UMAP coordinates per patient; phenotypes.parquet), metrics/cluster.json (flat keys
``<embedding>.{kmeans,hdbscan}.<metric>``, ``best.*``, ``truth.*``) and plots/cluster/.
"""

import logging
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ehrseq.data.task import SurvivalTask
from ehrseq.evaluate import clustering as C
from ehrseq.evaluate.embed import PatientEmbedding, input_counts
from ehrseq.io import InputError, atomic_outputs, run_stage, write_json
from ehrseq.outcomes.phenotypes import load_phenotypes
from ehrseq.params import ClusterParams, load_params
from ehrseq.plots import plt

EMBEDDINGS = Path("data/processed/embeddings")
EVENTS = Path("data/interim/events.parquet")
OUT = Path("data/processed/clusters")
PLOTS = Path("plots/cluster")
FIT_SPLIT, SCORE_SPLIT = "train", "test"
"""Clusters are fitted on the train split and scored on the test split, which no supervised
encoder (the survival LSTM, fine-tuned BEHRT) trained on."""
MIN_FIT = 4
log = logging.getLogger("cluster")


def code_descriptions(events: Path) -> dict[str, str]:
    """``SYSTEM/code`` token -> Synthea description (the first one seen)."""
    src = "read_parquet('" + str(events).replace("'", "''") + "')"
    df = duckdb.sql(f"SELECT system || '/' || code AS token, min(description) AS d "
                    f"FROM {src} GROUP BY 1").df()
    return dict(zip(df["token"], df["d"].fillna(""), strict=True))


def load_embeddings(names: list[str] | None, table: pd.DataFrame) -> dict[str, PatientEmbedding]:
    files = sorted(EMBEDDINGS.glob("*.npz"))
    avail = {f.stem: f for f in files}
    names = names or list(avail)
    missing = [n for n in names if n not in avail]
    if not names or missing:
        raise InputError(f"{EMBEDDINGS}: no embedding file for {missing or 'any method'} "
                         f"(found {sorted(avail)}); run the embed stage")
    out = {}
    for n in names:
        e = PatientEmbedding.load(avail[n])
        if len(e.patient) != len(table) or (e.patient != table["patient"].to_numpy(str)).any():
            raise InputError(f"{avail[n]}: patients differ from outcomes.parquet (rows or "
                             "order); re-run the embed stage")
        out[n] = e
    return out


def plot_sweep(sweep: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=110)
    for name, g in sweep.groupby("embedding"):   # one line per embedding
        ax.plot(g["k"], g["silhouette"], marker="o", ms=3, label=name)
    ax.set_xlabel("k (K-means)")
    ax.set_ylabel("silhouette")
    ax.legend(fontsize=8)
    ax.set_title("K-means sweep: the k with the highest silhouette is kept", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def characterise(name: str, labels: np.ndarray, task: SurvivalTask, pheno: pd.DataFrame,
                 p: ClusterParams, plots: Path, test: np.ndarray) -> dict:
    """Profiles, KM curves and log-rank tests of one labeling on the test rows; enriched
    codes (inputs only, no outcome) over every patient."""
    t = task.table[test]
    lab = labels[test]
    d, e = t["duration"].to_numpy(float), t["event"].to_numpy(int)
    prof = C.cluster_profiles(lab, task.age[test], task.male[test], d, e,
                              t["subtype"].to_numpy(), pheno["label"].to_numpy()[test])
    codes = C.enriched_codes(input_counts(task), labels, task.seqs.vocab["tokens"],
                             code_descriptions(EVENTS), p.top_codes, p.min_code_count)
    lr = C.logrank(d, e, lab)
    prof["logrank_p_vs_rest"] = prof["cluster"].map(lr["one_vs_rest_p"])
    prof.to_csv(plots / "subtype_profiles.csv", index=False)
    codes.to_csv(plots / "subtype_codes.csv", index=False)
    curves = C.km_curves(d, e, lab)
    curves.to_csv(plots / "km_best.csv", index=False)
    events = {int(k): int(v) for k, v in pd.Series(e).groupby(lab).sum().items()}
    C.plot_km(curves, plots / "km_best.png",
              f"{name}: K-means subtypes, test split (log-rank p = {lr['p']:.2g})", events)
    md = [f"# Subtypes of the `{name}` embedding (K-means, k = {len(prof)})\n",
          f"K-means fitted on the {FIT_SPLIT} split; profiles, Kaplan–Meier curves and "
          f"log-rank tests on the {int(test.sum())} patients of the {SCORE_SPLIT} split, "
          "which no encoder trained on. Enriched codes over every patient (inputs only).\n",
          f"Multivariate log-rank test across subtypes: chi2 = {lr['stat']:.2f}, "
          f"p = {lr['p']:.3g}; subtypes separated from the rest (one-vs-rest log-rank "
          f"p < 0.01): {lr['n_separated']} of {len(prof)}.\n",
          "## Profiles (test split)\n", C.markdown_table(prof),
          f"\n## Enriched codes (top {p.top_codes} per subtype by z of the log-odds ratio, "
          f"at least {p.min_code_count} patients, all splits)\n",
          C.markdown_table(codes.drop(columns="token"))]   # description falls back to token
    (plots / "subtypes.md").write_text("\n".join(md))
    return lr


def splits(t: pd.DataFrame, p: ClusterParams) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the rows clustering is fitted on and scored on, or a clear error."""
    split = t["split"].to_numpy(str)
    fit, test = split == FIT_SPLIT, split == SCORE_SPLIT
    if test.sum() < p.min_test_patients:
        raise InputError(f"the {SCORE_SPLIT} split has {int(test.sum())} eligible patients "
                         f"(of {len(t)}), fewer than cluster.min_test_patients = "
                         f"{p.min_test_patients}: ARI and log-rank tests on so few are noise; "
                         "generate more patients (data.patients) or lower "
                         "cluster.min_test_patients")
    if fit.sum() < MIN_FIT:
        raise InputError(f"the {FIT_SPLIT} split has {int(fit.sum())} eligible patients, "
                         f"fewer than the {MIN_FIT} clustering is fitted on")
    return fit, test


def main() -> None:
    params = load_params()
    p = params.cluster
    task = SurvivalTask.load()
    t = task.table
    fit, test = splits(t, p)
    embs = load_embeddings(p.embeddings, t)
    pheno = load_phenotypes(EVENTS, t["patient"].to_numpy(), t["landmark_time"].to_numpy(),
                            params.sequences.event_kinds)
    truth = {"subtype": t["subtype"].to_numpy(), "phenotype": pheno["label"].to_numpy()}
    d, e = t["duration"].to_numpy(float), t["event"].to_numpy(int)
    metrics: dict = {"n_patients": len(t), "n_fit": int(fit.sum()), "n_test": int(test.sum()),
                     "test_events": int(e[test].sum())}
    for k, v in pheno["label"].value_counts().items():
        metrics[f"phenotype.{k}_patients"] = int(v)
    metrics["truth.ari_subtype_phenotype"] = C.external_scores(truth["phenotype"][test],
                                                               truth["subtype"][test])["ari"]
    for k in ("subtype", "phenotype"):
        lr = C.logrank(d[test], e[test], truth[k][test])
        metrics[f"truth.{k}_logrank_p"] = lr["p"]
        metrics[f"truth.{k}_logrank_log10_p"] = lr["log10_p"]
        metrics[f"truth.{k}_n_separated"] = lr["n_separated"]

    with atomic_outputs(OUT, PLOTS) as (out, plots):
        out.mkdir()
        plots.mkdir()
        pd.concat([t[["patient", "index", "split"]].reset_index(drop=True), pheno],
                  axis=1).to_parquet(out / "phenotypes.parquet", index=False)
        sweeps, results = [], {}
        for name, emb in embs.items():
            t0 = time.perf_counter()
            r = C.cluster_embedding(
                emb.X, fit=fit, umap_dims=p.umap_dims, umap_neighbors=p.umap_neighbors,
                umap_metric=p.umap_metric, min_cluster_size=p.min_cluster_size,
                min_samples=p.min_samples, kmeans_k=p.kmeans_k, kmeans_n_init=p.kmeans_n_init,
                seeds=p.seeds, bootstrap=p.bootstrap, silhouette_sample=p.silhouette_sample,
                seed=p.seed)
            results[name] = r
            m = {k: v for k, v in r.metrics.items() if not k.startswith("seconds.")}
            for method in ("kmeans", "hdbscan"):
                lab = getattr(r, method)
                for tname, y in truth.items():
                    s = C.external_scores(lab[test], y[test])
                    m[f"{method}.ari_{tname}"], m[f"{method}.ami_{tname}"] = s["ari"], s["ami"]
                    s = C.external_scores(lab[fit], y[fit])
                    m[f"{method}.train_ari_{tname}"] = s["ari"]
                    m[f"{method}.train_ami_{tname}"] = s["ami"]
            m["hdbscan.test_noise_share"] = float(np.mean(r.hdbscan[test] < 0))
            lr = C.logrank(d[test], e[test], r.kmeans[test])
            m["kmeans.logrank_log10_p"], m["kmeans.n_separated"] = lr["log10_p"], lr["n_separated"]
            k_true = len(np.unique(truth["subtype"]))
            if k_true in r.labels_by_k:   # representation quality without the choice of k
                m["kmeans.ari_subtype_at_true_k"] = C.external_scores(
                    r.labels_by_k[k_true][test], truth["subtype"][test])["ari"]
            m["seconds"] = round(time.perf_counter() - t0, 3)
            metrics.update({f"{name}.{k}": v for k, v in m.items()})
            sweeps.append(r.sweep.assign(embedding=name))
            frame = pd.DataFrame({"patient": emb.patient, "index": emb.index,
                                  "split": emb.split, "kmeans": r.kmeans,
                                  "hdbscan": r.hdbscan, "x": r.umap2d[:, 0],
                                  "y": r.umap2d[:, 1]})
            for j in range(r.umap.shape[1]):
                frame[f"umap_{j}"] = r.umap[:, j]
            frame.to_parquet(out / f"{name}.parquet", index=False)
            frame[["patient", "split", "x", "y", "kmeans", "hdbscan"]].assign(
                subtype=truth["subtype"], phenotype=truth["phenotype"]).to_csv(
                plots / f"umap_{name}.csv", index=False)
            C.plot_scatter(r.umap2d, {f"K-means (k={r.metrics['kmeans.k']})": r.kmeans,
                                      "HDBSCAN (grey = noise)": r.hdbscan,
                                      "planted subtype": truth["subtype"],
                                      "phenotype": truth["phenotype"],
                                      "split": t["split"].to_numpy(str)},
                           plots / f"umap_{name}.png",
                           f"{name}: 2-D UMAP fitted on the {int(fit.sum())} {FIT_SPLIT} "
                           f"patients, all {len(t)} shown")
            log.info("%s: k=%d test ARI(subtype)=%.3f ARI(phenotype)=%.3f; HDBSCAN %d "
                     "clusters, %.0f%% noise, test ARI(subtype)=%.3f (%.1f s)", name,
                     m["kmeans.k"], m["kmeans.ari_subtype"], m["kmeans.ari_phenotype"],
                     m["hdbscan.n_clusters"], 100 * m["hdbscan.noise_share"],
                     m["hdbscan.ari_subtype"], m["seconds"])
        sweep = pd.concat(sweeps, ignore_index=True)
        sweep.to_csv(plots / "kmeans_sweep.csv", index=False)
        plot_sweep(sweep, plots / "kmeans_sweep.png")
        score = {n: metrics[f"{n}.{p.best_by}"] for n in embs}   # train-split scores only
        best = max(score, key=lambda n: (np.nan_to_num(score[n], nan=-np.inf), n))
        lr = characterise(best, results[best].kmeans, task, pheno, p, plots, test)
        metrics.update({"best.embedding": best, "best.by": p.best_by,
                        "best.k": metrics[f"{best}.kmeans.k"], "best.logrank_p": lr["p"],
                        "best.logrank_stat": lr["stat"], "best.logrank_log10_p": lr["log10_p"],
                        "best.n_subtypes_separated": lr["n_separated"]})
        summary = pd.DataFrame([{"embedding": n, **{k: metrics.get(f"{n}.{k}") for k in (
            "kmeans.k", "kmeans.ari_subtype", "kmeans.ami_subtype", "kmeans.ari_phenotype",
            "kmeans.ari_subtype_at_true_k", "kmeans.train_ari_subtype",
            "kmeans.logrank_log10_p", "kmeans.n_separated", "kmeans.silhouette",
            "kmeans.stability_boot_ari", "hdbscan.n_clusters", "hdbscan.test_noise_share",
            "hdbscan.ari_subtype", "hdbscan.ari_phenotype",
            "hdbscan.stability_seed_ari")}} for n in embs])
        summary.to_csv(plots / "summary.csv", index=False)
        (plots / "summary.md").write_text(
            f"Fitted on the {FIT_SPLIT} split ({int(fit.sum())} patients); ARI, AMI and "
            f"log-rank on the {SCORE_SPLIT} split ({int(test.sum())} patients); "
            "`train_*`, silhouette and stability on the fitted patients.\n\n"
            + C.markdown_table(summary))
    write_json("metrics/cluster.json", metrics)
    log.info("best embedding by %s: %s (test log-rank p = %.3g, %d subtypes separated)",
             p.best_by, best, lr["p"], lr["n_separated"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
