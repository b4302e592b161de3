"""Disease trajectories: multi-horizon labels, the monotone multi-horizon model, masked loss,
multi-label metrics against scikit-learn, no leak past the landmark, stage params."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import script
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from ehrseq.data.tensors import make_loader, toy_sequences
from ehrseq.evaluate.multilabel import (
    bootstrap_weights,
    evaluate_multilabel,
    weighted_auprc,
    weighted_auroc,
    weighted_brier,
    weighted_ece,
)
from ehrseq.models.classical import multilabel_baseline
from ehrseq.models.inference import predict
from ehrseq.models.lstm_survival import DiscreteTimeSurvivalLSTM, LSTMConfig
from ehrseq.models.store import load_model, save_model
from ehrseq.models.trajectory import (
    DiseaseTrajectoryModel,
    TrajectoryConfig,
    TrajectoryDataset,
    make_loss,
    masked_bce,
)
from ehrseq.outcomes.trajectory_labels import build_labels, frequent_onsets, label_matrix
from ehrseq.params import ParamsError, RuntimeParams, TrainParams, TrajectoryParams, load_params
from ehrseq.train.loop import fit
from ehrseq.train.runtime import seed_everything

NAN = math.nan
HORIZONS = [30, 90, 365]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kw) -> TrajectoryConfig:
    base = dict(vocab_size=50, targets=("a", "b"), horizons=tuple(HORIZONS), embed_dim=8,
                hidden_dim=16, layers=1, dropout=0.0)
    return TrajectoryConfig(**{**base, **kw})


# --------------------------------------------------------------------------- labels

def _ts(day: float) -> pd.Timestamp:
    return pd.Timestamp("1970-01-01", tz="UTC") + pd.Timedelta(days=day)


def test_labels_on_a_hand_made_events_table(tmp_path):
    lm = 1000.0  # every landmark: day 1000 (a visit start)
    X, Y = "111", "222"
    rows = [  # patient, day, encounter, kind, code
        ("A", 900.0, "a1", "condition", X),     # X recorded before the landmark: present
        ("A", 1010.0, "a2", "condition", X),
        ("A2", 1000.0, "b1", "procedure", "p1"),  # a visit starting at the landmark ...
        ("A2", 1000.5, "b1", "condition", X),   # ... X known half a day later: an onset
        ("A3", 1010.0, "g2", "encounter", "e"),  # an encounter 10 d after the landmark ...
        ("A3", 900.0, "g2", "condition", X),    # ... back-links X (START day 900): known at
                                                # day 1010, so not present: an onset at 10 d
        ("B", 1020.0, "c1", "condition", X),    # onset 20 d after: 1 at every horizon
        ("B", 1400.0, "c2", "condition", X),    # later records do not move the onset
        ("C", 1100.0, "d1", "condition", X),    # onset at 100 d: 0, 0, 1
        ("D", 990.0, "e1", "condition", Y),     # another code: irrelevant
        ("E", 1500.0, "f1", "condition", X),    # onset at 500 d: 0, 0, 0
        ("G", 1000.3, None, "condition", X),    # no encounter: a day visit starting after
    ]                                           # the landmark visit: onset at 0.3 d
    ev = pd.DataFrame(rows, columns=["patient", "day", "encounter", "kind", "code"])
    ev["time"] = ev["day"].map(_ts)
    ev["system"], ev["description"] = "SNOMED-CT", "x"
    ev.drop(columns="day").to_parquet(tmp_path / "events.parquet", index=False)

    ids = ["A", "A2", "A3", "B", "C", "D", "E", "F", "G", "H"]
    eor = {"D": 1050.0, "F": 1060.0, "H": 990.0}  # D censored at 50 d; F dies at 60 d
    death = {"F": pd.Timestamp("1970-01-01") + pd.Timedelta(days=1060),
             "H": pd.Timestamp("1970-01-01") + pd.Timedelta(days=990)}  # H died before
    seq_patients = pd.DataFrame({
        "patient": ids,
        "death_date": pd.to_datetime([death.get(i) for i in ids]),
        "end_of_record": [eor.get(i, 3000.0) for i in ids],
    })
    table = pd.DataFrame({"index": np.arange(len(ids)), "landmark_time": lm})
    lab = build_labels(tmp_path / "events.parquet", seq_patients, table,
                       [X, "death", "999"], HORIZONS)
    got = {i: lab.labels[k].tolist() for k, i in enumerate(ids)}

    def same(a, b):
        return np.array_equal(np.asarray(a, float), np.asarray(b, float), equal_nan=True)

    x, d, z = 0, 1, 2  # target columns
    assert same(got["A"][x], [NAN] * 3)            # present at the landmark: masked
    assert same(got["A2"][x], [1, 1, 1])           # known after the landmark: not an input
    assert same(got["A3"][x], [1, 1, 1])           # back-linked: known from its encounter on
    assert same(got["B"][x], [1, 1, 1])            # onset within every horizon
    assert same(got["C"][x], [0, 0, 1])            # onset beyond 30 and 90 d: 0 there
    assert same(got["D"][x], [0, NAN, NAN])        # record ends at 50 d: censored first
    assert same(got["E"][x], [0, 0, 0])            # onset beyond the last horizon
    assert same(got["F"][x], [0, NAN, NAN])        # death ends the record: censored
    assert same(got["G"][x], [1, 1, 1])
    assert same(got["F"][d], [0, 1, 1])            # death at 60 d
    assert same(got["B"][d], [0, 0, 0])
    assert same(got["D"][d], [0, NAN, NAN])
    assert same(got["H"][d], [NAN] * 3)            # died before the landmark: masked
    assert same(got["C"][z], [0, 0, 0])            # a code never recorded: no onset
    assert lab.present[:, x].tolist() == [True] + [False] * 9
    assert lab.onset[ids.index("B"), x] == pytest.approx(20.0)
    assert lab.onset[ids.index("A2"), x] == pytest.approx(0.5)
    assert lab.onset[ids.index("A3"), x] == pytest.approx(10.0)   # not its START (−100 d)
    assert lab.first_any[ids.index("A"), x] == pytest.approx(900.0)


def test_frequent_onsets_count_first_onsets_within_the_horizon(tmp_path):
    lm = 1000.0
    rows = [  # patient, day, encounter, code
        ("A", 1010.0, "a1", "X"), ("B", 1100.0, "b1", "X"), ("C", 1300.0, "c1", "X"),
        ("A", 1020.0, "a2", "Y"), ("B", 1020.0, "b2", "Y"),
        ("C", 900.0, "c0", "Y"), ("C", 1010.0, "c2", "Y"),   # present before: not an onset
        ("D", 1500.0, "d1", "Y"),                           # after the horizon
        ("A", 1030.0, "a3", "Z"), ("A", 1040.0, "a4", "Z"),  # one patient, twice: counts once
        ("B", 1001.0, "b3", "W"), ("C", 1002.0, "c3", "W"),
    ]
    ev = pd.DataFrame(rows, columns=["patient", "day", "encounter", "code"])
    ev["time"], ev["kind"] = ev["day"].map(_ts), "condition"
    ev["system"], ev["description"] = "SNOMED-CT", "x"
    ev.drop(columns="day").to_parquet(tmp_path / "events.parquet", index=False)
    ids = ["A", "B", "C", "D"]
    seq_patients = pd.DataFrame({"patient": ids, "death_date": pd.NaT,
                                 "end_of_record": 3000.0})
    table = pd.DataFrame({"index": np.arange(4), "landmark_time": lm})
    # X: 3 onsets within 365 d; W: 2; Y: 2 (A, B; C had it before, D too late); Z: 1
    got = frequent_onsets(tmp_path / "events.parquet", seq_patients, table, 365, 3)
    assert got == ["X", "W", "Y"]
    assert frequent_onsets(tmp_path / "events.parquet", seq_patients, table, 365, 2,
                           exclude=["X"]) == ["W", "Y"]
    assert frequent_onsets(tmp_path / "events.parquet", seq_patients, table, 50, 9) == \
        ["W", "Y", "X", "Z"]                              # X: only A within 50 d
    assert frequent_onsets(tmp_path / "events.parquet", seq_patients, table, 365, 0) == []


def test_label_rule_is_vectorised_over_targets_and_horizons():
    onset = np.array([[5.0, np.inf], [30.0, 31.0]])       # onset at exactly h counts
    present = np.array([[False, True], [False, False]])
    lab = label_matrix(onset, present, followup=[29.0, 100.0], horizons=[30, 90])
    assert np.array_equal(lab, [[[1, 1], [NAN, NAN]], [[1, 1], [0, 1]]], equal_nan=True)


# --------------------------------------------------------------------------- model and loss

def test_monotone_across_horizons_for_random_weights():
    seqs = toy_sequences(40, seed=1)
    ds = TrajectoryDataset(seqs, np.arange(40), seqs.n_visits)
    for seed in range(3):
        torch.manual_seed(seed)
        model = DiseaseTrajectoryModel(tiny_config(horizons=(7, 30, 90, 365)))
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 3.0)  # large weights: logits of either sign and size
        p = model.eval().predict_proba(ds[np.arange(40)])
        assert p.shape == (40, 2, 4)
        assert ((p >= 0) & (p <= 1)).all()
        assert (p[..., 1:] >= p[..., :-1]).all()


def test_masked_labels_give_no_loss_and_no_gradient():
    torch.manual_seed(0)
    logits = (torch.randn(6, 3, 3) * 4).requires_grad_()
    labels = torch.randint(0, 2, (6, 3, 3)).float()
    labels[:, 1, :] = NAN           # target 1 masked for everyone
    labels[2] = NAN                 # patient 2 masked everywhere
    labels[0, 0, 2] = NAN           # a single cell
    loss = masked_bce(logits, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert (logits.grad[:, 1] == 0).all() and (logits.grad[2] == 0).all()
    # the loss is the plain BCE of P(within h) = 1 - prod(1 - sigmoid) over the known cells
    p = 1 - torch.cumprod(1 - torch.sigmoid(logits.detach().double()), -1)
    known = ~torch.isnan(labels)
    ref = torch.nn.functional.binary_cross_entropy(p[known], labels[known].double())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    # anything in the masked cells instead of NaN changes nothing
    other = torch.where(known, labels, torch.full_like(labels, NAN))
    assert masked_bce(logits, other).item() == pytest.approx(loss.item())
    # extreme logits stay finite, and an all-masked batch gives exactly 0
    big = torch.tensor([[[-80.0, 80.0, 80.0]]], requires_grad=True)
    val = masked_bce(big, torch.tensor([[[1.0, 1.0, 0.0]]]))
    val.backward()
    assert torch.isfinite(val) and torch.isfinite(big.grad).all()
    assert masked_bce(logits, torch.full_like(labels, NAN)).item() == 0.0


def planted_task(n=360, seed=0):
    """Target a: onset within 30 d iff token 7 is in the inputs (10% label noise); target b:
    onset between 30 and 90 d iff token 9 is; 10% of cells masked at random."""
    seqs = toy_sequences(n, vocab_size=30, max_visits=8, seed=seed)
    lm = seqs.n_visits
    po, vo = seqs.patient_offsets, seqs.visit_offsets
    owner = np.repeat(np.arange(n), np.diff(vo[po]))
    has = {c: np.bincount(owner[seqs.codes == c], minlength=n) > 0 for c in (7, 9)}
    rng = np.random.default_rng(seed)
    a = has[7] ^ (rng.random(n) < 0.1)
    b = has[9] ^ (rng.random(n) < 0.1)
    labels = np.stack([np.stack([a, a, a], 1), np.stack([0 * b, b, b], 1)], 1).astype(np.float32)
    labels[rng.random(labels.shape) < 0.1] = NAN
    return seqs, lm, labels


def test_learns_a_planted_signal(tmp_path):
    seqs, lm, labels = planted_task()
    tr, te = np.arange(0, 240), np.arange(240, 360)
    seed_everything(0)
    model = DiseaseTrajectoryModel(tiny_config(vocab_size=seqs.vocab_size))
    ds_tr = TrajectoryDataset(seqs, tr, lm[tr], labels[tr])
    ds_te = TrajectoryDataset(seqs, te, lm[te], labels[te])
    params = TrainParams(epochs=25, batch_size=32, lr=0.02, patience=25, warmup_frac=0.0)
    runtime = RuntimeParams(threads=1, device="cpu", checkpoint_every_minutes=0)
    stats = fit(model, make_loader(ds_tr, 32, shuffle=True), make_loss(), params, runtime,
                checkpoint=False, progress=False)
    assert stats["completed"]
    prob = predict(model, make_loader(ds_te, 64), lambda m, b: m.predict_proba(b), len(te))
    res = evaluate_multilabel(labels[te], prob, ["a", "b"], HORIZONS, n_boot=0)["metrics"]
    assert res["auroc_30.a"] > 0.75 and res["auroc_90.b"] > 0.75, res
    assert math.isnan(res["auroc_30.b"])  # target b has no positive by 30 d: skipped
    # saved and reloaded, the model predicts the same
    save_model(tmp_path / "m", model, model.config, seqs.vocab)
    again, _, _ = load_model(tmp_path / "m")
    prob2 = predict(again, make_loader(ds_te, 64), lambda m, b: m.predict_proba(b), len(te))
    assert np.allclose(prob, prob2)


def test_inputs_after_the_landmark_cannot_change_predictions():
    seqs = toy_sequences(30, max_visits=10, seed=3)
    keep = seqs.n_visits >= 3
    idx = np.flatnonzero(keep)
    lm = seqs.n_visits[idx] - 2          # two visits after each landmark
    torch.manual_seed(0)
    model = DiseaseTrajectoryModel(tiny_config(vocab_size=seqs.vocab_size)).eval()

    def run(s):
        ds = TrajectoryDataset(s, idx, lm)
        return predict(model, make_loader(ds, 8), lambda m, b: m.predict_proba(b), len(idx))

    before = run(seqs)
    changed = toy_sequences(30, max_visits=10, seed=3)
    po, vo = changed.patient_offsets, changed.visit_offsets
    after_lm = np.zeros(len(changed.codes), bool)
    for p, k in zip(idx, lm, strict=True):  # test set-up only: mark the later visits' codes
        after_lm[vo[po[p] + k]:vo[po[p + 1]]] = True
    changed.codes[after_lm] = (changed.codes[after_lm] + 7) % 45 + 5
    changed.visit_time[po[idx] + lm] += 1234.0
    changed.visit_age[po[idx] + lm] += 3.0
    assert after_lm.any()
    assert np.array_equal(before, run(changed))


def test_encoder_loads_the_survival_lstm():
    c = tiny_config(vocab_size=40)
    surv = DiscreteTimeSurvivalLSTM(LSTMConfig(vocab_size=40, n_bins=5, embed_dim=8,
                                               hidden_dim=16, dropout=0.0)).eval()
    model = DiseaseTrajectoryModel(c).eval()
    model.encoder.load_survival(surv.state_dict())
    seqs = toy_sequences(10, vocab_size=40, seed=4)
    batch = TrajectoryDataset(seqs, np.arange(10), seqs.n_visits)[np.arange(10)]
    lstm_out = surv.lstm(torch.nn.utils.rnn.pack_padded_sequence(
        surv.encode_visits(batch), batch.lengths, batch_first=True, enforce_sorted=False))[1][0]
    assert torch.allclose(model.encoder(batch), lstm_out[-1], atol=1e-6)
    wrong = DiscreteTimeSurvivalLSTM(LSTMConfig(vocab_size=40, n_bins=5, hidden_dim=32))
    with pytest.raises(ValueError, match="shape"):
        model.encoder.load_survival(wrong.state_dict())
    with pytest.raises(ValueError, match="needs TrajectoryConfig.behrt"):
        DiseaseTrajectoryModel(tiny_config(encoder="behrt"))


def test_encoder_takes_the_survival_lstms_value_changes():
    """model.lstm.value_deltas reaches the trajectory's LSTM encoder: its token -> code map is
    set like the survival LSTM's and loads with the survival weights."""
    from ehrseq.data.tensors import set_value_codes

    seqs = toy_sequences(10, vocab_size=40, seed=4)
    seqs.vocab["tokens"][7] = "LOINC/1"
    seqs.value_stats = {"codes": ["LOINC/1"], "mean": [0.0], "sd": [1.0]}
    seqs.values = np.where(seqs.codes == 7, 1.5, np.nan).astype(np.float32)
    surv = DiscreteTimeSurvivalLSTM(LSTMConfig(vocab_size=40, n_bins=5, embed_dim=8,
                                               hidden_dim=16, dropout=0.0, value_deltas=True))
    set_value_codes(surv, seqs)
    assert surv.value_code[7] == 0 and int((surv.value_code >= 0).sum()) == 1
    model = DiseaseTrajectoryModel(tiny_config(vocab_size=40, value_deltas=True)).eval()
    assert int((model.encoder.net.value_code >= 0).sum()) == 0
    model.encoder.load_survival(surv.state_dict())
    torch.testing.assert_close(model.encoder.net.value_code, surv.value_code)
    batch = TrajectoryDataset(seqs, np.arange(10), seqs.n_visits)[np.arange(10)]
    assert model(batch).shape[0] == 10


def test_behrt_encoder_starts_from_the_pretrained_weights():
    from ehrseq.models.behrt import BEHRTConfig, behrt_inputs
    from ehrseq.models.pretraining import BEHRTPretrain
    from ehrseq.models.trajectory import trajectory_config
    from ehrseq.params import ModelParams

    bc = BEHRTConfig(vocab_size=40, hidden=16, layers=1, heads=2, intermediate=32, max_len=32,
                     dropout=0.0, model_class="ehrseq.models.pretraining.BEHRTPretrain")
    torch.manual_seed(1)
    pre = BEHRTPretrain(bc).eval()
    c = trajectory_config(ModelParams(dropout=0.0), 40, ["a", "b"], HORIZONS, "behrt", bc)
    assert c.behrt["hidden"] == 16 and c.behrt["model_class"] == "ehrseq.models.behrt.BEHRT"
    model = DiseaseTrajectoryModel(c).eval()
    model.encoder.load_pretrained(pre.encoder.state_dict())
    seqs = toy_sequences(12, vocab_size=40, seed=5)
    lm = np.maximum(seqs.n_visits - 1, 1)
    labels = np.random.default_rng(0).integers(0, 2, (12, 2, len(HORIZONS))).astype(np.float32)
    batch = TrajectoryDataset(seqs, np.arange(12), lm, labels)[np.arange(12)]
    with torch.no_grad():
        want = pre.encoder(behrt_inputs(batch, 32))[:, 0]
        torch.testing.assert_close(model.encoder(batch), want)
        p = model.predict_proba(batch)
    assert p.shape == (12, 2, len(HORIZONS)) and (p.diff(dim=-1) >= 0).all()
    model.train()
    make_loss()(model, batch).backward()
    assert model.encoder.net.tokens.weight.grad.abs().sum() > 0
    preset = trajectory_config(ModelParams(size="small"), 40, ["a"], HORIZONS, "behrt")
    assert preset.behrt["hidden"] == 128                # no pre-trained config: the preset
    small = DiseaseTrajectoryModel(preset)
    with pytest.raises(ValueError, match="shape"):
        small.encoder.load_pretrained(pre.encoder.state_dict())


def test_batch_keeps_its_labels_when_moved():
    seqs = toy_sequences(5, seed=2)
    labels = np.random.default_rng(0).random((5, 2, 3)).astype(np.float32)
    b = TrajectoryDataset(seqs, np.arange(5), seqs.n_visits, labels)[np.array([3, 1])]
    moved = b.to("cpu")
    assert torch.equal(moved.labels, torch.from_numpy(labels[[3, 1]]))


# --------------------------------------------------------------------------- metrics

def test_metrics_match_sklearn_on_a_hand_example():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1, 0], float)
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.05, 0.95, 0.7, 0.2])  # ties at 0.4
    one = np.ones((1, len(y)))
    assert weighted_auroc(y, p, one)[0] == pytest.approx(roc_auc_score(y, p))
    assert weighted_auprc(y, p, one)[0] == pytest.approx(average_precision_score(y, p))
    assert weighted_brier(y, p, one)[0] == pytest.approx(brier_score_loss(y, p))
    bins = np.minimum((p * 10).astype(int), 9)  # ECE by hand, equal-width bins
    ece = sum((bins == b).mean() * abs(p[bins == b].mean() - y[bins == b].mean())
              for b in np.unique(bins))
    assert weighted_ece(y, p, one)[0] == pytest.approx(ece)
    # a bootstrap row of multiplicities equals the metric on the resampled patients
    w = bootstrap_weights(len(y), 20, seed=1)[1:]
    for row in w:
        r = np.repeat(np.arange(len(y)), row.astype(int))
        if 0 < y[r].sum() < len(r):
            assert weighted_auroc(y, p, row[None])[0] == pytest.approx(roc_auc_score(y[r], p[r]))
            assert weighted_auprc(y, p, row[None])[0] == pytest.approx(
                average_precision_score(y[r], p[r]))


def test_evaluate_multilabel_skips_and_averages():
    rng = np.random.default_rng(0)
    n = 60
    y = (rng.random((n, 3, 2)) < 0.3).astype(float)
    y[:, 2, 0] = 0.0                        # target c: no positive at the first horizon
    y[rng.random((n, 3, 2)) < 0.2] = NAN
    prob = np.clip(0.6 * np.nan_to_num(y) + 0.4 * rng.random((n, 3, 2)), 0, 1)
    prob = np.maximum.accumulate(prob, axis=2)
    res = evaluate_multilabel(y, prob, ["a", "b", "c"], [30, 90], n_boot=50, seed=0)
    m = res["metrics"]
    assert math.isnan(m["auroc_30.c"]) and "0 positives among" in res["skipped"]["30.c"]
    assert res["n"]["pos_30.c"] == 0 and res["n"]["pos_90.a"] == int(np.nansum(y[:, 0, 1]))
    few = y.copy()
    few[:, 1, 1] = np.where(np.isnan(y[:, 1, 1]), np.nan, 0.0)
    few[np.flatnonzero(~np.isnan(y[:, 1, 1]))[:4], 1, 1] = 1.0   # 4 positives: too few to rank
    r4 = evaluate_multilabel(few, prob, ["a", "b", "c"], [30, 90], n_boot=0, seed=0)
    assert math.isnan(r4["metrics"]["auroc_90.b"])
    assert r4["skipped"]["90.b"].startswith("4 positives among")
    assert m["auroc_30.macro"] == pytest.approx((m["auroc_30.a"] + m["auroc_30.b"]) / 2)
    assert m["auroc_30.n_targets"] == 2 and m["auroc_90.n_targets"] == 3
    k = ~np.isnan(y[:, 0, 1])
    assert m["auroc_90.a"] == pytest.approx(roc_auc_score(y[k, 0, 1], prob[k, 0, 1]))
    for key in ("auroc_90.macro", "brier_30.a"):
        assert m[f"{key}_lo"] <= m[key] <= m[f"{key}_hi"]
    assert m["ece_90.b_lo"] < m["ece_90.b_hi"]
    again = evaluate_multilabel(y, prob, ["a", "b", "c"], [30, 90], n_boot=50, seed=0)
    assert again["metrics"] == pytest.approx(m, nan_ok=True)   # seeded


# --------------------------------------------------------------------------- stage params

def _stage():
    return script("stages/train_trajectory.py")


def test_stage_params_section(tmp_path):
    _stage()   # the stage script imports
    f = tmp_path / "params.yaml"
    f.write_text("runtime: {threads: 1}\ntrajectory: {horizons: [365, 30], pos_weight: auto}\n")
    params = load_params(f)
    tp = params.trajectory
    assert params.runtime.threads == 1 and tp.horizons == [30, 365] and tp.pos_weight == "auto"
    assert tp.targets is None
    f.write_text("trajectory: {horizon: [30]}\n")
    with pytest.raises(ParamsError, match="trajectory.horizon: unknown key"):
        load_params(f)
    assert tp.frequent_targets == 6
    assert TrajectoryParams().horizons == [365, 1095, 1825]
    f.write_text("trajectory: {encoder: transformer}\n")
    with pytest.raises(ParamsError, match="behrt"):
        load_params(f)
    # monotone baselines; a single-class cell predicts its rate
    X = np.random.default_rng(0).random((20, 3))
    y = np.zeros((20, 1, 2))
    y[:5, 0, 1] = 1
    out = multilabel_baseline("lr", X, y, X, 0, 1)
    assert (out[..., 1] >= out[..., 0]).all() and np.allclose(out[:, 0, 0], 0.0)


def test_report_shows_test_positives_beside_each_onset_score():
    from ehrseq.evaluate.report import onset_markdown

    flat = {"onset.test.pos_365.death": 12, "onset.test.n_365.death": 150,
            "onset.test.pos_365.44054006": 3, "onset.test.n_365.44054006": 140,
            "onset.skipped.365.44054006": "3 positives among 140 known test patients",
            "onset.trajectory.auroc_365.death": 0.71, "onset.trajectory.auroc_365.death_lo": 0.6,
            "onset.trajectory.auroc_365.death_hi": 0.8, "onset.lr.auroc_365.death": 0.65}
    md = onset_markdown(flat)
    assert "| 365d | death | 12 / 150 | 0.650 | 0.710 [0.600, 0.800] |" in md
    assert "| 365d | 44054006 | 3 / 140 | n/a (3 positives among 140 known test patients)" in md
    assert onset_markdown({}) == ""
