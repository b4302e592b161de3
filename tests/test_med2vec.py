"""Med2Vec objectives, the Synthea-module ground truth and the embedding metrics.

The planted cohort: codes fall into groups that co-occur only within their group (each
patient draws every visit from one group), so a working code embedding puts each code's
neighbours in its own group, far above a random embedding.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ehrseq.data.modules import (
    base_token,
    code_modules,
    label_tokens,
    membership,
    module_name,
    parse_module,
)
from ehrseq.data.tensors import Sequences, make_loader, toy_sequences
from ehrseq.evaluate import embeddings as E
from ehrseq.models.med2vec import (
    Med2Vec,
    Med2VecConfig,
    Med2VecDataset,
    code_level_loss,
    encode_all_visits,
    med2vec_config,
    med2vec_loss,
    neighbour_pairs,
    visit_bags,
    visit_level_loss,
)
from ehrseq.models.store import load_model, save_model
from ehrseq.params import Med2VecParams, ModelParams, TrainParams
from ehrseq.train.loop import fit
from ehrseq.train.runtime import seed_everything

N_SPECIAL = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def planted(n_patients=160, n_groups=4, group_size=6, n_visits=8, per_visit=3, seed=0):
    """Sequences whose codes co-occur only within their group; returns (seqs, group per id)."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(n_patients) % n_groups, n_visits)      # group of each visit
    order = rng.random((len(group), group_size)).argsort(1)[:, :per_visit]
    codes = (N_SPECIAL + group[:, None] * group_size + order).ravel().astype(np.int32)
    n_vis = np.full(n_patients, n_visits)
    po = np.concatenate([[0], np.cumsum(n_vis)]).astype(np.int64)
    vo = np.arange(0, len(codes) + 1, per_visit, dtype=np.int64)
    t = 18_000 + np.tile(np.arange(n_visits) * 30.0, n_patients)
    vocab_size = N_SPECIAL + n_groups * group_size
    specials = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    seqs = Sequences(
        codes=codes, visit_offsets=vo, patient_offsets=po, visit_time=t,
        visit_age=(40 + np.tile(np.arange(n_visits), n_patients) / 12).astype(np.float32),
        patients=pd.DataFrame({
            "patient": [f"p{i}" for i in range(n_patients)],
            "split": np.where(np.arange(n_patients) % 5 == 4, "val", "train"),
            "gender": np.where(np.arange(n_patients) % 3 == 0, "M", "F"),
            "n_visits": n_vis}),
        vocab={"tokens": list(specials) + [f"TOY/{i}" for i in range(N_SPECIAL, vocab_size)],
               "counts": [0] * vocab_size, "specials": specials})
    seqs.check()
    gid = np.full(vocab_size, -1)
    gid[N_SPECIAL:] = np.arange(n_groups * group_size) // group_size
    return seqs, gid


def group_member(gid):
    member = np.zeros((len(gid), gid.max() + 1), bool)
    member[gid >= 0, gid[gid >= 0]] = True
    return member


# --------------------------------------------------------------------------- objectives

def test_visit_bags_dedupe_and_batch_layout():
    s = toy_sequences(n_patients=6, vocab_size=12, max_codes=8, seed=3)
    tokens, counts = visit_bags(s, np.arange(len(s.visit_offsets) - 1))
    off = np.cumsum(counts) - counts
    for v in range(len(counts)):
        raw = s.codes[s.visit_offsets[v]:s.visit_offsets[v + 1]]
        assert tokens[off[v]:off[v] + counts[v]].tolist() == sorted(set(raw.tolist()))
    b = Med2VecDataset(s, np.arange(6))[np.array([2, 0])]
    assert b.n_patients == 2 and b.patient.tolist() == sorted(b.patient.tolist())
    assert len(b.counts) == s.n_visits[2] + s.n_visits[0]


def test_code_level_loss_is_the_exact_skipgram_over_visit_pairs():
    s = toy_sequences(n_patients=8, vocab_size=20, max_visits=4, max_codes=5, seed=1)
    b = Med2VecDataset(s, np.arange(8))[np.arange(8)]
    torch.manual_seed(0)
    w = torch.rand(s.vocab_size, 6)
    brute = []
    for o, c in zip(b.offsets.tolist(), b.counts.tolist(), strict=True):
        toks = b.tokens[o:o + c].tolist()
        brute += [-torch.log_softmax(w[i] @ w.T, 0)[j] for i in toks for j in toks if i != j]
    assert code_level_loss(w, b).item() == pytest.approx(torch.stack(brute).mean().item(),
                                                         rel=1e-5)


def test_objectives_send_gradients_to_code_embeddings():
    s = toy_sequences(n_patients=10, vocab_size=30, seed=2)
    b = Med2VecDataset(s, np.arange(10))[np.arange(10)]
    model = Med2Vec(Med2VecConfig(vocab_size=30, code_dim=8, visit_dim=8))
    code, visit = model(b)
    for loss in (code, visit):
        model.zero_grad()
        loss.backward()
        g = model.code_weight.grad
        assert g is not None and g[b.tokens.unique()].abs().sum() > 0
        unseen = np.setdiff1d(np.arange(30), b.tokens.numpy())
        if loss is visit:     # only codes in some visit feed the visit layer
            assert g[unseen].abs().sum() == 0


def test_neighbour_pairs_stay_within_patient_and_window():
    patient = torch.tensor([0, 0, 0, 1, 1, 2])
    e, l_ = neighbour_pairs(patient, 1)
    assert list(zip(e.tolist(), l_.tolist(), strict=True)) == [(0, 1), (1, 2), (3, 4)]
    e, l_ = neighbour_pairs(patient, 2)
    assert list(zip(e.tolist(), l_.tolist(), strict=True)) == [(0, 2)]
    assert len(neighbour_pairs(patient, 9)[0]) == 0


def test_visit_level_loss_matches_reference_and_ignores_visits_beyond_window():
    s = toy_sequences(n_patients=4, vocab_size=15, max_visits=6, max_codes=4, seed=5)
    b = Med2VecDataset(s, np.arange(4))[np.arange(4)]
    n, vocab = len(b.counts), s.vocab_size
    torch.manual_seed(0)
    logits = torch.randn(n, vocab, requires_grad=True)
    x = torch.zeros(n, vocab)
    for i, (o, c) in enumerate(zip(b.offsets.tolist(), b.counts.tolist(), strict=True)):
        x[i, b.tokens[o:o + c]] = 1
    p = torch.softmax(logits, -1)
    for window in (1, 2):
        ref = 0.0
        for j in range(1, window + 1):       # the reference code's formula, pair by pair
            pairs = [(i, i + j) for i in range(n - j) if b.patient[i] == b.patient[i + j]]
            cost = sum(-(x[t] * torch.log(p[s_] + 1e-8) + (1 - x[t]) * torch.log(1 - p[s_] + 1e-8)
                         ).sum() for a, c in pairs for s_, t in ((a, c), (c, a)))
            ref = ref + cost / len(pairs)
        assert visit_level_loss(logits, b, window).item() == pytest.approx(ref.item(), rel=1e-4)
    # window 1: visit 0's output is scored against visit 1 only
    grad0 = torch.autograd.grad(visit_level_loss(logits, b, 1), logits)[0][0]
    far = [i for i in range(2, n) if b.patient[i] == b.patient[0]]
    assert far, "the toy patient needs three visits"
    b2 = Med2VecDataset(s, np.arange(4))[np.arange(4)]
    b2.tokens = b2.tokens.clone()
    for i in far:                            # change the codes of visits 2.. of patient 0
        b2.tokens[b2.offsets[i]:b2.offsets[i] + b2.counts[i]] = (
            b2.tokens[b2.offsets[i]:b2.offsets[i] + b2.counts[i]] + 1) % vocab
    grad0b = torch.autograd.grad(visit_level_loss(logits, b2, 1), logits)[0][0]
    assert torch.allclose(grad0, grad0b)


def test_size_presets_and_overrides():
    cfg = med2vec_config(ModelParams(size="medium"), 100)
    assert (cfg.code_dim, cfg.visit_dim, cfg.window) == (128, 128, 1)
    cfg = med2vec_config(ModelParams(size="large", med2vec=Med2VecParams(
        code_dim=32, window=3, demographics=False)), 100)
    assert (cfg.code_dim, cfg.visit_dim, cfg.window, cfg.n_demographics) == (32, 256, 3, 0)


# --------------------------------------------------------------------------- ground truth

def test_shipped_modules_map_known_codes():
    m = code_modules()
    assert "metabolic_syndrome" in m["SNOMED-CT/44054006"]      # diabetes mellitus type 2
    assert "metabolic_syndrome" in m["RxNorm/860975"]           # metformin
    assert "hypertension" in m["SNOMED-CT/59621000"]            # essential hypertension
    assert "asthma" in m["SNOMED-CT/195967001"]
    assert m["CVX/140"] == {"immunizations"}                    # influenza vaccine
    assert all(t.split("/")[0] in {"SNOMED-CT", "RxNorm", "LOINC", "CVX"} for t in m)
    assert not any("wellness_encounters" in v for v in m.values())  # excluded generic module
    assert any("wellness_encounters" in v for v in code_modules(exclude=()).values())


def test_module_names_and_emitting_states_only(tmp_path):
    assert module_name("asthma.json") == "asthma"
    assert module_name("heart/cabg/operation.json") == "heart"
    assert module_name("medications/statin.json") == "medications/statin"
    assert module_name("hiv_care.json", ["hiv", "medications"]) == "hiv"
    assert module_name("hivx.json", ["hiv"]) == "hivx"
    mod = {"name": "m", "states": {
        "Onset": {"type": "ConditionOnset", "codes": [
            {"system": "SNOMED-CT", "code": "1", "display": "x"}]},
        "Check": {"type": "Guard", "allow": {"condition_type": "Active Condition", "codes": [
            {"system": "SNOMED-CT", "code": "2", "display": "other module's code"}]}},
        "Panel": {"type": "DiagnosticReport", "codes": [{"system": "LOINC", "code": "3-1"}],
                  "observations": [{"codes": [{"system": "LOINC", "code": "4-2"}]}]},
        "Plan": {"type": "CarePlanStart", "codes": [{"system": "SNOMED-CT", "code": "5"}],
                 "activities": [{"system": "SNOMED-CT", "code": "6"}]},
        "Disposition": {"type": "EncounterEnd", "discharge_disposition": {
            "system": "NUBC", "code": "1"}},
        "Stop": {"type": "ConditionEnd", "codes": [{"system": "SNOMED-CT", "code": "7"}]},
    }}
    (tmp_path / "m.json").write_text(json.dumps(mod))
    assert parse_module(tmp_path / "m.json") == {"SNOMED-CT/1", "LOINC/3-1", "LOINC/4-2",
                                                  "SNOMED-CT/5", "SNOMED-CT/6"}
    labels = label_tokens(["[PAD]", "LOINC/3-1:q2", "SNOMED-CT/9"],
                          code_modules(tmp_path, exclude=()))
    assert labels == [frozenset(), frozenset({"m"}), frozenset()]
    assert base_token("LOINC/3-1:q2") == "LOINC/3-1"


# --------------------------------------------------------------------------- metrics

def test_precision_at_k_hand_example():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0], [5, 5.1]], float)
    member = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0], [0, 0]], bool)
    # labelled rows 0..4; nearest by cosine: 0→1,3 | 1→0,3 | 2→3,1 | 3→2,1 | 4→2,3 (tie
    # ordered by index; 0 and 1 point the other way)
    p = E.precision_at_k(emb, member, ks=(1, 2))
    assert p[1] == pytest.approx(4 / 5)
    assert p[2] == pytest.approx((1 / 2 + 1 / 2 + 1 / 2 + 1 / 2 + 0) / 5)
    assert E.chance_precision(member) == pytest.approx((2 / 4 * 3 + 1 / 4 * 2) / 5)
    nbrs = E.cosine_neighbours(emb, 2)
    assert nbrs[0].tolist() == [1, 5] and nbrs[2].tolist() == [3, 5]


def test_next_visit_recall_hand_example():
    s = toy_sequences(n_patients=1, vocab_size=10)
    s.codes = np.array([5, 6, 7, 8, 9, 1], np.int32)
    s.visit_offsets = np.array([0, 2, 6])          # visit 0: {5, 6}; visit 1: {7, 8, 9, UNK}
    s.patient_offsets = np.array([0, 2])
    s.visit_time, s.visit_age = np.array([1.0, 2.0]), np.array([1, 2], np.float32)
    s.patients = s.patients.assign(split="test", n_visits=2)
    src, tgt = E.next_visit_pairs(s, "test")
    assert src.tolist() == [0] and tgt.tolist() == [1]
    scores = np.array([[9, 9, 9, 9, 9, 0, 0, 3, 2, 1.0]])   # specials never ranked
    r = E.next_visit_recall(lambda v: scores, s, src, tgt, ks=(1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(1.0)}
    last = E.last_visit_scores(s, np.zeros(10))(np.array([0]))
    assert last[0, 5] > last[0, 7] and last[0, 6] > last[0, 9]


def test_ppmi_baseline_recovers_planted_groups():
    seqs, gid = planted()
    member = group_member(gid)
    emb = E.ppmi_svd(seqs, E.split_visits(seqs, "train"), dim=8)
    assert emb.shape == (seqs.vocab_size, 8)
    p = E.precision_at_k(emb, member, ks=(5,))[5]
    rand = E.precision_at_k(E.random_embedding(seqs.vocab_size, 8, 0), member, ks=(5,))[5]
    assert p > 0.95 and rand < 0.5, (p, rand)
    pm = E.ppmi(E.visit_code_matrix(seqs, np.arange(len(seqs.visit_offsets) - 1)).T
                @ E.visit_code_matrix(seqs, np.arange(len(seqs.visit_offsets) - 1))).toarray()
    assert (pm[gid[:, None] != gid[None, :]] == 0).all()    # no PMI across groups


def test_med2vec_learns_planted_groups_and_round_trips(tmp_path):
    seqs, gid = planted()
    member = group_member(gid)
    split = seqs.patients["split"].to_numpy()
    seed_everything(0)
    cfg = Med2VecConfig(vocab_size=seqs.vocab_size, code_dim=16, visit_dim=16, window=2)
    model = Med2Vec(cfg)
    before = E.precision_at_k(model.code_vectors().detach().numpy(), member, ks=(5,))[5]
    train = Med2VecDataset(seqs, np.flatnonzero(split == "train"))
    val = Med2VecDataset(seqs, np.flatnonzero(split == "val"))
    stats = fit(model, make_loader(train, 16, shuffle=True), med2vec_loss,
                TrainParams(epochs=12, lr=1e-2, warmup_frac=0.0, patience=12),
                val_loader=make_loader(val, 64), checkpoint=False, progress=False)
    assert stats["best_value"] < stats["history"][0]["val_loss"]
    emb = model.code_vectors().detach().numpy()
    after = E.precision_at_k(emb, member, ks=(5,))[5]
    rand = E.precision_at_k(E.random_embedding(len(emb), 16, 0), member, ks=(5,))[5]
    assert after > 0.9 and after > rand + 0.4 and after > before, (before, after, rand)

    visits = encode_all_visits(model, seqs, chunk=100)
    assert visits.shape == (len(seqs.visit_offsets) - 1, 16) and visits.dtype == np.float32
    # next-visit scores from the visit embedding rank the patient's own group first
    src, tgt = E.next_visit_pairs(seqs, "val")
    w, b = model.output.weight.detach(), model.output.bias.detach()
    rec = E.next_visit_recall(lambda v: torch.from_numpy(visits[v]) @ w.T + b, seqs, src, tgt,
                              ks=(6,))[6]
    assert rec > 0.95

    save_model(tmp_path / "m", model, cfg, seqs.vocab)
    loaded, config, vocab = load_model(tmp_path / "m")
    assert isinstance(loaded, Med2Vec) and config["window"] == 2 and vocab == seqs.vocab
    assert torch.equal(loaded.code_vectors(), model.code_vectors())


def test_membership_matrix():
    labels = [frozenset(), frozenset({"a", "b"}), frozenset({"b"})]
    m, names = membership(labels)
    assert names == ["b", "a"] and m.tolist() == [[False, False], [True, True], [True, False]]


@pytest.mark.slow
def test_umap_plot_writes_png_and_csv(tmp_path):
    seqs, gid = planted()
    emb = E.ppmi_svd(seqs, E.split_visits(seqs, "train"), dim=8)
    labels = [frozenset({f"g{g}"}) if g >= 0 else frozenset() for g in gid]
    E.umap_plot(emb, seqs.vocab["tokens"], labels, tmp_path / "umap", top=3)
    df = pd.read_csv(tmp_path / "umap.csv")
    assert len(df) == 24 and (df["module"] == "other").sum() == 6
    assert (tmp_path / "umap.png").stat().st_size > 1000


# --------------------------------------------------------------------------- survival head

def test_survival_head_reads_only_input_visits_and_fine_tunes_the_encoder(tmp_path):
    from ehrseq.data.tensors import SequenceDataset
    from ehrseq.models.med2vec import (
        Med2VecSurvival,
        Med2VecSurvivalDataset,
        encode_all_visits,
        survival_loss,
    )
    from ehrseq.survival.bins import bin_targets

    seqs = toy_sequences(n_patients=40, vocab_size=30, max_visits=8, seed=3)
    keep = np.flatnonzero(seqs.n_visits >= 2)
    lm = seqs.n_visits[keep] - 1
    rng = np.random.default_rng(0)
    dur, ev = rng.exponential(200, len(keep)) + 1, rng.integers(0, 2, len(keep))
    cuts = [0, 50, 150, 400, 2000]
    ds = Med2VecSurvivalDataset(SequenceDataset(seqs, keep, lm, dur, ev, cuts=cuts))
    cfg = Med2VecConfig(vocab_size=30, code_dim=8, visit_dim=6, n_bins=4, dropout=0.0,
                        model_class="ehrseq.models.med2vec.Med2VecSurvival")
    torch.manual_seed(0)
    model = Med2VecSurvival(cfg).eval()
    rows = np.arange(len(ds))
    b = ds[rows]
    assert b.n_patients == len(rows) and len(b.visit) == lm.sum()   # input visits only
    v = encode_all_visits(model.encoder, seqs)
    first = seqs.patient_offsets[keep]
    want = np.stack([v[f:f + n].mean(0) for f, n in zip(first, lm, strict=True)])
    # day-level time beside it: the mean over the input visits and the landmark visit's
    # log1p(gap) / 5 and log1p(days before the landmark) / 10
    vt = seqs.visit_time
    time = []
    for f, n in zip(first, lm, strict=True):
        vis = np.arange(f, f + n)
        gap = np.where(vis > f, vt[vis] - vt[np.maximum(vis - 1, f)], 0.0)
        feat = np.stack([np.log1p(gap) / 5, np.log1p(vt[f + n - 1] - vt[vis]) / 10], 1)
        time.append(np.concatenate([feat.mean(0), feat[-1]]))
    with torch.no_grad():
        got = model.patient_vectors(b).numpy()
        np.testing.assert_allclose(got[:, :6], want, atol=1e-5)
        np.testing.assert_allclose(got[:, 6:], np.stack(time), atol=1e-5)
        s = model.predict_survival(b)
    plain = Med2VecSurvival(Med2VecConfig(**{**cfg.__dict__, "time": False})).eval()
    assert plain.patient_vectors(b).shape == (len(rows), 6) and plain.head.in_features == 6
    assert s.shape == (len(rows), 5) and (s[:, 0] == 1).all() and (s.diff(dim=1) <= 0).all()
    tb, te = bin_targets(dur, ev, cuts)
    assert (b.target_bin.numpy() == tb).all() and (b.target_event.numpy() == te).all()

    # the code layer trains (the unused visit-level output does not); save + load round trip
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "encoder.code_weight" in trainable and "encoder.output.weight" not in trainable
    model.train()
    survival_loss(model, b).backward()
    assert model.encoder.code_weight.grad.abs().sum() > 0
    save_model(tmp_path / "m", model, cfg, seqs.vocab)
    again, _, _ = load_model(tmp_path / "m")
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(b), model.eval()(b))


def test_code_quality_without_module_codes_is_nan_not_a_crash(tmp_path):
    """A vocabulary without Synthea module codes (a MEDS dataset): precision is NaN and the
    UMAP figure says why, instead of a crash in train_med2vec."""
    from ehrseq.evaluate.embeddings import precision_at_k, umap_plot

    emb = np.random.default_rng(0).normal(size=(10, 4))
    member = np.zeros((10, 3), bool)
    assert all(np.isnan(v) for v in precision_at_k(emb, member, (5,)).values())
    umap_plot(emb, [f"ICD10//{i}" for i in range(10)], [frozenset()] * 10, tmp_path / "u")
    assert (tmp_path / "u.png").stat().st_size > 0 and (tmp_path / "u.csv").is_file()
