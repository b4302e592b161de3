"""Logistic-hazard loss, label transform and the discrete-time survival LSTM."""

import math

import numpy as np
import pytest
import torch
from lifelines.utils import concordance_index

from ehrseq.data.tensors import (
    SequenceDataset,
    Sequences,
    make_loader,
    set_value_codes,
    toy_sequences,
)
from ehrseq.models.inference import predict
from ehrseq.models.losses import hazard_to_survival, nll_logistic_hazard
from ehrseq.models.lstm_survival import (
    DiscreteTimeSurvivalLSTM,
    LSTMConfig,
    lstm_config,
    lstm_train,
    survival_loss,
)
from ehrseq.models.store import load_model, save_model
from ehrseq.params import LSTMParams, ModelParams, Params, TrainParams
from ehrseq.survival.bins import bin_targets
from ehrseq.train.loop import fit
from ehrseq.train.runtime import seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")


def test_nll_matches_hand_computed_example():
    logits = torch.tensor([[0.0, 1.0, -1.0], [2.0, -0.5, 0.3], [-1.0, 0.5, 0.0]])
    idx = torch.tensor([2, 1, 0])
    event = torch.tensor([1.0, 0.0, 1.0])

    def h(x):
        return 1 / (1 + math.exp(-x))

    # patient 0: survived bins 0 and 1, event in bin 2
    p0 = -(math.log(1 - h(0.0)) + math.log(1 - h(1.0)) + math.log(h(-1.0)))
    # patient 1: censored in bin 1, so survived bins 0 and 1
    p1 = -(math.log(1 - h(2.0)) + math.log(1 - h(-0.5)))
    # patient 2: event in bin 0
    p2 = -math.log(h(-1.0))
    got = nll_logistic_hazard(logits, idx, event, reduction="none")
    assert got.tolist() == pytest.approx([p0, p1, p2], rel=1e-6)
    assert nll_logistic_hazard(logits, idx, event).item() == pytest.approx((p0 + p1 + p2) / 3)
    # stable for extreme logits where log(sigmoid) would underflow
    big = nll_logistic_hazard(torch.tensor([[-200.0, 200.0]]), torch.tensor([1]),
                              torch.tensor([1.0]))
    assert torch.isfinite(big) and big.item() == pytest.approx(0.0, abs=1e-6)


def test_bin_targets():
    cuts = [0, 10, 20, 40]
    dur = [5, 10, 12, 18, 39, 41, 3, 0.0]
    ev = [1, 1, 0, 0, 1, 1, 0, 1]
    idx, e = bin_targets(dur, ev, cuts)
    # events: the bin holding t (right-closed); censored: its bin once past the midpoint,
    # else the previous one; beyond the last edge: censored in the last bin.
    assert idx.tolist() == [0, 0, 0, 1, 2, 2, 0, 0]
    assert e.tolist() == [1, 1, 0, 0, 1, 0, 0, 1]
    assert bin_targets(dur, ev, [10, 20, 40])[0].tolist() == idx.tolist()  # 0 added
    with pytest.raises(ValueError, match="increasing"):
        bin_targets([1], [1], [0, 5, 5])


def test_survival_from_hazards():
    s = hazard_to_survival(torch.tensor([[0.0, 0.0], [-50.0, 3.0]]))
    assert s.shape == (2, 3)
    assert torch.allclose(s[0], torch.tensor([1.0, 0.5, 0.25]))
    assert (s[:, 1:] <= s[:, :-1]).all() and (s[:, 0] == 1).all()


def test_sizes_presets_and_overrides():
    counts = {}
    for size in ("tiny", "small", "medium", "large"):
        cfg = lstm_config(ModelParams(size=size), vocab_size=500, n_bins=12)
        counts[size] = sum(p.numel() for p in DiscreteTimeSurvivalLSTM(cfg).parameters())
    assert counts["tiny"] < counts["small"] < counts["medium"] < counts["large"]
    cfg = lstm_config(ModelParams(size="medium", lstm=LSTMParams(hidden_dim=32)), 500, 12)
    assert (cfg.embed_dim, cfg.hidden_dim, cfg.layers) == (128, 32, 2)


def test_the_lstm_has_its_own_regularisation():
    """``model.lstm.dropout`` and ``weight_decay`` (defaults 0.5 and 1.0) are the survival
    LSTM's; null falls back to ``model.dropout`` and ``train.weight_decay``; the trajectory
    model's LSTM encoder keeps ``model.dropout``."""
    from ehrseq.models.trajectory import trajectory_config

    p = Params()
    assert lstm_config(p.model, 50, 4).dropout == 0.5
    assert lstm_train(p).weight_decay == 1.0 and lstm_train(p).lr == p.train.lr
    assert p.train.weight_decay == 0.01 and p.model.dropout == 0.1
    off = Params(model={"dropout": 0.2, "lstm": {"dropout": None, "weight_decay": None}},
                 train={"weight_decay": 0.05})
    assert lstm_config(off.model, 50, 4).dropout == 0.2 and lstm_train(off).weight_decay == 0.05
    assert trajectory_config(p.model, 50, ["a"], [365]).dropout == 0.1


def _planted_cohort(n, seed, fast=40.0, slow=600.0):
    """Patients carrying code 5 (at or before the landmark) have events much earlier."""
    s = toy_sequences(n, vocab_size=30, max_visits=8, max_codes=4, seed=seed)
    rng = np.random.default_rng(seed)
    codes = np.where(s.codes == 5, 6, s.codes)
    landmark = np.floor(rng.uniform(1, s.n_visits + 1)).astype(int)
    high = rng.random(n) < 0.5
    visit = s.patient_offsets[:-1] + np.floor(rng.uniform(0, landmark)).astype(int)
    codes[s.visit_offsets[visit[high]]] = 5
    s.codes = codes.astype(np.int32)
    t = rng.exponential(np.where(high, fast, slow))
    c = rng.uniform(50, 1000, n)
    return s, landmark, np.minimum(t, c), (t <= c).astype(float)


def _split(cohort, tmp_path):
    """A toy cohort through the sequences contract on disk, six time bins from its event
    times, the first 600 rows to train and the rest to validate."""
    s, landmark, dur, ev = cohort
    s.save(tmp_path / "seq")
    s = Sequences.load(tmp_path / "seq")
    cuts = np.quantile(dur[ev == 1], np.linspace(0, 1, 7)[1:]).tolist()
    tr, va = np.arange(600), np.arange(600, len(dur))
    train = SequenceDataset(s, tr, landmark[tr], dur[tr], ev[tr], cuts)
    val = SequenceDataset(s, va, landmark[va], dur[va], ev[va], cuts)
    return s, landmark, dur, ev, tr, va, train, val


def test_lstm_learns_a_planted_signal(tmp_path):
    s, landmark, dur, ev, tr, va, train, val = _split(_planted_cohort(800, seed=4), tmp_path)
    batch = val[np.arange(len(va))]  # the oracle: does the input hold the planted code?
    n_vis = batch.visit_mask.shape[1]
    owner = torch.repeat_interleave(torch.arange(batch.visit_counts.numel()),
                                    batch.visit_counts.reshape(-1)) // n_vis
    carrier = torch.zeros(len(va)).index_add_(0, owner, (batch.tokens == 5).float()) > 0
    seed_everything(0)
    cfg = LSTMConfig(vocab_size=s.vocab_size, n_bins=6, embed_dim=16, hidden_dim=32, layers=1,
                     dropout=0.0)
    model = DiscreteTimeSurvivalLSTM(cfg)
    val_loader = make_loader(val, 100)

    def c_index(m):
        risk = predict(m, val_loader, lambda m, b: m.predict_risk(b), len(va))
        return concordance_index(dur[va], -risk, ev[va])

    c_untrained = c_index(model)
    stats = fit(model, make_loader(train, 32, shuffle=True), survival_loss,
                TrainParams(epochs=10, lr=1e-2, warmup_frac=0.0, patience=10),
                val_loader=val_loader, checkpoint=False, progress=False)
    c_trained = c_index(model)
    c_oracle = concordance_index(dur[va], -carrier.float().numpy(), ev[va])
    assert c_trained > c_untrained + 0.12 and c_trained > c_oracle - 0.04, \
        (c_untrained, c_trained, c_oracle)
    hist = stats["history"]
    assert stats["best_value"] < hist[0]["val_loss"] - 0.1
    surv = predict(model, val_loader, lambda m, b: m.predict_survival(b), len(va))
    assert surv.shape == (len(va), cfg.n_bins + 1) and np.all(np.diff(surv, axis=1) <= 1e-6)

    save_model(tmp_path / "model", model, cfg, s.vocab)
    loaded, config, vocab = load_model(tmp_path / "model")
    assert isinstance(loaded, DiscreteTimeSurvivalLSTM) and vocab == s.vocab
    assert config["hidden_dim"] == 32
    batch = val[np.arange(10)]
    model.eval()
    loaded.eval()
    assert torch.equal(model(batch), loaded(batch))


def _value_cohort(n, seed):
    """Every patient's landmark visit holds lab code 5; its value, not its presence, sets the
    risk: a value above the mean gives events much earlier."""
    s, landmark, _, _ = _planted_cohort(n, seed)
    rng = np.random.default_rng(seed + 100)
    codes = np.where(s.codes == 5, 6, s.codes)
    lab = s.visit_offsets[s.patient_offsets[:-1] + landmark - 1]
    codes[lab] = 5
    s.codes = codes.astype(np.int32)
    z = rng.normal(size=n).astype(np.float32)
    s.values = np.full(len(codes), np.nan, np.float32)
    s.values[lab] = z
    t = rng.exponential(np.where(z > 0, 40.0, 600.0))
    c = rng.uniform(50, 1000, n)
    return s, landmark, np.minimum(t, c), (t <= c).astype(float)


def _starts_as(model, config, val):
    """``model``, untrained, gives the outputs of a model of ``config`` with its weights (the
    vectors ``config`` lacks start at zero)."""
    plain = DiscreteTimeSurvivalLSTM(config)
    plain.load_state_dict(model.state_dict(), strict=False)
    b = val[np.arange(20)]
    torch.testing.assert_close(model.eval()(b), plain.eval()(b))


def _fit_c(model, train, val_loader, dur, ev):
    """Train 8 epochs; the validation C."""
    fit(model, make_loader(train, 32, shuffle=True), survival_loss,
        TrainParams(epochs=8, lr=1e-2, warmup_frac=0.0, patience=8),
        val_loader=val_loader, checkpoint=False, progress=False)
    risk = predict(model, val_loader, lambda m, b: m.predict_risk(b), len(dur))
    return concordance_index(dur, -risk, ev)


def _trend_cohort(n, seed):
    """Lab code 5 at the landmark visit and the visit before: its change between the two, not
    its level, sets the risk (a rise gives events much earlier); each level alone is noise."""
    s, landmark, _, _ = _planted_cohort(n, seed)
    rng = np.random.default_rng(seed + 200)
    two = s.n_visits >= 2
    landmark = np.where(two, np.maximum(landmark, 2), landmark)
    codes = np.where(s.codes == 5, 6, s.codes)
    first = s.patient_offsets[:-1]
    last = s.visit_offsets[first + landmark - 1]
    prev = s.visit_offsets[(first + landmark - 2)[two]]
    codes[last], codes[prev] = 5, 5
    s.codes = codes.astype(np.int32)
    level, rise = rng.normal(size=n), rng.normal(size=n) * two
    s.values = np.full(len(codes), np.nan, np.float32)
    s.values[last] = level + rise
    s.values[prev] = level[two]
    s.value_stats = {"codes": ["TOY/5"], "mean": [0.0], "sd": [1.0]}
    t = rng.exponential(np.where(rise > 0, 40.0, 600.0))
    c = rng.uniform(50, 1000, n)
    return s, landmark, np.minimum(t, c), (t <= c).astype(float), rise


def test_value_deltas_give_the_lstm_a_trend(tmp_path):
    """model.lstm.value_deltas: a risk carried by a lab value's change between two visits is
    learnt with the changes as inputs and not from the code alone; their vectors start at zero
    (the model equals one without them before training) and the token -> code map travels
    with the weights."""
    *cohort, rise = _trend_cohort(800, seed=11)
    s, landmark, dur, ev, tr, va, train, val = _split(cohort, tmp_path)
    val_loader = make_loader(val, 100)
    c = {}
    for deltas in (False, True):
        seed_everything(0)
        cfg = LSTMConfig(vocab_size=s.vocab_size, n_bins=6, embed_dim=16, hidden_dim=32,
                         dropout=0.0, value_deltas=deltas)
        model = DiscreteTimeSurvivalLSTM(cfg)
        set_value_codes(model, s)
        if deltas:
            assert model.value_code.tolist() == [0 if t == "TOY/5" else -1
                                                 for t in s.vocab["tokens"]]
            _starts_as(model, LSTMConfig(**{**cfg.__dict__, "value_deltas": False}), val)
        c[deltas] = _fit_c(model, train, val_loader, dur[va], ev[va])
    save_model(tmp_path / "m", model, config=model.config_dict(), vocab=s.vocab)
    loaded = load_model(tmp_path / "m")[0]
    assert loaded.value_code.tolist() == model.value_code.tolist()
    oracle = concordance_index(dur[va], -(rise[va] > 0).astype(float), ev[va])
    assert c[True] > oracle - 0.05 and c[True] > c[False] + 0.12, (c, oracle)


@pytest.mark.parametrize("pool", ["sum", "attention"])
def test_values_reach_the_lstm(tmp_path, pool):
    """model.lstm.values: a risk carried by a lab value is learnt with values and not without (the
    code alone is in every patient's input); value vectors start at zero, so before training
    the model equals the one without values."""
    s, landmark, dur, ev, tr, va, train, val = _split(_value_cohort(800, seed=7), tmp_path)
    val_loader = make_loader(val, 100)
    c, models = {}, {}
    for values in (False, True):
        seed_everything(0)
        cfg = LSTMConfig(vocab_size=s.vocab_size, n_bins=6, embed_dim=16, hidden_dim=32,
                         dropout=0.0, pool=pool, values=values)
        model = models[values] = DiscreteTimeSurvivalLSTM(cfg)
        if values:   # zero value vectors: the same outputs as the model without them
            _starts_as(model, models[False].config, val)
        c[values] = _fit_c(model, train, val_loader, dur[va], ev[va])
    lab = s.values[s.visit_offsets[s.patient_offsets[va] + landmark[va] - 1]]
    oracle = concordance_index(dur[va], -(lab > 0).astype(float), ev[va])
    assert c[True] > oracle - 0.05 and c[True] > c[False] + 0.12, (c, oracle)
