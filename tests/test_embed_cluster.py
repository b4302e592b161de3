"""Patient embeddings, clustering, phenotype labels and the embed/cluster stages.

UMAP compiles with numba on first use (20-30 s per process on a busy 2-core machine, more than
everything else here together). The fast tests therefore put PCA in UMAP's place
(``fast_umap``: the wiring, K-means, HDBSCAN and the metrics are under test, not UMAP); the
test marked ``slow`` runs the real UMAP + HDBSCAN on the same planted clusters
(``pytest -m slow tests/test_embed_cluster.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import yaml
from conftest import ROOT, script
from sklearn.metrics import adjusted_rand_score

from ehrseq.data.task import SurvivalTask
from ehrseq.data.tensors import SequenceDataset, build_batch, toy_sequences
from ehrseq.evaluate import clustering as C
from ehrseq.evaluate.embed import (
    EMBEDDERS,
    PatientEmbedding,
    embed,
    lstm_landmark_state,
)
from ehrseq.models.behrt import BEHRTConfig, behrt_inputs
from ehrseq.models.lstm_survival import DiscreteTimeSurvivalLSTM, LSTMConfig
from ehrseq.models.med2vec import Med2Vec, Med2VecConfig, encode_all_visits
from ehrseq.models.pretraining import BEHRTPretrain
from ehrseq.models.store import save_model
from ehrseq.outcomes.phenotypes import load_phenotypes, phenotype_labels
from ehrseq.params import EMBEDDING_METHODS

DAY = 86_400


# --------------------------------------------------------------------------- fixtures

def gaussian_mixture(n: int = 300, k: int = 4, dim: int = 16, sep: float = 8.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)) * sep
    y = rng.integers(0, k, n)
    return (centres[y] + rng.standard_normal((n, dim))).astype(np.float32), y


@pytest.fixture
def fast_umap(monkeypatch):
    """PCA instead of UMAP (same signature), to skip numba's compile in fast tests."""
    from sklearn.decomposition import PCA

    def pca(X, dims, neighbors, min_dist, metric, seed):
        model = PCA(dims, random_state=seed).fit(X)
        return (model.transform(X).astype(np.float32),
                lambda new: model.transform(new) if len(new) else np.zeros((0, dims)))

    monkeypatch.setattr(C, "umap_fit", pca)


def toy_project(root: Path, n: int = 80, seed: int = 0):
    """A tiny cohort in the sequences/outcomes/events contracts + a random survival LSTM."""
    seqs = toy_sequences(n_patients=n, vocab_size=30, max_visits=10, seed=seed)
    rng = np.random.default_rng(seed)
    pats = seqs.patients
    pats["split"] = np.array(["train", "val", "test"])[np.arange(n) % 3]
    pats["gender"] = rng.choice(["M", "F"], n)
    first = seqs.visit_time[seqs.patient_offsets[:-1]]
    pats["birth_date"] = pd.to_datetime((first - 365.25 * rng.uniform(1, 80, n)) * DAY,
                                        unit="s").floor("D")
    keep = np.flatnonzero(seqs.n_visits >= 2)
    lm_visits = seqs.n_visits[keep] - 1                    # the last visit is after the landmark
    table = pd.DataFrame({
        "patient": pats["patient"].to_numpy()[keep], "index": keep,
        "split": pats["split"].to_numpy()[keep],
        "landmark_time": seqs.visit_time[seqs.patient_offsets[keep] + lm_visits - 1],
        "landmark_visits": lm_visits, "duration": rng.exponential(300, len(keep)) + 1,
        "event": rng.integers(0, 2, len(keep)), "subtype": rng.integers(0, 3, len(keep)),
        "true_risk": rng.standard_normal(len(keep))})
    seq_dir, out_dir = root / "data/processed/sequences", root / "data/processed/outcomes"
    seqs.save(seq_dir)
    out_dir.mkdir(parents=True)
    table.to_parquet(out_dir / "outcomes.parquet", index=False)
    (out_dir / "time_bins.json").write_text(json.dumps({"cuts": [0, 100, 300, 1000],
                                                           "horizons": [100, 300]}))
    torch.manual_seed(seed)
    model = DiscreteTimeSurvivalLSTM(LSTMConfig(vocab_size=30, n_bins=3, embed_dim=8,
                                                hidden_dim=12))
    save_model(root / "models/train_survival", model, model.config_dict(), seqs.vocab)
    behrt = BEHRTPretrain(BEHRTConfig(vocab_size=30, hidden=16, layers=1, heads=2,
                                      intermediate=32, max_len=24,
                                      model_class="ehrseq.models.pretraining.BEHRTPretrain"))
    save_model(root / "models/pretrain_behrt", behrt, dataclasses.asdict(behrt.config),
               seqs.vocab)
    m2v = Med2Vec(Med2VecConfig(vocab_size=30, code_dim=8, visit_dim=10))
    save_model(root / "models/train_med2vec", m2v, m2v.config_dict(), seqs.vocab)
    # events: a hypertension record for every third patient, in its first visit
    ids = table["patient"].to_numpy()[::3]
    t0 = pd.to_datetime(table["landmark_time"].to_numpy()[::3] * DAY - DAY, unit="s", utc=True)
    ev = pd.DataFrame({"patient": ids, "time": t0, "encounter": [f"e{i}" for i in ids],
                       "kind": "condition", "system": "SNOMED-CT", "code": "59621000",
                       "description": "Essential hypertension (disorder)", "value": np.nan,
                       "unit": None})
    (root / "data/interim").mkdir(parents=True)
    ev.to_parquet(root / "data/interim/events.parquet", index=False)
    return SurvivalTask.load(seq_dir, out_dir)


@dataclasses.dataclass
class EmbedP:
    dim: int = 6
    seed: int = 0
    batch_size: int = 16
    device: str = "cpu"


# --------------------------------------------------------------------------- clustering

def check_recovery(X, y, r):
    m = r.metrics
    assert m["kmeans.k"] == 4
    assert adjusted_rand_score(y, r.kmeans) > 0.9
    assert adjusted_rand_score(y, r.hdbscan) > 0.9 and m["hdbscan.noise_share"] < 0.1
    assert m["kmeans.stability_seed_ari"] > 0.9 and m["kmeans.stability_boot_ari"] > 0.9
    assert m["hdbscan.stability_seed_ari"] > 0.9 and m["hdbscan.stability_boot_ari"] > 0.9
    assert r.umap.shape == (len(X), 5) and r.umap2d.shape == (len(X), 2)
    assert list(r.sweep["k"]) == [2, 3, 4, 5, 6]
    assert r.sweep.loc[r.sweep["silhouette"].idxmax(), "k"] == 4
    sizes = np.bincount(r.kmeans)
    assert (np.diff(sizes) <= 0).all()                  # 0 = largest cluster


def test_recovers_planted_gaussian_clusters(fast_umap):
    X, y = gaussian_mixture()
    check_recovery(X, y, C.cluster_embedding(X, kmeans_k=[2, 3, 4, 5, 6], seeds=2,
                                             bootstrap=2))


def test_fits_on_the_fit_rows_and_assigns_the_rest(fast_umap):
    """Held-out rows never move the clusters: the fitted rows get the labels of a fit on them
    alone, and the held-out rows are assigned to the planted clusters they come from."""
    X, y = gaussian_mixture(n=240)
    fit = np.arange(len(X)) % 3 != 0
    kw = {"kmeans_k": [2, 3, 4, 5], "seeds": 2, "bootstrap": 2}
    r = C.cluster_embedding(X, fit=fit, **kw)
    alone = C.cluster_embedding(X[fit], **kw)
    np.testing.assert_array_equal(r.kmeans[fit], alone.kmeans)
    np.testing.assert_array_equal(r.hdbscan[fit], alone.hdbscan)
    assert r.metrics["n_fit"] == fit.sum() and r.metrics["kmeans.k"] == 4
    assert r.metrics["kmeans.silhouette"] == alone.metrics["kmeans.silhouette"]
    assert adjusted_rand_score(y[~fit], r.kmeans[~fit]) > 0.9
    assert adjusted_rand_score(y[~fit], r.hdbscan[~fit]) > 0.9
    assert set(r.labels_by_k) == {2, 3, 4, 5} and len(r.labels_by_k[3]) == len(X)
    moved = X.copy()
    moved[~fit] = np.random.default_rng(5).standard_normal(moved[~fit].shape) * 50
    np.testing.assert_array_equal(C.cluster_embedding(moved, fit=fit, **kw).kmeans[fit],
                                  r.kmeans[fit])
    with pytest.raises(ValueError, match="at least 4 patients to fit on, got 3"):
        C.cluster_embedding(X, fit=np.arange(len(X)) < 3)


@pytest.mark.slow
def test_recovers_planted_gaussian_clusters_with_umap():
    X, y = gaussian_mixture()
    r = C.cluster_embedding(X, kmeans_k=[2, 3, 4, 5, 6], seeds=2, bootstrap=2)
    check_recovery(X, y, r)
    r2 = C.cluster_embedding(X, kmeans_k=[4], seeds=1, bootstrap=0)   # seeded: reproducible
    np.testing.assert_array_equal(r.umap, r2.umap)
    np.testing.assert_array_equal(r.hdbscan, r2.hdbscan)
    fit = np.arange(len(X)) % 3 != 0         # UMAP.transform + approximate_predict
    r3 = C.cluster_embedding(X, fit=fit, kmeans_k=[4], seeds=1, bootstrap=0, picture=False)
    assert adjusted_rand_score(y[~fit], r3.hdbscan[~fit]) > 0.9


def test_metrics_on_a_hand_example():
    X = np.array([[0, 0], [0, 1], [10, 0], [10, 1]], float)
    lab = np.array([0, 0, 1, 1])
    s = C.internal_scores(X, lab)
    b = (10 + math.sqrt(101)) / 2                       # mean distance to the other cluster
    assert s["silhouette"] == pytest.approx(1 - 1 / b)  # a = 1 for every point
    assert s["davies_bouldin"] == pytest.approx((0.5 + 0.5) / 10)
    assert s["calinski_harabasz"] == pytest.approx((100 / 1) / (1 / 2))
    # noise is left out of internal scores, counted as a cluster by external ones
    s2 = C.internal_scores(np.vstack([X, [[5, 50]]]), np.append(lab, -1))
    assert s2["silhouette"] == pytest.approx(s["silhouette"])
    assert C.external_scores(lab, [1, 1, 0, 0]) == {"ari": 1.0, "ami": 1.0}
    assert C.external_scores(lab, [0, 1, 0, 1])["ari"] == pytest.approx(-0.5)
    assert C.mean_pairwise_ari([lab, 1 - lab, lab]) == 1.0
    assert C.relabel_by_size([5, 5, 5, -1, 2, 2, 7]).tolist() == [0, 0, 0, -1, 1, 1, 2]
    _, new = C.relabel_by_size([5, 5, 5, -1, 2, 2, 7], [7, 2, 9, -1, 5])  # same map; unknown
    assert new.tolist() == [2, 1, -1, -1, 0]                            # labels are noise
    assert math.isnan(C.internal_scores(X, [0, 0, 0, 0])["silhouette"])


def test_enriched_codes_and_logrank():
    # 4 patients in cluster 0 all have code 1; cluster 1 (4 patients) has code 2 once
    P = sp.csr_matrix(np.array([[0, 1, 0]] * 4 + [[0, 0, 1]] + [[1, 0, 0]] * 3))
    lab = np.array([0] * 4 + [1] * 4)
    t = C.enriched_codes(P, lab, ["a", "b", "c"], {"b": "code b"}, top=1, min_count=1)
    row = t[t["cluster"] == 0].iloc[0]
    assert row["token"] == "b" and row["description"] == "code b" and row["n_cluster"] == 4
    assert row["log_odds"] == pytest.approx(math.log(4.5 * 4.5 / (0.5 * 0.5)))
    assert row["share_cluster"] == 1.0 and row["share_rest"] == 0.0
    d = np.r_[np.arange(1, 21), np.arange(200, 220)].astype(float)
    lr = C.logrank(d, np.ones(40, int), np.repeat([0, 1], 20))
    assert lr["p"] < 1e-6 and lr["n_separated"] == 2
    assert lr["log10_p"] == pytest.approx(math.log10(lr["p"]), rel=1e-6)
    km = C.km_curves(d, np.ones(40, int), np.repeat([0, 1], 20))
    assert set(km["cluster"]) == {0, 1} and km["survival"].between(0, 1).all()


# --------------------------------------------------------------------------- phenotypes

def test_phenotype_labels_from_hand_events(tmp_path):
    ts = lambda d, h=0: pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(days=d, hours=h)  # noqa: E731
    rows = [  # patient, time, encounter, kind, code
        ("A", ts(0), "a1", "condition", "59621000"),      # hypertension before the landmark
        ("A", ts(20), "a2", "condition", "431855005"),    # CKD after it: not counted
        ("B", ts(5, 3), None, "condition", "714628002"),  # prediabetes, a day visit
        ("B", ts(9, 8), "b2", "observation", "8302-2"),   # visit b2 starts before the landmark
        ("B", ts(10, 12), "b2", "condition", "162864005"),  # obesity known after it: not counted
        ("C", ts(1), "c1", "condition", "444814009"),     # viral sinusitis: no phenotype
        ("D", ts(2), "d1", "condition", "233678006"),     # childhood asthma
        ("D", ts(3), "d2", "condition", "44054006"),      # type 2 diabetes
        ("E", ts(30), "e1", "condition", "22298006"),     # MI, after E's landmark
    ]
    ev = pd.DataFrame(rows, columns=["patient", "time", "encounter", "kind", "code"])
    ev["system"] = np.where(ev["kind"] == "condition", "SNOMED-CT", "LOINC")
    ev["description"], ev["value"], ev["unit"] = "", np.nan, None
    path = tmp_path / "events.parquet"
    ev.to_parquet(path, index=False)
    lm = (pd.Timestamp("2020-01-11", tz="UTC") - pd.Timestamp("1970-01-01", tz="UTC")).days
    got = load_phenotypes(path, ["A", "B", "C", "D", "E", "F"], np.full(6, float(lm)))
    assert got["label"].tolist() == ["cardiovascular", "diabetes", "none", "diabetes", "none",
                                     "none"]
    assert got["pattern"].tolist()[:4] == ["cardiovascular", "diabetes", "none",
                                           "diabetes+respiratory"]
    assert not got.loc[0, "ckd"] and not got.loc[1, "obesity"]
    # priority: CKD outranks everything
    flags = got[["ckd", "cardiovascular", "diabetes", "respiratory", "obesity"]].copy()
    flags.loc[3, "ckd"] = True
    assert phenotype_labels(flags)["label"][3] == "ckd"


# --------------------------------------------------------------------------- embeddings

def test_embeddings_use_only_pre_landmark_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = toy_project(tmp_path)
    p = EmbedP()
    names = list(EMBEDDING_METHODS)
    base = {n: embed(n, task, p) for n in names}
    assert base["lstm"].shape == (len(task.table), 12)
    assert base["behrt_cls"].shape == base["behrt_mean"].shape == (len(task.table), 16)
    assert not np.allclose(base["behrt_cls"], base["behrt_mean"])
    assert base["med2vec"].shape == (len(task.table), 10)
    assert base["tfidf_svd"].shape == base["random_proj"].shape == (len(task.table), 6)

    s = task.seqs
    codes = np.array(s.codes)
    last = s.patient_offsets[1:] - 1                   # every patient's last visit: after
    rng = np.random.default_rng(1)
    for v in last:                                     # (test set-up; a few dozen visits)
        codes[s.visit_offsets[v]:s.visit_offsets[v + 1]] = rng.integers(5, 30)
    vt = np.array(s.visit_time)
    vt[last] += 1000.0
    later = dataclasses.replace(task, seqs=dataclasses.replace(s, codes=codes, visit_time=vt))
    for n in names:
        np.testing.assert_allclose(embed(n, later, p), base[n], atol=1e-6, err_msg=n)
    first = s.visit_offsets[s.patient_offsets[task.table["index"].to_numpy()]]
    codes2 = np.array(s.codes)
    codes2[first] = np.where(codes2[first] == 7, 8, 7)  # an input visit: must change
    earlier = dataclasses.replace(task, seqs=dataclasses.replace(s, codes=codes2))
    for n in names:
        assert not np.allclose(embed(n, earlier, p), base[n]), n


def test_lstm_embedding_is_what_the_head_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = toy_project(tmp_path, n=30)
    from ehrseq.models.store import load_model

    model, _, _ = load_model("models/train_survival")
    model.eval()
    t = task.table
    ds = SequenceDataset(task.seqs, t["index"].to_numpy(), t["landmark_visits"].to_numpy())
    batch = ds[np.arange(len(ds))]
    with torch.no_grad():
        h = lstm_landmark_state(model, batch)
        torch.testing.assert_close(model.head(h), model(batch))
    one = build_batch(task.seqs, t["index"].to_numpy()[:1], t["landmark_visits"].to_numpy()[:1])
    np.testing.assert_allclose(embed("lstm", task, EmbedP())[0],
                               lstm_landmark_state(model, one)[0].detach().numpy(), atol=1e-5)
    assert {"lstm", "tfidf_svd", "random_proj"} <= set(EMBEDDERS)


def test_model_embeddings_match_the_encoders(tmp_path, monkeypatch):
    """BEHRT rows are the encoder's [CLS] / token-mean on the fine-tuning input of that one
    patient; Med2Vec rows are the mean of its visit vectors over the input visits."""
    monkeypatch.chdir(tmp_path)
    task = toy_project(tmp_path, n=30)
    from ehrseq.models.store import load_model

    t, s = task.table, task.seqs
    behrt, _, _ = load_model("models/pretrain_behrt")
    behrt.eval()
    i = 3
    one = behrt_inputs(build_batch(s, t["index"].to_numpy()[i:i + 1],
                                   t["landmark_visits"].to_numpy()[i:i + 1],
                                   max_visits=behrt.config.max_len - 1), behrt.config.max_len)
    with torch.no_grad():
        h = behrt.encoder(one)[0]
    np.testing.assert_allclose(embed("behrt_cls", task, EmbedP())[i], h[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(embed("behrt_mean", task, EmbedP())[i], h.mean(0).numpy(),
                               atol=1e-5)
    m2v, _, _ = load_model("models/train_med2vec")
    v = encode_all_visits(m2v, s)
    first = s.patient_offsets[t["index"].to_numpy()[i]]
    np.testing.assert_allclose(embed("med2vec", task, EmbedP())[i],
                               v[first:first + t["landmark_visits"].to_numpy()[i]].mean(0),
                               atol=1e-5)
    shutil.rmtree("models/train_med2vec")
    with pytest.raises(Exception, match="models/train_med2vec.*missing"):
        embed("med2vec", task, EmbedP())


# --------------------------------------------------------------------------- stages

def _stage(name: str):
    return script(f"stages/{name}.py")


def test_stages_write_outputs_aligned_with_outcomes(tmp_path, monkeypatch, fast_umap):
    monkeypatch.chdir(tmp_path)
    toy_project(tmp_path, n=90)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["embed"] = {"dim": 8, "batch_size": 32, "device": "cpu"}
    params["cluster"] = {"kmeans_k": [2, 3, 4], "seeds": 2, "bootstrap": 2,
                         "umap_neighbors": 10}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    _stage("embed").main()
    _stage("cluster").main()

    table = pd.read_parquet("data/processed/outcomes/outcomes.parquet")
    for name in EMBEDDING_METHODS:
        e = PatientEmbedding.load(f"data/processed/embeddings/{name}.npz")
        assert e.patient.tolist() == table["patient"].tolist()
        assert e.index.tolist() == table["index"].tolist()
        assert e.split.tolist() == table["split"].tolist() and len(e.X) == len(table)
        c = pd.read_parquet(f"data/processed/clusters/{name}.parquet")
        assert c["patient"].tolist() == table["patient"].tolist()
        assert Path(f"plots/cluster/umap_{name}.png").stat().st_size > 1000
    ph = pd.read_parquet("data/processed/clusters/phenotypes.parquet")
    assert ph["patient"].tolist() == table["patient"].tolist()
    assert ph["cardiovascular"].sum() == len(table[::3])
    m = json.loads(Path("metrics/cluster.json").read_text())
    assert m["best.embedding"] in EMBEDDING_METHODS
    for key in ("lstm.kmeans.ari_subtype", "tfidf_svd.hdbscan.noise_share",
                "random_proj.kmeans.stability_boot_ari", "best.logrank_p",
                "best.n_subtypes_separated", "lstm.kmeans.train_ari_subtype"):
        assert key in m, key
    # fitted on train, scored on test only: ARI and log-rank recomputed from the test rows
    test, train = (table["split"] == "test").to_numpy(), (table["split"] == "train").to_numpy()
    assert m["n_test"] == test.sum() >= 20 and m["n_fit"] == train.sum()
    for name in EMBEDDING_METHODS:
        c = pd.read_parquet(f"data/processed/clusters/{name}.parquet")
        lab, st = c["kmeans"].to_numpy(), table["subtype"].to_numpy()
        assert m[f"{name}.kmeans.ari_subtype"] == round(adjusted_rand_score(st[test],
                                                                            lab[test]), 6)
        assert m[f"{name}.kmeans.train_ari_subtype"] == round(
            adjusted_rand_score(st[train], lab[train]), 6)
    best = pd.read_parquet(f"data/processed/clusters/{m['best.embedding']}.parquet")
    lr = C.logrank(table["duration"][test], table["event"][test], best["kmeans"][test])
    assert m["best.logrank_p"] == round(lr["p"], 6)
    prof = pd.read_csv("plots/cluster/subtype_profiles.csv")
    assert prof["patients"].sum() == test.sum()
    score = {n: m[f"{n}.kmeans.train_ari_subtype"] for n in EMBEDDING_METHODS}
    assert m["best.by"] == "kmeans.train_ari_subtype"
    assert score[m["best.embedding"]] == max(score.values())
    for f in ("km_best.png", "km_best.csv", "subtypes.md", "subtype_codes.csv",
              "subtype_profiles.csv", "kmeans_sweep.csv", "summary.md"):
        assert Path("plots/cluster", f).is_file(), f
    shutil.rmtree("data/processed/embeddings")          # a missing input: a clear error
    with pytest.raises(Exception, match="run the embed stage"):
        _stage("cluster").main()
    params["cluster"]["min_test_patients"] = int(test.sum()) + 1   # too few to score on
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(Exception, match=f"test split has {test.sum()} eligible patients"
                                        ".*cluster.min_test_patients"):
        _stage("cluster").main()


def test_registered_embedders_match_params_schema():
    from ehrseq.evaluate.embed import EMBEDDERS
    from ehrseq.params import EMBEDDING_METHODS

    assert set(EMBEDDERS) == set(EMBEDDING_METHODS)


def test_phenotype_flags_per_landmark_of_the_same_patient():
    """Several landmarks per patient: each gets the groups known by its own time."""
    from ehrseq.outcomes.phenotypes import phenotype_flags

    cond = pd.DataFrame({"patient": ["a", "a", "b"], "code": ["A", "B", "A"],
                         "known_time": [10.0, 50.0, 5.0]})
    f = phenotype_flags(cond, ["a", "a", "b", "c"], [20.0, 60.0, 1.0, 9.0],
                        codes={"ga": ("A",), "gb": ("B",)})
    assert f["ga"].tolist() == [True, True, False, False]
    assert f["gb"].tolist() == [False, True, False, False]


def test_umap_loads_with_numba_cache_on():
    """The default run's check of src/ehrseq/evaluate/umap_cache.py: after load_umap every
    jitted function of umap-learn's main modules caches to disk (the fits that read the cache
    are compared with a compiling process in the slow test below)."""
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    from ehrseq.evaluate.umap_cache import load_umap

    umap = load_umap()
    jitted = [v for v in vars(umap.umap_).values() if isinstance(v, CPUDispatcher)]
    assert jitted and not any(isinstance(f._cache, NullCache) for f in jitted)


@pytest.mark.slow   # two fresh processes, one compiling umap-learn: about 50 s on 2 cores
def test_umap_from_numba_cache_gives_the_same_coordinates(tmp_path):
    """src/ehrseq/evaluate/umap_cache.py: a process whose umap-learn code comes from numba's
    on-disk cache places rows exactly where the process that compiled it (and filled the
    cache) did, and the cache holds umap-learn's functions."""
    import subprocess
    import sys

    fit = ("import warnings, json, numpy as np; warnings.simplefilter('ignore'); {imp}; "
           "x = np.random.default_rng(1).random((50, 6), dtype=np.float32); "
           "print(json.dumps(umap.UMAP(n_components=3, random_state=0).fit_transform(x)"
           ".tolist()))")
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    out = {}
    imp = "from ehrseq.evaluate.umap_cache import load_umap; umap = load_umap()"
    for name in ("compiled", "cached"):
        res = subprocess.run([sys.executable, "-c", fit.format(imp=imp)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        out[name] = np.array(json.loads(res.stdout))
    assert np.array_equal(out["compiled"], out["cached"])
    cached = [p.name for p in (tmp_path / "numba").rglob("*.nbi")]
    assert any(n.startswith("umap_.") for n in cached), cached


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "correlation"])
def test_exact_distances_give_umaps_own_neighbour_graph(metric):
    """Below 4,096 rows umap_fit hands UMAP exact distances (metric="precomputed") instead of
    letting it call its numba metric once per pair: the same fuzzy neighbour graph, including
    all-zero rows and duplicates (ties), and cosine's disconnection distance."""
    from ehrseq.evaluate.umap_cache import load_umap

    umap = load_umap()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8)).astype(np.float32)
    X[:3], X[3:6] = 0.0, X[6]
    kw = dict(n_components=2, n_neighbors=10, min_dist=0.0, random_state=0, n_epochs=5)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = umap.UMAP(metric=metric, **kw).fit(X).graph_.tocsr()
        exact = umap.UMAP(metric="precomputed", disconnection_distance=umap.umap_.
                          DISCONNECTION_DISTANCES.get(metric, np.inf), **kw
                          ).fit(C.exact_distances(X, X, metric)).graph_.tocsr()
    assert ((own != 0).toarray() == (exact != 0).toarray()).all()
    assert abs(own - exact).max() < 1e-4
    D = C.exact_distances(X[:10], X, metric)
    ref = umap.distances.named_distances[metric]
    np.testing.assert_allclose(D, [[ref(a, b) for b in X] for a in X[:10]], atol=1e-6)


def test_umap_fit_places_new_rows_and_none():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    coords, place = C.umap_fit(X, 2, 10, 0.0, "euclidean", 0)
    assert coords.shape == (60, 2) and np.isfinite(coords).all()
    assert place(X[:0]).shape == (0, 2)
    new = place(X[:5] + 0.01)      # next to their originals
    assert new.shape == (5, 2) and np.isfinite(new).all()
